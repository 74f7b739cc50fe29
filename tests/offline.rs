//! The offline path loses nothing (HTTP_API.md §7, RELIABILITY.md "Offline queue"): one
//! test per way a review found to lose or hide an acknowledged message, each over real
//! sockets and the HTTP API against an in-process server.

mod util;

use ruyi_proto::types::{channel_type::PERSON, reason};
use ruyi_proto::{Flags, Packet};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use util::metrics::counter;
use util::*;

#[path = "offline/devices.rs"]
mod devices;

/// The user's whole queue as `/message/sync` returns it (the cursor is not moved).
fn client_msg_nos(list: &[Value]) -> Vec<String> {
    list.iter()
        .map(|m| {
            m["client_msg_no"]
                .as_str()
                .expect("client_msg_no")
                .to_owned()
        })
        .collect()
}

/// Polls the queue until it holds `n` entries (or more), for at most 10 s.
fn queue_of_at_least(http: SocketAddr, uid: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list = queue(http, uid);
        if list.len() >= n || Instant::now() > deadline {
            return list;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Asserts the queue is in channel order: per channel, `channel_message_seq` rises with
/// the queue's own `message_seq`; and that no message is in it twice.
fn assert_channel_order_and_no_duplicates(list: &[Value]) {
    assert_eq!(
        channel_order_breaks(list),
        0,
        "queue out of channel order: {list:?}"
    );
}

/// Asserts no message is in the queue twice and returns how many entries come after a
/// later seq of their channel.
fn channel_order_breaks(list: &[Value]) -> usize {
    let mut breaks = 0;
    let mut last: HashMap<(String, u64), u64> = HashMap::new();
    let mut ids = std::collections::HashSet::new();
    let mut prev_user_seq = 0;
    for m in list {
        let user_seq = m["message_seq"].as_u64().expect("message_seq");
        assert!(
            user_seq > prev_user_seq,
            "queue seqs not ascending: {list:?}"
        );
        prev_user_seq = user_seq;
        assert!(
            ids.insert(m["message_id"].as_i64()),
            "twice in the queue: {m}"
        );
        let channel = (
            m["channel_id"].as_str().unwrap_or_default().to_owned(),
            m["channel_type"].as_u64().unwrap_or_default(),
        );
        let seq = m["channel_message_seq"].as_u64().expect("channel seq");
        if last.get(&channel).is_some_and(|&before| seq < before) {
            breaks += 1;
        } else {
            last.insert(channel, seq);
        }
    }
    breaks
}

fn app_master<'a>(uid: &'a str) -> Login<'a> {
    Login {
        device_flag: 0,
        ..Login::new(uid, "t")
    }
}

#[test]
fn item1_a_master_ack_of_a_sync_once_message_keeps_unsynced_entries() {
    let server = start("sync-once-ack", |c| c.max_sends_per_sec = 0);
    register(&server, "alice", "t", 1, 0);
    register(&server, "bob", "t", 0, 1); // APP, master
    let mut alice = Client::ok(server.tcp_addr(), &Login::new("alice", "t"));
    for i in 0..3 {
        alice.send("bob", PERSON, b"{\"type\":1}", &format!("off{i}"));
        assert_eq!(alice.sendack().reason_code, reason::SUCCESS);
    }
    let mut bob = Client::ok(server.tcp_addr(), &app_master("bob"));
    alice.send_with(
        100,
        "bob",
        PERSON,
        b"{\"type\":1000}",
        "cmd",
        Flags(Flags::SYNC_ONCE),
    );
    assert_eq!(alice.sendack().reason_code, reason::SUCCESS);
    let cmd = bob.recv();
    assert_eq!(cmd.client_msg_no, "cmd");
    assert_eq!(cmd.message_seq, 4, "a SyncOnce RECV carries the queue seq");
    bob.recvack(&cmd);
    std::thread::sleep(Duration::from_millis(300)); // the ack reaches storage
    let list = queue(server.http_addr(), "bob");
    assert_eq!(
        client_msg_nos(&list),
        ["off0", "off1", "off2"],
        "the ack hid unsynced entries, or the acknowledged command came back"
    );
    // Once those are acknowledged too, the cursor crosses the delivered command.
    let (status, _) = post(
        server.http_addr(),
        "/message/syncack",
        json!({"uid": "bob", "last_message_seq": 3}),
    );
    assert_eq!(status, 200);
    assert!(queue(server.http_addr(), "bob").is_empty());
}

