//! `ruyi-load --failover` against a fake two-node cluster in this test (issue 17). In the
//! main run node A stops delivering to its own connections after a while (their RECVs are
//! written nowhere: what a node killed with -9 takes along), then dies in the middle of a
//! SEND it stored but never answered, closing its connections and refusing new ones. The
//! real `ruyi-load` binary must move every connection to B, send the unanswered SENDs
//! again (B answers the stored one from its dedupe), and account for every acknowledged
//! message: from the offline queue what the server queued, from history only what a dead
//! node took along. Without history those read as lost; so does a message a live node
//! drops (history must not cover it); and without `--failover` the run fails.

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use ruyi_proto::{decode_packet, ConnackPacket, Packet, RecvPacket, SendackPacket, MAX_BODY_BYTES};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A's own SENDs stored before it stops delivering to its connections.
const WEDGE: u64 = 30;
/// A's own SEND at which it dies (stored, never answered).
const DIE: u64 = 60;

struct Stored {
    from: String,
    to: String,
    client_msg_no: String,
    payload: Bytes,
    delivered: bool,
}

#[derive(Default)]
struct Fake {
    store: Mutex<Vec<Stored>>,
    /// Per uid, the store indexes queued for it (its device was not connected).
    queues: Mutex<HashMap<String, Vec<usize>>>,
    /// Logged-in connections: uid → (node, stream).
    conns: Mutex<HashMap<String, (usize, TcpStream)>>,
    sends_on_a: AtomicU64,
    wedged: AtomicBool,
    dead: AtomicBool,
    /// History answers nothing.
    no_history: bool,
    /// A never dies.
    immortal: bool,
    /// B stores and answers SEND number `n` (in store order), delivers and queues it
    /// nowhere, and closes its receiver's connection: a live node losing a message.
    drop_at: Option<usize>,
}

fn encode(p: &Packet) -> Vec<u8> {
    let mut buf = BytesMut::new();
    p.encode(5, &mut buf).expect("encodes");
    buf.to_vec()
}

impl Fake {
    /// Delivers stored message `i` if its receiver is reachable: true when written.
    fn deliver(&self, i: usize) -> bool {
        let mut store = self.store.lock().expect("lock");
        let m = &mut store[i];
        let recv = encode(&Packet::Recv(RecvPacket {
            channel_id: m.from.clone(),
            channel_type: 1,
            message_id: i as i64 + 1,
            message_seq: i as u32 + 1,
            client_msg_no: m.client_msg_no.clone(),
            payload: m.payload.clone(),
            ..Default::default()
        }));
        let mut conns = self.conns.lock().expect("lock");
        let Some((node, stream)) = conns.get_mut(&m.to) else {
            // Not connected: the queue keeps it for the next sync.
            let mut queues = self.queues.lock().expect("lock");
            queues.entry(m.to.clone()).or_default().push(i);
            m.delivered = true;
            return false;
        };
        if *node == 0 && self.wedged.load(SeqCst) {
            return false; // A's connections miss what comes while it is wedged
        }
        m.delivered = stream.write_all(&recv).is_ok();
        m.delivered
    }

    /// A dies: its connections are cut (its listener stops too: `listen`).
    fn die(&self) {
        self.dead.store(true, SeqCst);
        let mut conns = self.conns.lock().expect("lock");
        conns.retain(|_, (node, stream)| {
            if *node == 0 {
                let _ = stream.shutdown(Shutdown::Both);
            }
            *node != 0
        });
    }

