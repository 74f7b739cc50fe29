//! The engine's `Handler` for Ruyi: the binary protocol on the TCP listener and HTTP/1.1
//! on the API listener. One `Gateway` per event loop; everything here runs on that loop's
//! thread and never blocks (R1 of `reactor/RULES.md`): logins go to the auth pool, sends
//! to the channel pool, HTTP requests to the HTTP pool, and answers come back as
//! [`ToLoop`] messages.
//!
//! Per connection the loop keeps a [`Session`]: the login phase, the session version, the
//! AES key, and the RECVs still waiting for a RECVACK (retried from `on_tick`).

use crate::auth::AuthRequest;
use crate::channel::SendRequest;
use crate::http::{self, HttpSession};
use crate::message::{deliver_weight, ChannelKey, Delivery, QueueSlot, Reply, Target, SYSTEM_UID};
use crate::rate::{SendBucket, SendLimit};
use crate::registry::{Device, Kick};
use crate::shared::{SharedRef, Submit};
use crate::storage::writer::LaneJob;
use crate::ws;
use bytes::{Bytes, BytesMut};
use crossbeam_channel::TrySendError;
use ruyi_proto::types::{channel_type, reason};
use ruyi_proto::{
    decode_packet, person_channel_id, ConnectPacket, DisconnectPacket, Flags, Packet, RecvHead,
    SendPacket, SessionCipher, Setting, SubackPacket, LATEST_VERSION, PONG,
};
use ruyi_reactor::{CloseReason, ConnCtx, ConnId, Handler, Handles, LoopCtx};
use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Listener order in the engine: binary protocol first, HTTP second, WebSocket third.
pub const LISTENER_TCP: usize = 0;
/// See [`LISTENER_TCP`].
pub const LISTENER_HTTP: usize = 1;
/// See [`LISTENER_TCP`].
pub const LISTENER_WS: usize = 2;

/// How long a kicked connection lives after its DISCONNECT, so the notice reaches the
/// client before the socket closes (PROTOCOL.md §6.4).
pub const KICK_GRACE: Duration = Duration::from_secs(2);

/// Bytes of unacknowledged RECV frames kept per connection for retry. The count cap alone
/// would let 256 large encrypted messages pin hundreds of MiB; past this the oldest entries
/// leave the retry list and go to the user's offline queue (never silently).
pub const MAX_PENDING_ACK_BYTES: usize = 1 << 20;

/// The largest frame a connection may send before it has logged in. A CONNECT is a few
/// hundred bytes (uid, token, device id, a 44-byte key); without this bound 1,000
/// half-sent "CONNECT"s declaring 1 MiB each held 2.2 GB for the 4 s login window.
pub const PRELOGIN_MAX_FRAME: usize = 16 << 10;

/// Messages from the pools to a loop.
#[derive(Debug)]
pub enum ToLoop {
    /// A login finished (either way).
    Authed(Box<AuthOutcome>),
    /// A ready-made protocol frame for one connection (SENDACK).
    Frame(ConnId, Bytes),
    /// One message for some connections of this loop.
    Deliver(Arc<Delivery>, Vec<Target>),
    /// A newer login or an API call replaced this connection.
    Kick {
        /// Which connection.
        conn: ConnId,
        /// Send DISCONNECT with `code` first.
        notify: bool,
        /// The DISCONNECT's reason code: 12 (kicked) or 19 (banned).
        code: u8,
        /// Reason text of the DISCONNECT.
        reason: String,
        /// Close this long after the notice.
        after: Duration,
    },
    /// The server is stopping: close this loop's client connections over `window`
    /// (`drain.rs`).
    Drain {
        /// The drain window.
        window: Duration,
    },
    /// `/connz`: describe this loop's logged-in connections (only these, when given) on
    /// the sender.
    Connz {
        /// Where the rows go (one slot per loop asked: never blocks).
        reply: crossbeam_channel::Sender<Vec<crate::connz::ConnRow>>,
        /// Only these connections (a `uid` filter), or every one.
        only: Option<Vec<ConnId>>,
    },
    /// An HTTP response; `close` ends the connection after it.
    Http {
        /// Which connection.
        conn: ConnId,
        /// The whole response.
        response: Bytes,
        /// `Connection: close` semantics.
        close: bool,
    },
}

impl ToLoop {
    /// The kick of a connection a newer login of the same device replaced (PROTOCOL.md
    /// §6.4), on this node or another (`cluster/presence.rs`).
    pub fn replaced_by_login(conn: ConnId, notify: bool) -> ToLoop {
        ToLoop::Kick {
            conn,
            notify,
            code: reason::CONNECT_KICK,
            reason: "login in other device".into(),
            after: KICK_GRACE,
        }
    }
}

/// The result of a login, from an auth worker.
#[derive(Debug)]
pub struct AuthOutcome {
    /// The connection that sent CONNECT.
    pub conn: ConnId,
    /// The CONNACK to send (success or refusal).
    pub connack: Bytes,
    /// On success, what the session needs.
    pub session: Option<LoginInfo>,
}

/// What a successful login gives the session.
#[derive(Debug)]
pub struct LoginInfo {
    /// The user.
    pub uid: String,
    /// The client's device flag.
    pub device_flag: u8,
    /// 0 slave, 1 master.
    pub level: u8,
    /// The client's device id.
    pub device_id: String,
    /// Orders logins across a cluster's nodes (0 on a single node).
    pub epoch: i64,
    /// min(client version, 5).
    pub version: u8,
    /// The connection's cipher (None without encryption).
    pub cipher: Option<SessionCipher>,
}

