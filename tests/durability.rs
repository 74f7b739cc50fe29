//! Crash safety with the real binary (issue 4): a message that got a SENDACK survives
//! `kill -9` and a restart on the same data directory, and seqs and ids carry on from the
//! stored maximum.

#![allow(clippy::unwrap_used)]

mod util;

use ruyi_proto::types::{channel_type, reason};
use serde_json::{json, Value};
use std::time::Duration;
use util::*;

#[test]
fn invariant_sendacked_message_survives_kill_9_and_restart() {
    init();
    let data = temp_dir("kill9");
    let (tcp, http) = (free_addr(), free_addr());
    let mut server = RuyiProcess::spawn(&data, tcp, http);
    let mut alice = Client::ok(tcp, &Login::new("alice", "any"));
    let mut acked = Vec::new();
    for i in 0..50 {
        alice.send(
            "bob",
            channel_type::PERSON,
            format!("{{\"n\":{i}}}").as_bytes(),
            &format!("k{i}"),
        );
    }
    for _ in 0..50 {
        let ack = alice.sendack();
        assert_eq!(ack.reason_code, reason::SUCCESS);
        acked.push((ack.message_id, ack.message_seq));
    }
    server.kill9();

    let server = RuyiProcess::spawn(&data, tcp, http);
    let (status, list) = post(http, "/message/sync", json!({"uid": "bob", "limit": 100}));
    assert_eq!(status, 200);
    let stored: Vec<(i64, u32)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["message_id"].as_i64().unwrap(),
                m["channel_message_seq"].as_u64().unwrap() as u32,
            )
        })
        .collect();
    assert_eq!(
        stored, acked,
        "every acknowledged message, once, with its id and seq"
    );
    // Seqs and ids continue from what was stored.
    let mut alice = Client::ok(tcp, &Login::new("alice", "any"));
    alice.send("bob", channel_type::PERSON, b"{}", "after");
    let ack = alice.sendack();
    assert_eq!(ack.message_seq, 51);
    assert!(ack.message_id > acked.last().unwrap().0);
    drop(server);
    let _ = std::fs::remove_dir_all(&data);
}

#[test]
fn sigterm_stops_gracefully_and_keeps_everything() {
    init();
    let data = temp_dir("sigterm");
    let (tcp, http) = (free_addr(), free_addr());
    let mut server = RuyiProcess::spawn(&data, tcp, http);
    let mut alice = Client::ok(tcp, &Login::new("alice", "any"));
    for i in 0..10 {
        alice.send("bob", channel_type::PERSON, b"{}", &format!("t{i}"));
    }
    for _ in 0..10 {
        assert_eq!(alice.sendack().reason_code, reason::SUCCESS);
    }
    // SIGHUP (a closed terminal) does not stop it.
    // SAFETY: kill(2) with a PID we spawned and a valid signal number.
    assert_eq!(
        unsafe { libc::kill(server.child.id() as i32, libc::SIGHUP) },
        0
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "SIGHUP killed the server"
    );
    assert_eq!(
        util::http(server.http, "GET", "/health", &Value::Null).0,
        200
    );
    // SIGTERM twice at once: the second does not cut the drain short (a clean exit).
    for _ in 0..2 {
        // SAFETY: as above.
        assert_eq!(
            unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) },
            0
        );
    }
    let status = server
        .exit_within(Duration::from_secs(15))
        .expect("ruyi did not stop on SIGTERM");
    assert!(status.success(), "clean exit: {status:?}");
    assert!(
        alice.closed_within(Duration::from_secs(2)),
        "connections are closed"
    );
    let server = RuyiProcess::spawn(&data, tcp, http);
    let (_, list) = post(http, "/message/sync", json!({"uid": "bob", "limit": 100}));
    assert_eq!(list.as_array().unwrap().len(), 10);
    drop(server);
    let _ = std::fs::remove_dir_all(&data);
}
