//! Timers: idle deadlines from the timer wheel, and once per new tick the soft output cap
//! and `Handler::on_tick`.
//!
//! `on_tick` runs at most once per turn, in the first turn that sees a new tick: a loop
//! busy for longer than a tick skips the ticks in between (it is a period, not a count).

use super::{live, EventLoop};
use crate::conn::Flags;
use crate::conn_id::ConnId;
use crate::handler::{Handler, LoopCtx};
use crate::stats::CloseReason;

impl<H: Handler> EventLoop<H> {
    pub(super) fn run_timers(&mut self) {
        let now = self.core.now_tick;
        self.core.wheel.advance(now, &mut self.due);
        let mut closes = 0;
        for entry in self.due.drain(..) {
            let id = ConnId::new(self.core.loop_index, entry.slot as usize, entry.generation);
            let Some(conn) = live(&mut self.slab, self.core.loop_index, id) else {
                continue; // The connection is gone; its slot may hold another.
            };
            let io = &mut conn.io;
            if io.scheduled_tick != entry.tick {
                continue; // A superseded entry: the connection was rescheduled.
            }
            io.scheduled_tick = 0;
            if io.idle_ticks == 0 {
                continue;
            }
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
            self.watch_soft_caps();
            let mut lp = LoopCtx {
                slab: &mut self.slab,
                core: &mut self.core,
            };
            self.handler.on_tick(&mut lp);
        }
    }

    /// Re-examines every connection above the soft cap, so a queue that stops moving is
    /// closed when its window passes with no traffic to notice it. A connection leaves the
    /// list (and its `SOFT_WATCHED` flag) once it is back below the cap or closing.
    fn watch_soft_caps(&mut self) {
        for id in std::mem::take(&mut self.core.soft_watch) {
            let Some(conn) = live(&mut self.slab, self.core.loop_index, id) else {
                continue;
            };
            let io = &mut conn.io;
            if io.soft_since_tick != 0 && !io.flags.contains(Flags::CLOSING) {
                self.core.check_soft_limit(id, io);
            }
            if io.soft_since_tick != 0 && !io.flags.contains(Flags::CLOSING) {
                self.core.soft_watch.push(id); // Still above, inside its window.
            } else {
                io.flags.remove(Flags::SOFT_WATCHED);
            }
        }
    }
}