/// Login state of a binary-protocol connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Nothing received yet; the first frame must be CONNECT.
    AwaitConnect,
    /// CONNECT handed to the auth pool; reading is paused so later frames wait (§6.1).
    Authenticating,
    /// Logged in.
    Ready,
}

/// A RECV waiting for its RECVACK.
///
/// It leaves the retry list in one of two ways: acknowledged, or **missed** (the
/// connection closed, was replaced by a new login, ran out of retries, or the list was
/// full and this was the oldest). A missed delivery goes to the user's offline queue at
/// its reserved seq ([`Gateway::queue_missed`]); nothing leaves the list silently.
#[derive(Debug)]
struct PendingAck {
    message: Arc<crate::message::Message>,
    /// The delivery's offline policy says "queue a miss" (`Delivery::queued`), the
    /// receiver has a reserved seq, and no entry is stored yet.
    requeue: bool,
    /// The receiver's queue slot (`message::QueueSlot`).
    slot: QueueSlot,
    /// See `Delivery::push_no`.
    push_no: u64,
    frame: Bytes,
    sent_at: Instant,
    attempts: u32,
}

/// Why a delivery missed (see [`Gateway::queue_missed`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Miss {
    /// The connection closed, or was gone when the delivery came.
    Gone,
    /// The connection lives but stopped retrying the RECV.
    GaveUp,
}

impl PendingAck {
    fn new(delivery: &Delivery, recipient: u32, frame: Bytes, now: Instant) -> PendingAck {
        let slot = delivery.slot(recipient);
        PendingAck {
            message: Arc::clone(&delivery.message),
            requeue: delivery.queued && slot.seq > 0 && !slot.stored,
            slot,
            push_no: delivery.push_no,
            frame,
            sent_at: now,
            attempts: 0,
        }
    }
}

impl ToLoop {
    /// The work this message is for a loop (`Handler::message_weight`).
    pub fn weight(&self) -> usize {
        match self {
            ToLoop::Deliver(d, targets) => deliver_weight(targets.len(), d.message.payload.len()),
            // A walk over the loop's connections: the rest of the turn is for sockets.
            ToLoop::Connz { .. } => CONNZ_WEIGHT,
            _ => 1,
        }
    }
}

/// The weight of a `/connz` walk in a loop's per-turn budget: most of one turn.
const CONNZ_WEIGHT: usize = 512;

/// A binary-protocol connection.
#[derive(Debug)]
pub struct ImSession {
    phase: Phase,
    version: u8,
    uid: String,
    device_flag: u8,
    level: u8,
    cipher: Option<SessionCipher>,
    pending: VecDeque<PendingAck>,
    /// Bytes of the frames in `pending`.
    pending_bytes: usize,
    /// WebSocket framing state; `None` on the TCP listener.
    ws: Option<Box<WsState>>,
    /// True while the connection is on the loop's retry list.
    on_retry_list: bool,
    /// The server is stopping and this connection's turn came (`drain.rs`): nothing more
    /// is sent to it, its acknowledgements are still read until it is closed.
    draining: bool,
    /// SEND credit (`Config::max_sends_per_sec`).
    sends: SendBucket,
    /// SEND byte credit in KiB (`Config::max_send_bytes_per_sec`).
    send_kib: SendBucket,
    /// Input bytes held for this connection while it is not logged in, as charged to the
    /// server-wide budget (`Config::prelogin_budget_bytes`).
    held: usize,
    /// When it logged in, in seconds since the server started (`/connz`).
    since: u32,
    /// SENDs taken and RECVs sent since the login (`/connz`).
    in_msgs: u32,
    out_msgs: u32,
}

impl ImSession {
    /// This connection as `/connz` shows it; `None` before the login.
    fn connz_row(&self, conn: &ConnCtx<'_>, now_secs: u32) -> Option<crate::connz::ConnRow> {
        (self.phase == Phase::Ready).then(|| crate::connz::ConnRow {
            conn: conn.id(),
            uid: self.uid.clone(),
            device_flag: self.device_flag,
            device_level: self.level,
            peer: conn.peer_addr().ok(),
            uptime: u64::from(now_secs.saturating_sub(self.since)),
            idle: conn.idle().as_secs(),
            pending_bytes: conn.queued_bytes(),
            in_msgs: self.in_msgs,
            out_msgs: self.out_msgs,
        })
    }
}

/// The WebSocket side of a connection on the WS listener.
#[derive(Debug, Default)]
struct WsState {
    /// The upgrade is done.
    open: bool,
    decoder: ws::Decoder,
    /// Unmasked data payloads not yet consumed as protocol frames: one byte stream, as
    /// frames may span messages (PROTOCOL.md §10.2).
    stream: Vec<u8>,
}

/// Per-connection state.
#[derive(Debug)]
pub enum Session {
    /// Binary protocol.
    Im(Box<ImSession>),
    /// HTTP API.
    Http(HttpSession),
}

/// What handling one packet asks of the read loop.
enum Flow {
    /// Consumed; go on with the next frame.
    Next,
    /// Consumed; stop reading (login in progress).
    Pause,
    /// Not consumed: a pool is full. Pause and offer the frame again later (backpressure).
    Stall,
    /// Close the connection.
    Close,
}

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
    /// Client connections still to close, once the server is stopping.
    drain: Option<crate::drain::Drain>,
}

