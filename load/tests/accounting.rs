//! The load tool's accounting against a misbehaving server (issue 14): a fake server in
//! this test speaks just enough of the protocol (CONNACK, a SENDACK for every SEND, a RECV
//! to the person peer) and breaks delivery in one way per run; the real `ruyi-load` binary
//! must report exactly that, and fail when anything acknowledged was lost or duplicated.

use bytes::BytesMut;
use ruyi_proto::{decode_packet, ConnackPacket, Packet, RecvPacket, SendackPacket, MAX_BODY_BYTES};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// How the fake server breaks delivery; `n` counts SENDs from 1.
#[derive(Clone, Copy, Debug)]
enum Fault {
    None,
    /// Acknowledges everything but delivers nothing after message `n`.
    StopAfter(u64),
    /// Never delivers message `n`.
    Drop(u64),
    /// Delivers message `n` after message `n + 1`.
    Swap(u64),
    /// Delivers message `n` twice.
    Duplicate(u64),
    /// Answers and delivers nothing from message `n` on: a stalled server.
    Mute(u64),
}

type Peers = Arc<Mutex<HashMap<String, TcpStream>>>;

/// A RECV held back (for a swap): its receiver and its bytes.
type Held = Arc<Mutex<Option<(String, Vec<u8>)>>>;

fn encode(p: &Packet) -> Vec<u8> {
    let mut buf = BytesMut::new();
    p.encode(5, &mut buf).expect("encodes");
    buf.to_vec()
}

fn deliver(peers: &Peers, to: &str, recv: &[u8]) {
    if let Some(s) = peers.lock().expect("lock").get_mut(to) {
        let _ = s.write_all(recv);
    }
}

fn serve(stream: TcpStream, fault: Fault, peers: Peers, count: Arc<AtomicU64>, held: Held) {
    let mut input = Vec::new();
    let mut chunk = [0u8; 65536];
    let mut out = stream.try_clone().expect("clone");
    let mut reader = stream;
    loop {
        let n = match reader.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        input.extend_from_slice(&chunk[..n]);
        while let Ok(Some((packet, used))) = decode_packet(&input, 5, MAX_BODY_BYTES) {
            input.drain(..used);
            match packet {
                Packet::Connect(c) => {
                    peers
                        .lock()
                        .expect("lock")
                        .insert(c.uid.clone(), out.try_clone().expect("clone"));
                    let ack = Packet::Connack(ConnackPacket {
                        server_version: 5,
                        reason_code: 1,
                        ..Default::default()
                    });
                    let _ = out.write_all(&encode(&ack));
                }
                Packet::Send(send) => {
                    let n = count.fetch_add(1, Ordering::SeqCst) + 1;
                    if matches!(fault, Fault::Mute(k) if n >= k) {
                        continue;
                    }
                    let ack = Packet::Sendack(SendackPacket {
                        message_id: n as i64,
                        client_seq: send.client_seq,
                        message_seq: n as u32,
                        reason_code: 1,
                        ..Default::default()
                    });
                    let _ = out.write_all(&encode(&ack));
                    let recv = encode(&Packet::Recv(RecvPacket {
                        channel_id: "peer".into(),
                        channel_type: 1,
                        message_id: n as i64,
                        message_seq: n as u32,
                        client_msg_no: send.client_msg_no.clone(),
                        payload: send.payload.clone(),
                        ..Default::default()
                    }));
                    let to = send.channel_id.clone();
                    match fault {
                        Fault::StopAfter(k) if n > k => {}
                        Fault::Drop(k) if n == k => {}
                        Fault::Swap(k) if n == k => {
                            *held.lock().expect("lock") = Some((to, recv));
                        }
                        Fault::Swap(k) if n == k + 1 => {
                            deliver(&peers, &to, &recv);
                            if let Some((to, late)) = held.lock().expect("lock").take() {
                                deliver(&peers, &to, &late);
                            }
                        }
                        Fault::Duplicate(k) if n == k => {
                            deliver(&peers, &to, &recv);
                            deliver(&peers, &to, &recv);
                        }
                        _ => deliver(&peers, &to, &recv),
                    }
                }
                _ => {} // RECVACK, PING: nothing to answer for this test.
            }
        }
    }
}

fn fake_server(fault: Fault) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binds");
    let addr = listener.local_addr().expect("addr");
    let peers: Peers = Arc::default();
    let count = Arc::new(AtomicU64::new(0));
    let held = Arc::new(Mutex::new(None));
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let _ = stream.set_nodelay(true);
            let (peers, count, held) = (Arc::clone(&peers), Arc::clone(&count), Arc::clone(&held));
            std::thread::spawn(move || serve(stream, fault, peers, count, held));
        }
    });
    addr
}

/// Runs one person pair against a server with `fault`: (exit success, its summary line).
fn run_raw(fault: Fault) -> (bool, String) {
    let addr = fake_server(fault);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ruyi-load"))
        .args([
            "person",
            "--pairs",
            "1",
            "--window",
            "4",
            "--warmup",
            "0",
            "--seconds",
            "1",
        ])
        .args(["--tcp", &addr.to_string()])
        .output()
        .expect("ruyi-load runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// [`run_raw`], its counts read: (exit success, lost, dup, reordered).
fn run(fault: Fault) -> (bool, u64, u64, u64) {
    let (ok, text) = run_raw(fault);
    let field = |name: &str| -> u64 {
        text.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name}= in {text}"))
    };
    (ok, field("lost"), field("dup"), field("reordered"))
}

#[test]
fn sends_a_stalled_server_never_answers_fail_the_run() {
    let (ok, text) = run_raw(Fault::Mute(100));
    assert!(!ok, "a stalled server passed: {text}");
    assert!(text.contains("unanswered=4"), "{text}");
}

#[test]
fn an_honest_server_reads_as_nothing_lost() {
    assert_eq!(run(Fault::None), (true, 0, 0, 0));
}

#[test]
fn losses_at_the_end_of_a_run_are_counted_and_fail_the_run() {
    let (ok, lost, dup, _) = run(Fault::StopAfter(100));
    assert!(!ok, "a run that lost messages exited 0");
    assert!(lost > 0 && dup == 0, "lost={lost} dup={dup}");
}

#[test]
fn one_gap_is_one_lost() {
    assert_eq!(run(Fault::Drop(50)), (false, 1, 0, 0));
}

#[test]
fn a_swapped_pair_is_reordered_not_lost() {
    assert_eq!(run(Fault::Swap(50)), (true, 0, 0, 1));
}

#[test]
fn a_duplicate_is_counted_and_fails_the_run() {
    assert_eq!(run(Fault::Duplicate(50)), (false, 0, 1, 0));
}
