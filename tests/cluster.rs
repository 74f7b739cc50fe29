//! The cluster's membership as far as it is built (issue 17): node ids leased in
//! PostgreSQL, so two live servers on one database never share one (message ids embed
//! it), and a server restarted on its own data directory takes its lease back at once.

#![allow(clippy::unwrap_used)]

mod util;

use ruyi_proto::types::{channel_type::PERSON, reason};
use std::time::{Duration, Instant};
use util::pg::Pg;
use util::*;

fn first_dir(server: &ruyi::Server) -> std::path::PathBuf {
    server.data_dir().to_path_buf()
}

#[test]
fn a_second_server_with_a_live_node_id_is_refused_and_a_released_one_is_reused() {
    let Some(pg) = Pg::start() else { return };
    let store = pg.database("lease");
    let first = start("lease-1", |c| {
        c.store = store.clone();
        c.node_id = 7;
    });
    let other = start("lease-other", |c| {
        c.store = store.clone();
        c.node_id = 8;
    });
    let at = Instant::now();
    let mut config = test_config("lease-2");
    config.store = store.clone();
    config.node_id = 7;
    // Servers sharing a database share their token key (a token registered through one
    // must verify on another): the key must not make them one lease holder.
    std::fs::create_dir_all(&config.data_dir).unwrap();
    std::fs::copy(
        first_dir(&first).join("token.key"),
        config.data_dir.join("token.key"),
    )
    .unwrap();
    let err = ruyi::Server::start(config).expect_err("two live servers with node id 7");
    assert!(err.to_string().contains("node id 7"), "{err}");
    assert!(
        at.elapsed() < Duration::from_secs(20),
        "refused only after {:?}",
        at.elapsed()
    );
    // Stopped, the first releases its lease: the id is free at once.
    first.stop();
    let at = Instant::now();
    let again = start("lease-3", |c| {
        c.store = store.clone();
        c.node_id = 7;
    });
    assert!(
        at.elapsed() < Duration::from_secs(5),
        "a released node id took {:?}",
        at.elapsed()
    );
    drop((again, other));
}

#[test]
fn a_server_killed_and_restarted_on_its_data_directory_claims_its_node_id_at_once() {
    let Some(pg) = Pg::start() else { return };
    let store = pg.database("lease_restart");
    let data = temp_dir("lease-restart");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("test-store"), &store).unwrap();
    let (tcp, http) = (free_addr(), free_addr());
    let mut server = RuyiProcess::spawn(&data, tcp, http);
    server.kill9();
    // Its lease is still live for 10 s, but its holder is this data directory, whose
    // lock the new process holds: the old one is dead.
    let at = Instant::now();
    let _server = RuyiProcess::spawn(&data, tcp, http);
    assert!(
        at.elapsed() < Duration::from_secs(5),
        "the restart waited {:?} for its own lease",
        at.elapsed()
    );
    let mut db = postgres::Client::connect(&store, postgres::NoTls).unwrap();
    let incarnation: i64 = db
        .query_one(
            "SELECT incarnation FROM node_lease WHERE node_id = 1001",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(incarnation, 2, "a restart is a new incarnation");
}

#[test]
fn commits_are_fenced_by_the_lease_a_lapsed_one_pauses_them_a_taken_one_stops_them() {
    let Some(pg) = Pg::start() else { return };
    let store = pg.database("fence");
    let server = start("fence", |c| {
        c.store = store.clone();
        c.node_id = 9;
    });
    register(&server, "a", "t", 1, 0);
    let mut a = Client::ok(server.tcp_addr(), &Login::new("a", "t"));
    let mut send = |no: &str| {
        a.send("b", PERSON, b"{}", no);
        a.sendack().reason_code
    };
    assert_eq!(send("held"), reason::SUCCESS);
    let mut db = postgres::Client::connect(&store, postgres::NoTls).unwrap();
    // Lapsed (the renewer cut off, the process paused): nothing commits until renewed.
    // (The renewer may renew between the two statements, once in hundreds: three tries.)
    let refused = (0..3).any(|i| {
        db.execute(
            "UPDATE node_lease SET expires_at = now() - interval '1 second' WHERE node_id = 9",
            &[],
        )
        .unwrap();
        send(&format!("lapsed-{i}")) == reason::SYSTEM_ERROR
    });
    assert!(refused, "committed on a lapsed lease");
    let renewed_by = Instant::now() + Duration::from_secs(10);
    let mut n = 0;
    while send(&format!("renewed-{n}")) != reason::SUCCESS {
        assert!(Instant::now() < renewed_by, "the lease was never renewed");
        std::thread::sleep(Duration::from_millis(200));
        n += 1;
    }
    // Taken by another incarnation: nothing commits any more.
    db.execute(
        "UPDATE node_lease SET incarnation = incarnation + 1, holder = 'thief' WHERE node_id = 9",
        &[],
    )
    .unwrap();
    for i in 0..3 {
        assert_eq!(
            send(&format!("taken-{i}")),
            reason::SYSTEM_ERROR,
            "committed under another server's lease"
        );
    }
    let stored: i64 = db
        .query_one(
            "SELECT COUNT(*) FROM messages WHERE client_msg_no IN ('taken-0', 'taken-1', 'taken-2')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(stored, 0);
}
