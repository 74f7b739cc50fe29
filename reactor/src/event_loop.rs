//! `EventLoop`: one thread, one `mio::Poll`, one `Slab` of connections.
//!
//! Each turn (see `EventLoop::run`) does, in this order:
//! 1. `poll` for readiness (zero timeout when work is left over from the last turn);
//! 2. `handle_events`: read ready sockets into the loop's scratch buffer and hand the bytes
//!    to the handler, within the per-connection read budget;
//! 3. `drain_inbox`: commands from other threads (new sockets, frames, closes, messages),
//!    at most `max_commands_per_turn`;
//! 4. `process_backlog`: connections that hit their read budget or were resumed;
//! 5. `run_timers`: idle timeouts and the handler's tick;
//! 6. `flush_dirty`: one vectored write per connection that has output (R6);
//! 7. `reap`: remove connections marked for close (R8);
//! 8. `insert_accepted`: register sockets the acceptor handed over (R8).
//!
//! # Invariants
//! - Only this thread touches these sockets (R2).
//! - Slots are freed (step 7) and reused (step 8) only after the event batch of the turn is
//!   done, so a stale event can never reach a new connection in a reused slot; every list
//!   that survives a turn (dirty, backlog, closing, timers) holds `ConnId`s and is checked
//!   against the slot's generation.
//! - Nothing here blocks except `poll` itself (R1).

use crate::config::EngineConfig;
use crate::conn::{Conn, ConnIo, Flags};
use crate::conn_id::ConnId;
use crate::handler::{ConnCtx, Handler, LoopCtx};
use crate::inbox::{Command, LoopShared, HARD_STOP, RUNNING};
use crate::outbound::FlushStatus;
use crate::per_ip::{IpSlot, PerIp};
use crate::stats::{CloseReason, LoopStats};
use crate::timer::{TimerEntry, TimerWheel};
use crate::ListenerId;
use crossbeam_channel::Receiver;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The loop's `Waker` token, at the top of the range so slab index == token (STYLE §2).
pub(crate) const WAKER: Token = Token(usize::MAX);

/// Consecutive `poll` failures (other than `EINTR`) before the loop gives up loudly
/// (sozu `check_for_poll_errors`). A healthy epoll never fails; sixteen in a row means the
/// descriptor is broken and spinning would only burn a core.
const MAX_POLL_ERRORS: u32 = 16;

/// New connections registered per loop turn at most (see `insert_accepted`).
const ACCEPTS_PER_TURN: usize = 128;

/// Slots reserved per loop at most, whatever `max_connections` says (1,000,000 by default
/// would reserve 96 MiB of address space per loop for nothing in a small deployment).
const SLAB_PRESIZE_MAX: usize = 1 << 16;

/// Bytes we read and discard from a socket we are about to close gracefully. Closing a
/// socket with unread input makes the kernel send RST, which can destroy the last frame we
/// wrote (a refusal CONNACK, say) before the peer reads it.
const DISCARD_ON_CLOSE_BYTES: usize = 64 << 10;

/// State every connection context needs, apart from the slab: the turn's clock, the work
/// lists and the timer wheel. Split from `EventLoop` so a `ConnCtx` can borrow it next to
/// one connection.
#[derive(Debug)]
pub(crate) struct Core {
    pub loop_index: usize,
    pub now: Instant,
    pub now_tick: u64,
    started: Instant,
    tick: Duration,
    pub dirty: Vec<ConnId>,
    pub backlog: Vec<ConnId>,
    pub closing: Vec<(ConnId, CloseReason)>,
    /// Connections whose queue is above the soft cap (R5).
    soft_watch: Vec<ConnId>,
    wheel: TimerWheel,
    max_outbound_bytes: usize,
    soft_outbound_bytes: Option<usize>,
    soft_window_ticks: u64,
    pub shared: Arc<LoopShared>,
}

impl Core {
    fn new(loop_index: usize, config: &EngineConfig, shared: Arc<LoopShared>) -> Core {
        let now = Instant::now();
        let mut core = Core {
            loop_index,
            now,
            now_tick: 1,
            started: now,
            tick: config.tick,
            dirty: Vec::new(),
            backlog: Vec::new(),
            closing: Vec::new(),
            soft_watch: Vec::new(),
            wheel: TimerWheel::new(),
            max_outbound_bytes: config.max_outbound_bytes,
            soft_outbound_bytes: config.soft_outbound_bytes,
            soft_window_ticks: 0,
            shared,
        };
        core.soft_window_ticks = core.ticks_for(config.soft_limit_window);
        core
    }

