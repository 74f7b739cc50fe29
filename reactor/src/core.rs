//! `Core`: what every connection context needs apart from the slab: the turn's clock, the
//! work lists, the timer wheel and the output caps. Split from `EventLoop` so a `ConnCtx`
//! can borrow it next to one connection.
//!
//! # The work lists
//! Each list holds `ConnId`s, so a connection closed and its slot reused since it was
//! listed is found stale (R8). A flag on the connection says it is listed, so it is listed
//! once however often the condition comes and goes within a turn (R5):
//!
//! | list         | flag           | filled by                                  | emptied by               |
//! |--------------|----------------|--------------------------------------------|--------------------------|
//! | `dirty`      | `DIRTY`        | output queued, a WRITABLE event            | `flush_dirty`, each turn |
//! | `backlog`    | `BACKLOG`      | a spent read budget, `resume_reading`      | `process_backlog`, next turn |
//! | `closing`    | `CLOSING`      | `mark_close`, from anywhere                | `reap`, each turn        |
//! | `soft_watch` | `SOFT_WATCHED` | a queue going above the soft cap           | `watch_soft_caps`, each tick |

use crate::config::EngineConfig;
use crate::conn::{ConnIo, Flags};
use crate::conn_id::ConnId;
use crate::loop_shared::LoopShared;
use crate::stats::CloseReason;
use crate::timer::TimerWheel;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    pub soft_watch: Vec<ConnId>,
    pub wheel: TimerWheel,
    max_outbound_bytes: usize,
    soft_outbound_bytes: Option<usize>,
    soft_window_ticks: u64,
    close_linger_ticks: u64,
    pub shared: Arc<LoopShared>,
}

impl Core {
    pub fn new(loop_index: usize, config: &EngineConfig, shared: Arc<LoopShared>) -> Core {
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
            close_linger_ticks: 0,
            shared,
        };
        core.soft_window_ticks = core.ticks_for(config.soft_limit_window);
        core.close_linger_ticks = core.ticks_for(config.close_linger);
        core
    }

    /// Reads the clock once per turn; everything in the turn uses this value.
    pub fn update_clock(&mut self) {
        self.now = Instant::now();
        // Tick 0 means "none" in the per-connection timer fields, so ticks start at 1.
        let elapsed = self.now.duration_since(self.started);
        self.now_tick = 1 + (elapsed.as_nanos() / self.tick.as_nanos().max(1)) as u64;
    }

    /// Time until the next tick boundary: the longest a loop sleeps in `poll`, so timers
    /// and `on_tick` run on time even when no socket and no sender wakes it.
    pub fn until_next_tick(&self) -> Duration {
        let nanos = self.tick.as_nanos() * u128::from(self.now_tick);
        let next = self.started + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
        next.saturating_duration_since(Instant::now())
    }

    /// The time `ticks` ticks take.
    pub fn duration_of(&self, ticks: u64) -> Duration {
        self.tick
            .saturating_mul(u32::try_from(ticks).unwrap_or(u32::MAX))
    }

    /// Whole ticks covering `d`, rounded up, at least 1.
    pub fn ticks_for(&self, d: Duration) -> u64 {
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
            io.flags.insert(Flags::OUTPUT_DROPPED);
            self.mark_close(id, io, CloseReason::SlowConsumer);
            return;
        }
        self.check_soft_limit(id, io);
        self.mark_dirty(id, io);
    }

    /// The soft cap: above it for longer than the window means a slow consumer too. A
    /// connection that goes above it joins `soft_watch` (once: `SOFT_WATCHED`), re-examined
    /// every tick, so a queue that simply stops moving is caught without new traffic.
    pub fn check_soft_limit(&mut self, id: ConnId, io: &mut ConnIo) {
        let Some(soft) = self.soft_outbound_bytes else {
            return;
        };
        if io.outbound.queued_bytes() <= soft {
            io.soft_since_tick = 0;
            return;
        }
        if io.soft_since_tick == 0 {
            io.soft_since_tick = self.now_tick;
            if !io.flags.contains(Flags::SOFT_WATCHED) {
                io.flags.insert(Flags::SOFT_WATCHED);
                self.soft_watch.push(id);
            }
        } else if self.now_tick - io.soft_since_tick > self.soft_window_ticks {
            log::warn!(
                "loop={} conn={id} slow consumer: {} bytes queued above the soft cap {soft} for too long; closing",
                self.loop_index,
                io.outbound.queued_bytes()
            );
            io.outbound.clear();
            io.flags.insert(Flags::OUTPUT_DROPPED);
            self.mark_close(id, io, CloseReason::SlowConsumer);
        }
    }

    pub fn set_idle_timeout(&mut self, id: ConnId, io: &mut ConnIo, timeout: Option<Duration>) {
        if io.flags.contains(Flags::CLOSE_AFTER_FLUSH) {
            return; // Its deadline is the linger's now (`close_after_flush`).
        }
        io.idle_ticks = timeout.map_or(0, |d| self.ticks_for(d));
        self.schedule_idle(id, io);
    }

    fn schedule_idle(&mut self, id: ConnId, io: &mut ConnIo) {
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

    /// Closes the connection once its queue is empty: reading stops now, and the peer has
    /// `close_linger` to read what is queued, counted from now and again from each write
    /// that makes progress (`flush_conn`). A peer that stops reading for that long is
    /// closed anyway (as idle), and what is still queued makes that close a reset.
    pub fn close_after_flush(&mut self, id: ConnId, io: &mut ConnIo, reason: CloseReason) {
        if !io.has_output() {
            self.mark_close(id, io, reason);
            return;
        }
        if io.flags.contains(Flags::CLOSE_AFTER_FLUSH) {
            return;
        }
        io.flags
            .insert(Flags::CLOSE_AFTER_FLUSH | Flags::READ_PAUSED);
        if reason == CloseReason::PeerClosed {
            io.flags.insert(Flags::PEER_CLOSED);
        }
        // No input arrives from here on, so the idle timer measures the linger.
        io.last_active_tick = self.now_tick;
        io.idle_ticks = self.close_linger_ticks;
        self.schedule_idle(id, io);
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::global::{Admission, Global};
    use crate::per_ip::IpSlot;
    use crate::ListenerId;
    use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};

    /// A real connected socket in a `ConnIo`, with the core of a loop that never runs.
    pub fn core_and_conn() -> (Core, ConnIo, std::net::TcpStream) {
        let poll = mio::Poll::new().unwrap();
        let waker = mio::Waker::new(poll.registry(), mio::Token(0)).unwrap();
        // mio allows one waker per poll.
        let acceptor_poll = mio::Poll::new().unwrap();
        let acceptor_waker =
            Arc::new(mio::Waker::new(acceptor_poll.registry(), mio::Token(1)).unwrap());
        let global = Arc::new(Global {
            connections: AtomicUsize::new(0),
            gate_closed: AtomicBool::new(false),
            resume_below: 10,
            acceptor_waker,
            per_ip: None,
            refused_per_ip: AtomicU64::new(0),
        });
        let config = EngineConfig {
            soft_outbound_bytes: Some(1024),
            ..EngineConfig::default()
        };
        let shared = Arc::new(LoopShared::new(waker, 1 << 20));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let io = ConnIo::new(
            mio::net::TcpStream::from_std(server),
            1,
            ListenerId(0),
            1,
            Arc::default(),
            Admission::new(&global, IpSlot::none()),
        );
        (Core::new(0, &config, shared), io, client)
    }
}

