//! The cluster as far as it is built (issue 17): node ids leased in PostgreSQL, so two
//! live servers on one database never share one (message ids embed it), and a server
//! restarted on its own data directory takes its lease back at once; membership over a
//! real NATS, with `/route` answering live nodes only, through a kill -9 and a NATS
//! outage; the lead, taken over when its node dies or is cut off from the bus. The
//! message path across nodes is in `cluster_chat.rs`.

#![allow(clippy::unwrap_used)]

mod util;

use ruyi_proto::types::{channel_type::PERSON, reason};
use std::time::{Duration, Instant};
use util::cluster::*;
use util::nats::Nats;
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
    // Released by expiring its lease, not deleting it: the next claim is a new incarnation,
    // so (node, incarnation) names one process for good (`cluster/inherit.rs`).
    let mut db = postgres::Client::connect(&store, postgres::NoTls).unwrap();
    let incarnation: i64 = db
        .query_one("SELECT incarnation FROM node_lease WHERE node_id = 7", &[])
        .unwrap()
        .get(0);
    assert_eq!(incarnation, 2, "a clean restart reused its incarnation");
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
    // Its lease is still live for 6 s, but its holder is this data directory, whose
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

#[test]
fn cluster_mode_refuses_sqlite_and_says_why() {
    let mut config = test_config("cluster-sqlite");
    config.store = "sqlite".into();
    config.nats = vec!["nats://127.0.0.1:4222".into()];
    let err = ruyi::Server::start(config).expect_err("a cluster on SQLite");
    assert!(err.to_string().contains("PostgreSQL"), "{err}");
    let mut config = test_config("cluster-name");
    config.store = "postgres://u@127.0.0.1:1/db".into();
    config.nats = vec!["nats://127.0.0.1:4222".into()];
    config.cluster_name = "a.b".into();
    let err = ruyi::Server::start(config).expect_err("a subject wildcard in the name");
    assert!(err.to_string().contains("cluster_name"), "{err}");
}

#[test]
fn nodes_see_each_other_and_route_only_to_live_ones_through_a_kill_9() {
    let Some(pg) = Pg::start() else { return };
    let Some(nats) = Nats::start() else { return };
    let store = pg.database("members");
    let mut nodes: Vec<Node> = (1..=3).map(|id| Node::spawn(&store, &nats, id)).collect();
    for n in &nodes {
        wait_for("three live nodes", Duration::from_secs(10), || {
            n.view() == (vec![1, 2, 3], true)
        });
    }
    // Every node sends a user to the same node, and users spread over all three.
    let uids: Vec<String> = (0..60).map(|i| format!("u{i}")).collect();
    let routed: Vec<String> = uids.iter().map(|u| nodes[0].route(u)).collect();
    for n in &nodes[1..] {
        for (uid, addr) in uids.iter().zip(&routed) {
            assert_eq!(&n.route(uid), addr, "nodes disagree on {uid}");
        }
    }
    let addr_of = |n: &Node| n.process.tcp.to_string();
    for n in &nodes {
        assert!(
            routed.contains(&addr_of(n)),
            "no user sent to node {}",
            n.id
        );
    }
    // /route/batch groups the same way.
    let (status, batch) = post(
        nodes[1].process.http,
        "/route/batch",
        serde_json::json!(uids),
    );
    assert_eq!(status, 200);
    for group in batch.as_array().unwrap() {
        for uid in group["uids"].as_array().unwrap() {
            let i = uids
                .iter()
                .position(|u| u == uid.as_str().unwrap())
                .unwrap();
            assert_eq!(group["tcp_addr"], routed[i].as_str());
        }
    }
    // kill -9 of node 2: within the dead-node time, nobody is sent there any more.
    let dead = addr_of(&nodes[1]);
    nodes[1].process.kill9();
    for n in [&nodes[0], &nodes[2]] {
        wait_for("node 2 seen dead", Duration::from_secs(6), || {
            n.view().0 == vec![1, 3]
        });
        for uid in &uids {
            assert_ne!(n.route(uid), dead, "{uid} sent to a dead node");
        }
    }
    // Only node 2's users moved.
    for (uid, before) in uids.iter().zip(&routed) {
        if *before != dead {
            assert_eq!(&nodes[0].route(uid), before, "{uid} moved");
        }
    }
    // Back (a new incarnation of the same node id): it rejoins, and its users return.
    nodes[1].restart(&nats);
    for n in &nodes {
        wait_for("node 2 back", Duration::from_secs(10), || {
            n.view() == (vec![1, 2, 3], true)
        });
    }
    assert_eq!(
        uids.iter().map(|u| nodes[2].route(u)).collect::<Vec<_>>(),
        routed
    );
}

