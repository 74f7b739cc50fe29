//! Crash safety under load (issue 7): the real binary is `kill -9`ed at random moments while
//! person and group sends are in flight, 20 rounds on one data directory. After every
//! restart, every SENDACKed message is present exactly once with its id and seq, every
//! channel's seqs are dense from 1, and the offline queues hold each acknowledged message
//! once, with dense per-user seqs.

#![allow(clippy::unwrap_used)]

mod util;

use ruyi_proto::types::{channel_type, reason};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use util::*;

const ROUNDS: usize = 20;
const PERSON_SENDERS: usize = 3;
const GROUP_SENDERS: usize = 2;
const GROUP_OFFLINE_MEMBERS: usize = 5;

/// Acknowledged messages: (storage channel as (id, type)) → seq → message id.
type Acked = Arc<Mutex<HashMap<(String, u8), BTreeMap<u32, i64>>>>;

/// Sends until the server dies; records every SENDACK.
fn sender(tcp: SocketAddr, uid: String, to: String, ctype: u8, round: usize, acked: Acked) {
    let Some(mut c) = std::panic::catch_unwind(|| Client::ok(tcp, &Login::new(&uid, "x"))).ok()
    else {
        return;
    };
    let key = if ctype == channel_type::PERSON {
        (ruyi_proto::person_channel_id(&uid, &to), ctype)
    } else {
        (to.clone(), ctype)
    };
    for i in 0.. {
        let cmn = format!("{uid}-r{round}-{i}");
        let body = json!({"n": i}).to_string();
        use std::io::Write;
        let mut buf = bytes::BytesMut::new();
        let cipher = c.cipher.unwrap();
        let wire = cipher.encrypt_b64(body.as_bytes());
        let msg_key = cipher.send_msg_key(i + 1, &cmn, &to, ctype, wire.as_bytes());
        ruyi_proto::Packet::Send(ruyi_proto::SendPacket {
            client_seq: i + 1,
            client_msg_no: cmn,
            channel_id: to.clone(),
            channel_type: ctype,
            msg_key,
            payload: bytes::Bytes::from(wire.into_bytes()),
            ..Default::default()
        })
        .encode(c.version, &mut buf)
        .unwrap();
        if c.stream.write_all(&buf).is_err() {
            return;
        }
        // Group senders also receive each other's messages: skip to the SENDACK.
        loop {
            match c.read_packet(Duration::from_secs(5)) {
                Some(ruyi_proto::Packet::Sendack(a)) => {
                    assert_eq!(a.reason_code, reason::SUCCESS, "{uid}: refused");
                    let previous = acked
                        .lock()
                        .unwrap()
                        .entry(key.clone())
                        .or_default()
                        .insert(a.message_seq, a.message_id);
                    assert!(
                        previous.is_none(),
                        "{key:?}: seq {} acknowledged twice",
                        a.message_seq
                    );
                    break;
                }
                Some(ruyi_proto::Packet::Recv(r)) => {
                    // The server may be killed between the RECV and our RECVACK.
                    if !c.try_recvack(&r) {
                        return;
                    }
                }
                _ => return, // killed
            }
        }
    }
}

/// What a user's offline queue has shown so far: sync pages at most 1,000 entries and
/// only `syncack` moves past them, so the check reads, acknowledges and remembers.
#[derive(Default)]
struct QueueSeen {
    next_seq: u64,
    ids: HashSet<i64>,
}

fn drain_queue(http: SocketAddr, uid: &str, seen: &mut QueueSeen) {
    if seen.next_seq == 0 {
        seen.next_seq = 1;
    }
    loop {
        let (status, v) = post(
            http,
            "/message/sync",
            json!({"uid": uid, "message_seq": 0, "limit": 1000}),
        );
        assert_eq!(status, 200);
        let entries: Vec<Value> = v.as_array().unwrap().clone();
        let Some(last) = entries.last().map(|m| m["message_seq"].as_u64().unwrap()) else {
            return;
        };
        let user_seqs: Vec<u64> = entries
            .iter()
            .map(|m| m["message_seq"].as_u64().unwrap())
            .collect();
        assert_eq!(
            user_seqs,
            (seen.next_seq..=last).collect::<Vec<_>>(),
            "{uid}: queue seqs not dense"
        );
        for m in &entries {
            assert!(
                seen.ids.insert(m["message_id"].as_i64().unwrap()),
                "{uid}: a message queued twice"
            );
        }
        assert_eq!(
            post(
                http,
                "/message/syncack",
                json!({"uid": uid, "last_message_seq": last})
            )
            .0,
            200
        );
        seen.next_seq = last + 1;
    }
}

