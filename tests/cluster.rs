//! The cluster as far as it is built (issue 17): node ids leased in PostgreSQL, so two
//! live servers on one database never share one (message ids embed it), and a server
//! restarted on its own data directory takes its lease back at once; membership over a
//! real NATS, with `/route` answering live nodes only, through a kill -9 and a NATS
//! outage.

#![allow(clippy::unwrap_used)]

mod util;

use ruyi_proto::types::{channel_type::PERSON, reason};
use std::time::{Duration, Instant};
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

/// One node of a test cluster: the real binary, on its own data directory and ports.
struct Node {
    id: u16,
    dir: std::path::PathBuf,
    process: RuyiProcess,
}

impl Node {
    fn spawn(store: &str, nats: &Nats, id: u16) -> Node {
        let dir = temp_dir(&format!("node{id}"));
        std::fs::write(dir.join("test-store"), store).unwrap();
        let process = Self::run(&dir, free_addr(), free_addr(), nats, id);
        Node { id, dir, process }
    }

    fn run(
        dir: &std::path::Path,
        tcp: std::net::SocketAddr,
        http: std::net::SocketAddr,
        nats: &Nats,
        id: u16,
    ) -> RuyiProcess {
        RuyiProcess::spawn_with_args(
            dir,
            tcp,
            http,
            &[],
            &["--nats", &nats.url(), "--node-id", &id.to_string()],
        )
    }

    /// kill -9, then the same binary again on the same directory and ports.
    fn restart(&mut self, nats: &Nats) {
        self.process.kill9();
        self.process = Self::run(
            &self.dir,
            self.process.tcp,
            self.process.http,
            nats,
            self.id,
        );
    }