#[test]
fn nodes_ride_out_a_nats_outage_and_recover_without_a_restart() {
    let Some(pg) = Pg::start() else { return };
    let Some(mut nats) = Nats::start() else {
        return;
    };
    let store = pg.database("outage");
    let nodes: Vec<Node> = (1..=2).map(|id| Node::spawn(&store, &nats, id)).collect();
    for n in &nodes {
        wait_for("two live nodes", Duration::from_secs(10), || {
            n.view() == (vec![1, 2], true)
        });
    }
    let lead = nodes[0].leader().expect("a leader") as usize - 1;
    let follower = 1 - lead;
    // A client of the follower, there all along: what the leader commits while NATS is
    // away never reaches its node, which must notice and make it resync.
    let mut watcher = Client::ok(nodes[follower].process.tcp, &Login::new("alone-b", "x"));
    nats.pause();
    for n in &nodes {
        wait_for("NATS seen away", Duration::from_secs(6), || {
            let (ids, up) = n.view();
            !up && ids == vec![u64::from(n.id)]
        });
    }
    // Alone, the leader still serves what needs no other node: a chat between its users.
    let tcp = nodes[lead].process.tcp;
    let mut a = Client::ok(tcp, &Login::new("alone-a", "x"));
    let mut b = Client::ok(tcp, &Login::new("alone-b", "x"));
    a.send("alone-b", PERSON, b"still here", "out-1");
    assert_eq!(a.sendack().reason_code, reason::SUCCESS);
    assert_eq!(&b.recv().payload[..], b"still here");
    // A follower cannot reach the leader: its SENDs are refused at once with 15.
    let at = Instant::now();
    let ack = nodes[follower].send("cut", "off", "out-2");
    assert_eq!(ack.reason_code, reason::SYSTEM_ERROR);
    assert!(
        at.elapsed() < Duration::from_secs(3),
        "refused after {:?}",
        at.elapsed()
    );
    nats.resume();
    for n in &nodes {
        wait_for(
            "NATS back, both nodes live",
            Duration::from_secs(10),
            || n.view() == (vec![1, 2], true),
        );
    }
    // alone-b's device on the follower missed "still here": it is closed to resync.
    assert!(
        watcher.closed_within(Duration::from_secs(10)),
        "a device that missed a message while NATS was away was left open"
    );
    // Recovered without a restart: the follower's SENDs reach the leader again.
    let ack = nodes[follower].send("cut", "off", "out-3");
    assert_eq!((ack.reason_code, ack.message_seq), (reason::SUCCESS, 1));
}