impl Gateway {
    /// The handler for one loop.
    pub fn new(shared: SharedRef, loops: Handles<ToLoop>) -> Gateway {
        Gateway {
            send_limit: shared.config.send_limit(),
            send_kib_limit: shared.config.send_bytes_limit(),
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

    /// The largest frame `s` may send now: small until it has logged in.
    fn frame_limit(&self, s: &ImSession) -> usize {
        if s.phase == Phase::Ready {
            self.shared.config.max_frame_bytes
        } else {
            PRELOGIN_MAX_FRAME.min(self.shared.config.max_frame_bytes)
        }
    }

    /// Charges what a connection that has not logged in holds (`unread` input bytes, plus
    /// its WebSocket stream) to the server-wide budget; past the budget, a connection that
    /// holds anything is closed (counted): a storm of half-sent logins costs at most the
    /// budget, however many addresses it comes from.
    fn charge_prelogin(&self, conn: &mut ConnCtx<'_>, s: &mut ImSession, unread: usize) {
        let held = unread + s.ws.as_ref().map_or(0, |w| w.stream.len());
        let total = &self.shared.prelogin_bytes;
        let now = if held >= s.held {
            total.fetch_add(held - s.held, Relaxed) + (held - s.held)
        } else {
            total.fetch_sub(s.held - held, Relaxed) - (s.held - held)
        };
        s.held = held;
        if held > 0 && now > self.shared.config.prelogin_budget_bytes {
            self.shared.counters.prelogin_shed.fetch_add(1, Relaxed);
            log::debug!(
                "conn={} closed: unauthenticated input over budget",
                conn.id()
            );
            conn.close();
        }
    }

    /// Gives back what a connection held against the pre-login budget (logged in, or gone).
    fn release_prelogin(&self, s: &mut ImSession) {
        self.shared.prelogin_bytes.fetch_sub(s.held, Relaxed);
        s.held = 0;
    }

    /// Encodes `packet` for `version` and queues it (as one WebSocket message when `ws`).
    fn queue_packet(&mut self, conn: &mut ConnCtx<'_>, packet: &Packet, version: u8, ws: bool) {
        self.buf.clear();
        match packet.encode(version, &mut self.buf) {
            Ok(()) => emit_slice(conn, ws, &self.buf),
            Err(e) => log::error!(
                "conn={} cannot encode {:?}: {e}",
                conn.id(),
                packet.packet_type()
            ),
        }
    }

    fn on_im_data(&mut self, conn: &mut ConnCtx<'_>, s: &mut ImSession, input: &[u8]) -> usize {
        let mut consumed = 0;
        while !conn.is_closing() {
            let rest = &input[consumed..];
            let (packet, used) = match decode_packet(rest, s.version, self.frame_limit(s)) {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e) => {
                    log::debug!("conn={} uid={} bad frame: {e}; closing", conn.id(), s.uid);
                    conn.close();
                    return input.len();
                }
            };
            match self.on_packet(conn, s, packet) {
                Flow::Next => consumed += used,
                Flow::Pause => {
                    consumed += used;
                    conn.pause_reading();
                    break;
                }
                Flow::Stall => {
                    conn.pause_reading();
                    self.stalled.push(conn.id());
                    break;
                }
                Flow::Close => {
                    conn.close();
                    return input.len();
                }
            }
        }
        consumed
    }

    /// WebSocket input: the upgrade, then client frames; data payloads join the protocol
    /// stream, which the binary-protocol path consumes as from TCP.
    fn on_ws_data(&mut self, conn: &mut ConnCtx<'_>, s: &mut ImSession, input: &[u8]) -> usize {
        let Some(state) = s.ws.as_mut() else { return 0 };
        let mut consumed = 0;
        if !state.open {
            match ws::parse_handshake(input) {
                ws::Handshake::Partial => return 0,
                ws::Handshake::Reject(status, why) => {
                    log::debug!("conn={} refused WebSocket upgrade: {why}", conn.id());
                    conn.queue_slice(ws::reject_response(status, why).as_bytes());
                    conn.close();
                    return input.len();
                }
                ws::Handshake::Accept {
                    response,
                    consumed: head,
                } => {
                    conn.queue_slice(response.as_bytes());
                    state.open = true;
                    consumed = head;
                }
            }
        }
        // One maximal protocol frame plus its header may span several messages.
        let limit = self.frame_limit(s);
        let max_message = limit + 8;
        let Some(state) = s.ws.as_mut() else { return 0 };
        while consumed < input.len() {
            match state.decoder.decode(&input[consumed..], max_message) {
                Ok(None) => break,
                Err(e) => {
                    log::debug!("conn={} WebSocket protocol error: {}", conn.id(), e.why);
                    conn.queue_slice(&ws::frame(ws::OP_CLOSE, &e.code.to_be_bytes()));
                    conn.close();
                    return input.len();
                }
                Ok(Some((event, used))) => {
                    consumed += used;
                    match event {
                        ws::Event::Data(bytes) => state.stream.extend_from_slice(&bytes),
                        // Before login a ping gets no pong: a client that never reads
                        // could otherwise pile up output the pre-login budget does not see.
                        ws::Event::Ping(payload) if s.phase == Phase::Ready => {
                            conn.queue_slice(&ws::frame(ws::OP_PONG, &payload))
                        }
                        ws::Event::Ping(_) => {}
                        ws::Event::Pong => {}
                        ws::Event::Close(_) => {
                            // Packets that arrived before the close frame still count
                            // (a SEND then close() in one burst), as with TCP and FIN.
                            self.drain_ws_stream(conn, s);
                            conn.queue_slice(&ws::frame(
                                ws::OP_CLOSE,
                                &ws::close_code::NORMAL.to_be_bytes(),
                            ));
                            conn.close();
                            return input.len();
                        }
                    }
                }
            }
        }
        if state.stream.len() > limit + limit.min(64 << 10) {
            // The protocol side is paused (login, backpressure) and the client keeps
            // sending: same bound as the engine's input cap.
            conn.close();
            return input.len();
        }
        self.drain_ws_stream(conn, s);
        consumed
    }

    /// Runs the protocol stream of a WebSocket connection through the binary-protocol
    /// path. Called on new input and after the session resumes (login done, backpressure
    /// over), because the engine only re-offers raw socket bytes, not this stream.
    fn drain_ws_stream(&mut self, conn: &mut ConnCtx<'_>, s: &mut ImSession) {
        let Some(mut stream) = s.ws.as_mut().map(|w| std::mem::take(&mut w.stream)) else {
            return;
        };
        if !stream.is_empty() && !conn.is_reading_paused() {
            let used = self.on_im_data(conn, s, &stream);
            stream.drain(..used);
        }
        if stream.is_empty() {
            stream = Vec::new(); // An idle connection keeps no input buffer.
        } else if stream.capacity() > 4 * stream.len() && stream.capacity() > 4096 {
            stream.shrink_to_fit();
        }
        if let Some(w) = s.ws.as_mut() {
            w.stream = stream;
        }
    }

    fn on_packet(&mut self, conn: &mut ConnCtx<'_>, s: &mut ImSession, packet: Packet) -> Flow {
        match (s.phase, packet) {
            (Phase::AwaitConnect, Packet::Connect(c)) => self.on_connect(conn, s, c),
            (Phase::AwaitConnect, other) => {
                log::debug!(
                    "conn={} first frame is {:?}, not CONNECT; closing",
                    conn.id(),
                    other.packet_type()
                );
                Flow::Close
            }
            (Phase::Authenticating, _) => Flow::Stall, // Not reached: reading is paused.
            (Phase::Ready, Packet::Ping) => {
                emit_slice(conn, s.ws.is_some(), &PONG);
                Flow::Next
            }
            (Phase::Ready, Packet::Send(send)) => self.on_send(conn, s, send),
            (Phase::Ready, Packet::Recvack(ack)) => {
                self.on_recvack(s, ack.message_id);
                Flow::Next
            }
            (Phase::Ready, Packet::Sub(sub)) => {
                // Subscriptions are not supported for any channel type yet (PROTOCOL.md
                // §5.10): answer 23 so the SDK logs it and goes on.
                let ack = Packet::Suback(SubackPacket {
                    sub_no: sub.sub_no,
                    channel_id: sub.channel_id,
                    channel_type: sub.channel_type,
                    action: sub.action,
                    reason_code: reason::NOT_SUPPORT_CHANNEL_TYPE,
                });
                self.queue_packet(conn, &ack, s.version, s.ws.is_some());
                Flow::Next
            }
            (Phase::Ready, Packet::Disconnect(_)) => Flow::Close,
            (Phase::Ready, other) => {
                log::debug!(
                    "conn={} uid={} sent a {:?}; closing",
                    conn.id(),
                    s.uid,
                    other.packet_type()
                );
                Flow::Close
            }
        }
    }

    fn on_connect(&mut self, conn: &mut ConnCtx<'_>, s: &mut ImSession, c: ConnectPacket) -> Flow {
        if self.drain.is_some() {
            // Stopping: a close without CONNACK, which the SDKs retry (a refusing CONNACK
            // would stop them for good, PROTOCOL.md §6).
            return Flow::Close;
        }
        if c.uid.is_empty()
            || c.uid.contains(['@', '#', '&'])
            || crate::message::is_reserved_id(&c.uid)
        {
            log::debug!(
                "conn={} CONNECT with invalid uid {:?}; closing",
                conn.id(),
                c.uid
            );
            return Flow::Close;
        }
        s.uid.clone_from(&c.uid);
        let request = AuthRequest {
            conn: conn.id(),
            connect: c,
            peer: conn.peer_addr().ok().map(|a| a.ip()),
        };
        match self.shared.auth.try_send(request) {
            Ok(()) => {
                s.phase = Phase::Authenticating;
                conn.set_idle_timeout(Some(self.shared.config.connect_timeout));
                Flow::Pause
            }
            Err(TrySendError::Full(_)) => {
                // A login storm beyond the auth pool's queue: shed this one; the SDK
                // reconnects after 3 s.
                log::warn!("auth queue full; closing conn={}", conn.id());
                Flow::Close
            }
            Err(TrySendError::Disconnected(_)) => Flow::Close,
        }
    }

    fn on_send(&mut self, conn: &mut ConnCtx<'_>, s: &mut ImSession, send: SendPacket) -> Flow {
        // Before the decryption: a flood over the limit must cost as little as possible.
        // Counted in messages and in bytes: a few huge SENDs cost as much as many small.
        let now_ms = self.clock_ms(conn);
        // Everything the SEND makes the server store and forward, not the payload alone.
        let bytes = send.payload.len()
            + send.client_msg_no.len()
            + send.topic.len()
            + send.channel_id.len()
            + send.msg_key.len();
        let kib = u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX);
        let counted = s.sends.take(self.send_limit, now_ms);
        if !counted || !s.send_kib.take_n(self.send_kib_limit, now_ms, kib) {
            if counted {
                s.sends.refund(self.send_limit);
            }
            self.shared.counters.rate_limited.fetch_add(1, Relaxed);
            let outcome = crate::message::SendOutcome {
                message_id: 0,
                message_seq: 0,
                reason: reason::RATE_LIMIT,
            };
            self.queue_sendack(conn, &send, outcome, s.version, s.ws.is_some());
            return Flow::Next;
        }
        if send.client_msg_no.contains('\0') || send.topic.contains('\0') {
            // Stored as text, which cannot hold NUL (see `message::is_reserved_id`).
            let ws = s.ws.is_some();
            return self.refuse_send(conn, &send, reason::PAYLOAD_DECODE_ERROR, s.version, ws);
        }
        let encrypted = s.cipher.is_some() && !send.setting.has(Setting::NO_ENCRYPT);
        let payload = match (&s.cipher, encrypted) {
            (Some(cipher), true) => match cipher.open_send(&send) {
                Ok(plain) => Bytes::from(plain),
                Err(e) => {
                    log::debug!("conn={} uid={} SEND refused: {e}", conn.id(), s.uid);
                    let (version, ws) = (s.version, s.ws.is_some());
                    let code = reason::PAYLOAD_DECODE_ERROR;
                    return self.refuse_send(conn, &send, code, version, ws);
                }
            },
            _ => send.payload.clone(),
        };
        if send.channel_id.is_empty()
            || send.channel_id.contains(['@', '#', '&'])
            || crate::message::is_reserved_id(&send.channel_id)
        {
            // A person id with '@' would forge a combined id, a reserved one a system
            // channel (`X____cmd`); an empty one names nothing.
            let ws = s.ws.is_some();
            return self.refuse_send(conn, &send, reason::CHANNEL_ID_ERROR, s.version, ws);
        }
        let key = if send.channel_type == channel_type::PERSON {
            ChannelKey::new(
                person_channel_id(&s.uid, &send.channel_id),
                channel_type::PERSON,
            )
        } else {
            ChannelKey::new(send.channel_id.clone(), send.channel_type)
        };
        let (ack_flags, ack_seq) = (send.flags, send.client_seq);
        let request = SendRequest {
            from_uid: s.uid.clone(),
            from_conn: Some(conn.id()),
            key,
            addressed_to: send.channel_id,
            client_msg_no: send.client_msg_no,
            flags: send.flags.with(Flags::DUP, false),
            setting: send.setting.0,
            expire: send.expire,
            topic: send.topic,
            payload,
            system: false,
            recipients: None,
            store_as: None,
            reply: Reply::Conn {
                conn: conn.id(),
                client_seq: send.client_seq,
                flags: send.flags,
                received: Instant::now(),
            },
        };
        match self.shared.try_submit_send(request) {
            Ok(()) => {
                self.shared.counters.sends_in.fetch_add(1, Relaxed);
                s.in_msgs = s.in_msgs.wrapping_add(1);
                Flow::Next
            }
            Err(Submit::Full) => {
                // The SEND is read again once the queue drains: it must not pay twice.
                s.sends.refund(self.send_limit);
                s.send_kib.refund_n(self.send_kib_limit, kib);
                Flow::Stall
            }
            Err(Submit::Unroutable) => {
                // A cluster node that cannot reach the leader now (`cluster/relay.rs`).
                let ack = Packet::Sendack(ruyi_proto::SendackPacket {
                    flags: ack_flags,
                    message_id: 0,
                    client_seq: ack_seq,
                    message_seq: 0,
                    reason_code: reason::SYSTEM_ERROR,
                });
                let (version, ws) = (s.version, s.ws.is_some());
                self.queue_packet(conn, &ack, version, ws);
                Flow::Next
            }
            Err(Submit::Closed) => Flow::Close,
        }
    }

