//! The engine's `Handler` for Ruyi: the binary protocol on the TCP listener and HTTP/1.1
//! on the API listener. One `Gateway` per event loop; everything here runs on that loop's
//! thread and never blocks (R1 of `reactor/RULES.md`): logins go to the auth pool, sends
//! to the channel pool, HTTP requests to the HTTP pool, and answers come back as
//! [`ToLoop`] messages.
//!
//! Per connection the loop keeps a [`Session`]: the login phase, the session version, the
//! AES key, and the RECVs still waiting for a RECVACK (retried from `on_tick`).
//!
//! The folder, one room per concern: `session` (per-connection state, pre-login bounds),
//! `binary` (the protocol's frames), `websocket` (its framing), `login`, `deliver` and
//! `retries` (RECVs until their RECVACK). What the pools send here is `crate::to_loop`.

mod binary;
mod deliver;
mod jsonrpc;
mod login;
mod retries;
mod session;
mod websocket;

pub use session::{ImSession, Session};

use crate::http::{self, HttpSession};
use crate::rate::{SendBucket, SendLimit};
use crate::shared::SharedRef;
use crate::to_loop::ToLoop;
use crate::ws;
use bytes::{Bytes, BytesMut};
use retries::Miss;
use ruyi_proto::{DisconnectPacket, Packet, LATEST_VERSION};
use ruyi_reactor::{CloseReason, ConnCtx, ConnId, Handler, Handles, LoopCtx};
use session::Phase;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Listener order in the engine: binary protocol first, HTTP second, WebSocket third.
pub const LISTENER_TCP: usize = 0;
/// See [`LISTENER_TCP`].
pub const LISTENER_HTTP: usize = 1;
/// See [`LISTENER_TCP`].
pub const LISTENER_WS: usize = 2;
/// See [`LISTENER_TCP`]: WebSocket over TLS, when a certificate is set.
pub const LISTENER_WSS: usize = 3;
/// See [`LISTENER_TCP`]: the binary protocol over TLS, when `tls_addr` is set too.
pub const LISTENER_TLS: usize = 4;

/// Bytes of unacknowledged RECV frames kept per connection for retry. The count cap alone
/// would let 256 large encrypted messages pin hundreds of MiB; past this the oldest entries
/// leave the retry list and go to the user's offline queue (never silently).
pub const MAX_PENDING_ACK_BYTES: usize = 1 << 20;

/// The largest frame a connection may send before it has logged in. A CONNECT is a few
/// hundred bytes (uid, token, device id, a 44-byte key); without this bound 1,000
/// half-sent "CONNECT"s declaring 1 MiB each held 2.2 GB for the 4 s login window.
pub const PRELOGIN_MAX_FRAME: usize = 16 << 10;

/// Connections closed per loop tick for passed deadlines (logins, HTTP requests), at most:
/// with 20 ms ticks, 3,200 per second per loop; a larger burst is spread over ticks.
pub const DEADLINE_CLOSES_PER_TICK: usize = 64;

/// The engine's tick: kick timers, retries, deadlines and the shutdown drain run on it.
pub const TICK: Duration = Duration::from_millis(20);

/// One loop's handler. See the module docs.
#[derive(Debug)]
pub struct Gateway {
    shared: SharedRef,
    loops: Handles<ToLoop>,
    /// Connections to close at a time (kicks).
    kicks: Vec<(Instant, ConnId)>,
    /// Connections paused because a pool queue was full; resumed each tick.
    stalled: Vec<ConnId>,
    /// Connections with RECVs waiting for RECVACK.
    retry_list: Vec<ConnId>,
    /// Kicks whose post to another loop found its inbox full.
    kick_retries: Vec<(ConnId, bool)>,
    /// Connections not logged in yet, with their login deadline (accept + connect
    /// timeout), oldest first. An absolute deadline: trickling bytes does not extend it.
    logins: VecDeque<(Instant, ConnId)>,
    /// HTTP connections in the middle of a request, with the request's deadline (first
    /// byte + `http_request_timeout`), oldest first.
    http_deadlines: VecDeque<(Instant, ConnId)>,
    last_retry_scan: Instant,
    buf: BytesMut,
    /// Buffers for sealing encrypted RECVs, reused by every delivery of this loop.
    seal: ruyi_proto::SealScratch,
    /// `Config::send_limit`, copied once.
    send_limit: SendLimit,
    /// `Config::send_bytes_limit`, copied once.
    send_kib_limit: SendLimit,
    /// `Config::proxy_from`: the proxies whose forwarded headers name the client.
    proxies: ruyi_reactor::ProxyTrust,
    /// `Config::proxy_client_header`: the header they name it in.
    client_header: crate::forwarded::ClientHeader,
    /// Client connections still to close, once the server is stopping.
    drain: Option<crate::drain::Drain>,
}