    /// Reads the clock once per turn; everything in the turn uses this value.
    fn update_clock(&mut self) {
        self.now = Instant::now();
        // Tick 0 means "none" in the per-connection timer fields, so ticks start at 1.
        let elapsed = self.now.duration_since(self.started);
        self.now_tick = 1 + (elapsed.as_nanos() / self.tick.as_nanos().max(1)) as u64;
    }

    /// Time until the next tick boundary, for the `poll` timeout.
    fn until_next_tick(&self) -> Duration {
        let nanos = self.tick.as_nanos() * u128::from(self.now_tick);
        let next = self.started + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
        next.saturating_duration_since(Instant::now())
    }

    /// Whole ticks covering `d`, rounded up, at least 1.
    fn ticks_for(&self, d: Duration) -> u64 {
        let ticks = d.as_nanos().div_ceil(self.tick.as_nanos().max(1));
        // Far beyond any uptime: deadlines stay far from u64 overflow.
        ticks.clamp(1, 1 << 40) as u64
    }

    pub fn mark_dirty(&mut self, id: ConnId, io: &mut ConnIo) {
        if !io.flags.contains(Flags::DIRTY) {
            io.flags.insert(Flags::DIRTY);
            self.dirty.push(id);
        }
    }

    pub fn mark_close(&mut self, id: ConnId, io: &mut ConnIo, reason: CloseReason) {
        if !io.flags.contains(Flags::CLOSING) {
            io.flags.insert(Flags::CLOSING);
            self.closing.push((id, reason));
        }
    }

    pub fn mark_backlog(&mut self, id: ConnId, io: &mut ConnIo) {
        if !io.flags.contains(Flags::BACKLOG) {
            io.flags.insert(Flags::BACKLOG);
            self.backlog.push(id);
        }
    }

    /// After output was queued: enforce the byte caps (R5), then mark the connection dirty
    /// so the end-of-turn flush writes it (R3: no new WRITABLE edge would come for a socket
    /// that is already writable).
    pub fn after_queue(&mut self, id: ConnId, io: &mut ConnIo) {
        let queued = io.outbound.queued_bytes();
        if queued > self.max_outbound_bytes {
            log::warn!(
                "loop={} conn={id} slow consumer: {queued} bytes queued, cap {}; closing",
                self.loop_index,
                self.max_outbound_bytes
            );
            io.outbound.clear();
            self.mark_close(id, io, CloseReason::SlowConsumer);
            return;
        }
        self.check_soft_limit(id, io);
        self.mark_dirty(id, io);
    }

    /// The soft cap: above it for longer than the window means a slow consumer too. A
    /// connection that goes above it joins `soft_watch`, re-examined every tick, so a queue
    /// that simply stops moving is caught without new traffic to trigger the check.
    fn check_soft_limit(&mut self, id: ConnId, io: &mut ConnIo) {
        let Some(soft) = self.soft_outbound_bytes else {
            return;
        };
        if io.outbound.queued_bytes() <= soft {
            io.soft_since_tick = 0;
        } else if io.soft_since_tick == 0 {
            io.soft_since_tick = self.now_tick;
            self.soft_watch.push(id);
        } else if self.now_tick - io.soft_since_tick > self.soft_window_ticks {
            log::warn!(
                "loop={} conn={id} slow consumer: {} bytes queued above the soft cap {soft} for too long; closing",
                self.loop_index,
                io.outbound.queued_bytes()
            );
            io.outbound.clear();
            self.mark_close(id, io, CloseReason::SlowConsumer);
        }
    }

    pub fn set_idle_timeout(&mut self, id: ConnId, io: &mut ConnIo, timeout: Option<Duration>) {
        io.idle_ticks = timeout.map_or(0, |d| self.ticks_for(d));
        if io.idle_ticks == 0 {
            return;
        }
        let deadline = io.last_active_tick + io.idle_ticks;
        // Only a new, earlier deadline needs a new wheel entry; a later one is found when the
        // current entry comes due and is re-examined.
        if io.scheduled_tick == 0 || deadline < io.scheduled_tick {
            io.scheduled_tick = self
                .wheel
                .schedule(id.slot() as u32, id.generation(), deadline);
        }
    }
}