    /// Milliseconds of the server's clock at this loop turn, for the send buckets.
    /// Seconds since the server started (`/connz`'s uptimes).
    fn uptime_secs(&self) -> u32 {
        u32::try_from(self.shared.started.elapsed().as_secs()).unwrap_or(u32::MAX)
    }

    fn clock_ms(&self, conn: &ConnCtx<'_>) -> u64 {
        let elapsed = conn.now().saturating_duration_since(self.shared.started);
        u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
    }

    /// Answers `send` with SENDACK `code`, nothing stored; the refusal still gets a message
    /// id, as WuKongIM gives one.
    fn refuse_send(
        &mut self,
        conn: &mut ConnCtx<'_>,
        send: &SendPacket,
        code: u8,
        version: u8,
        ws: bool,
    ) -> Flow {
        let outcome = crate::message::SendOutcome {
            message_id: self.shared.ids.next(),
            message_seq: 0,
            reason: code,
        };
        self.queue_sendack(conn, send, outcome, version, ws);
        Flow::Next
    }

    fn queue_sendack(
        &mut self,
        conn: &mut ConnCtx<'_>,
        send: &SendPacket,
        o: crate::message::SendOutcome,
        version: u8,
        ws: bool,
    ) {
        let ack = Packet::Sendack(ruyi_proto::SendackPacket {
            flags: send.flags,
            message_id: o.message_id,
            client_seq: send.client_seq,
            message_seq: o.message_seq,
            reason_code: o.reason,
        });
        self.queue_packet(conn, &ack, version, ws);
    }

