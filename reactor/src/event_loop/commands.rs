//! The inbox side of a turn: commands from other threads (`drain_inbox`), and the sockets
//! the acceptor handed over, registered at the end of the turn (`insert_accepted`).

use super::{live, EventLoop};
use crate::conn::{Conn, ConnIo, Flags};
use crate::conn_id::ConnId;
use crate::handler::{ConnCtx, Handler, LoopCtx};
use crate::inbox::Command;
use crate::proxy::{Arrival, HeaderRule};
use crate::stats::{CloseReason, LoopStats};
use mio::{Interest, Token};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// New connections registered per loop turn at most (see `insert_accepted`).
pub(crate) const ACCEPTS_PER_TURN: usize = 128;

impl<H: Handler> EventLoop<H> {
    /// Takes commands until the inbox is empty or the turn's budget
    /// (`max_commands_per_turn`) is spent; then the next poll does not sleep.
    pub(super) fn drain_inbox(&mut self) {
        // Clear the flag before draining (R2, `inbox.rs`): a command sent after this line
        // either is seen below or wakes us again.
        self.core.shared.awake.store(false, Ordering::SeqCst);
        let cap = self.config.max_commands_per_turn;
        let mut handled = 0;
        while handled < cap {
            let Ok(cmd) = self.rx.try_recv() else {
                break;
            };
            // A batch counts as what it holds, and a message as its weight, so a turn's
            // budget bounds work, not slots.
            handled += match &cmd {
                Command::SendBatch(frames) => frames.len().max(1),
                Command::Message(msg) => H::message_weight(msg).max(1),
                Command::Messages(msgs) => msgs.iter().map(H::message_weight).sum::<usize>().max(1),
                _ => 1,
            };
            self.core.shared.drained_bytes(cmd.frame_bytes());
            self.handle_command(cmd);
        }
        self.inbox_backlogged = handled >= cap;
        LoopStats::add(&self.stats().commands, handled as u64);
    }

    pub(super) fn handle_command(&mut self, cmd: Command<H::Message>) {
        match cmd {
            Command::Register {
                stream,
                listener,
                peer,
                admission,
                arrival,
            } => {
                LoopStats::add(&self.stats().accepted, 1);
                if self.stopping() {
                    // Dropping the socket and its admission gives the counts back.
                    self.stats().pending_sockets.fetch_sub(1, Ordering::Relaxed);
                    return;
                }
                log::trace!("loop={} accepted {peer}", self.core.loop_index);
                self.pending_accepts
                    .push((stream, listener, admission, arrival));
            }
            Command::Send(id, frame) => self.queue_to(id, frame),
            Command::SendBatch(frames) => {
                for (id, frame) in frames {
                    self.queue_to(id, frame);
                }
            }
            Command::Close(id) => match live(&mut self.slab, self.core.loop_index, id) {
                Some(conn) => self.core.mark_close(id, &mut conn.io, CloseReason::Command),
                None => self.count_stale(id),
            },
            Command::Message(msg) => {
                let mut lp = LoopCtx {
                    slab: &mut self.slab,
                    core: &mut self.core,
                };
                self.handler.on_message(&mut lp, msg);
            }
            Command::Messages(msgs) => {
                let mut lp = LoopCtx {
                    slab: &mut self.slab,
                    core: &mut self.core,
                };
                for msg in msgs {
                    self.handler.on_message(&mut lp, msg);
                }
            }
        }
    }

    /// Queues a frame from another thread: `Outbound::queue`, then the caps and the dirty
    /// list (`Core::after_queue`), as for a frame the handler queues itself.
    fn queue_to(&mut self, id: ConnId, frame: bytes::Bytes) {
        let Some(conn) = live(&mut self.slab, self.core.loop_index, id) else {
            self.count_stale(id);
            return;
        };
        if conn.io.flags.contains(Flags::CLOSING) {
            return;
        }
        conn.io.outbound.queue(frame);
        self.core.after_queue(id, &mut conn.io);
    }

    fn count_stale(&self, id: ConnId) {
        log::debug!(
            "loop={} dropped a command for stale conn={id}",
            self.core.loop_index
        );
        LoopStats::add(&self.stats().stale_commands, 1);
    }

    /// Registers sockets the acceptor handed over, now that the turn's events are done.
    /// At most `ACCEPTS_PER_TURN` per turn, oldest first: a storm of thousands must not
    /// stall the connections already here for one long turn; the rest wait one turn each
    /// (the poll does not sleep while any are pending).
    pub(super) fn insert_accepted(&mut self) {
        let n = self.pending_accepts.len().min(ACCEPTS_PER_TURN);
        let batch: Vec<_> = self.pending_accepts.drain(..n).collect();
        for (mut stream, listener, admission, arrival) in batch {
            let stats = &self.core.shared.stats;
            stats.pending_sockets.fetch_sub(1, Ordering::Relaxed);
            let entry = self.slab.vacant_entry();
            let slot = entry.key();
            let generation = self.next_generation;
            self.next_generation = self.next_generation.wrapping_add(1);
            let id = ConnId::new(self.core.loop_index, slot, generation);
            let tls = match &self.tls[listener.index()] {
                None => None,
                Some(config) => match rustls::ServerConnection::new(Arc::clone(config)) {
                    Ok(session) => Some(session),
                    Err(e) => {
                        log::warn!(
                            "loop={} cannot start a TLS session: {e}",
                            self.core.loop_index
                        );
                        continue; // The socket and its admission drop here.
                    }
                },
            };
            // Registered once for its whole life, for both directions: edge-triggered,
            // so an interest we do not act on costs nothing (R3).
            if let Err(e) = self.poll.registry().register(
                &mut stream,
                Token(slot),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                log::warn!(
                    "loop={} cannot register an accepted socket: {e}",
                    self.core.loop_index
                );
                continue; // The socket and its admission drop here.
            }
            stats.connections.fetch_add(1, Ordering::Relaxed);
            let queued_out = Arc::clone(&stats.queued_out);
            let mut io = ConnIo::new(
                stream,
                generation,
                listener,
                self.core.now_tick,
                queued_out,
                admission,
            );
            if tls.is_some() {
                io.extra = Some(Box::new(crate::conn::Extra {
                    tls,
                    ..Default::default()
                }));
            }
            match arrival {
                Arrival::Direct => {}
                Arrival::Untrusted => io.flags.insert(Flags::PROXY_CHECK),
                Arrival::Trusted(HeaderRule::Optional) => {
                    io.flags.insert(Flags::PROXY_CHECK | Flags::VIA_PROXY)
                }
                Arrival::Trusted(HeaderRule::Required) => io
                    .flags
                    .insert(Flags::PROXY_CHECK | Flags::VIA_PROXY | Flags::PROXY_REQUIRED),
            }
            self.core
                .set_idle_timeout(id, &mut io, self.config.idle_timeout);
            let mut ctx = ConnCtx {
                id,
                io: &mut io,
                core: &mut self.core,
            };
            let state = self.handler.on_open(&mut ctx);
            entry.insert(Conn { io, state });
            log::debug!("loop={} conn={id} opened", self.core.loop_index);
        }
    }
}
