//! `ruyi-load floor`: the IM workloads' floor. A relay on the same engine (`ruyi-reactor`)
//! that speaks just enough of the protocol for `ruyi-load person|group|mixed` to run
//! unchanged (CONNACK for any CONNECT, SENDACK at once, one RECV per recipient, PONG), and
//! `POST /channel` on its HTTP port to learn group members, with no storage, no auth, no
//! encryption, no acknowledgement tracking and no permission checks. `scripts/bench-floor.sh`
//! runs the same workloads against it and against Ruyi: the ratio is what the IM layer
//! (durability, checks, retries, the thread hand-offs) costs.
//!
//! Its shared tables sit behind `RwLock`s held for a lookup only, never across I/O; a
//! delivery is one inbox post per destination loop per message, as in Ruyi's pusher, and a
//! full inbox drops the delivery (the load tool then reports it lost: the floor is not
//! allowed to look better by blocking).

use bytes::{Bytes, BytesMut};
use clap::Args;
use ruyi_proto::{decode_packet, ConnackPacket, Packet, RecvPacket, SendackPacket, MAX_BODY_BYTES};
use ruyi_reactor::{ConnCtx, ConnId, Engine, EngineConfig, Handler, Handles, LoopCtx, StopMode};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

#[derive(Args, Debug, Clone)]
pub struct FloorArgs {
    /// Protocol listener.
    #[arg(long, default_value = "127.0.0.1:5100")]
    pub tcp: SocketAddr,
    /// HTTP listener (only `POST /channel`).
    #[arg(long, default_value = "127.0.0.1:5001")]
    pub http: SocketAddr,
    /// Event loops (default: cores).
    #[arg(long)]
    pub loops: Option<usize>,
    /// Stop after this many seconds (0 = run until killed).
    #[arg(long, default_value_t = 0)]
    pub seconds: u64,
}

/// uid → its connections; group → members.
#[derive(Default)]
struct Tables {
    users: RwLock<HashMap<String, Vec<ConnId>>>,
    groups: RwLock<HashMap<String, Arc<Vec<String>>>>,
    next_id: AtomicI64,
    dropped: AtomicU64,
}

enum Session {
    Im { uid: Option<String>, seq: u32 },
    Http,
}

/// RECV frames to queue on connections of this loop.
struct Deliver(Vec<(ConnId, Bytes)>);

struct Floor {
    tables: Arc<Tables>,
    loops: Handles<Deliver>,
    http_listener: usize,
    buf: BytesMut,
}

pub fn run(args: &FloorArgs) -> io::Result<()> {
    let mut config = EngineConfig::default();
    if let Some(n) = args.loops {
        config.loops = n;
    }
    let mut builder = Engine::builder(config);
    let tcp = builder.listen(args.tcp).map_err(io::Error::other)?;
    let http = builder.listen(args.http).map_err(io::Error::other)?;
    let tables = Arc::new(Tables::default());
    let mut engine = builder
        .start(move |_, loops| Floor {
            tables: Arc::clone(&tables),
            loops: loops.clone(),
            http_listener: http.index(),
            buf: BytesMut::new(),
        })
        .map_err(io::Error::other)?;
    println!(
        "floor relay: protocol on {}, HTTP on {}",
        engine.local_addr(tcp),
        engine.local_addr(http)
    );
    if args.seconds == 0 {
        loop {
            std::thread::park();
        }
    }
    std::thread::sleep(Duration::from_secs(args.seconds));
    engine.stop(StopMode::Soft);
    Ok(())
}

impl Handler for Floor {
    type State = Session;
    type Message = Deliver;

    fn on_open(&mut self, conn: &mut ConnCtx<'_>) -> Session {
        if conn.listener().index() == self.http_listener {
            Session::Http
        } else {
            Session::Im { uid: None, seq: 0 }
        }
    }

    fn on_data(&mut self, conn: &mut ConnCtx<'_>, state: &mut Session, input: &[u8]) -> usize {
        match state {
            Session::Http => self.on_http(conn, input),
            Session::Im { uid, seq } => {
                let mut used_total = 0;
                loop {
                    match decode_packet(&input[used_total..], 5, MAX_BODY_BYTES) {
                        Ok(Some((packet, used))) => {
                            used_total += used;
                            self.on_packet(conn, uid, seq, packet);
                        }
                        Ok(None) => return used_total,
                        Err(_) => {
                            conn.close();
                            return input.len();
                        }
                    }
                }
            }
        }
    }

    fn on_message(&mut self, lp: &mut LoopCtx<'_, Session>, Deliver(frames): Deliver) {
        for (id, frame) in frames {
            if let Some((mut conn, _)) = lp.conn(id) {
                conn.queue(frame);
            }
        }
    }