#[test]
fn item2_recvs_past_the_retry_list_caps_go_to_the_queue() {
    let server = start("evict", |c| c.max_sends_per_sec = 0);
    register(&server, "alice", "t", 1, 0);
    register(&server, "bob", "t", 1, 0);
    let mut alice = Client::ok(server.tcp_addr(), &Login::new("alice", "t"));
    let mut bob = Client::ok(server.tcp_addr(), &Login::new("bob", "t"));
    // 300 small RECVs against the count cap (256), then large ones against the 1 MiB cap.
    let big = vec![b'x'; 700 << 10];
    let mut sent = Vec::new();
    for i in 0..306 {
        let no = format!("m{i:03}");
        let payload: &[u8] = if (300..303).contains(&i) { &big } else { b"{}" };
        alice.send("bob", PERSON, payload, &no);
        assert_eq!(alice.sendack().reason_code, reason::SUCCESS, "{no}");
        let r = bob.recv(); // read, never acknowledged
        assert_eq!(r.client_msg_no, no);
        sent.push(no);
    }
    drop(bob);
    let list = drain(server.http_addr(), "bob", sent.len());
    assert_eq!(
        client_msg_nos(&list),
        sent,
        "a RECV left the retry list and vanished"
    );
    assert_channel_order_and_no_duplicates(&list);
}

#[test]
fn item3_a_replaced_login_hands_its_unacked_recvs_to_the_queue() {
    let server = start("replaced", |c| c.max_sends_per_sec = 0);
    register(&server, "alice", "t", 1, 0);
    register(&server, "bob", "t", 1, 0);
    let mut alice = Client::ok(server.tcp_addr(), &Login::new("alice", "t"));
    let mut old = Client::ok(server.tcp_addr(), &Login::new("bob", "t"));
    for i in 0..3 {
        alice.send("bob", PERSON, b"{}", &format!("r{i}"));
        alice.sendack();
        old.recv(); // never acknowledged
    }
    // The same device logs in again: the old connection is replaced (kicked silently).
    let mut new = Client::ok(server.tcp_addr(), &Login::new("bob", "t"));
    assert!(old.closed_within(Duration::from_secs(5)), "old login kept");
    let list = queue_of_at_least(server.http_addr(), "bob", 3);
    assert_eq!(client_msg_nos(&list), ["r0", "r1", "r2"]);
    // What comes after the new login goes to the new connection, not the queue.
    alice.send("bob", PERSON, b"{}", "after");
    alice.sendack();
    let r = new.recv();
    assert_eq!(r.client_msg_no, "after");
    new.recvack(&r);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(queue(server.http_addr(), "bob").len(), 3);
}

#[test]
fn item4_churn_leaves_a_complete_queue_in_channel_order() {
    // bob connects, reads without acknowledging, and leaves, 40 times, while alice sends
    // to him without pause from two chats: every acknowledged message must end up in his
    // queue exactly once, in each channel's order.
    let server = start("queue-churn", |c| c.max_sends_per_sec = 0);
    for uid in ["alice", "carol", "bob"] {
        register(&server, uid, "t", 1, 0);
    }
    let tcp = server.tcp_addr();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let senders: Vec<_> = ["alice", "carol"]
        .into_iter()
        .map(|uid| {
            let stop = std::sync::Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut c = Client::ok(tcp, &Login::new(uid, "t"));
                let mut acked = Vec::new();
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && i < 400 {
                    let no = format!("{uid}-{i}");
                    c.send("bob", PERSON, b"{}", &no);
                    assert_eq!(c.sendack().reason_code, reason::SUCCESS);
                    acked.push(no);
                    i += 1;
                }
                acked
            })
        })
        .collect();
    for _ in 0..40 {
        let mut bob = Client::ok(tcp, &Login::new("bob", "t"));
        let until = Instant::now() + Duration::from_millis(20);
        while Instant::now() < until {
            if bob.read_packet(Duration::from_millis(5)).is_none() {
                continue;
            }
        }
        drop(bob);
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acked: Vec<String> = senders
        .into_iter()
        .flat_map(|t| t.join().expect("sender"))
        .collect();
    assert!(acked.len() > 100, "only {} sent", acked.len());
    // No sync has shown bob's queue, so every miss goes back at its reserved seq, also
    // below entries stored after it (storage/exposure.rs). The first sync waits until the
    // last connection's misses are written: one read showing the queue early would send
    // later misses to the end, by design.
    let requeued = || counter(server.http_addr(), "ruyi_offline_requeued_total");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = requeued();
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = requeued();
        if now == seen || Instant::now() > deadline {
            break;
        }
        seen = now;
    }
    let list = queue_of_at_least(server.http_addr(), "bob", acked.len());
    assert_eq!(
        counter(server.http_addr(), "ruyi_offline_requeued_late_total"),
        0,
        "a miss went to the end of the queue"
    );
    assert_channel_order_and_no_duplicates(&list);
    let mut queued = client_msg_nos(&list);
    queued.sort();
    acked.sort();
    assert_eq!(
        queued, acked,
        "the queue is not exactly what was acknowledged"
    );
}

