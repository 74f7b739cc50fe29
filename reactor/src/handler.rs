//! The `Handler` trait the server implements, and the contexts the engine lends it.
//!
//! One handler lives on each event loop, made there by the factory given to
//! [`crate::EngineBuilder::start`], so it can keep per-loop state without locks. Every
//! callback runs on that loop's thread and must not block (R1): no database, DNS, file
//! I/O, sleeping or blocking channel sends, and only the `try_` forms of
//! [`crate::LoopHandle`] and [`crate::Handles`] (a debug build panics on the blocking ones
//! here). Hand slow work to another thread and answer later through a `LoopHandle`.

use crate::conn::{ConnIo, Flags};
use crate::conn_id::ConnId;
use crate::core::Core;
use crate::stats::CloseReason;
use crate::ListenerId;
use bytes::Bytes;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The server's side of the engine. See the module docs for the threading rules.
pub trait Handler: 'static {
    /// Per-connection state, stored inline in the loop's slab next to the socket.
    type State;
    /// Messages other threads send to this loop with [`crate::LoopHandle::post`].
    type Message: Send + 'static;

    /// A connection was accepted and registered. Returns its state. The context can
    /// already queue output and set the idle timeout.
    fn on_open(&mut self, conn: &mut ConnCtx<'_>) -> Self::State;

    /// Bytes arrived. `input` is everything the connection has that the handler has not
    /// consumed yet; return how many leading bytes were consumed (whole frames). The engine
    /// keeps the rest and offers it again, with more bytes, later.
    ///
    /// To apply backpressure, call [`ConnCtx::pause_reading`] and return what was consumed;
    /// the rest is offered again after [`ConnCtx::resume_reading`].
    fn on_data(&mut self, conn: &mut ConnCtx<'_>, state: &mut Self::State, input: &[u8]) -> usize;

    /// A message posted to this loop. Use [`LoopCtx::conn`] to reach connections; it checks
    /// the generation, so a message for a closed connection finds nothing.
    fn on_message(&mut self, lp: &mut LoopCtx<'_, Self::State>, msg: Self::Message) {
        let _ = (lp, msg);
    }

    /// How much work `msg` is, in the units of `EngineConfig::max_commands_per_turn` (one
    /// frame = 1). The default is 1; a handler whose messages vary in cost (one message
    /// fanned out to hundreds of connections) says so here, and the loop then stops
    /// draining its inbox after a turn's worth of work, not a turn's worth of messages.
    fn message_weight(msg: &Self::Message) -> usize {
        let _ = msg;
        1
    }

    /// The connection has closed; its socket is already gone. `state` is handed back so
    /// the handler can unregister it.
    fn on_close(&mut self, id: ConnId, state: Self::State, reason: CloseReason) {
        let _ = (id, state, reason);
    }

    /// Called in the first turn of each new `EngineConfig::tick` (default 100 ms), at
    /// most once per turn, for periodic work such as retries and resuming paused
    /// connections. A turn longer than a tick skips the ticks in between: count time with
    /// `LoopCtx::now`, not with calls.
    fn on_tick(&mut self, lp: &mut LoopCtx<'_, Self::State>) {
        let _ = lp;
    }
}

/// One connection, lent to a handler callback.
#[derive(Debug)]
pub struct ConnCtx<'a> {
    pub(crate) id: ConnId,
    pub(crate) io: &'a mut ConnIo,
    pub(crate) core: &'a mut Core,
}