#[test]
fn one_node_leads_and_another_takes_over_when_it_dies() {
    let Some(pg) = Pg::start() else { return };
    let Some(nats) = Nats::start() else { return };
    let store = pg.database("leader");
    let mut nodes: Vec<Node> = (1..=3).map(|id| Node::spawn(&store, &nats, id)).collect();
    let mut leader = None;
    wait_for("all three name one leader", Duration::from_secs(10), || {
        let named: Vec<_> = nodes.iter().map(Node::leader).collect();
        leader = named[0];
        leader.is_some() && named.iter().all(|l| *l == leader)
    });
    let first = leader.unwrap() as usize - 1;
    let ack = nodes[first].send("a", "b", "m1");
    assert_eq!((ack.reason_code, ack.message_seq), (reason::SUCCESS, 1));
    // kill -9 of the leader: once its lease lapses (6 s), one of the others leads, and the
    // channel's seqs go on from where they were.
    nodes[first].process.kill9();
    let others: Vec<usize> = (0..3).filter(|i| *i != first).collect();
    let mut next = None;
    wait_for("a new leader", Duration::from_secs(25), || {
        let named: Vec<_> = others.iter().map(|&i| nodes[i].leader()).collect();
        next = named[0];
        next.is_some_and(|n| n as usize - 1 != first) && named.iter().all(|l| *l == next)
    });
    let second = next.unwrap() as usize - 1;
    let ack = nodes[second].send("a", "b", "m2");
    assert_eq!((ack.reason_code, ack.message_seq), (reason::SUCCESS, 2));
    // The old leader comes back as a follower.
    nodes[first].restart(&nats);
    wait_for("the old leader follows", Duration::from_secs(10), || {
        nodes[first].leader() == next
    });
    let mut db = postgres::Client::connect(&store, postgres::NoTls).unwrap();
    let rows: Vec<(i64, i64)> = db
        .query("SELECT seq, message_id FROM messages ORDER BY seq", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(rows.iter().map(|r| r.0).collect::<Vec<_>>(), vec![1, 2]);
}

#[test]
fn a_leader_cut_off_from_the_bus_hands_the_lead_to_the_nodes_that_still_reach_each_other() {
    let Some(pg) = Pg::start() else { return };
    let Some((mut nats_a, nats_b)) = Nats::start_pair() else {
        return;
    };
    let store = pg.database("partition");
    // Node 1 starts alone on NATS server A and leads; nodes 2 and 3 join on server B (one
    // NATS cluster: every node reaches every other).
    let one = Node::spawn(&store, &nats_a, 1);
    wait_for("node 1 leads", Duration::from_secs(10), || {
        one.leader() == Some(1)
    });
    let others: Vec<Node> = (2..=3).map(|id| Node::spawn(&store, &nats_b, id)).collect();
    for n in others.iter().chain([&one]) {
        wait_for("three live nodes", Duration::from_secs(10), || {
            n.view() == (vec![1, 2, 3], true) && n.leader() == Some(1)
        });
    }
    let ack = others[0].send("a", "b", "p1");
    assert_eq!((ack.reason_code, ack.message_seq), (reason::SUCCESS, 1));
    // Server A goes: node 1 is cut off, 2 and 3 still reach each other through B. Node 1
    // sees them renew their leases, lets its own lapse, and one of them takes the lead.
    let cut = Instant::now();
    nats_a.pause();
    let mut next = None;
    wait_for("a node on the bus leads", Duration::from_secs(20), || {
        let named: Vec<_> = others.iter().map(Node::leader).collect();
        next = named[0];
        next.is_some_and(|n| n != 1) && named.iter().all(|l| *l == next)
    });
    let took = cut.elapsed();
    assert!(
        took < Duration::from_secs(12),
        "the lead moved after {took:?}"
    );
    let ack = others[1].send("a", "b", "p2");
    assert_eq!((ack.reason_code, ack.message_seq), (reason::SUCCESS, 2));
    // Node 1 does not hold on to a lead it lost: it stops (a supervisor restarts it as a
    // follower), which also sends its clients to the nodes that can serve them.
    let mut one = one;
    wait_for("node 1 stopped", Duration::from_secs(10), || {
        one.process.child.try_wait().unwrap().is_some()
    });
    let mut db = postgres::Client::connect(&store, postgres::NoTls).unwrap();
    let seqs: Vec<i64> = db
        .query("SELECT seq FROM messages ORDER BY seq", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(seqs, vec![1, 2]);
}

/// Resident memory of process `pid`, in KiB (`/proc/<pid>/status`).
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_node_stopped_with_sigstop_costs_the_others_no_growing_memory_and_loses_nothing() {
    let Some(c) = Three::start("sigstop") else {
        return;
    };
    let (live, frozen) = (c.followers[0], c.followers[1]);
    let pid = |i: usize| c.nodes[i].process.child.id();
    // bob's device sits on the node about to freeze; alice (on the leader) writes to him
    // and to carol (on the other follower) the whole time.
    let mut bob = Client::ok(c.nodes[frozen].process.tcp, &Login::new("bob", "x"));
    let mut alice = Client::ok(c.nodes[c.lead].process.tcp, &Login::new("alice", "x"));
    let mut carol = Client::ok(c.nodes[live].process.tcp, &Login::new("carol", "x"));
    let mut for_bob = Vec::new();
    let send = |alice: &mut Client, to: &str, n: usize| {
        let no = format!("{to}-{n}");
        alice.send(to, PERSON, no.as_bytes(), &no);
        let ack = alice.sendack();
        assert_eq!(ack.reason_code, reason::SUCCESS, "{no}");
        ack.message_id
    };
    for n in 0..20 {
        for_bob.push(send(&mut alice, "bob", n));
    }
    let before = (rss_kib(pid(c.lead)), rss_kib(pid(live)));
    // SAFETY: a signal to a child process this test started.
    assert_eq!(unsafe { libc::kill(pid(frozen) as i32, libc::SIGSTOP) }, 0);
    // Eight seconds frozen, far past the 3 s after which the others count it dead: the
    // leader keeps committing, carol keeps receiving in order.
    let until = Instant::now() + Duration::from_secs(8);
    let mut n = 20;
    let mut carol_seen = 0;
    while Instant::now() < until {
        for_bob.push(send(&mut alice, "bob", n));
        let _ = send(&mut alice, "carol", n);
        let r = carol.recv();
        carol.recvack(&r);
        assert_eq!(
            r.message_seq,
            carol_seen + 1,
            "carol's messages out of order"
        );
        carol_seen = r.message_seq;
        n += 1;
        std::thread::sleep(Duration::from_millis(5));
    }
    let after = (rss_kib(pid(c.lead)), rss_kib(pid(live)));
    for (node, b, a) in [
        ("leader", before.0, after.0),
        ("follower", before.1, after.1),
    ] {
        assert!(
            a < b + 64 * 1024,
            "the {node} grew from {b} to {a} KiB while a node was frozen"
        );
    }
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid(frozen) as i32, libc::SIGCONT) }, 0);
    // Back: every message for bob reaches his device or his queue.
    let mut got = std::collections::HashSet::new();
    while let Some(p) = bob.read_packet(Duration::from_secs(3)) {
        if let ruyi_proto::Packet::Recv(r) = p {
            bob.recvack(&r);
            got.insert(r.message_id);
        }
    }
    let http = c.nodes[c.lead].process.http;
    let missing = neither_received_nor_queued(http, "bob", &for_bob, &got, Duration::from_secs(15));
    assert!(
        missing.is_empty(),
        "{} of {} messages for bob neither received nor queued: {missing:?}",
        missing.len(),
        for_bob.len()
    );
    // And the node serves again.
    let ack = c.nodes[frozen].send("dave", "erin", "after");
    assert_eq!(ack.reason_code, reason::SUCCESS);
}