#[test]
fn a_miss_never_goes_below_a_seq_a_live_command_showed() {
    // bob's phone holds m unacknowledged; his web client logs in after m was pushed (so it
    // does not hold m) and gets a command live, whose RECV carries bob's per-user seq; the
    // phone goes. m must not be written below that seq: the web client may syncack it
    // (HTTP_API.md §7) and would delete m unseen.
    let server = start("shown-by-recv", |c| c.max_sends_per_sec = 0);
    let http = server.http_addr();
    register(&server, "alice", "t", 1, 0);
    register(&server, "bob", "t", 1, 0);
    register(&server, "bob", "w", 2, 0);
    let mut alice = Client::ok(server.tcp_addr(), &Login::new("alice", "t"));
    let mut phone = Client::ok(server.tcp_addr(), &Login::new("bob", "t"));
    alice.send("bob", PERSON, b"{}", "m");
    alice.sendack();
    assert_eq!(phone.recv().client_msg_no, "m"); // never acknowledged
    let web_login = Login {
        device_flag: 2,
        ..Login::new("bob", "w")
    };
    let mut web = Client::ok(server.tcp_addr(), &web_login);
    let cmd = json!({"header": {"sync_once": 1}, "from_uid": "app", "subscribers": ["bob"], "payload": b64(b"{\"cmd\":1}")});
    assert_eq!(post(http, "/message/send", cmd).0, 200);
    let live = web.recv();
    drop(phone);
    let deadline = Instant::now() + Duration::from_secs(5);
    while counter(http, "ruyi_offline_requeued_total") == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let ack = json!({"uid": "bob", "last_message_seq": live.message_seq});
    assert_eq!(post(http, "/message/syncack", ack).0, 200);
    let left = client_msg_nos(&queue(http, "bob"));
    assert_eq!(
        left,
        vec!["m".to_owned()],
        "m was lost behind the acked seq"
    );
}

#[test]
fn misses_keep_their_order_when_the_first_goes_to_the_end() {
    // The phone holds m0 and m1 (one chat) unacknowledged, and a command between them
    // whose RECV showed its seq. m0's seq is below it, so m0 goes to the end; m1's is
    // above it, but m1 must not go back in place ahead of m0.
    let server = start("late-sticks", |c| c.max_sends_per_sec = 0);
    let http = server.http_addr();
    register(&server, "alice", "t", 1, 0);
    register(&server, "bob", "t", 1, 0);
    let mut alice = Client::ok(server.tcp_addr(), &Login::new("alice", "t"));
    let mut phone = Client::ok(server.tcp_addr(), &Login::new("bob", "t"));
    alice.send("bob", PERSON, b"{}", "m0");
    alice.sendack();
    let cmd = json!({"header": {"sync_once": 1}, "from_uid": "app", "subscribers": ["bob"], "payload": b64(b"{\"cmd\":1}")});
    assert_eq!(post(http, "/message/send", cmd).0, 200);
    alice.send("bob", PERSON, b"{}", "m1");
    alice.sendack();
    for _ in 0..3 {
        phone.recv(); // none acknowledged
    }
    drop(phone);
    let deadline = Instant::now() + Duration::from_secs(5);
    while counter(http, "ruyi_offline_requeued_total") < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let list = queue(http, "bob");
    assert_eq!(list.len(), 3, "{list:?}");
    assert_channel_order_and_no_duplicates(&list);
}