    /// `/cluster/nodes` as this node answers it: the live node ids, and whether NATS is up.
    fn view(&self) -> (Vec<u64>, bool) {
        let (status, text) = http_text(self.process.http, "/cluster/nodes");
        assert_eq!(status, 200, "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let ids = v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["node"].as_u64().unwrap())
            .collect();
        (ids, v["nats_connected"].as_bool().unwrap())
    }

    /// The leader this node names, if any.
    fn leader(&self) -> Option<u64> {
        let (status, text) = http_text(self.process.http, "/cluster/nodes");
        assert_eq!(status, 200, "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["leader"].as_u64()
    }

    /// One person message from `from` to `to` through this node: its SENDACK.
    fn send(&self, from: &str, to: &str, no: &str) -> ruyi_proto::SendackPacket {
        let mut c = Client::ok(self.process.tcp, &Login::new(from, "x"));
        c.send(to, PERSON, b"hello", no);
        c.sendack()
    }

    fn route(&self, uid: &str) -> String {
        let (status, text) = http_text(self.process.http, &format!("/route?uid={uid}"));
        assert_eq!(status, 200, "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["tcp_addr"].as_str().unwrap().to_owned()
    }
}

fn wait_for(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
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
    // kill -9 of the leader: once its lease lapses, one of the others leads, and the
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

/// A private PostgreSQL and NATS, and three nodes on them that agree on a leader.
struct Three {
    nodes: Vec<Node>,
    lead: usize,
    followers: Vec<usize>,
    store: String,
    _nats: Nats,
    _pg: Pg,
}

impl Three {
    fn start(name: &str) -> Option<Three> {
        let pg = Pg::start()?;
        let nats = Nats::start()?;
        let store = pg.database(name);
        let (nodes, lead) = cluster_of_three(&store, &nats);
        let followers = (0..3).filter(|&i| i != lead).collect();
        Some(Three {
            nodes,
            lead,
            followers,
            store,
            _nats: nats,
            _pg: pg,
        })
    }
}

/// Three nodes, all live and agreeing on a leader: (nodes, index of the leader).
fn cluster_of_three(store: &str, nats: &Nats) -> (Vec<Node>, usize) {
    let nodes: Vec<Node> = (1..=3).map(|id| Node::spawn(store, nats, id)).collect();
    let mut leader = None;
    wait_for(
        "three live nodes and one leader",
        Duration::from_secs(10),
        || {
            let named: Vec<_> = nodes.iter().map(Node::leader).collect();
            leader = named[0];
            leader.is_some()
                && named.iter().all(|l| *l == leader)
                && nodes.iter().all(|n| n.view() == (vec![1, 2, 3], true))
        },
    );
    let at = leader.unwrap() as usize - 1;
    (nodes, at)
}

/// Reads `n` RECVs, acknowledging each: (payload, seq) in arrival order.
fn receive(c: &mut Client, n: usize) -> Vec<(String, u32)> {
    (0..n)
        .map(|_| {
            let r = c.recv();
            c.recvack(&r);
            (
                String::from_utf8_lossy(&r.payload).into_owned(),
                r.message_seq,
            )
        })
        .collect()
}

#[test]
fn chat_crosses_nodes_in_seq_order_and_acknowledged_deliveries_leave_the_queue() {
    let Some(pg) = Pg::start() else { return };
    let Some(nats) = Nats::start() else { return };
    let store = pg.database("crossing");
    let (nodes, lead) = cluster_of_three(&store, &nats);
    let (f1, f2) = match lead {
        0 => (1, 2),
        1 => (0, 2),
        _ => (0, 1),
    };
    let tcp = |i: usize| nodes[i].process.tcp;
    // Person chat between two followers: every SEND goes through the leader.
    let mut alice = Client::ok(tcp(f1), &Login::new("alice", "x"));
    let mut bob = Client::ok(tcp(f2), &Login::new("bob", "x"));
    // bob's second device, on the leader itself.
    let mut bob_web = Client::ok(
        tcp(lead),
        &Login {
            device_flag: 2,
            ..Login::new("bob", "x")
        },
    );
    for i in 1..=30u32 {
        alice.send("bob", PERSON, format!("p{i}").as_bytes(), &format!("p{i}"));
        let ack = alice.sendack();
        assert_eq!((ack.reason_code, ack.message_seq), (reason::SUCCESS, i));
    }
    let want: Vec<(String, u32)> = (1..=30).map(|i| (format!("p{i}"), i)).collect();
    assert_eq!(receive(&mut bob, 30), want, "bob on another follower");
    assert_eq!(
        receive(&mut bob_web, 30),
        want,
        "bob's second device, on the leader"
    );
    // A group with members on all three nodes, three senders at once.
    let (status, body) = post(
        nodes[lead].process.http,
        "/channel",
        serde_json::json!({"channel_id": "g", "channel_type": 2,
                           "subscribers": ["alice", "bob", "carol"]}),
    );
    assert_eq!(status, 200, "{body}");
    let carol_node = lead;
    let senders: Vec<_> = [("alice", f1), ("bob", f2), ("carol", carol_node)]
        .into_iter()
        .map(|(uid, at)| {
            let addr = tcp(at);
            std::thread::spawn(move || {
                let mut c = Client::ok(
                    addr,
                    &Login {
                        device_flag: 3,
                        ..Login::new(uid, "x")
                    },
                );
                for i in 0..20 {
                    c.send(
                        "g",
                        2,
                        format!("{uid}-{i}").as_bytes(),
                        &format!("{uid}-g{i}"),
                    );
                    // The others' messages arrive meanwhile on this device too.
                    let ack = loop {
                        match c.read_packet(Duration::from_secs(10)) {
                            Some(ruyi_proto::Packet::Recv(r)) => c.recvack(&r),
                            Some(ruyi_proto::Packet::Sendack(a)) => break a,
                            other => panic!("{uid}: {other:?}"),
                        }
                    };
                    assert_eq!(ack.reason_code, reason::SUCCESS);
                }
            })
        })
        .collect();
    let mut carol = Client::ok(tcp(carol_node), &Login::new("carol", "x"));
    for s in senders {
        s.join().unwrap();
    }
    // Each member's first device gets all 60, in seq order, seqs 1..=60 (carol's device
    // logged in late and syncs instead: not asserted here).
    for (who, c) in [("alice", &mut alice), ("bob", &mut bob)] {
        let got = receive(c, 60);
        let seqs: Vec<u32> = got.iter().map(|g| g.1).collect();
        assert_eq!(seqs, (1..=60).collect::<Vec<_>>(), "{who}'s group RECVs");
        for uid in ["alice", "bob", "carol"] {
            let mine: Vec<&String> = got
                .iter()
                .map(|g| &g.0)
                .filter(|p| p.starts_with(uid))
                .collect();
            let sent: Vec<String> = (0..20).map(|i| format!("{uid}-{i}")).collect();
            assert_eq!(
                mine,
                sent.iter().collect::<Vec<_>>(),
                "{who} sees {uid}'s in order"
            );
        }
    }
    drop(carol.read_packet(Duration::from_millis(10)));
    // alice acknowledged every group message on her follower: nothing of it is left in
    // her queue on the leader (a stored entry her acknowledgement did not mark delivered,
    // or a requeue for a device she still had, would show here). Since the leader plans
    // remote devices as online (`cluster/devices.rs`) most of them are reservations that
    // were never written; the lane path itself is pinned by the flapping test.
    wait_for(
        "alice's queue emptied by her acks",
        Duration::from_secs(10),
        || {
            let (status, v) = post(
                nodes[f2].process.http,
                "/message/sync",
                serde_json::json!({"uid": "alice", "limit": 100}),
            );
            status == 200 && v.as_array().is_some_and(|a| a.is_empty())
        },
    );
}

#[test]
fn the_http_api_on_any_node_changes_what_the_next_send_on_another_may_do() {
    let Some(c) = Three::start("api_any_node") else {
        return;
    };
    let http = |i: usize| c.nodes[i].process.http;
    let group_send = |i: usize, uid: &str, no: &str| {
        let mut c = Client::ok(c.nodes[i].process.tcp, &Login::new(uid, "x"));
        c.send("club", 2, b"hi", no);
        c.sendack().reason_code
    };
    // Created through one follower, joined through the other, used through the leader.
    let (status, body) = post(
        http(c.followers[0]),
        "/channel",
        serde_json::json!({"channel_id": "club", "channel_type": 2, "subscribers": ["ann"]}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        group_send(c.lead, "bo", "b1"),
        reason::SUBSCRIBER_NOT_EXIST,
        "not a member yet"
    );
    let (status, body) = post(
        http(c.followers[1]),
        "/channel/subscriber_add",
        serde_json::json!({"channel_id": "club", "channel_type": 2, "subscribers": ["bo"]}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(group_send(c.followers[0], "bo", "b2"), reason::SUCCESS);
    let (status, body) = post(
        http(c.followers[0]),
        "/channel/subscriber_remove",
        serde_json::json!({"channel_id": "club", "channel_type": 2, "subscribers": ["bo"]}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        group_send(c.followers[1], "bo", "b3"),
        reason::SUBSCRIBER_NOT_EXIST,
        "removed through another node"
    );
    // Reads through any node see the same history.
    for &i in &c.followers {
        let (status, v) = post(
            http(i),
            "/channel/messagesync",
            serde_json::json!({"login_uid": "ann", "channel_id": "club", "channel_type": 2,
                               "limit": 10}),
        );
        assert_eq!(status, 200);
        assert_eq!(v["messages"].as_array().map(Vec::len), Some(1), "{v}");
    }
}

#[test]
fn presence_and_device_quit_see_every_nodes_devices() {
    let Some(c) = Three::start("presence") else {
        return;
    };
    let device = |i: usize, flag: u8| {
        Client::ok(
            c.nodes[i].process.tcp,
            &Login {
                device_flag: flag,
                ..Login::new("pat", "x")
            },
        )
    };
    let _app = device(c.lead, 0);
    let _web = device(c.followers[0], 1);
    let mut pc = device(c.followers[1], 2);
    let online = |i: usize| {
        let (status, v) = post(
            c.nodes[i].process.http,
            "/user/onlinestatus",
            serde_json::json!(["pat", "nobody"]),
        );
        assert_eq!(status, 200, "{v}");
        let mut flags: Vec<u64> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                assert_eq!(d["uid"], "pat");
                d["device_flag"].as_u64().unwrap()
            })
            .collect();
        flags.sort_unstable();
        flags
    };
    for i in 0..3 {
        assert_eq!(online(i), vec![0, 1, 2], "as node {} sees it", i + 1);
    }
    // Quit through a follower: the device on the other follower hears DISCONNECT 12.
    let (status, v) = post(
        c.nodes[c.followers[0]].process.http,
        "/user/device_quit",
        serde_json::json!({"uid": "pat", "device_flag": 2}),
    );
    assert_eq!(status, 200, "{v}");
    match pc.read_packet(Duration::from_secs(5)) {
        Some(ruyi_proto::Packet::Disconnect(d)) => {
            assert_eq!(d.reason_code, reason::CONNECT_KICK);
        }
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
    assert!(pc.closed_within(Duration::from_secs(5)));
    wait_for(
        "the quit device gone everywhere",
        Duration::from_secs(5),
        || (0..3).all(|i| online(i) == vec![0, 1]),
    );
}

#[test]
fn large_messages_cross_nodes_whole_and_in_order() {
    let Some(c) = Three::start("large") else {
        return;
    };
    let mut big = Client::ok(c.nodes[c.lead].process.tcp, &Login::new("big", "x"));
    let mut far = Client::ok(c.nodes[c.followers[0]].process.tcp, &Login::new("far", "x"));
    // Pipelined, so they commit together: more than NATS takes in one message (1 MiB).
    let bodies: Vec<Vec<u8>> = (0..6u8).map(|i| vec![b'a' + i; 300_000]).collect();
    for (i, body) in bodies.iter().enumerate() {
        big.send("far", PERSON, body, &format!("big-{i}"));
    }
    for _ in &bodies {
        assert_eq!(big.sendack().reason_code, reason::SUCCESS);
    }
    for (i, body) in bodies.iter().enumerate() {
        let r = far.recv();
        assert_eq!(r.message_seq, i as u32 + 1);
        assert!(r.payload[..] == body[..], "message {i} arrived changed");
        far.recvack(&r);
    }
    let (_, varz) = http_text(c.nodes[c.followers[0]].process.http, "/varz");
    let v: serde_json::Value = serde_json::from_str(&varz).unwrap();
    assert_eq!(v["ruyi_cluster"]["delivery_gaps"], 0, "{v}");
}

#[test]
fn a_login_on_one_node_replaces_the_same_device_on_another() {
    let Some(c) = Three::start("relogin") else {
        return;
    };
    let tcp = |i: usize| c.nodes[i].process.tcp;
    let mut first = Client::ok(tcp(c.followers[0]), &Login::new("kim", "x"));
    // The same device (flag and id) logs in again through another node: the older
    // connection goes, silently (PROTOCOL.md §6.4).
    let mut second = Client::ok(tcp(c.followers[1]), &Login::new("kim", "x"));
    assert!(
        first.closed_within(Duration::from_secs(8)),
        "the replaced login on the other node stayed open"
    );
    // A slave with another device id keeps the others, wherever they are.
    let _third = Client::ok(
        tcp(c.lead),
        &Login {
            device_id: "tablet",
            ..Login::new("kim", "x")
        },
    );
    assert!(
        second.read_packet(Duration::from_secs(3)).is_none(),
        "a slave login elsewhere closed an older device"
    );
    assert!(!second.closed_within(Duration::from_millis(10)));
}

/// What one sender saw acknowledged: (client_msg_no, seq, message id).
type Acks = Vec<(String, u32, i64)>;

/// Sends `{uid}-{n}` for n = 0, 1, … to `to` until `stop`, each resent (same number, as an
/// SDK does) until SUCCESS, reconnecting to `addr` whenever the connection fails.
fn stubborn_sender(
    addr: std::net::SocketAddr,
    uid: String,
    to: String,
    channel_type: u8,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Acks {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    let mut acks = Vec::new();
    let mut client: Option<Client> = None;
    let mut n = 0;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let no = format!("{uid}-{n}");
        let attempt = catch_unwind(AssertUnwindSafe(|| {
            let c = client.get_or_insert_with(|| Client::ok(addr, &Login::new(&uid, "x")));
            c.send(&to, channel_type, no.as_bytes(), &no);
            loop {
                match c.read_packet(Duration::from_secs(10)) {
                    Some(ruyi_proto::Packet::Recv(r)) => c.recvack(&r),
                    Some(ruyi_proto::Packet::Sendack(a)) => break Some(a),
                    _ => break None,
                }
            }
        }));
        match attempt {
            Ok(Some(ack)) if ack.reason_code == reason::SUCCESS => {
                acks.push((no, ack.message_seq, ack.message_id));
                n += 1;
            }
            Ok(Some(_)) => std::thread::sleep(Duration::from_millis(100)),
            Ok(None) | Err(_) => {
                client = None; // closed (a resync, a dead node): log in again
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    acks
}

#[test]
fn kill_9_of_the_leader_under_load_loses_and_duplicates_nothing_acknowledged() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let Some(mut c) = Three::start("failover") else {
        return;
    };
    let (status, _) = post(
        c.nodes[c.lead].process.http,
        "/channel",
        serde_json::json!({"channel_id": "kg", "channel_type": 2,
                           "subscribers": ["g0", "g1", "watcher"]}),
    );
    assert_eq!(status, 200);
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    for (i, &node) in c.followers.iter().enumerate() {
        let addr = c.nodes[node].process.tcp;
        for (uid, to, kind) in [
            (format!("p{i}"), format!("q{i}"), PERSON),
            (format!("g{i}"), "kg".to_owned(), 2),
        ] {
            let stop = std::sync::Arc::clone(&stop);
            senders.push(std::thread::spawn(move || {
                stubborn_sender(addr, uid, to, kind, stop)
            }));
        }
    }
    std::thread::sleep(Duration::from_millis(1500));
    let dead = c.lead;
    c.nodes[dead].process.kill9();
    wait_for("a new leader", Duration::from_secs(25), || {
        c.followers
            .iter()
            .all(|&i| c.nodes[i].leader().is_some_and(|l| l as usize - 1 != dead))
    });
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    let acks: Vec<Acks> = senders.into_iter().map(|s| s.join().unwrap()).collect();
    eprintln!(
        "acknowledged per sender: {:?}",
        acks.iter().map(Vec::len).collect::<Vec<_>>()
    );
    assert!(
        acks.iter().all(|a| a.len() > 3),
        "too little went through: {acks:?}"
    );
    // Every acknowledged message is stored once, at the seq and id its SENDACK said, and
    // each channel's seqs are dense.
    let mut db = postgres::Client::connect(&c.store, postgres::NoTls).unwrap();
    let rows = db
        .query(
            "SELECT c.channel_id, m.seq, m.message_id, m.client_msg_no
             FROM messages m JOIN channels c ON c.id = m.channel ORDER BY c.channel_id, m.seq",
            &[],
        )
        .unwrap();
    let mut stored: std::collections::HashMap<String, (u32, i64)> = Default::default();
    let mut seqs: std::collections::HashMap<String, Vec<i64>> = Default::default();
    for r in &rows {
        let (channel, seq, id, no): (String, i64, i64, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        assert!(
            stored.insert(no.clone(), (seq as u32, id)).is_none(),
            "{no} stored twice"
        );
        seqs.entry(channel).or_default().push(seq);
    }
    for (channel, s) in &seqs {
        assert_eq!(
            s,
            &(1..=s.len() as i64).collect::<Vec<_>>(),
            "{channel}'s seqs"
        );
    }
    for (no, seq, id) in acks.iter().flatten() {
        assert_eq!(stored.get(no), Some(&(*seq, *id)), "{no} as acknowledged");
    }
}

#[test]
fn a_recipient_flapping_on_another_node_gets_every_message_acknowledged_or_queued() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let Some(c) = Three::start("flapping") else {
        return;
    };
    let (sender_node, flap_node) = (c.followers[0], c.followers[1]);
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    // bob's device on another follower comes and goes: it reads for a moment, acknowledges
    // some RECVs, then drops the connection without acknowledging the rest.
    let flapper = {
        let (stop, addr) = (std::sync::Arc::clone(&stop), c.nodes[flap_node].process.tcp);
        std::thread::spawn(move || {
            let mut acked = std::collections::HashSet::new();
            let mut round = 0u64;
            while !stop.load(Ordering::Relaxed) {
                round += 1;
                let mut bob = Client::ok(addr, &Login::new("bob", "x"));
                let until = Instant::now() + Duration::from_millis(5 + round * 7 % 40);
                while let Some(p) = bob.read_packet(until.saturating_duration_since(Instant::now()))
                {
                    if let ruyi_proto::Packet::Recv(r) = p {
                        if r.message_id % 2 == 0 {
                            bob.recvack(&r);
                            acked.insert(r.message_id);
                        }
                    }
                }
                drop(bob);
                std::thread::sleep(Duration::from_millis(round * 3 % 20));
            }
            acked
        })
    };
    let mut alice = Client::ok(c.nodes[sender_node].process.tcp, &Login::new("alice", "x"));
    let mut sent = Vec::new();
    for i in 0..200 {
        alice.send("bob", PERSON, format!("m{i}").as_bytes(), &format!("m{i}"));
        let ack = alice.sendack();
        assert_eq!(ack.reason_code, reason::SUCCESS);
        sent.push(ack.message_id);
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    let acked = flapper.join().unwrap();
    // Every message reached one of bob's devices, which acknowledged it, or waits in his
    // queue; requeues from the flapping node may take a resend or two to arrive.
    let http = c.nodes[c.lead].process.http;
    let queued = || -> std::collections::HashSet<i64> {
        let (status, v) = post(
            http,
            "/message/sync",
            serde_json::json!({"uid": "bob", "limit": 1000}),
        );
        assert_eq!(status, 200, "{v}");
        v.as_array()
            .unwrap()
            .iter()
            .map(|m| m["message_id"].as_i64().unwrap())
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let missing = loop {
        let q = queued();
        let missing: Vec<i64> = sent
            .iter()
            .filter(|id| !acked.contains(id) && !q.contains(id))
            .copied()
            .collect();
        if missing.is_empty() || Instant::now() > deadline {
            break missing;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        missing.is_empty(),
        "{} of {} messages neither acknowledged nor queued: {missing:?}",
        missing.len(),
        sent.len()
    );
}

#[test]
fn messages_for_a_node_killed_before_it_delivered_them_reach_the_queue() {
    let Some(mut c) = Three::start("pledges") else {
        return;
    };
    let (sender_node, doomed) = (c.followers[0], c.followers[1]);
    let _bob = Client::ok(c.nodes[doomed].process.tcp, &Login::new("bob", "x"));
    // The leader hears of bob's device there, then the node dies with it; for the next
    // seconds the leader still counts the node live and reserves bob's seqs for it.
    std::thread::sleep(Duration::from_millis(500));
    c.nodes[doomed].process.kill9();
    let mut alice = Client::ok(c.nodes[sender_node].process.tcp, &Login::new("alice", "x"));
    let mut sent = Vec::new();
    for i in 0..20 {
        alice.send("bob", PERSON, format!("k{i}").as_bytes(), &format!("k{i}"));
        let ack = alice.sendack();
        assert_eq!(ack.reason_code, reason::SUCCESS);
        sent.push(ack.message_id);
    }
    let http = c.nodes[c.lead].process.http;
    wait_for(
        "every message in bob's queue",
        Duration::from_secs(15),
        || {
            let (status, v) = post(
                http,
                "/message/sync",
                serde_json::json!({"uid": "bob", "limit": 100}),
            );
            let queued: Vec<i64> = v
                .as_array()
                .map(|a| a.iter().filter_map(|m| m["message_id"].as_i64()).collect())
                .unwrap_or_default();
            status == 200 && sent.iter().all(|id| queued.contains(id))
        },
    );
}