#[test]
fn nodes_claiming_leases_while_the_bus_is_down_do_not_unseat_the_leader() {
    let Some(pg) = Pg::start() else { return };
    let Some(mut nats) = Nats::start() else {
        return;
    };
    let store = pg.database("claims");
    let (nodes, lead) = cluster_of_three(&store, &nats);
    nats.pause();
    wait_for("NATS seen away", Duration::from_secs(6), || {
        !nodes[lead].view().1
    });
    // Nodes (re)starting while the bus is down for everyone claim their leases, a fresh
    // incarnation each time, and never renew: no sign that anyone still reaches the bus.
    let mut db = postgres::Client::connect(&store, postgres::NoTls).unwrap();
    let until = Instant::now() + Duration::from_secs(12);
    let mut n = 0;
    while Instant::now() < until {
        db.execute(
            "INSERT INTO node_lease (node_id, incarnation, holder, expires_at)
             VALUES (99, 1, 'restarting', now() + interval '6 seconds')
             ON CONFLICT (node_id) DO UPDATE SET incarnation = node_lease.incarnation + 1,
                 expires_at = excluded.expires_at",
            &[],
        )
        .unwrap();
        // The leader keeps serving what needs no other node.
        let ack = nodes[lead].send("alone-a", "alone-b", &format!("c{n}"));
        assert_eq!(
            ack.reason_code,
            reason::SUCCESS,
            "the leader stopped committing after {n} claims"
        );
        n += 1;
        std::thread::sleep(Duration::from_millis(2000));
    }
}