#[test]
fn item5_a_syncack_past_every_issued_seq_is_clamped() {
    let server = start("syncack-max", |_| {});
    register(&server, "alice", "t", 1, 0);
    let mut alice = Client::ok(server.tcp_addr(), &Login::new("alice", "t"));
    alice.send("bob", PERSON, b"{}", "one");
    alice.sendack();
    let (status, body) = post(
        server.http_addr(),
        "/message/syncack",
        json!({"uid": "bob", "last_message_seq": 4294967295u64}),
    );
    assert_eq!((status, body), (200, json!({"status": 200})));
    assert!(queue(server.http_addr(), "bob").is_empty());
    alice.send("bob", PERSON, b"{}", "two");
    alice.sendack();
    let list = queue_of_at_least(server.http_addr(), "bob", 1);
    assert_eq!(
        client_msg_nos(&list),
        ["two"],
        "a new entry must stay visible"
    );
    assert_eq!(list[0]["message_seq"], 2);
    // Out of range for the wire's u32: a clear 400, nothing moved.
    let (status, _) = post(
        server.http_addr(),
        "/message/syncack",
        json!({"uid": "bob", "last_message_seq": 4294967296u64}),
    );
    assert_eq!(status, 400);
}

#[test]
fn item6_history_of_large_messages_can_always_be_paged_through() {
    let server = start("big-history", |c| c.max_sends_per_sec = 0);
    register(&server, "alice", "t", 1, 0);
    let mut alice = Client::ok(server.tcp_addr(), &Login::new("alice", "t"));
    let big = vec![b'y'; 700 << 10];
    for i in 0..7 {
        alice.send("bob", PERSON, &big, &format!("big{i}"));
        assert_eq!(alice.sendack().reason_code, reason::SUCCESS);
    }
    let http = server.http_addr();
    let mut seen = Vec::new();
    let mut start_seq = 1;
    for _ in 0..10 {
        let (status, page) = post(
            http,
            "/channel/messagesync",
            json!({"login_uid": "alice", "channel_id": "bob", "channel_type": PERSON,
                   "start_message_seq": start_seq, "end_message_seq": 0, "limit": 20, "pull_mode": 1}),
        );
        assert_eq!(status, 200, "{page}");
        let messages = page["messages"].as_array().expect("messages");
        assert!(!messages.is_empty(), "a page with nothing in it");
        for m in messages {
            seen.push(m["message_seq"].as_u64().expect("seq"));
        }
        start_seq = seen.last().copied().unwrap_or(0) + 1;
        if page["more"] == 0 {
            break;
        }
    }
    assert_eq!(seen, (1..=7).collect::<Vec<u64>>());
    // The offline queue pages the same way.
    let (status, list) = post(http, "/message/sync", json!({"uid": "bob", "limit": 20}));
    assert_eq!(status, 200);
    let n = list.as_array().expect("array").len();
    assert!((1..7).contains(&n), "{n} entries of 700 KB in one answer");
}

#[test]
fn item8_a_device_that_logs_in_while_a_message_commits_gets_it() {
    // A long commit interval holds the message between its send and its commit; bob logs
    // in and syncs inside that window. He must get it live or from that first sync.
    let server = start("plan-commit", |c| {
        c.max_sends_per_sec = 0;
        c.commit_interval = Duration::from_millis(100);
    });
    register(&server, "alice", "t", 1, 0);
    register(&server, "bob", "t", 1, 0);
    let mut alice = Client::ok(server.tcp_addr(), &Login::new("alice", "t"));
    for round in 0..5 {
        alice.send("bob", PERSON, b"{}", &format!("warm{round}"));
        alice.sendack(); // a commit just started: the next one waits ~100 ms
        let no = format!("window{round}");
        alice.send("bob", PERSON, b"{}", &no);
        let mut bob = Client::ok(server.tcp_addr(), &Login::new("bob", "t"));
        let in_sync = client_msg_nos(&queue(server.http_addr(), "bob")).contains(&no);
        alice.sendack();
        let mut live = false;
        while let Some(p) = bob.read_packet(Duration::from_millis(500)) {
            if let Packet::Recv(r) = p {
                live |= r.client_msg_no == no;
                bob.recvack(&r);
            }
        }
        assert!(
            live || in_sync,
            "round {round}: neither live nor in the first sync"
        );
        drop(bob);
        post(
            server.http_addr(),
            "/message/syncack",
            json!({"uid": "bob", "last_message_seq": 1_000_000}),
        );
    }
}