    fn serve(&self, node: usize, stream: TcpStream) {
        let mut out = stream.try_clone().expect("clone");
        let mut reader = stream;
        let (mut input, mut chunk) = (Vec::new(), [0u8; 65536]);
        loop {
            let n = match reader.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if node == 0 && self.dead.load(SeqCst) {
                return;
            }
            input.extend_from_slice(&chunk[..n]);
            while let Ok(Some((packet, used))) = decode_packet(&input, 5, MAX_BODY_BYTES) {
                input.drain(..used);
                match packet {
                    Packet::Connect(c) => {
                        if self.dead.load(SeqCst) {
                            // A's connections arriving: what is sent to them meanwhile
                            // waits in their queues.
                            std::thread::sleep(Duration::from_millis(50));
                        }
                        let copy = out.try_clone().expect("clone");
                        self.conns.lock().expect("lock").insert(c.uid, (node, copy));
                        let ack = Packet::Connack(ConnackPacket {
                            server_version: 5,
                            reason_code: 1,
                            ..Default::default()
                        });
                        let _ = out.write_all(&encode(&ack));
                    }
                    Packet::Send(send) => {
                        let from = self
                            .conns
                            .lock()
                            .expect("lock")
                            .iter()
                            .find(|(_, (n, s))| {
                                *n == node && s.peer_addr().ok() == out.peer_addr().ok()
                            })
                            .map(|(uid, _)| uid.clone())
                            .unwrap_or_default();
                        let found = self
                            .store
                            .lock()
                            .expect("lock")
                            .iter()
                            .position(|m| m.client_msg_no == send.client_msg_no);
                        let i = match found {
                            Some(i) => i, // a resend: answered from the dedupe
                            None => {
                                let mut store = self.store.lock().expect("lock");
                                store.push(Stored {
                                    from,
                                    to: send.channel_id.clone(),
                                    client_msg_no: send.client_msg_no.clone(),
                                    payload: send.payload.clone(),
                                    delivered: false,
                                });
                                store.len() - 1
                            }
                        };
                        if node == 0 && found.is_none() && !self.immortal {
                            let n = self.sends_on_a.fetch_add(1, SeqCst) + 1;
                            if n >= WEDGE {
                                self.wedged.store(true, SeqCst);
                            }
                            if n == DIE {
                                self.die();
                                return; // stored, never answered nor delivered
                            }
                        }
                        let ack = Packet::Sendack(SendackPacket {
                            message_id: i as i64 + 1,
                            client_seq: send.client_seq,
                            message_seq: i as u32 + 1,
                            reason_code: 1,
                            ..Default::default()
                        });
                        let _ = out.write_all(&encode(&ack));
                        if found.is_none() && self.drop_at == Some(i + 1) {
                            let to = self.store.lock().expect("lock")[i].to.clone();
                            self.store.lock().expect("lock")[i].delivered = true; // lost
                            if let Some((_, s)) = self.conns.lock().expect("lock").remove(&to) {
                                let _ = s.shutdown(Shutdown::Both);
                            }
                            continue;
                        }
                        let undelivered = !self.store.lock().expect("lock")[i].delivered;
                        if undelivered {
                            self.deliver(i);
                        }
                    }
                    _ => {} // RECVACK, PING
                }
            }
        }
    }

    /// The HTTP API: `/message/sync`, `/message/syncack`, `/channel/messagesync`.
    fn answer(&self, request: &str) -> String {
        let body = request.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        let ask: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        let uid = ask["uid"].as_str().unwrap_or_default().to_owned();
        if request.starts_with("POST /message/syncack") {
            self.queues.lock().expect("lock").remove(&uid);
            return "{\"status\":200}".into();
        }
        if request.starts_with("POST /message/sync") {
            let queued = self.queues.lock().expect("lock").get(&uid).cloned();
            let store = self.store.lock().expect("lock");
            let entries: Vec<serde_json::Value> = queued
                .unwrap_or_default()
                .iter()
                .enumerate()
                .map(|(n, &i)| {
                    let payload =
                        base64::engine::general_purpose::STANDARD.encode(&store[i].payload);
                    serde_json::json!({"message_seq": n + 1, "payload": payload})
                })
                .collect();
            return serde_json::Value::Array(entries).to_string();
        }
        self.history(&ask)
    }

    /// `/channel/messagesync`: the person channel's whole history, one page.
    fn history(&self, ask: &serde_json::Value) -> String {
        let (login, peer) = (ask["login_uid"].as_str(), ask["channel_id"].as_str());
        let messages: Vec<serde_json::Value> = if self.no_history {
            Vec::new()
        } else {
            let store = self.store.lock().expect("lock");
            store
                .iter()
                .enumerate()
                .filter(|(_, m)| Some(m.to.as_str()) == login && Some(m.from.as_str()) == peer)
                .map(|(i, m)| {
                    let payload = base64::engine::general_purpose::STANDARD.encode(&m.payload);
                    serde_json::json!({"message_seq": i + 1, "payload": payload})
                })
                .collect()
        };
        serde_json::json!({"start_message_seq": 1, "end_message_seq": 0, "more": 0, "messages": messages})
            .to_string()
    }
}

