//! `EventLoop`: one thread, one `mio::Poll`, one `Slab` of connections.
//!
//! # One turn (`EventLoop::run`)
//! ```text
//!  poll(timeout) ── timeout = 0 while any work list is non-empty, else until the next tick
//!    │
//!    ├─ update_clock           now, now_tick: one clock read for the whole turn
//!    ├─ carried = backlog      snapshot: only connections listed before this turn
//!    ├─ events                 read.rs: readable → read_conn → Handler::on_data
//!    │                                  writable → WRITABLE flag, dirty if output waits
//!    ├─ drain_inbox            commands.rs: frames, closes, messages, new sockets → pending
//!    ├─ process_backlog        read.rs: the snapshot: resumed input, unread sockets
//!    ├─ run_timers             timers.rs: idle closes; once per new tick: soft caps, on_tick
//!    ├─ flush_dirty            write.rs: each dirty connection, vectored writes
//!    ├─ reap                   close.rs: last words, deregister, on_close; slots freed
//!    ├─ insert_accepted        commands.rs: ≤ 128 pending sockets registered; slots reused
//!    └─ stop_requested?        soft stop: until queues drain or the grace ends
//! ```
//! The work lists that carry work from one step or turn to the next are in `core.rs`
//! (`dirty`, `backlog`, `closing`, `soft_watch`), with `pending_accepts` here.
//!
//! # Invariants
//! - Only this thread touches these sockets (R2).
//! - Slots are freed (`reap`) and reused (`insert_accepted`) only after the turn's events
//!   and commands are done, so a stale event can never reach a new connection in a reused
//!   slot; every list that survives a step holds `ConnId`s and is checked with [`live`] (R8).
//! - Nothing here blocks except `poll` itself (R1).

mod close;
mod commands;
mod proxy;
mod read;
mod timers;
mod tls;
mod write;

use crate::config::EngineConfig;
use crate::conn::Conn;
use crate::conn_id::ConnId;
use crate::core::Core;
use crate::global::Admission;
use crate::handler::Handler;
use crate::inbox::Command;
use crate::loop_shared::{LoopShared, HARD_STOP, RUNNING};
use crate::stats::LoopStats;
use crate::timer::TimerEntry;
use crate::ListenerId;
use crossbeam_channel::Receiver;
use mio::net::TcpStream;
use mio::{Events, Poll, Token};
use slab::Slab;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The loop's `Waker` token, at the top of the range so that a connection's token can be
/// its slab slot: slots never reach `usize::MAX`.
pub(crate) const WAKER: Token = Token(usize::MAX);

/// Consecutive `poll` failures (other than `EINTR`) before the loop gives up loudly
/// (sozu `check_for_poll_errors`). A healthy epoll never fails; sixteen in a row means the
/// descriptor is broken and spinning would only burn a core.
const MAX_POLL_ERRORS: u32 = 16;

/// Slots reserved per loop up front at most, whatever `max_connections` says (1,000,000
/// by default would reserve 96 MiB of address space per loop for nothing in a small
/// deployment). Past it the slab grows by doubling, like any `Vec`.
const SLAB_PRESIZE_MAX: usize = 1 << 16;

pub(crate) struct EventLoop<H: Handler> {
    poll: Poll,
    slab: Slab<Conn<H::State>>,
    core: Core,
    handler: H,
    rx: Receiver<Command<H::Message>>,
    config: Arc<EngineConfig>,
    /// One read buffer for all connections of the loop (R7).
    scratch: Vec<u8>,
    /// One plaintext buffer for all TLS connections of the loop; empty until the first.
    plain: Vec<u8>,
    /// TLS handshake steps this turn may still process (`tls.rs`).
    handshakes_left: u32,
    /// Per listener, the TLS configuration of its connections (`tls.rs`).
    tls: Arc<[Option<Arc<rustls::ServerConfig>>]>,
    next_generation: u32,
    /// Sockets taken from the inbox, registered at the end of a turn. At most
    /// `MAX_PENDING_SOCKETS` (the acceptor's bound, `acceptor.rs`).
    pending_accepts: Vec<(TcpStream, ListenerId, Admission, crate::proxy::Arrival)>,
    /// Reused between turns to avoid reallocating the work lists.
    spare: Vec<ConnId>,
    due: Vec<TimerEntry>,
    last_handler_tick: u64,
    /// The last drain stopped at the command cap; more may be waiting.
    inbox_backlogged: bool,
    stop_deadline: Option<Instant>,
    /// The inbox has been drained for the last time (`last_drain`).
    drained: bool,
}

impl<H: Handler> Drop for EventLoop<H> {
    /// However the loop ends (a stop, repeated poll failures, a panicking handler), its
    /// inbox ends with it: pushes fail from now on, and what is in the inbox is dropped,
    /// so sockets give their counts back. A stopped loop has done this already
    /// (`drop_undelivered`); a panicking one does it here, without its handler.
    fn drop(&mut self) {
        self.last_drain(false);
    }
}