impl ConnCtx<'_> {
    /// This connection's id, valid on any thread.
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// The listener this connection was accepted on.
    pub fn listener(&self) -> ListenerId {
        self.io.listener
    }

    /// The client's address: the one a trusted proxy named (a PROXY header, or
    /// [`ConnCtx::set_client_addr`]), else the socket's peer (a `getpeername` call; not
    /// kept per connection to save memory).
    ///
    /// # Errors
    /// When the socket is no longer connected.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        match self.io.client() {
            Some(client) => Ok(client),
            None => self.io.stream.peer_addr(),
        }
    }

    /// True when the socket's peer is a source this listener trusts as a proxy
    /// ([`crate::EngineBuilder::proxy_protocol`]): what it says about the client, in a
    /// PROXY header or in a header of its own protocol, may be believed.
    pub fn via_trusted_proxy(&self) -> bool {
        self.io.flags.contains(Flags::VIA_PROXY)
    }

    /// Records `addr` as the client's address, as a trusted proxy told it in the
    /// handler's protocol (an HTTP `X-Forwarded-For`, say), and counts the connection
    /// under it for `max_connections_per_ip`. False when the connection did not come
    /// through a trusted proxy (nothing changes), or when `addr`'s source is at the limit
    /// (the connection is then closing, counted as [`CloseReason::OverIpLimit`]).
    pub fn set_client_addr(&mut self, addr: SocketAddr) -> bool {
        if !self.via_trusted_proxy() || self.io.flags.contains(Flags::CLOSING) {
            return false;
        }
        if !self.io.admission.readmit(addr.ip()) {
            self.io.admission.count_refusal();
            self.core
                .mark_close(self.id, self.io, crate::stats::CloseReason::OverIpLimit);
            return false;
        }
        self.io.set_client(addr);
        true
    }

    /// The loop's clock, read once per turn.
    pub fn now(&self) -> Instant {
        self.core.now
    }

    /// Queues a frame for this connection. No syscall: the loop writes it at the end of the
    /// turn, coalesced with everything else queued. Frames are written in queue order.
    ///
    /// Past `max_outbound_bytes` the connection is closed as a slow consumer. Once the
    /// connection is closing, further frames are dropped.
    pub fn queue(&mut self, frame: Bytes) {
        if self.io.flags.contains(Flags::CLOSING) {
            return;
        }
        self.io.outbound.queue(frame);
        self.core.after_queue(self.id, self.io);
    }

    /// Like [`ConnCtx::queue`], copying the bytes into the connection's queue.
    pub fn queue_slice(&mut self, bytes: &[u8]) {
        if self.io.flags.contains(Flags::CLOSING) {
            return;
        }
        self.io.outbound.queue_slice(bytes);
        self.core.after_queue(self.id, self.io);
    }

    /// Bytes queued and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.io.outbound.queued_bytes()
    }

    /// Time since this connection's last inbound bytes, to the loop's tick.
    pub fn idle(&self) -> Duration {
        self.core
            .duration_of(self.core.now_tick.saturating_sub(self.io.last_active_tick))
    }

    /// Closes the connection at the end of this turn. Output queued before the close gets
    /// one last non-blocking write attempt; if that leaves some unwritten, the close is a
    /// reset rather than a FIN, so the peer cannot mistake a cut reply for a whole one. Use
    /// [`ConnCtx::close_after_flush`] to send everything first.
    pub fn close(&mut self) {
        self.core.mark_close(self.id, self.io, CloseReason::Handler);
    }

    /// Closes the connection once everything queued so far is written: a response larger
    /// than one write (an HTTP body of megabytes, say) arrives whole, where `close` would
    /// cut it after one attempt (and reset the connection, so the peer knows). Reading
    /// stops now. The peer has `EngineConfig::close_linger` to read it all; past that the
    /// connection is reset, so a peer that never reads cannot hold it open.
    pub fn close_after_flush(&mut self) {
        self.core
            .close_after_flush(self.id, self.io, CloseReason::Handler);
    }

    /// True once the connection is marked for close.
    pub fn is_closing(&self) -> bool {
        self.io.flags.contains(Flags::CLOSING)
    }

    /// Stops reading from this connection: TCP flow control then pushes back on the peer.
    /// Input already buffered stays buffered.
    pub fn pause_reading(&mut self) {
        self.io.flags.insert(Flags::READ_PAUSED);
    }

    /// Resumes reading. The connection goes on the backlog: in the *next* turn's backlog
    /// pass its buffered input is offered to `on_data` again, then the socket is read if
    /// it may hold more. Ignored once a close has begun (`close_after_flush`, a
    /// half-close).
    pub fn resume_reading(&mut self) {
        if self.io.flags.contains(Flags::CLOSE_AFTER_FLUSH) {
            return;
        }
        if self.io.flags.contains(Flags::READ_PAUSED) {
            self.io.flags.remove(Flags::READ_PAUSED);
            self.io.flags.insert(Flags::REDELIVER);
            self.core.mark_backlog(self.id, self.io);
        }
    }

    /// True while reading is paused.
    pub fn is_reading_paused(&self) -> bool {
        self.io.flags.contains(Flags::READ_PAUSED)
    }

    /// Sets this connection's idle timeout, counted from its last inbound bytes. `None`
    /// disables it. Ignored once `close_after_flush` began: the linger is the deadline.
    pub fn set_idle_timeout(&mut self, timeout: Option<Duration>) {
        self.core.set_idle_timeout(self.id, self.io, timeout);
    }
}

/// The loop, lent to `on_message` and `on_tick`: reach any of its connections by id.
#[derive(Debug)]
pub struct LoopCtx<'a, S> {
    pub(crate) slab: &'a mut slab::Slab<crate::conn::Conn<S>>,
    pub(crate) core: &'a mut Core,
}

impl<S> LoopCtx<'_, S> {
    /// This loop's index.
    pub fn loop_index(&self) -> usize {
        self.core.loop_index
    }

    /// The loop's clock, read once per turn.
    pub fn now(&self) -> Instant {
        self.core.now
    }

    /// Connections open on this loop.
    pub fn connections(&self) -> usize {
        self.slab.len()
    }

    /// Every live connection of this loop (not those closing), in slot order: for work
    /// that visits them all, such as a drain at shutdown. Allocates; not for a hot path.
    pub fn conn_ids(&self) -> Vec<ConnId> {
        self.slab
            .iter()
            .filter(|(_, c)| !c.io.flags.contains(Flags::CLOSING))
            .map(|(slot, c)| ConnId::new(self.core.loop_index, slot, c.io.generation))
            .collect()
    }

    /// The live connection named by `id`, or `None` when it is another loop's, has closed,
    /// its slot now holds a newer connection (the loop + slot + generation check of R8), or
    /// it is closing.
    pub fn conn(&mut self, id: ConnId) -> Option<(ConnCtx<'_>, &mut S)> {
        let conn = crate::event_loop::live(self.slab, self.core.loop_index, id)?;
        if conn.io.flags.contains(Flags::CLOSING) {
            return None;
        }
        let ctx = ConnCtx {
            id,
            io: &mut conn.io,
            core: self.core,
        };
        Some((ctx, &mut conn.state))
    }

    /// The handler state of a connection marked for close this turn but not yet removed:
    /// it can no longer be written to, but its state still reaches `on_close`, so work meant
    /// for it (a message to requeue, say) can be left there instead of being decided while
    /// the rest of the world still counts the connection as open.
    pub fn closing(&mut self, id: ConnId) -> Option<&mut S> {
        let conn = crate::event_loop::live(self.slab, self.core.loop_index, id)?;
        conn.io
            .flags
            .contains(Flags::CLOSING)
            .then_some(&mut conn.state)
    }
}
