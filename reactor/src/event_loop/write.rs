//! The write path: at the end of each turn, every dirty connection is written from its
//! `Outbound` with vectored writes, until the queue is empty, the socket would block, or
//! the turn's write budget for that connection is spent (R6).

use super::{live, log_io_error, EventLoop};
use crate::config::EngineConfig;
use crate::conn::{ConnIo, Flags};
use crate::conn_id::ConnId;
use crate::core::Core;
use crate::handler::Handler;
use crate::outbound::FlushStatus;
use crate::stats::{CloseReason, LoopStats};

impl<H: Handler> EventLoop<H> {
    /// Writes every connection with queued output, within the write budget.
    pub(super) fn flush_dirty(&mut self) {
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
}

/// Writes one connection's queue within the write budget and records the outcome:
/// `Outbound::flush_to` loops over `write_vectored` calls (at most 1,024 slices each)
/// until one of the ends below.
pub(super) fn flush_conn(core: &mut Core, config: &EngineConfig, id: ConnId, io: &mut ConnIo) {
    if !io.flags.contains(Flags::WRITABLE) || !io.has_output() {
        return; // A WRITABLE event will put it back on the dirty list.
    }
    let outcome = match io.extra.as_mut().and_then(|e| e.tls.as_mut()) {
        Some(tls) => super::tls::flush(
            tls,
            &mut io.outbound,
            &mut io.stream,
            config.write_budget_bytes,
        ),
        None => io
            .outbound
            .flush_to(&mut io.stream, config.write_budget_bytes),
    };
    if outcome.written > 0 && io.flags.contains(Flags::CLOSE_AFTER_FLUSH) {
        // A closing connection whose peer still reads: the linger counts from the last
        // progress, not from the close (`Core::close_after_flush`).
        io.last_active_tick = core.now_tick;
    }
    let stats = &core.shared.stats;
    LoopStats::add(&stats.bytes_out, outcome.written as u64);
    LoopStats::add(&stats.writev_calls, outcome.syscalls as u64);
    match outcome.status {
        FlushStatus::Drained => {
            io.soft_since_tick = 0;
            if io.flags.contains(Flags::CLOSE_AFTER_FLUSH) {
                let reason = if io.flags.contains(Flags::PEER_CLOSED) {
                    CloseReason::PeerClosed
                } else if io.flags.contains(Flags::TLS_FAILED) {
                    CloseReason::Tls
                } else {
                    CloseReason::Handler
                };
                core.mark_close(id, io, reason);
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
            io.outbound.clear(); // The peer is gone: nobody to tell it was cut.
            core.mark_close(id, io, CloseReason::Io(e.kind()));
        }
    }
}