#[test]
fn every_acknowledged_message_survives_twenty_kill_9s() {
    init();
    let data = temp_dir("crash");
    let (tcp, http) = (free_addr(), free_addr());
    let acked: Acked = Arc::default();
    let mut queues: HashMap<String, QueueSeen> = HashMap::new();
    let mut members: Vec<String> = (0..GROUP_SENDERS).map(|i| format!("gs{i}")).collect();
    members.extend((0..GROUP_OFFLINE_MEMBERS).map(|i| format!("gm{i}")));
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    for round in 0..ROUNDS {
        let mut server = RuyiProcess::spawn(&data, tcp, http);
        if round == 0 {
            assert_eq!(
                post(
                    http,
                    "/channel",
                    json!({"channel_id": "crashg", "channel_type": 2, "subscribers": members})
                )
                .0,
                200
            );
        }
        verify(http, &acked, &members, &mut queues);
        let mut threads = Vec::new();
        for i in 0..PERSON_SENDERS {
            let a = Arc::clone(&acked);
            threads.push(std::thread::spawn(move || {
                sender(
                    tcp,
                    format!("ps{i}"),
                    format!("pr{i}"),
                    channel_type::PERSON,
                    round,
                    a,
                )
            }));
        }
        for i in 0..GROUP_SENDERS {
            let a = Arc::clone(&acked);
            threads.push(std::thread::spawn(move || {
                sender(
                    tcp,
                    format!("gs{i}"),
                    "crashg".into(),
                    channel_type::GROUP,
                    round,
                    a,
                )
            }));
        }
        // A pseudo-random moment between 150 and 900 ms into the load.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(150 + seed % 750));
        server.kill9();
        for t in threads {
            t.join().unwrap();
        }
    }
    let server = RuyiProcess::spawn(&data, tcp, http);
    let total = verify(http, &acked, &members, &mut queues);
    assert!(total > 100, "the rounds acknowledged only {total} messages");
    eprintln!("crash test: {ROUNDS} kill -9 rounds, {total} acknowledged messages verified in history and queues");
    drop(server);
    let _ = std::fs::remove_dir_all(&data);
}

/// Checks storage against everything acknowledged so far; returns how many that is.
fn verify(
    http: SocketAddr,
    acked: &Acked,
    members: &[String],
    queues: &mut HashMap<String, QueueSeen>,
) -> usize {
    let acked = acked.lock().unwrap().clone();
    let mut total = 0;
    let mut channels: Vec<(String, String, u8)> = (0..PERSON_SENDERS)
        .map(|i| (format!("ps{i}"), format!("pr{i}"), channel_type::PERSON))
        .collect();
    channels.push(("gs0".into(), "crashg".into(), channel_type::GROUP));
    for (login, channel, ctype) in &channels {
        let stored = history(http, login, channel, *ctype);
        let seqs: Vec<u32> = stored.iter().map(|(s, _)| *s).collect();
        assert_eq!(
            seqs,
            (1..=seqs.len() as u32).collect::<Vec<_>>(),
            "{channel}: seqs not dense from 1"
        );
        let by_seq: HashMap<u32, i64> = stored.into_iter().collect();
        let key = if *ctype == channel_type::PERSON {
            (ruyi_proto::person_channel_id(login, channel), *ctype)
        } else {
            (channel.clone(), *ctype)
        };
        for (seq, id) in acked.get(&key).into_iter().flatten() {
            assert_eq!(
                by_seq.get(seq),
                Some(id),
                "{channel}: acknowledged seq {seq} lost or changed"
            );
            total += 1;
        }
    }
    // Offline queues: dense user seqs, each message once, every acknowledged message there.
    let mut check_queue = |uid: &str, key: (String, u8)| {
        let seen = queues.entry(uid.to_owned()).or_default();
        drain_queue(http, uid, seen);
        for id in acked.get(&key).into_iter().flat_map(|m| m.values()) {
            assert!(
                seen.ids.contains(id),
                "{uid}: acknowledged message {id} missing from the offline queue"
            );
        }
    };
    for i in 0..PERSON_SENDERS {
        check_queue(
            &format!("pr{i}"),
            (
                ruyi_proto::person_channel_id(&format!("ps{i}"), &format!("pr{i}")),
                channel_type::PERSON,
            ),
        );
    }
    for m in members.iter().filter(|m| m.starts_with("gm")) {
        check_queue(m, ("crashg".into(), channel_type::GROUP));
    }
    total
}

#[test]
fn a_panic_on_a_pool_thread_stops_the_process_and_loses_nothing_acknowledged() {
    // A half-dead server (a pool thread gone, the rest accepting SENDs nobody answers) is
    // worse than none: a panic must end the process with a clear status.
    let dir = temp_dir("panic");
    let (tcp, http) = (free_addr(), free_addr());
    let mut server = RuyiProcess::spawn_with(
        &dir,
        tcp,
        http,
        &[("RUYI_FAILPOINT_PANIC", "poison"), ("RUST_LOG", "off")],
    );
    let mut alice = Client::ok(tcp, &Login::new("alice", "x"));
    alice.send("bob", channel_type::PERSON, b"{}", "kept");
    let kept = alice.sendack();
    assert_eq!(kept.reason_code, reason::SUCCESS);
    alice.send("bob", channel_type::PERSON, b"{}", "poison");
    let status = server
        .exit_within(Duration::from_secs(10))
        .expect("the writer panicked and the process lived on");
    assert_eq!(status.code(), Some(ruyi::fault::PANIC_EXIT_CODE));
    // Restarted (as a supervisor would), the acknowledged message is there; the poisoned
    // one was never acknowledged.
    let server = RuyiProcess::spawn(&dir, tcp, http);
    let stored = history(server.http, "alice", "bob", channel_type::PERSON);
    assert_eq!(stored, [(kept.message_seq, kept.message_id)]);
}