/// The numbers shared between the acceptor and all loops.
#[derive(Debug)]
pub(crate) struct Global {
    /// Open connections over all loops, plus sockets in flight to a loop.
    pub connections: AtomicUsize,
    /// True while the acceptor has stopped accepting at `max_connections`.
    pub gate_closed: AtomicBool,
    /// Accepting resumes below this many connections (90% of the limit, R9).
    pub resume_below: usize,
    pub acceptor_waker: Arc<mio::Waker>,
    /// Connections per source address, when `max_connections_per_ip` is set.
    pub per_ip: Option<Arc<PerIp>>,
    /// Connections closed at accept because their source was at its limit.
    pub refused_per_ip: AtomicU64,
}

impl Global {
    /// One connection fewer; reopens the accept gate once below the low-water mark. (The
    /// per-address count is given back by the socket's `IpSlot` when it drops.)
    pub fn connection_closed(&self) {
        // SeqCst pairs with `Acceptor::gate_open` (store gate, then load count): with weaker
        // orderings both sides could read stale values and the gate would wait for its
        // one-second recheck.
        let now = self.connections.fetch_sub(1, Ordering::SeqCst) - 1;
        if now < self.resume_below && self.gate_closed.load(Ordering::SeqCst) {
            if let Err(e) = self.acceptor_waker.wake() {
                log::error!("cannot wake the acceptor: {e}");
            }
        }
    }
}

pub(crate) struct EventLoop<H: Handler> {
    poll: Poll,
    slab: Slab<Conn<H::State>>,
    core: Core,
    handler: H,
    rx: Receiver<Command<H::Message>>,
    config: Arc<EngineConfig>,
    global: Arc<Global>,
    /// One read buffer for all connections of the loop (R7).
    scratch: Vec<u8>,
    next_generation: u32,
    pending_accepts: Vec<(TcpStream, ListenerId, IpSlot)>,
    /// Reused between turns to avoid reallocating the work lists.
    spare: Vec<ConnId>,
    due: Vec<TimerEntry>,
    last_handler_tick: u64,
    /// The last drain stopped at the command cap; more may be waiting.
    inbox_backlogged: bool,
    stop_deadline: Option<Instant>,
}

impl<H: Handler> EventLoop<H> {
    pub fn new(
        index: usize,
        poll: Poll,
        handler: H,
        rx: Receiver<Command<H::Message>>,
        shared: Arc<LoopShared>,
        config: Arc<EngineConfig>,
        global: Arc<Global>,
    ) -> Self {
        EventLoop {
            poll,
            // Sized for this loop's share of the connection limit up front: the untouched
            // part is address space, not memory, and the slab never doubles (a doubling
            // copies every connection and leaves the old buffer to the allocator).
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
            next_generation: 1,
            pending_accepts: Vec::new(),
            spare: Vec::new(),
            due: Vec::new(),
            last_handler_tick: 1,
            inbox_backlogged: false,
            stop_deadline: None,
            config,
            global,
        }
    }

    fn stats(&self) -> &LoopStats {
        &self.core.shared.stats
    }