    /// Clears the retry entry of an acknowledged RECV, found by message id whatever the
    /// flags say (the JS SDK sends none). Unknown ids are ignored (JSSDK.md §6: the SDK can
    /// mangle ids). A RECV that stands for a stored queue entry marks it delivered: any
    /// device for an ordinary message, a master device for a SyncOnce one (HTTP_API.md §7).
    fn on_recvack(&mut self, s: &mut ImSession, message_id: i64) {
        let Some(pos) = s
            .pending
            .iter()
            .position(|p| p.message.message_id == message_id)
        else {
            return;
        };
        let Some(entry) = s.pending.remove(pos) else {
            return;
        };
        s.pending_bytes -= entry.frame.len();
        let master = s.level == 1;
        if entry.slot.stored && entry.slot.seq > 0 && (master || !entry.message.flags.sync_once()) {
            let job = LaneJob::Delivered {
                uid: s.uid.clone(),
                seq: entry.slot.seq,
            };
            self.send_lane(job);
        }
    }

    /// Hands offline-queue work to storage on the lane that never refuses (`mailbox.rs`),
    /// or to the cluster's leader (`Shared::send_lane`).
    fn send_lane(&self, job: LaneJob) {
        if !self.shared.send_lane(job) {
            // Only once storage has stopped, after the loops: nothing is left to do it.
            log::error!("storage writer gone; offline-queue work lost");
        }
    }

