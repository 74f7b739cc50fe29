//! The cluster's membership as far as it is built (issue 17): node ids leased in
//! PostgreSQL, so two live servers on one database never share one (message ids embed
//! it), and a server restarted on its own data directory takes its lease back at once.

#![allow(clippy::unwrap_used)]

mod util;

use std::time::{Duration, Instant};
use util::pg::Pg;
use util::*;

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