impl Gateway {
    /// The handler for one loop.
    pub fn new(shared: SharedRef, loops: Handles<ToLoop>) -> Gateway {
        Gateway {
            send_limit: shared.config.send_limit(),
            send_kib_limit: shared.config.send_bytes_limit(),
            // Checked at start (`Config::validate`).
            proxies: ruyi_reactor::ProxyTrust::parse(&shared.config.proxy_from).unwrap_or_default(),
            client_header: crate::forwarded::ClientHeader::parse(
                &shared.config.proxy_client_header,
            )
            .unwrap_or(crate::forwarded::ClientHeader::XForwardedFor),
            shared,
            loops,
            kicks: Vec::new(),
            stalled: Vec::new(),
            retry_list: Vec::new(),
            kick_retries: Vec::new(),
            logins: VecDeque::new(),
            http_deadlines: VecDeque::new(),
            last_retry_scan: Instant::now(),
            buf: BytesMut::with_capacity(4096),
            seal: ruyi_proto::SealScratch::default(),
            drain: None,
        }
    }

    /// Seconds since the server started (`/connz`'s uptimes).
    fn uptime_secs(&self) -> u32 {
        u32::try_from(self.shared.started.elapsed().as_secs()).unwrap_or(u32::MAX)
    }

    /// Milliseconds of the server's clock at this loop turn, for the send buckets.
    fn clock_ms(&self, conn: &ConnCtx<'_>) -> u64 {
        let elapsed = conn.now().saturating_duration_since(self.shared.started);
        u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
    }

    /// Encodes `packet` for `version` and queues it on `wire`.
    fn queue_packet(&mut self, conn: &mut ConnCtx<'_>, packet: &Packet, version: u8, wire: Wire) {
        self.buf.clear();
        match packet.encode(version, &mut self.buf) {
            Ok(()) => emit_slice(conn, wire, &self.buf),
            Err(e) => log::error!(
                "conn={} cannot encode {:?}: {e}",
                conn.id(),
                packet.packet_type()
            ),
        }
    }

    /// Sends `packet` to an IM session in its dialect: the binary frame, or its JSON-RPC
    /// answer or notification (`jsonrpc.rs`; a packet with none there is not sent).
    fn reply(&mut self, conn: &mut ConnCtx<'_>, s: &mut ImSession, packet: &Packet) {
        if let Some(rpc) = s.rpc() {
            if let Some(text) = rpc.answer(packet) {
                emit_slice(conn, Wire::WsText, text.as_bytes());
            }
            return;
        }
        self.queue_packet(conn, packet, s.version, s.wire());
    }

    /// [`Gateway::reply`] for a frame encoded elsewhere (a SENDACK from the pools, a
    /// CONNACK from the auth pool): as it is, or read back and answered in JSON-RPC.
    fn reply_frame(&mut self, conn: &mut ConnCtx<'_>, s: &mut ImSession, frame: Bytes) {
        if s.rpc().is_none() {
            emit(conn, s.wire(), frame);
            return;
        }
        match ruyi_proto::decode_packet(&frame, s.version, frame.len()) {
            Ok(Some((packet, _))) => self.reply(conn, s, &packet),
            _ => log::error!("conn={} cannot read back a frame for JSON-RPC", conn.id()),
        }
    }
}

/// How a session's frames go on its socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Wire {
    /// Binary frames on TCP, as they are.
    Tcp,
    /// One binary frame per WebSocket binary message.
    WsBinary,
    /// One JSON-RPC text per WebSocket text message.
    WsText,
}

/// Queues one protocol frame: as it is on TCP, as one message on WebSocket (one packet
/// per message: the JS SDK cannot split messages, JSSDK.md §6).
fn emit(conn: &mut ConnCtx<'_>, wire: Wire, frame: Bytes) {
    ws_header(conn, wire, frame.len());
    conn.queue(frame);
}