    fn on_authed(&mut self, lp: &mut LoopCtx<'_, Session>, outcome: AuthOutcome) {
        let Some((mut conn, Session::Im(s))) = lp.conn(outcome.conn) else {
            return; // Closed while logging in: never registered, nothing to undo.
        };
        emit(&mut conn, s.ws.is_some(), outcome.connack);
        let Some(info) = outcome.session else {
            conn.close();
            return;
        };
        s.phase = Phase::Ready;
        s.since = self.uptime_secs();
        self.release_prelogin(s);
        s.version = info.version;
        s.device_flag = info.device_flag;
        s.level = info.level;
        s.cipher = info.cipher;
        conn.set_idle_timeout(Some(self.shared.config.idle_timeout));
        conn.resume_reading();
        self.drain_ws_stream(&mut conn, s);
        let device = Device {
            conn: conn.id(),
            device_flag: info.device_flag,
            level: info.level,
            device_id: info.device_id,
            login_no: 0, // Set by the registry.
            epoch: info.epoch,
        };
        log::debug!(
            "conn={} uid={} logged in (v{}, flag {})",
            conn.id(),
            s.uid,
            s.version,
            s.device_flag
        );
        if let Some(cluster) = self.shared.cluster.get() {
            // The same device on other nodes goes too (`cluster/presence.rs`).
            cluster.presence.logged_in(&s.uid, &device);
        }
        let kicks = self.shared.registry.add(&s.uid, device);
        self.online_webhook(&s.uid, s.device_flag, conn.id(), true);
        for Kick { conn: old, notify } in kicks {
            self.try_kick(old, notify);
        }
    }

    fn on_deliver(
        &mut self,
        lp: &mut LoopCtx<'_, Session>,
        delivery: &Delivery,
        targets: Vec<Target>,
    ) {
        let m = &delivery.message;
        let persistent = !m.flags.no_persist();
        let mut shared_frames: Vec<(Variant, Bytes)> = Vec::new();
        let mut delivered = 0u64;
        let mut missed = Vec::new();
        let now = lp.now();
        for target in targets {
            let id = target.conn;
            let Some((mut conn, Session::Im(s))) = lp.conn(id) else {
                if let Some(Session::Im(s)) = lp.closing(id) {
                    // Closing but not closed: the registry still counts this device, so
                    // deciding now would find the user "online". Leave the message with
                    // the connection; `on_close` requeues it once the device is gone.
                    if persistent {
                        let p = PendingAck::new(delivery, target.recipient, Bytes::new(), now);
                        if p.requeue {
                            s.pending.push_back(p);
                        }
                    }
                    continue;
                }
                // Gone since the commit: its user may need a queue entry instead.
                missed.push(target);
                continue;
            };
            if s.phase != Phase::Ready {
                continue;
            }
            if s.draining {
                // Not sent: kept for `on_close` to requeue, as for a closing connection.
                if persistent {
                    let p = PendingAck::new(delivery, target.recipient, Bytes::new(), now);
                    if p.requeue {
                        s.pending.push_back(p);
                    }
                }
                continue;
            }
            let view = RecvView::of(delivery, &s.uid, target.recipient);
            let frame = match &s.cipher {
                Some(cipher) if !Setting(m.setting).has(Setting::NO_ENCRYPT) => {
                    // Every connection has its own key: one AES pass and msgKey each, in
                    // the loop's scratch buffers (no allocation but the frame).
                    let head = view.head(m);
                    let (wire, key) = cipher.seal_recv_into(&head, &m.payload, &mut self.seal);
                    let key = std::str::from_utf8(&key).unwrap_or_default();
                    self.buf.clear();
                    if head.encode(s.version, key, wire, &mut self.buf).is_err() {
                        self.unencodable(&s.uid, id, delivery, target.recipient, now);
                        continue;
                    }
                    self.buf.split().freeze()
                }
                _ => {
                    // Unencrypted: one frame per variant, shared by every receiver on this
                    // loop; the common case allocates nothing per receiver.
                    match shared_frames
                        .iter()
                        .find(|(v, _)| v.matches(&view, s.version))
                    {
                        Some((_, f)) => f.clone(),
                        None => {
                            self.buf.clear();
                            if view
                                .head(m)
                                .encode(s.version, "", &m.payload, &mut self.buf)
                                .is_err()
                            {
                                self.unencodable(&s.uid, id, delivery, target.recipient, now);
                                continue;
                            }
                            let f = self.buf.split().freeze();
                            shared_frames.push((Variant::of(&view, s.version), f.clone()));
                            f
                        }
                    }
                }
            };
            emit(&mut conn, s.ws.is_some(), frame.clone());
            delivered += 1;
            s.out_msgs = s.out_msgs.wrapping_add(1);
            if persistent {
                s.pending_bytes += frame.len();
                s.pending
                    .push_back(PendingAck::new(delivery, target.recipient, frame, now));
                // A full retry list drops its oldest RECV into the user's queue.
                while s.pending.len() > self.shared.config.max_pending_acks
                    || (s.pending_bytes > MAX_PENDING_ACK_BYTES && s.pending.len() > 1)
                {
                    let Some(old) = s.pending.pop_front() else {
                        break;
                    };
                    s.pending_bytes -= old.frame.len();
                    self.shared.counters.evicted_recvs.fetch_add(1, Relaxed);
                    self.queue_missed(&s.uid, id, &old, Miss::GaveUp);
                }
                if !s.on_retry_list {
                    s.on_retry_list = true;
                    self.retry_list.push(id);
                }
            }
        }
        if m.payload.len() > ruyi_proto::SealScratch::KEEP_BYTES / 6 {
            self.seal.trim(); // A rare large message: its buffers are not kept.
        }
        // One shared-counter update per command, not per receiver: the loops would
        // otherwise bounce its cache line between cores.
        self.shared
            .counters
            .deliveries
            .fetch_add(delivered, Relaxed);
        for target in missed {
            if let Some(uid) = delivery.recipients.get(target.recipient as usize) {
                let p = PendingAck::new(delivery, target.recipient, Bytes::new(), now);
                self.queue_missed(uid, target.conn, &p, Miss::Gone);
            }
        }
    }

