//! What the loop keeps per connection ([`Session`]), and the pre-login bounds: the frame
//! size a connection may send before it logs in, and its share of the server-wide budget.

use super::retries::PendingAck;
use super::{Gateway, PRELOGIN_MAX_FRAME};
use crate::http::HttpSession;
use crate::rate::SendBucket;
use crate::ws;
use ruyi_proto::SessionCipher;
use ruyi_reactor::ConnCtx;
use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;

/// Login state of a binary-protocol connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Nothing received yet; the first frame must be CONNECT.
    AwaitConnect,
    /// CONNECT handed to the auth pool; reading is paused so later frames wait (§6.1).
    Authenticating,
    /// Logged in.
    Ready,
}

/// A binary-protocol connection.
#[derive(Debug)]
pub struct ImSession {
    pub(super) phase: Phase,
    pub(super) version: u8,
    pub(super) uid: String,
    pub(super) device_flag: u8,
    pub(super) level: u8,
    pub(super) cipher: Option<SessionCipher>,
    pub(super) pending: VecDeque<PendingAck>,
    /// Bytes of the frames in `pending`.
    pub(super) pending_bytes: usize,
    /// WebSocket framing state; `None` on the TCP listener.
    pub(super) ws: Option<Box<WsState>>,
    /// True while the connection is on the loop's retry list.
    pub(super) on_retry_list: bool,
    /// The server is stopping and this connection's turn came (`drain.rs`): nothing more
    /// is sent to it, its acknowledgements are still read until it is closed.
    pub(super) draining: bool,
    /// SEND credit (`Config::max_sends_per_sec`).
    pub(super) sends: SendBucket,
    /// SEND byte credit in KiB (`Config::max_send_bytes_per_sec`).
    pub(super) send_kib: SendBucket,
    /// Input bytes held for this connection while it is not logged in, as charged to the
    /// server-wide budget (`Config::prelogin_budget_bytes`).
    pub(super) held: usize,
    /// Accept + `Config::connect_timeout`: past it the loop closes the connection unless it
    /// logged in, and an auth worker drops its login unanswered (`auth::run`).
    pub(super) login_deadline: std::time::Instant,
    /// When it logged in, in seconds since the server started (`/connz`).
    pub(super) since: u32,
    /// SENDs taken and RECVs sent since the login (`/connz`).
    pub(super) in_msgs: u32,
    pub(super) out_msgs: u32,
}

impl ImSession {
    /// How this session's frames go on its socket.
    pub(super) fn wire(&self) -> super::Wire {
        match &self.ws {
            None => super::Wire::Tcp,
            Some(w) if w.rpc.is_some() => super::Wire::WsText,
            Some(_) => super::Wire::WsBinary,
        }
    }

    /// The JSON-RPC state, when the session speaks it.
    pub(super) fn rpc(&mut self) -> Option<&mut super::jsonrpc::RpcState> {
        self.ws.as_mut()?.rpc.as_deref_mut()
    }

    /// This connection as `/connz` shows it; `None` before the login.
    pub(super) fn connz_row(
        &self,
        conn: &ConnCtx<'_>,
        now_secs: u32,
    ) -> Option<crate::connz::ConnRow> {
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
pub(super) struct WsState {
    /// The upgrade is done.
    pub(super) open: bool,
    pub(super) decoder: ws::Decoder,
    /// Unmasked data payloads not yet consumed as protocol frames: one byte stream, as
    /// frames may span messages (PROTOCOL.md §10.2).
    pub(super) stream: Vec<u8>,
    /// The connection speaks JSON-RPC (its first byte was `{`; `jsonrpc.rs`).
    pub(super) rpc: Option<Box<super::jsonrpc::RpcState>>,
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
pub(super) enum Flow {
    /// Consumed; go on with the next frame.
    Next,
    /// Consumed; stop reading (login in progress).
    Pause,
    /// Not consumed: a pool is full. Pause and offer the frame again later (backpressure).
    Stall,
    /// Close the connection.
    Close,
}

impl Gateway {
    /// The largest frame `s` may send now: small until it has logged in.
    pub(super) fn frame_limit(&self, s: &ImSession) -> usize {
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
    pub(super) fn charge_prelogin(&self, conn: &mut ConnCtx<'_>, s: &mut ImSession, unread: usize) {
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
    pub(super) fn release_prelogin(&self, s: &mut ImSession) {
        self.shared.prelogin_bytes.fetch_sub(s.held, Relaxed);
        s.held = 0;
    }
}