/// [`emit`] for a borrowed frame (copied into the connection's queue).
fn emit_slice(conn: &mut ConnCtx<'_>, wire: Wire, frame: &[u8]) {
    ws_header(conn, wire, frame.len());
    conn.queue_slice(frame);
}

fn ws_header(conn: &mut ConnCtx<'_>, wire: Wire, len: usize) {
    let opcode = match wire {
        Wire::Tcp => return,
        Wire::WsBinary => ws::OP_BINARY,
        Wire::WsText => ws::OP_TEXT,
    };
    let mut header = [0u8; 10];
    let n = ws::frame_header(opcode, len, &mut header);
    conn.queue_slice(&header[..n]);
}

impl Handler for Gateway {
    type State = Session;
    type Message = ToLoop;

    fn on_open(&mut self, conn: &mut ConnCtx<'_>) -> Session {
        if conn.listener().index() == LISTENER_HTTP {
            conn.set_idle_timeout(Some(http::KEEP_ALIVE));
            return Session::Http(HttpSession::default());
        }
        let ws = matches!(conn.listener().index(), LISTENER_WS | LISTENER_WSS).then(Box::default);
        conn.set_idle_timeout(Some(self.shared.config.connect_timeout));
        let login_deadline = conn.now() + self.shared.config.connect_timeout;
        self.logins.push_back((login_deadline, conn.id()));
        Session::Im(Box::new(ImSession {
            phase: Phase::AwaitConnect,
            // CONNECT has the same layout in every version; decode it with the latest.
            version: LATEST_VERSION,
            uid: String::new(),
            device_flag: 0,
            level: 0,
            cipher: None,
            pending: VecDeque::new(),
            pending_bytes: 0,
            on_retry_list: false,
            draining: false,
            sends: SendBucket::full(self.send_limit, self.clock_ms(conn)),
            send_kib: SendBucket::full(self.send_kib_limit, self.clock_ms(conn)),
            held: 0,
            login_deadline,
            since: 0,
            in_msgs: 0,
            out_msgs: 0,
            ws,
        }))
    }

    fn on_data(&mut self, conn: &mut ConnCtx<'_>, state: &mut Session, input: &[u8]) -> usize {
        match state {
            Session::Im(s) => {
                let consumed = if s.ws.is_some() {
                    self.on_ws_data(conn, s, input)
                } else {
                    self.on_im_data(conn, s, input)
                };
                if s.phase != Phase::Ready {
                    self.charge_prelogin(conn, s, input.len().saturating_sub(consumed));
                }
                consumed
            }
            Session::Http(h) => {
                http::on_data(&self.shared, conn, h, input, &mut self.http_deadlines)
            }
        }
    }

    fn on_message(&mut self, lp: &mut LoopCtx<'_, Session>, msg: ToLoop) {
        match msg {
            ToLoop::Authed(outcome) => self.on_authed(lp, *outcome),
            ToLoop::Frame(id, frame) => {
                if let Some((mut conn, Session::Im(s))) = lp.conn(id) {
                    self.reply_frame(&mut conn, s, frame);
                }
            }
            ToLoop::Deliver(delivery, targets) => self.on_deliver(lp, &delivery, targets),
            ToLoop::Kick {
                conn: id,
                notify,
                code,
                reason,
                after,
            } => {
                let Some((mut conn, Session::Im(s))) = lp.conn(id) else {
                    return;
                };
                if notify {
                    let packet = Packet::Disconnect(DisconnectPacket {
                        reason_code: code,
                        reason,
                    });
                    self.reply(&mut conn, s, &packet);
                }
                self.kicks.push((conn.now() + after, id));
            }
            ToLoop::Drain { window } => {
                let mut conns = lp.conn_ids();
                conns.retain(|&id| matches!(lp.conn(id), Some((_, Session::Im(_)))));
                log::info!(
                    "loop {}: closing {} client connections over {window:?}",
                    lp.loop_index(),
                    conns.len()
                );
                self.drain = Some(crate::drain::Drain::new(conns, window, lp.now()));
            }
            ToLoop::Connz { reply, only } => {
                let now = self.uptime_secs();
                let ids = only.unwrap_or_else(|| lp.conn_ids());
                let rows = ids
                    .into_iter()
                    .filter_map(|id| match lp.conn(id) {
                        Some((conn, Session::Im(s))) => s.connz_row(&conn, now),
                        _ => None,
                    })
                    .collect();
                let _ = reply.send(rows); // Never blocks: one slot per loop asked.
            }
            ToLoop::Http {
                conn: id,
                response,
                close,
            } => {
                if let Some((mut conn, _)) = lp.conn(id) {
                    conn.queue(response);
                    if close {
                        // A large response takes several writes; `close` would cut it.
                        conn.close_after_flush();
                    } else {
                        conn.resume_reading();
                    }
                }
            }
        }
    }

