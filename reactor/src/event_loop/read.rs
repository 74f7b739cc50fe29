//! The read path: readiness events, reading into the loop's scratch buffer, handing bytes
//! to the handler, and the backlog of connections with input left over.
//!
//! # The rule (R3)
//! mio's sockets are edge-triggered: a readiness event comes once per change, not while
//! bytes wait. So a read pass goes on until the socket says `WouldBlock` (drained: the next
//! byte raises a new edge), EOF, an error, a pause, or the turn's read budget is spent. In
//! the last two cases bytes may still wait and no event will say so: the connection keeps
//! `READ_PENDING`, and a spent budget puts it on the backlog for the next turn.
//!
//! # The optimisation, platform-gated
//! On epoll and kqueue a read that returns fewer bytes than asked for has emptied the
//! socket's receive queue, and any byte that arrives later raises a new edge. Where that
//! holds ([`SHORT_READ_DRAINS`], the platforms tokio trusts with the same shortcut), a short
//! read counts as drained and saves the `read` that would only return `WouldBlock` (a
//! quarter of the syscalls of a request/response echo). The one thing a short read can
//! leave behind is a FIN that arrived with the data; the event says so (`is_read_closed`),
//! and then the pass reads on to EOF. Elsewhere (mio's poll(2) or IOCP back ends) the rule
//! applies unchanged.
//!
//! # Half-close
//! EOF means the peer will send nothing more, not that it stopped reading. A connection
//! that reaches EOF with output queued (a request sent with its FIN, say) is flushed first
//! and closed when its queue is empty, within `close_linger`; with nothing queued it closes
//! at once, and a reply the handler queues after that (from another thread) finds the
//! connection gone. While a half-closed connection is still flushing, it stays reachable
//! and later replies join the queue, within the same linger.

use super::{live, log_io_error, EventLoop, WAKER};
use crate::conn::Flags;
use crate::conn_id::ConnId;
use crate::handler::{ConnCtx, Handler};
use crate::stats::{CloseReason, LoopStats};
use std::io::{self, Read};

/// True where a short read proves the socket drained (epoll, kqueue); see the module docs.
pub(crate) const SHORT_READ_DRAINS: bool = cfg!(any(
    target_os = "linux",
    target_os = "android",
    target_os = "illumos",
    target_os = "redox",
    target_os = "dragonfly",
    target_os = "freebsd",
    target_os = "ios",
    target_os = "macos",
    target_os = "netbsd",
    target_os = "openbsd",
    target_os = "tvos",
    target_os = "visionos",
    target_os = "watchos",
));

impl<H: Handler> EventLoop<H> {
    pub(super) fn handle_event(&mut self, event: &mio::event::Event) {
        let token = event.token();
        if token == WAKER {
            // Only ends the sleep: the inbox is drained on every turn (`inbox.rs`).
            return;
        }
        let stopping = self.stopping();
        // The token is the slot, and no slot is reused before the turn's events are done:
        // a spurious event, or one for a slot closed earlier in this batch, finds nothing
        // or a CLOSING connection, and both are ignored.
        let Some(conn) = self.slab.get_mut(token.0) else {
            return;
        };
        let id = crate::ConnId::new(self.core.loop_index, token.0, conn.io.generation);
        if event.is_writable() {
            conn.io.flags.insert(Flags::WRITABLE);
            if conn.io.has_output() {
                self.core.mark_dirty(id, &mut conn.io);
            }
        }
        if event.is_readable() || event.is_read_closed() || event.is_error() {
            if stopping {
                return; // A stopping loop only flushes (R10).
            }
            conn.io.flags.insert(Flags::READ_PENDING);
            if conn.io.flags.contains(Flags::BACKLOG) {
                return; // Its backlog pass reads it, within one budget for the turn.
            }
            let until_eof = !SHORT_READ_DRAINS || event.is_read_closed() || event.is_error();
            self.read_conn(id, until_eof);
        }
    }