    /// Asks `old`'s loop to kick it for a newer login. Never blocks a loop on another
    /// loop's inbox: a refused kick is kept and retried next tick.
    fn try_kick(&mut self, old: ConnId, notify: bool) {
        let kick = ToLoop::replaced_by_login(old, notify);
        if let Err(ruyi_reactor::TrySendFailure::Full) = self.loops.for_conn(old).try_post(kick) {
            self.kick_retries.push((old, notify));
        }
    }

    /// The `user.onlinestatus` webhook entry, with counts taken after the change
    /// (HTTP_API.md §9.2). The connection number is unique per server: loop and generation.
    fn online_webhook(&self, uid: &str, device_flag: u8, id: ConnId, online: bool) {
        let Some(hooks) = &self.shared.webhooks else {
            return;
        };
        let devices = self.shared.registry.devices(uid);
        let same_flag = devices
            .iter()
            .filter(|d| d.device_flag == device_flag)
            .count();
        let conn_number = ((id.loop_index() as u64) << 32) | u64::from(id.generation());
        hooks.online_status(format!(
            "{uid}-{device_flag}-{}-{conn_number}-{same_flag}-{}",
            u8::from(online),
            devices.len()
        ));
    }

    /// A RECV that cannot be encoded for this connection's protocol version: the device
    /// can never get it live, so the user's queue does.
    fn unencodable(&self, uid: &str, conn: ConnId, d: &Delivery, recipient: u32, now: Instant) {
        log::error!(
            "conn={conn} uid={uid} cannot encode RECV {}",
            d.message.message_id
        );
        let p = PendingAck::new(d, recipient, Bytes::new(), now);
        self.queue_missed(uid, conn, &p, Miss::GaveUp);
    }

    /// A delivery to `conn` missed (see [`PendingAck`]): queue it for `uid`.
    ///
    /// When the connection went (`Miss::Gone`), not while a device that had the message
    /// when it was pushed is still connected: it holds the message, or queues it when it
    /// goes (registry invariants). A connection that replaced this one logged in later, so
    /// it does not count. When the connection gave the message up but lives on
    /// (`Miss::GaveUp`: out of retries, or pushed out of a full retry list), always: the
    /// other devices may have given it up the same way, and a second entry is impossible
    /// (the writer checks), so the worst case is the message offered again.
    fn queue_missed(&self, uid: &str, conn: ConnId, p: &PendingAck, miss: Miss) {
        if !p.requeue {
            return;
        }
        if miss == Miss::Gone && self.shared.registry.has_older_device(uid, conn, p.push_no) {
            return;
        }
        self.send_lane(LaneJob::Requeue {
            uid: uid.to_owned(),
            message: Arc::clone(&p.message),
            reserved: p.slot.seq,
        });
    }

    /// Re-sends RECVs that waited longer than the retry interval, byte for byte, at most
    /// `recv_retry_limit` times each (PROTOCOL.md §9.4).
    fn scan_retries(&mut self, lp: &mut LoopCtx<'_, Session>) {
        let interval = self.shared.config.recv_retry_interval;
        let limit = self.shared.config.recv_retry_limit;
        let now = lp.now();
        let mut keep = Vec::with_capacity(self.retry_list.len());
        for id in std::mem::take(&mut self.retry_list) {
            let Some((mut conn, Session::Im(s))) = lp.conn(id) else {
                continue;
            };
            if s.draining {
                continue; // Nothing more is sent; `on_close` requeues what is pending.
            }
            let mut dropped_bytes = 0;
            let mut exhausted = Vec::new();
            let ws = s.ws.is_some();
            s.pending.retain_mut(|p| {
                if now.duration_since(p.sent_at) < interval {
                    return true;
                }
                if p.attempts >= limit {
                    dropped_bytes += p.frame.len();
                    exhausted.push(PendingAck {
                        message: Arc::clone(&p.message),
                        frame: Bytes::new(),
                        ..*p
                    });
                    return false;
                }
                p.attempts += 1;
                p.sent_at = now;
                emit(&mut conn, ws, p.frame.clone());
                self.shared.counters.retries.fetch_add(1, Relaxed);
                true
            });
            s.pending_bytes -= dropped_bytes;
            // Out of retries: the device is not taking it; the user's queue does.
            for p in &exhausted {
                self.queue_missed(&s.uid, id, p, Miss::GaveUp);
            }
            if s.pending.is_empty() {
                s.on_retry_list = false;
            } else {
                keep.push(id);
            }
        }
        self.retry_list = keep;
    }
}

