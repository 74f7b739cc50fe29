//! Messages a device leaves unacknowledged while the user's other devices, or the server's
//! graceful stop, go on: each is queued, none twice.

use super::*;

#[test]
fn a_message_one_device_gave_up_is_queued_while_another_device_lives() {
    // Two devices of bob, neither acknowledging; their retry lists overflow. The one
    // that stays connected must not keep the other's evictions out of the queue, nor the
    // other's its own.
    let server = start("two-evict", |c| {
        c.max_sends_per_sec = 0;
        c.max_pending_acks = 4;
    });
    register(&server, "alice", "t", 1, 0);
    register(&server, "bob", "t", 1, 0);
    register(&server, "bob", "t", 2, 0);
    let mut alice = Client::ok(server.tcp_addr(), &Login::new("alice", "t"));
    let mut web = Client::ok(server.tcp_addr(), &Login::new("bob", "t"));
    let pc_login = Login {
        device_flag: 2,
        device_id: "pc",
        ..Login::new("bob", "t")
    };
    let mut pc = Client::ok(server.tcp_addr(), &pc_login);
    let sent: Vec<String> = (0..10).map(|i| format!("e{i}")).collect();
    for no in &sent {
        alice.send("bob", PERSON, b"{}", no);
        alice.sendack();
        web.recv();
        pc.recv();
    }
    drop(pc);
    // web is still connected; the six it pushed out of its retry list must be queued.
    let list = queue_of_at_least(server.http_addr(), "bob", 6);
    assert_eq!(
        client_msg_nos(&list),
        sent[..6],
        "evictions kept out of the queue"
    );
    drop(web);
    let list = queue_of_at_least(server.http_addr(), "bob", 10);
    assert_eq!(client_msg_nos(&list), sent);
    assert_channel_order_and_no_duplicates(&list);
}

#[test]
fn a_graceful_stop_queues_what_devices_had_not_acknowledged() {
    // Reservations live in memory: a clean stop must turn every unacknowledged RECV into
    // a queue entry before storage stops.
    let mut config = test_config("stop-queue");
    config.max_sends_per_sec = 0;
    let server = ruyi::Server::start(config.clone()).expect("starts");
    register(&server, "alice", "t", 1, 0);
    register(&server, "bob", "t", 1, 0);
    let mut alice = Client::ok(server.tcp_addr(), &Login::new("alice", "t"));
    let mut bob = Client::ok(server.tcp_addr(), &Login::new("bob", "t"));
    let sent: Vec<String> = (0..20).map(|i| format!("s{i}")).collect();
    for no in &sent {
        alice.send("bob", PERSON, b"{}", no);
        assert_eq!(alice.sendack().reason_code, reason::SUCCESS);
        bob.recv(); // never acknowledged
    }
    server.stop();
    drop(bob);
    let server = ruyi::Server::start(config).expect("restarts");
    let list = queue(server.http_addr(), "bob");
    assert_eq!(client_msg_nos(&list), sent);
}

#[test]
fn a_drained_device_that_acknowledged_gets_nothing_twice_and_loses_nothing() {
    // Issue 15 item 9 with the review's finding: the drain closes connections while
    // messages flow. What bob acknowledged must not come back from his queue after the
    // restart; what alice had acknowledged must be at bob or in his queue.
    let mut config = test_config("drain-acks");
    config.max_sends_per_sec = 0;
    config.shutdown_drain = Duration::from_millis(400);
    let server = ruyi::Server::start(config.clone()).expect("starts");
    register(&server, "alice", "t", 1, 0);
    register(&server, "bob", "t", 1, 0);
    let tcp = server.tcp_addr();
    let mut bob = Client::ok(tcp, &Login::new("bob", "t"));
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        while let Some(p) = bob.read_packet(Duration::from_secs(5)) {
            if let Packet::Recv(r) = p {
                got.push(bob.open(r.clone()).client_msg_no.clone());
                if !bob.try_recvack(&r) {
                    break;
                }
            }
        }
        got
    });
    let sender = std::thread::spawn(move || {
        let mut alice = Client::ok(tcp, &Login::new("alice", "t"));
        let mut acked = Vec::new();
        for i in 0.. {
            let no = format!("d{i}");
            alice.send("bob", PERSON, b"{}", &no);
            match alice.read_packet(Duration::from_secs(5)) {
                Some(Packet::Sendack(a)) if a.reason_code == reason::SUCCESS => acked.push(no),
                _ => break,
            }
        }
        acked
    });
    std::thread::sleep(Duration::from_millis(300));
    server.stop();
    let got = reader.join().expect("reader");
    let acked = sender.join().expect("sender");
    assert!(acked.len() > 10, "only {} sent", acked.len());
    let server = ruyi::Server::start(config).expect("restarts");
    let queued = client_msg_nos(&queue(server.http_addr(), "bob"));
    let twice: Vec<&String> = queued.iter().filter(|no| got.contains(no)).collect();
    assert!(
        twice.is_empty(),
        "{} acknowledged messages came back from the queue: {twice:?}",
        twice.len()
    );
    for no in &acked {
        assert!(
            got.contains(no) || queued.contains(no),
            "{no} was acknowledged to alice and reached bob neither way"
        );
    }
}