    fn on_close(&mut self, id: ConnId, state: Session, _: ruyi_reactor::CloseReason) {
        if let Session::Im { uid: Some(uid), .. } = state {
            let mut users = self.tables.users.write().unwrap_or_else(|p| p.into_inner());
            if let Some(conns) = users.get_mut(&uid) {
                conns.retain(|c| *c != id);
                if conns.is_empty() {
                    users.remove(&uid);
                }
            }
        }
    }
}

impl Floor {
    fn on_packet(
        &mut self,
        conn: &mut ConnCtx<'_>,
        uid: &mut Option<String>,
        seq: &mut u32,
        p: Packet,
    ) {
        match p {
            Packet::Connect(c) => {
                self.tables
                    .users
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(c.uid.clone())
                    .or_default()
                    .push(conn.id());
                *uid = Some(c.uid);
                self.reply(
                    conn,
                    &Packet::Connack(ConnackPacket {
                        server_version: 5,
                        reason_code: 1,
                        ..Default::default()
                    }),
                );
            }
            Packet::Send(s) => {
                let Some(from) = uid.as_deref() else {
                    conn.close();
                    return;
                };
                *seq += 1;
                let message_id = self.tables.next_id.fetch_add(1, Ordering::Relaxed);
                self.reply(
                    conn,
                    &Packet::Sendack(SendackPacket {
                        flags: s.flags,
                        message_id,
                        client_seq: s.client_seq,
                        message_seq: *seq,
                        reason_code: 1,
                    }),
                );
                let recipients: Vec<String> = if s.channel_type == 1 {
                    vec![s.channel_id.clone()]
                } else {
                    let groups = self.tables.groups.read().unwrap_or_else(|p| p.into_inner());
                    groups
                        .get(&s.channel_id)
                        .map(|m| m.iter().filter(|u| *u != from).cloned().collect())
                        .unwrap_or_default()
                };
                let recv = RecvPacket {
                    from_uid: from.to_owned(),
                    channel_id: if s.channel_type == 1 {
                        from.to_owned()
                    } else {
                        s.channel_id.clone()
                    },
                    channel_type: s.channel_type,
                    client_msg_no: s.client_msg_no,
                    message_id,
                    message_seq: *seq,
                    payload: s.payload,
                    ..Default::default()
                };
                self.buf.clear();
                if Packet::Recv(recv).encode(5, &mut self.buf).is_err() {
                    return;
                }
                let frame = self.buf.split().freeze();
                // One post per destination loop, as Ruyi's pusher does.
                let mut per_loop: HashMap<usize, Vec<(ConnId, Bytes)>> = HashMap::new();
                {
                    let users = self.tables.users.read().unwrap_or_else(|p| p.into_inner());
                    for r in &recipients {
                        for &c in users.get(r).into_iter().flatten() {
                            per_loop
                                .entry(c.loop_index())
                                .or_default()
                                .push((c, frame.clone()));
                        }
                    }
                }
                for (_, frames) in per_loop {
                    let Some(&(first, _)) = frames.first() else {
                        continue;
                    };
                    let n = frames.len() as u64;
                    if self
                        .loops
                        .for_conn(first)
                        .try_post(Deliver(frames))
                        .is_err()
                    {
                        self.tables.dropped.fetch_add(n, Ordering::Relaxed);
                    }
                }
            }
            Packet::Ping => self.reply(conn, &Packet::Pong),
            _ => {}
        }
    }

    fn reply(&mut self, conn: &mut ConnCtx<'_>, p: &Packet) {
        self.buf.clear();
        if p.encode(5, &mut self.buf).is_ok() {
            conn.queue(self.buf.split().freeze());
        }
    }

    /// `POST /channel {channel_id, subscribers}`: remembers the members; any request gets
    /// `200 {"status":200}` and the connection is closed.
    fn on_http(&mut self, conn: &mut ConnCtx<'_>, input: &[u8]) -> usize {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        let head = match req.parse(input) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return 0,
            Err(_) => {
                conn.close();
                return input.len();
            }
        };
        let length = req
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| {
                std::str::from_utf8(h.value)
                    .ok()?
                    .trim()
                    .parse::<usize>()
                    .ok()
            })
            .unwrap_or(0);
        if input.len() < head + length {
            return 0;
        }
        if let Ok(body) = serde_json::from_slice::<serde_json::Value>(&input[head..head + length]) {
            if let (Some(id), Some(subs)) =
                (body["channel_id"].as_str(), body["subscribers"].as_array())
            {
                let members: Vec<String> = subs
                    .iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect();
                self.tables
                    .groups
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(id.to_owned(), Arc::new(members));
            }
        }
        conn.queue_slice(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 14\r\nConnection: close\r\n\r\n{\"status\":200}",
        );
        conn.close_after_flush();
        input.len()
    }
}