/// Node `node`'s listener; A's closes once it is dead, so connects to it are refused.
fn listen(fake: &Arc<Fake>, node: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binds");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("addr");
    let fake = Arc::clone(fake);
    std::thread::spawn(move || loop {
        if node == 0 && fake.dead.load(SeqCst) {
            return; // the listener goes with the thread
        }
        match listener.accept() {
            Ok((stream, _)) => {
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_nodelay(true);
                let fake = Arc::clone(&fake);
                std::thread::spawn(move || fake.serve(node, stream));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    });
    addr
}

fn http(fake: &Arc<Fake>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binds");
    let addr = listener.local_addr().expect("addr");
    let fake = Arc::clone(fake);
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut request = Vec::new();
            let mut chunk = [0u8; 4096];
            // Head, then the body its Content-Length names.
            while let Ok(n) = stream.read(&mut chunk) {
                request.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&request).into_owned();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let length = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().to_owned())
                        })
                        .and_then(|v| v.parse::<usize>().ok())
                        .unwrap_or(0);
                    if body.len() >= length {
                        break;
                    }
                }
                if n == 0 {
                    break;
                }
            }
            let answer = fake.answer(&String::from_utf8_lossy(&request));
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                answer.len()
            );
        }
    });
    addr
}

/// One run against a fresh fake cluster: (exit success, its output).
fn run(fake: Fake, failover: bool) -> (bool, String) {
    let fake = Arc::new(fake);
    let (a, b, api) = (listen(&fake, 0), listen(&fake, 1), http(&fake));
    // Connection i goes to the i-th server modulo 3: senders and receivers on both nodes.
    let servers = format!("{a},{b},{a}");
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_ruyi-load"));
    command
        .args(["person", "--pairs", "3", "--window", "4"])
        .args(["--warmup", "0", "--seconds", "1"])
        .args(["--servers", &servers, "--http-servers", &api.to_string()]);
    if failover {
        command.arg("--failover");
    }
    let out = command.output().expect("ruyi-load runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn field(text: &str, name: &str) -> u64 {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name}= in {text}"))
}

fn dying() -> Fake {
    Fake::default()
}

#[test]
fn connections_of_a_dead_node_fail_over_and_every_acknowledged_message_is_accounted_for() {
    let (ok, text) = run(dying(), true);
    assert!(ok, "{text}");
    assert_eq!(
        (field(&text, "lost"), field(&text, "dup")),
        (0, 0),
        "{text}"
    );
    // a0, a1 (senders) and b1, b2 (receivers) were on A.
    assert_eq!(field(&text, "failovers"), 4, "{text}");
    assert!(
        field(&text, "history_only") > 0,
        "nothing was missed on A: {text}"
    );
    assert!(
        field(&text, "queued") > 0,
        "nothing was queued meanwhile: {text}"
    );
}

#[test]
fn what_a_dead_node_took_along_and_is_not_in_history_reads_as_lost() {
    let fake = Fake {
        no_history: true,
        ..dying()
    };
    let (ok, text) = run(fake, true);
    assert!(!ok, "{text}");
    assert!(field(&text, "lost") > 0, "{text}");
    assert_eq!(field(&text, "history_only"), 0, "{text}");
}

#[test]
fn a_message_a_live_node_drops_is_lost_though_history_has_it() {
    let fake = Fake {
        immortal: true,
        drop_at: Some(40),
        ..Fake::default()
    };
    let (ok, text) = run(fake, true);
    assert!(!ok, "{text}");
    assert_eq!(field(&text, "lost"), 1, "{text}");
    assert_eq!(field(&text, "history_only"), 0, "{text}");
}

#[test]
fn without_failover_a_dead_node_fails_the_run() {
    let (ok, text) = run(dying(), false);
    assert!(!ok, "{text}");
    assert!(text.contains("closed by the server"), "{text}");
}