#[cfg(test)]
mod tests {
    use super::testing::core_and_conn;
    use super::*;

    #[test]
    fn a_queue_swinging_across_the_soft_cap_is_watched_once() {
        let (mut core, mut io, _client) = core_and_conn();
        let id = ConnId::new(0, 0, 1);
        for _ in 0..1000 {
            io.outbound.queue_slice(&[0u8; 2048]);
            core.after_queue(id, &mut io); // above the cap
            io.outbound.clear();
            core.check_soft_limit(id, &mut io); // below again
        }
        assert_eq!(core.soft_watch.len(), 1, "listed once per swing");
        assert_eq!(core.dirty.len(), 1);
    }

    #[test]
    fn close_after_flush_with_nothing_queued_closes_now_and_otherwise_lingers() {
        let (mut core, mut io, _client) = core_and_conn();
        let id = ConnId::new(0, 0, 1);
        io.outbound.queue_slice(b"reply");
        core.close_after_flush(id, &mut io, CloseReason::PeerClosed);
        assert!(core.closing.is_empty(), "closed before the reply went out");
        assert!(io
            .flags
            .contains(Flags::CLOSE_AFTER_FLUSH | Flags::READ_PAUSED));
        assert!(io.flags.contains(Flags::PEER_CLOSED));
        assert_eq!(io.idle_ticks, core.close_linger_ticks);
        core.set_idle_timeout(id, &mut io, None);
        assert_eq!(io.idle_ticks, core.close_linger_ticks, "the linger stays");
        io.last_active_tick = 0;
        core.close_after_flush(id, &mut io, CloseReason::Handler);
        assert!(core.closing.is_empty());
        assert_eq!(
            io.last_active_tick, 0,
            "a close under way does not restart its linger"
        );
        let (mut core, mut io, _client) = core_and_conn();
        core.close_after_flush(id, &mut io, CloseReason::Handler);
        assert_eq!(core.closing, vec![(id, CloseReason::Handler)]);
    }
}