/// What differs between receivers of one message (PROTOCOL.md §5.5, §8.2), borrowed from
/// the message: person chats show the peer as the channel; the sender's own other devices
/// get no red dot; SyncOnce messages carry the receiver's queue seq; the system uid shows
/// as an empty sender.
#[derive(Debug)]
struct RecvView<'a> {
    setting: Setting,
    channel_id: &'a str,
    from_uid: &'a str,
    red_dot: bool,
    seq: u32,
}

impl<'a> RecvView<'a> {
    fn of(delivery: &'a Delivery, receiver: &str, recipient: u32) -> RecvView<'a> {
        let m = &delivery.message;
        // Groups show the channel as the sender addressed it: the same as the storage id,
        // except for command messages stored under `X____cmd` (PROTOCOL.md §8.4).
        let channel_id = if m.channel.channel_type != channel_type::PERSON {
            &m.addressed_to
        } else if m.addressed_to == receiver {
            &m.from_uid
        } else {
            &m.addressed_to
        };
        let slot = delivery.slot(recipient);
        let seq = if m.flags.sync_once() && slot.stored && slot.seq > 0 {
            slot.seq
        } else {
            m.message_seq
        };
        RecvView {
            setting: Setting(m.setting),
            channel_id,
            from_uid: if m.from_uid == SYSTEM_UID {
                ""
            } else {
                &m.from_uid
            },
            red_dot: m.flags.red_dot() && m.from_uid != receiver,
            seq,
        }
    }

    /// Whether this RECV carries stream fields at `version` (they change the layout).
    fn stream_fields(&self, version: u8) -> bool {
        self.setting.stream_fields(version)
    }

    /// The RECV without msgKey and payload (the caller passes those to `encode`), borrowed
    /// from the message: nothing is copied per receiver.
    fn head(&self, m: &'a crate::message::Message) -> RecvHead<'a> {
        RecvHead {
            flags: Flags(m.flags.0 & (Flags::NO_PERSIST | Flags::SYNC_ONCE))
                .with(Flags::RED_DOT, self.red_dot),
            setting: Setting(m.setting),
            from_uid: self.from_uid,
            channel_id: self.channel_id,
            channel_type: m.channel.channel_type,
            expire: m.expire,
            client_msg_no: &m.client_msg_no,
            stream_flag: 0,
            stream_no: "",
            stream_id: m.message_id as u64,
            message_id: m.message_id,
            message_seq: self.seq,
            timestamp: m.timestamp,
            topic: &m.topic,
        }
    }
}

/// The key of one shared unencrypted RECV frame within a delivery.
#[derive(Debug)]
struct Variant {
    expire_field: bool,
    stream_fields: bool,
    channel_id: String,
    red_dot: bool,
    seq: u32,
}

impl Variant {
    fn of(view: &RecvView<'_>, version: u8) -> Variant {
        Variant {
            expire_field: version >= 3,
            stream_fields: view.stream_fields(version),
            channel_id: view.channel_id.to_owned(),
            red_dot: view.red_dot,
            seq: view.seq,
        }
    }

    fn matches(&self, view: &RecvView<'_>, version: u8) -> bool {
        self.expire_field == (version >= 3)
            && self.stream_fields == view.stream_fields(version)
            && self.red_dot == view.red_dot
            && self.seq == view.seq
            && self.channel_id == view.channel_id
    }
}

/// Queues one protocol frame: as it is on TCP, as one binary message on WebSocket (one
/// packet per message: the JS SDK cannot split messages, JSSDK.md §6).
fn emit(conn: &mut ConnCtx<'_>, ws: bool, frame: Bytes) {
    if ws {
        let mut header = [0u8; 10];
        let n = ws::frame_header(ws::OP_BINARY, frame.len(), &mut header);
        conn.queue_slice(&header[..n]);
    }
    conn.queue(frame);
}

/// [`emit`] for a borrowed frame (copied into the connection's queue).
fn emit_slice(conn: &mut ConnCtx<'_>, ws: bool, frame: &[u8]) {
    if ws {
        let mut header = [0u8; 10];
        let n = ws::frame_header(ws::OP_BINARY, frame.len(), &mut header);
        conn.queue_slice(&header[..n]);
    }
    conn.queue_slice(frame);
}

impl Handler for Gateway {
    type State = Session;
    type Message = ToLoop;

    fn on_open(&mut self, conn: &mut ConnCtx<'_>) -> Session {
        if conn.listener().index() == LISTENER_HTTP {
            conn.set_idle_timeout(Some(http::KEEP_ALIVE));
            return Session::Http(HttpSession::default());
        }
        let ws = (conn.listener().index() == LISTENER_WS).then(Box::default);
        conn.set_idle_timeout(Some(self.shared.config.connect_timeout));
        self.logins
            .push_back((conn.now() + self.shared.config.connect_timeout, conn.id()));
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
                    emit(&mut conn, s.ws.is_some(), frame);
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
                    let (version, ws) = (s.version, s.ws.is_some());
                    self.queue_packet(&mut conn, &packet, version, ws);
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