#[test]
fn the_queue_of_one_user_is_bounded_and_says_so() {
    let server = start("queue-bound", |c| {
        c.max_sends_per_sec = 0;
        c.offline_queue_max_per_user = 100;
    });
    register(&server, "alice", "t", 1, 0);
    let mut alice = Client::ok(server.tcp_addr(), &Login::new("alice", "t"));
    for i in 0..300 {
        alice.send("bob", PERSON, b"{}", &format!("b{i:03}"));
        alice.sendack();
    }
    let list = queue(server.http_addr(), "bob");
    assert!(
        (100..=100 + 64).contains(&list.len()),
        "{} entries for a bound of 100",
        list.len()
    );
    assert_eq!(
        list.last().map(|m| m["client_msg_no"].clone()),
        Some(json!("b299"))
    );
    assert_channel_order_and_no_duplicates(&list);
    let (_, text) = http_text(server.http_addr(), "/metrics");
    assert!(
        text.lines()
            .any(|l| l.starts_with("ruyi_offline_trimmed_total ") && !l.ends_with(" 0")),
        "trimming is not counted"
    );
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[test]
fn a_syncack_of_what_was_read_never_deletes_an_entry_written_behind_it() {
    // bob's device gets m live (a seq is reserved for it) and never acknowledges it; a
    // command is then stored for him at a higher seq. A new login of the same device reads
    // the command and acknowledges it; the old connection's m must not be written below
    // that acknowledgement and deleted unseen.
    let server = start("behind", |c| c.max_sends_per_sec = 0);
    let http = server.http_addr();
    register(&server, "alice", "t", 1, 0);
    register(&server, "bob", "t", 1, 0);
    let mut alice = Client::ok(server.tcp_addr(), &Login::new("alice", "t"));
    let mut old = Client::ok(server.tcp_addr(), &Login::new("bob", "t"));
    alice.send("bob", PERSON, b"{}", "m");
    alice.sendack();
    assert_eq!(old.recv().client_msg_no, "m"); // never acknowledged
    let cmd = json!({"header": {"sync_once": 1}, "from_uid": "app", "subscribers": ["bob"], "payload": b64(b"{\"cmd\":1}")});
    assert_eq!(post(http, "/message/send", cmd).0, 200);
    let _new = Client::ok(server.tcp_addr(), &Login::new("bob", "t"));
    let read = queue_of_at_least(http, "bob", 1);
    assert!(old.closed_within(Duration::from_secs(5)), "old login kept");
    std::thread::sleep(Duration::from_millis(300)); // the old connection's miss is queued
    let last = read.last().map(|m| m["message_seq"].clone());
    assert_eq!(
        post(
            http,
            "/message/syncack",
            json!({"uid": "bob", "last_message_seq": last})
        )
        .0,
        200
    );
    let mut seen = client_msg_nos(&read);
    seen.extend(client_msg_nos(&queue(http, "bob")));
    assert!(
        seen.contains(&"m".to_owned()),
        "m was never offered: {seen:?}"
    );
}

#[test]
fn command_entries_outlive_the_per_user_bound() {
    // Commands live only in the queue (their channel is no conversation), so the bound
    // that a flood of ordinary messages triggers must not take them.
    let server = start("keep-cmd", |c| {
        c.max_sends_per_sec = 0;
        c.offline_queue_max_per_user = 50;
    });
    let http = server.http_addr();
    register(&server, "alice", "t", 1, 0);
    let cmd = json!({"header": {"sync_once": 1}, "from_uid": "app", "subscribers": ["bob"], "payload": b64(b"{\"cmd\":1}"), "client_msg_no": "the-cmd"});
    assert_eq!(post(http, "/message/send", cmd).0, 200);
    let mut alice = Client::ok(server.tcp_addr(), &Login::new("alice", "t"));
    for i in 0..200 {
        alice.send("bob", PERSON, b"{}", &format!("flood{i}"));
        alice.sendack();
    }
    let list = drain(http, "bob", usize::MAX);
    assert!(list.len() <= 50 + 64 + 1, "{} entries", list.len());
    assert_eq!(
        list.first().map(|m| m["client_msg_no"].clone()),
        Some(json!("the-cmd")),
        "the command was trimmed"
    );
}