impl<H: Handler> EventLoop<H> {
    pub fn new(
        index: usize,
        poll: Poll,
        handler: H,
        rx: Receiver<Command<H::Message>>,
        shared: Arc<LoopShared>,
        config: Arc<EngineConfig>,
        tls: Arc<[Option<Arc<rustls::ServerConfig>>]>,
    ) -> Self {
        EventLoop {
            poll,
            // Sized for this loop's share of the connection limit up front (up to
            // `SLAB_PRESIZE_MAX`): the untouched part is address space, not memory, and
            // within it the slab never doubles (a doubling copies every connection).
            slab: Slab::with_capacity(
                config
                    .max_connections
                    .div_ceil(config.loops.max(1))
                    .min(SLAB_PRESIZE_MAX),
            ),
            core: Core::new(index, &config, shared),
            handler,
            rx,
            scratch: vec![0; config.read_buffer_bytes],
            plain: Vec::new(),
            handshakes_left: tls::HANDSHAKES_PER_TURN,
            tls,
            next_generation: 1,
            pending_accepts: Vec::new(),
            spare: Vec::new(),
            due: Vec::new(),
            last_handler_tick: 1,
            inbox_backlogged: false,
            stop_deadline: None,
            drained: false,
            config,
        }
    }

    fn stats(&self) -> &LoopStats {
        &self.core.shared.stats
    }

    /// Runs turns until the engine stops this loop or `poll` keeps failing.
    pub fn run(mut self) {
        crate::loop_shared::enter_loop_thread();
        log::info!("loop={} started", self.core.loop_index);
        let mut events = Events::with_capacity(self.config.events_capacity);
        let mut poll_errors = 0;
        loop {
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                poll_errors += 1;
                log::error!(
                    "loop={} poll failed ({poll_errors} in a row): {e}",
                    self.core.loop_index
                );
                if poll_errors >= MAX_POLL_ERRORS {
                    log::error!(
                        "loop={} stopping after repeated poll failures",
                        self.core.loop_index
                    );
                    break;
                }
                continue;
            }
            poll_errors = 0;
            self.core.update_clock();
            self.handshakes_left = tls::HANDSHAKES_PER_TURN;
            LoopStats::add(&self.stats().turns, 1);

            // Only connections left over from earlier turns get a backlog pass this turn, so
            // no connection reads more than one budget per turn (R4).
            let carried = std::mem::take(&mut self.core.backlog);
            for event in events.iter() {
                self.handle_event(event);
            }
            self.drain_inbox();
            self.process_backlog(carried);
            self.run_timers();
            self.flush_dirty();
            self.reap();
            self.insert_accepted();
            if self.stop_requested() {
                break;
            }
        }
        self.close_all();
        self.drop_undelivered();
        log::info!("loop={} stopped", self.core.loop_index);
    }

    fn poll_timeout(&self) -> Duration {
        let busy = !self.core.backlog.is_empty()
            || !self.core.dirty.is_empty()
            || !self.core.closing.is_empty()
            || !self.pending_accepts.is_empty()
            || self.inbox_backlogged;
        if busy {
            // Edge-triggered sockets will not report again for work we left undone (R3).
            return Duration::ZERO;
        }
        // Never longer than a tick: timers and `on_tick` need no event to run.
        let until_tick = self.core.until_next_tick();
        match self.stop_deadline {
            Some(_) => until_tick.min(Duration::from_millis(10)),
            None => until_tick,
        }
    }

    fn stopping(&self) -> bool {
        self.stop_deadline.is_some()
    }

    fn hard_stop(&self) -> bool {
        self.core.shared.stop.load(Ordering::Acquire) == HARD_STOP
    }

    /// Checks the stop request. A soft stop keeps flushing until every queue is empty or
    /// the grace period ends; a hard stop ends the loop at once.
    fn stop_requested(&mut self) -> bool {
        match self.core.shared.stop.load(Ordering::Acquire) {
            RUNNING => false,
            HARD_STOP => true,
            _ => {
                let deadline = *self
                    .stop_deadline
                    .get_or_insert(self.core.now + self.config.shutdown_grace);
                let drained = self.slab.iter().all(|(_, c)| !c.io.has_output());
                drained && self.rx.is_empty() || self.core.now >= deadline
            }
        }
    }
}

/// The connection `id` names on this loop, whatever its state: same loop, same slot, same
/// generation. This is the one check every id from outside the current step goes through
/// (R8): ids of other loops share slot and generation numbers, so the loop index is part
/// of it, and a slot reused since the id was minted holds another generation.
pub(crate) fn live<S>(
    slab: &mut Slab<Conn<S>>,
    loop_index: usize,
    id: ConnId,
) -> Option<&mut Conn<S>> {
    if id.loop_index() != loop_index {
        return None;
    }
    slab.get_mut(id.slot())
        .filter(|c| c.io.generation == id.generation())
}

/// Logs a per-connection I/O error at the level its kind deserves: a peer going away is
/// routine (debug), a network fault is worth a look (warn), anything else is ours (error).
fn log_io_error(loop_index: usize, id: ConnId, op: &str, e: &io::Error) {
    use io::ErrorKind::*;
    match e.kind() {
        ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof | WriteZero => {
            log::debug!("loop={loop_index} conn={id} {op}: {e}");
        }
        TimedOut | HostUnreachable | NetworkUnreachable => {
            log::warn!("loop={loop_index} conn={id} {op}: {e}");
        }
        _ => log::error!("loop={loop_index} conn={id} {op}: {e}"),
    }
}