    /// One read pass (module docs: the rule). `until_eof` turns the short-read shortcut
    /// off: reads go on until `WouldBlock` or EOF.
    fn read_conn(&mut self, id: ConnId, until_eof: bool) {
        let mut budget = self.config.read_budget_bytes;
        loop {
            let Some(conn) = live(&mut self.slab, self.core.loop_index, id) else {
                return;
            };
            let io = &mut conn.io;
            if io.flags.contains(Flags::CLOSING) {
                return;
            }
            if io.flags.contains(Flags::READ_PAUSED) {
                return; // READ_PENDING stays set; resume_reading comes back here.
            }
            if budget == 0 {
                LoopStats::add(&self.core.shared.stats.read_budget_yields, 1);
                self.core.mark_backlog(id, io);
                return;
            }
            let want = budget.min(self.scratch.len());
            match io.stream.read(&mut self.scratch[..want]) {
                Ok(0) => {
                    io.flags.remove(Flags::READ_PENDING);
                    log::debug!("loop={} conn={id} peer closed", self.core.loop_index);
                    // Module docs: half-close. What is queued still goes out.
                    self.core.close_after_flush(id, io, CloseReason::PeerClosed);
                    return;
                }
                Ok(n) => {
                    budget -= n;
                    LoopStats::add(&self.core.shared.stats.bytes_in, n as u64);
                    io.last_active_tick = self.core.now_tick;
                    let drained = n < want && !until_eof;
                    if drained {
                        io.flags.remove(Flags::READ_PENDING);
                    }
                    self.deliver_scratch(id, n);
                    if drained {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    io.flags.remove(Flags::READ_PENDING);
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    io.flags.remove(Flags::READ_PENDING);
                    log_io_error(self.core.loop_index, id, "read", &e);
                    self.core.mark_close(id, io, CloseReason::Io(e.kind()));
                    return;
                }
            }
        }
    }

    /// Offers `scratch[..n]` (just read) to the handler, after any bytes the connection kept
    /// from earlier reads. Keeps what the handler did not consume, within
    /// `max_inbound_bytes`.
    fn deliver_scratch(&mut self, id: ConnId, n: usize) {
        let Some(conn) = live(&mut self.slab, self.core.loop_index, id) else {
            return;
        };
        if conn.io.flags.contains(Flags::PROXY_CHECK) {
            // Until the first bytes are told apart from a PROXY header, all is buffered.
            conn.io.input.extend_from_slice(&self.scratch[..n]);
            if !self.take_proxy_header(id) {
                return;
            }
            let Some(conn) = live(&mut self.slab, self.core.loop_index, id) else {
                return;
            };
            if conn.io.tls().is_some() {
                // What followed the header is the start of the TLS stream (`tls.rs`).
                let records = std::mem::take(&mut conn.io.input);
                self.open_records(id, &records);
            } else if !conn.io.input.is_empty() {
                let mut ctx = ConnCtx {
                    id,
                    io: &mut conn.io,
                    core: &mut self.core,
                };
                offer_buffered(&mut self.handler, &mut ctx, &mut conn.state);
                self.check_input_cap(id);
            }
            return;
        }
        let scratch = std::mem::take(&mut self.scratch);
        if conn.io.tls().is_some() {
            self.open_records(id, &scratch[..n]);
        } else {
            self.feed(id, &scratch[..n]);
        }
        self.scratch = scratch;
    }

    /// Offers `fresh` bytes of `id`'s stream (read now, or opened from TLS records) to the
    /// handler after any it kept from before; keeps what it did not consume, within
    /// `max_inbound_bytes`. While reading is paused they are only kept: the resume offers
    /// them.
    pub(super) fn feed(&mut self, id: ConnId, fresh: &[u8]) {
        let Some(conn) = live(&mut self.slab, self.core.loop_index, id) else {
            return;
        };
        let mut ctx = ConnCtx {
            id,
            io: &mut conn.io,
            core: &mut self.core,
        };
        if ctx.io.flags.contains(Flags::READ_PAUSED) {
            ctx.io.input.extend_from_slice(fresh);
        } else if ctx.io.input.is_empty() {
            // The common case: whole frames straight from the scratch buffer, no copy.
            let consumed = self
                .handler
                .on_data(&mut ctx, &mut conn.state, fresh)
                .min(fresh.len());
            if consumed < fresh.len() {
                ctx.io.input.extend_from_slice(&fresh[consumed..]);
            }
        } else {
            ctx.io.input.extend_from_slice(fresh);
            offer_buffered(&mut self.handler, &mut ctx, &mut conn.state);
        }
        self.check_input_cap(id);
    }

    /// Closes `id` if it holds more incomplete input than `max_inbound_bytes`.
    fn check_input_cap(&mut self, id: ConnId) {
        let Some(conn) = live(&mut self.slab, self.core.loop_index, id) else {
            return;
        };
        let max = self.config.max_inbound_bytes;
        if conn.io.input.len() > max {
            log::debug!(
                "loop={} conn={id} holds {} bytes of incomplete input (cap {max}); closing",
                self.core.loop_index,
                conn.io.input.len()
            );
            conn.io.input = Vec::new();
            self.core
                .mark_close(id, &mut conn.io, CloseReason::InputOverflow);
        }
    }

    /// Connections listed before this turn: those that spent a read budget (read again,
    /// within a fresh budget) and those resumed (`REDELIVER`: buffered input offered
    /// again, then the socket read if it may hold more). A connection resumed during a
    /// turn is listed for the next one, so it is served after the sockets that were ready.
    pub(super) fn process_backlog(&mut self, mut list: Vec<ConnId>) {
        for id in list.drain(..) {
            let Some(conn) = live(&mut self.slab, self.core.loop_index, id) else {
                continue;
            };
            conn.io.flags.remove(Flags::BACKLOG);
            if conn.io.flags.contains(Flags::CLOSING) || conn.io.flags.contains(Flags::READ_PAUSED)
            {
                continue;
            }
            if conn.io.extra.as_ref().is_some_and(|e| e.deferred) {
                // A handshake put off over an earlier turn's budget (`tls.rs`).
                self.open_records(id, &[]);
            }
            let Some(conn) = live(&mut self.slab, self.core.loop_index, id) else {
                continue;
            };
            if conn.io.flags.contains(Flags::REDELIVER) {
                conn.io.flags.remove(Flags::REDELIVER);
                // Bytes held while a PROXY header is told apart are not the handler's yet.
                if !conn.io.input.is_empty() && !conn.io.flags.contains(Flags::PROXY_CHECK) {
                    let mut ctx = ConnCtx {
                        id,
                        io: &mut conn.io,
                        core: &mut self.core,
                    };
                    offer_buffered(&mut self.handler, &mut ctx, &mut conn.state);
                }
            }
            let Some(conn) = live(&mut self.slab, self.core.loop_index, id) else {
                continue;
            };
            let ended = conn.io.extra.as_ref().is_some_and(|e| e.peer_ended);
            if ended && !conn.io.flags.contains(Flags::READ_PAUSED) {
                // A TLS close_notify that came while paused (`tls.rs`): the input it
                // waited for has been offered, so it is the EOF now.
                self.core
                    .close_after_flush(id, &mut conn.io, CloseReason::PeerClosed);
                continue;
            }
            let pending = conn.io.flags.contains(Flags::READ_PENDING);
            if pending && !self.stopping() {
                // No event to tell us about a FIN here: read until WouldBlock.
                self.read_conn(id, true);
            }
        }
        self.spare = list;
    }
}

/// Offers a connection's buffered input to the handler and keeps what it did not consume.
fn offer_buffered<H: Handler>(handler: &mut H, ctx: &mut ConnCtx<'_>, state: &mut H::State) {
    let mut input = std::mem::take(&mut ctx.io.input);
    let consumed = handler.on_data(ctx, state, &input).min(input.len());
    input.drain(..consumed);
    if input.is_empty() {
        return; // Dropping the buffer: an idle connection holds no input memory.
    }
    if input.capacity() > 4 * input.len() && input.capacity() > 4096 {
        input.shrink_to_fit(); // A big frame passed through; don't keep its buffer.
    }
    ctx.io.input = input;
}