    /// Runs turns until the engine stops this loop or `poll` keeps failing.
    pub fn run(mut self) {
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
            // ET sockets will not report again for work we left undone (R4).
            return Duration::ZERO;
        }
        let until_tick = self.core.until_next_tick();
        match self.stop_deadline {
            Some(_) => until_tick.min(Duration::from_millis(10)),
            None => until_tick,
        }
    }

    fn stopping(&self) -> bool {
        self.stop_deadline.is_some()
    }

    /// Looks up a live connection by id (generation checked).
    fn conn_mut(&mut self, id: ConnId) -> Option<&mut Conn<H::State>> {
        live(&mut self.slab, self.core.loop_index, id)
    }

    fn handle_event(&mut self, event: &mio::event::Event) {
        let token = event.token();
        if token == WAKER {
            return; // The inbox is drained every turn anyway.
        }
        let stopping = self.stopping();
        // Spurious events and events for a slot closed earlier in this batch find nothing
        // or a CLOSING connection; both are ignored.
        let Some(conn) = self.slab.get_mut(token.0) else {
            return;
        };
        let id = ConnId::new(self.core.loop_index, token.0, conn.io.generation);
        if event.is_writable() {
            conn.io.flags.insert(Flags::WRITABLE);
            if !conn.io.outbound.is_empty() {
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
            self.read_conn(id, event.is_read_closed() || event.is_error());
        }
    }

    /// Reads until the socket is drained, EOF, an error, a pause, or the read budget is
    /// spent (then the connection goes to the backlog, because an edge-triggered socket would
    /// not report the rest).
    ///
    /// "Drained" is `WouldBlock`, or a *short read* when `until_eof` is false: a TCP read
    /// that returns fewer bytes than asked for has emptied the receive queue, and any byte
    /// that arrives later raises a new edge. That saves the extra `read` that would only
    /// return `WouldBlock` (a quarter of the syscalls of a request/response echo). The one
    /// thing a short read can leave behind is a FIN that arrived with the data; the event
    /// says so (`is_read_closed`), and then the caller passes `until_eof = true`.
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
                    self.core.mark_close(id, io, CloseReason::PeerClosed);
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
    /// from earlier reads. Keeps what the handler did not consume.
    fn deliver_scratch(&mut self, id: ConnId, n: usize) {
        let Some(conn) = self.slab.get_mut(id.slot()) else {
            return;
        };
        let mut ctx = ConnCtx {
            id,
            io: &mut conn.io,
            core: &mut self.core,
        };
        if ctx.io.input.is_empty() {
            // The common case: whole frames straight from the scratch buffer, no copy.
            let fresh = &self.scratch[..n];
            let consumed = self
                .handler
                .on_data(&mut ctx, &mut conn.state, fresh)
                .min(n);
            if consumed < n {
                ctx.io.input.extend_from_slice(&fresh[consumed..]);
            }
        } else {
            ctx.io.input.extend_from_slice(&self.scratch[..n]);
            offer_buffered(&mut self.handler, &mut ctx, &mut conn.state);
        }
        self.check_input_cap(id);
    }

    fn check_input_cap(&mut self, id: ConnId) {
        let max = self.config.max_inbound_bytes;
        let Some(conn) = self.slab.get_mut(id.slot()) else {
            return;
        };
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

    fn drain_inbox(&mut self) {
        // Clear the flag before draining (R2): a command sent after this line either is
        // seen below or wakes us again.
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
            self.handle_command(cmd);
        }
        self.inbox_backlogged = handled >= cap;
        LoopStats::add(&self.stats().commands, handled as u64);
    }

    fn handle_command(&mut self, cmd: Command<H::Message>) {
        match cmd {
            Command::Register {
                stream,
                listener,
                peer,
                ip_slot,
            } => {
                // Counted as ours from here, so the acceptor's balancer sees it at once.
                let stats = &self.core.shared.stats;
                LoopStats::add(&stats.accepted, 1);
                if self.stopping() {
                    self.global.connection_closed();
                    return;
                }
                stats.connections.fetch_add(1, Ordering::Relaxed);
                log::trace!("loop={} accepted {peer}", self.core.loop_index);
                self.pending_accepts.push((stream, listener, ip_slot));
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

    /// Connections that hit their read budget in an earlier turn, or were resumed.
    fn process_backlog(&mut self, mut list: Vec<ConnId>) {
        if list.is_empty() {
            return;
        }
        for id in list.drain(..) {
            let Some(conn) = live(&mut self.slab, self.core.loop_index, id) else {
                continue;
            };
            conn.io.flags.remove(Flags::BACKLOG);
            if conn.io.flags.contains(Flags::CLOSING) || conn.io.flags.contains(Flags::READ_PAUSED)
            {
                continue;
            }
            if conn.io.flags.contains(Flags::REDELIVER) {
                conn.io.flags.remove(Flags::REDELIVER);
                if !conn.io.input.is_empty() {
                    let mut ctx = ConnCtx {
                        id,
                        io: &mut conn.io,
                        core: &mut self.core,
                    };
                    offer_buffered(&mut self.handler, &mut ctx, &mut conn.state);
                }
            }
            let pending = self
                .conn_mut(id)
                .is_some_and(|c| c.io.flags.contains(Flags::READ_PENDING));
            if pending && !self.stopping() {
                // No event to tell us about a FIN here: read until WouldBlock.
                self.read_conn(id, true);
            }
        }
        self.spare = list;
    }

    fn run_timers(&mut self) {
        let now = self.core.now_tick;
        self.core.wheel.advance(now, &mut self.due);
        let mut closes = 0;
        for entry in self.due.drain(..) {
            let Some(conn) = self.slab.get_mut(entry.slot as usize) else {
                continue;
            };
            let io = &mut conn.io;
            if io.generation != entry.generation || io.scheduled_tick != entry.tick {
                continue; // A superseded entry: the connection was rescheduled or replaced.
            }
            io.scheduled_tick = 0;
            if io.idle_ticks == 0 {
                continue;
            }
            let id = ConnId::new(self.core.loop_index, entry.slot as usize, io.generation);
            let deadline = io.last_active_tick + io.idle_ticks;
            if deadline <= now && closes < self.config.max_idle_closes_per_tick {
                log::debug!("loop={} conn={id} idle timeout", self.core.loop_index);
                self.core.mark_close(id, io, CloseReason::IdleTimeout);
                closes += 1;
            } else {
                // Not due, or past this tick's close budget: look again at the deadline
                // (or the next tick).
                let deadline = deadline.max(now + 1);
                io.scheduled_tick =
                    self.core
                        .wheel
                        .schedule(entry.slot, entry.generation, deadline);
            }
        }
        if now != self.last_handler_tick {
            self.last_handler_tick = now;
            for id in std::mem::take(&mut self.core.soft_watch) {
                if let Some(conn) = live(&mut self.slab, self.core.loop_index, id) {
                    if conn.io.soft_since_tick != 0 && !conn.io.flags.contains(Flags::CLOSING) {
                        self.core.check_soft_limit(id, &mut conn.io);
                        // Still above the cap and inside its window: keep watching.
                        if conn.io.soft_since_tick != 0 && !conn.io.flags.contains(Flags::CLOSING) {
                            self.core.soft_watch.push(id);
                        }
                    }
                }
            }
            let mut lp = LoopCtx {
                slab: &mut self.slab,
                core: &mut self.core,
            };
            self.handler.on_tick(&mut lp);
        }
    }

    /// Writes every connection with queued output once (R6), within the write budget.
    fn flush_dirty(&mut self) {
        if self.core.dirty.is_empty() {
            return;
        }
        let mut list = std::mem::replace(&mut self.core.dirty, std::mem::take(&mut self.spare));
        for id in list.drain(..) {
            let Some(conn) = live(&mut self.slab, self.core.loop_index, id) else {
                continue;
            };
            conn.io.flags.remove(Flags::DIRTY);
            flush_conn(&mut self.core, &self.config, id, &mut conn.io);
        }
        self.spare = list;
    }

    /// Removes connections marked for close: one last write for graceful closes, deregister,
    /// close the socket, tell the handler.
    fn reap(&mut self) {
        while let Some((id, reason)) = self.core.closing.pop() {
            let valid = self
                .slab
                .get(id.slot())
                .is_some_and(|c| id.matches(c.io.generation));
            if !valid {
                continue;
            }
            let mut conn = self.slab.remove(id.slot());
            let graceful = !matches!(
                reason,
                CloseReason::Io(_) | CloseReason::SlowConsumer | CloseReason::InputOverflow
            );
            if graceful && !(reason == CloseReason::Shutdown && self.hard_stop()) {
                last_words(&mut self.core, &self.config, id, &mut conn.io);
            }
            if let Err(e) = self.poll.registry().deregister(&mut conn.io.stream) {
                log::debug!("loop={} conn={id} deregister: {e}", self.core.loop_index);
            }
            drop(conn.io);
            let stats = &self.core.shared.stats;
            stats.connections.fetch_sub(1, Ordering::Relaxed);
            LoopStats::add(&stats.closed[reason.index()], 1);
            self.global.connection_closed();
            log::debug!(
                "loop={} conn={id} closed: {}",
                self.core.loop_index,
                reason.name()
            );
            self.handler.on_close(id, conn.state, reason);
        }
    }

    /// Registers sockets the acceptor handed over, now that the turn's events are done.
    /// At most `ACCEPTS_PER_TURN` per turn, oldest first: a storm of thousands must not
    /// stall the connections already here for one long turn; the rest wait one turn each
    /// (the poll does not sleep while any are pending).
    fn insert_accepted(&mut self) {
        let n = self.pending_accepts.len().min(ACCEPTS_PER_TURN);
        let batch: Vec<_> = self.pending_accepts.drain(..n).collect();
        for (mut stream, listener, ip_slot) in batch {
            let entry = self.slab.vacant_entry();
            let slot = entry.key();
            let generation = self.next_generation;
            self.next_generation = self.next_generation.wrapping_add(1);
            let id = ConnId::new(self.core.loop_index, slot, generation);
            if let Err(e) = self.poll.registry().register(
                &mut stream,
                Token(slot),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                log::warn!(
                    "loop={} cannot register an accepted socket: {e}",
                    self.core.loop_index
                );
                self.core
                    .shared
                    .stats
                    .connections
                    .fetch_sub(1, Ordering::Relaxed);
                self.global.connection_closed();
                continue;
            }
            let queued_out = Arc::clone(&self.core.shared.stats.queued_out);
            let mut io = ConnIo::new(stream, generation, listener, self.core.now_tick, queued_out);
            io.ip_slot = ip_slot; // moved: released when the connection drops
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
                let drained = self.slab.iter().all(|(_, c)| c.io.outbound.is_empty());
                drained && self.rx.is_empty() || self.core.now >= deadline
            }
        }
    }

    fn close_all(&mut self) {
        let ids: Vec<ConnId> = self
            .slab
            .iter()
            .map(|(slot, c)| ConnId::new(self.core.loop_index, slot, c.io.generation))
            .collect();
        for id in ids {
            if let Some(conn) = self.slab.get_mut(id.slot()) {
                self.core
                    .mark_close(id, &mut conn.io, CloseReason::Shutdown);
            }
        }
        self.reap();
    }

    /// Sockets handed over but never registered still count as connections; release them.
    fn drop_undelivered(&mut self) {
        for _ in self.pending_accepts.drain(..) {
            self.core
                .shared
                .stats
                .connections
                .fetch_sub(1, Ordering::Relaxed);
            self.global.connection_closed();
        }
        // Every connection is closed by now. Handler messages still go to the handler,
        // which finds their connections gone and can account for them (a delivery that
        // missed); frames and closes have nothing left to act on.
        while let Ok(cmd) = self.rx.try_recv() {
            match cmd {
                Command::Register { .. } => self.global.connection_closed(),
                Command::Message(_) | Command::Messages(_) => self.handle_command(cmd),
                _ => {}
            }
        }
    }
}

/// The live connection `id` names on this loop: same loop, same slot, same generation.
/// Every id that reaches a loop from outside goes through here (R8): ids of other loops
/// share slot and generation numbers, so the loop index is part of the check.
fn live<S>(slab: &mut Slab<Conn<S>>, loop_index: usize, id: ConnId) -> Option<&mut Conn<S>> {
    if id.loop_index() != loop_index {
        return None;
    }
    slab.get_mut(id.slot())
        .filter(|c| id.matches(c.io.generation))
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

/// Writes one connection's queue within the write budget and records the outcome.
fn flush_conn(core: &mut Core, config: &EngineConfig, id: ConnId, io: &mut ConnIo) {
    if !io.flags.contains(Flags::WRITABLE) || io.outbound.is_empty() {
        return; // A WRITABLE event will put it back on the dirty list.
    }
    let outcome = io
        .outbound
        .flush_to(&mut io.stream, config.write_budget_bytes);
    let stats = &core.shared.stats;
    LoopStats::add(&stats.bytes_out, outcome.written as u64);
    LoopStats::add(&stats.writev_calls, outcome.syscalls as u64);
    match outcome.status {
        FlushStatus::Drained => {
            io.soft_since_tick = 0;
            if io.flags.contains(Flags::CLOSE_AFTER_FLUSH) {
                core.mark_close(id, io, CloseReason::Handler);
            }
        }
        // Still writable, so no event will come: try again next turn.
        FlushStatus::BudgetSpent => {
            core.mark_dirty(id, io);
            core.check_soft_limit(id, io);
        }
        FlushStatus::WouldBlock => {
            io.flags.remove(Flags::WRITABLE);
            core.check_soft_limit(id, io);
        }
        FlushStatus::Failed(e) => {
            log_io_error(core.loop_index, id, "write", &e);
            io.outbound.clear();
            core.mark_close(id, io, CloseReason::Io(e.kind()));
        }
    }
}

/// The last, non-blocking attempt to write what is queued before a graceful close, then a
/// bounded read to drain input so the close does not turn into an RST.
fn last_words(core: &mut Core, config: &EngineConfig, id: ConnId, io: &mut ConnIo) {
    // Try even if the last write hit WouldBlock: the buffer may have drained since, and a
    // write that would block just returns WouldBlock.
    io.flags.insert(Flags::WRITABLE);
    flush_conn(core, config, id, io);
    let _ = io.stream.shutdown(std::net::Shutdown::Write);
    let mut sink = [0u8; 4096];
    let mut discarded = 0;
    while discarded < DISCARD_ON_CLOSE_BYTES {
        match io.stream.read(&mut sink) {
            Ok(n) if n > 0 => discarded += n,
            _ => break,
        }
    }
}

/// Logs a per-connection I/O error at the level its kind deserves (STYLE §4 tiers).
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