    fn message_weight(msg: &ToLoop) -> usize {
        msg.weight()
    }

    fn on_close(&mut self, id: ConnId, state: Session, reason: CloseReason) {
        if let Session::Im(mut s) = state {
            self.release_prelogin(&mut s);
            if s.phase == Phase::Ready {
                self.shared.registry.remove(&s.uid, id);
                if let Some(cluster) = self.shared.cluster.get() {
                    cluster.presence.logged_out(&s.uid); // `cluster/devices.rs`
                }
                self.online_webhook(&s.uid, s.device_flag, id, false);
                log::debug!("conn={id} uid={} closed: {}", s.uid, reason.name());
                // RECVs this device never acknowledged go to the user's queue, unless a
                // device that had them is still there.
                for p in &s.pending {
                    self.queue_missed(&s.uid, id, p, Miss::Gone);
                }
            }
        }
    }

    fn on_tick(&mut self, lp: &mut LoopCtx<'_, Session>) {
        let now = lp.now();
        if let Some(drain) = self.drain.as_mut() {
            for id in drain.due(now) {
                if let Some((mut conn, Session::Im(s))) = lp.conn(id) {
                    if s.ws.as_ref().is_some_and(|w| w.open) {
                        let mut payload = ws::close_code::GOING_AWAY.to_be_bytes().to_vec();
                        payload.extend_from_slice(b"server stopping");
                        conn.queue_slice(&ws::frame(ws::OP_CLOSE, &payload));
                    }
                    if s.phase == Phase::Ready {
                        // Stop sending, but read the RECVACKs already on their way for a
                        // moment: closing at once would requeue, and so deliver twice,
                        // what the device had already acknowledged.
                        s.draining = true;
                        self.kicks.push((now + crate::drain::ACK_GRACE, id));
                    } else {
                        conn.close_after_flush();
                    }
                }
            }
        }
        if !self.kicks.is_empty() {
            let (due, later): (Vec<_>, Vec<_>) =
                self.kicks.drain(..).partition(|(at, _)| *at <= now);
            self.kicks = later;
            for (_, id) in due {
                if let Some((mut conn, _)) = lp.conn(id) {
                    conn.close();
                }
            }
        }
        // Closes are bounded per tick: thousands of connections opened together (a storm
        // that never logs in) expire together, and closing them all in one turn would
        // stall every other connection of the loop for that turn.
        let mut closes = 0;
        while let Some(&(deadline, id)) = self.logins.front() {
            if deadline > now || closes == DEADLINE_CLOSES_PER_TICK {
                break;
            }
            self.logins.pop_front();
            if let Some((mut conn, Session::Im(s))) = lp.conn(id) {
                if s.phase != Phase::Ready {
                    log::debug!("conn={id} did not log in within the connect timeout; closing");
                    conn.close();
                    closes += 1;
                }
            }
        }
        let timeout = self.shared.config.http_request_timeout;
        while let Some(&(deadline, id)) = self.http_deadlines.front() {
            if deadline > now || closes == DEADLINE_CLOSES_PER_TICK {
                break;
            }
            self.http_deadlines.pop_front();
            if let Some((mut conn, Session::Http(h))) = lp.conn(id) {
                closes += usize::from(http::expire(&mut conn, h, timeout));
            }
        }
        for (old, notify) in std::mem::take(&mut self.kick_retries) {
            self.try_kick(old, notify);
        }
        for id in std::mem::take(&mut self.stalled) {
            if let Some((mut conn, state)) = lp.conn(id) {
                conn.resume_reading();
                if let Session::Im(s) = state {
                    self.drain_ws_stream(&mut conn, s);
                }
            }
        }
        // Scan at half the retry interval, as WuKongIM does (60 s retry, 30 s scan).
        if now.duration_since(self.last_retry_scan) >= self.shared.config.recv_retry_interval / 2 {
            self.last_retry_scan = now;
            self.scan_retries(lp);
        }
    }
}
