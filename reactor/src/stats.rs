//! Per-loop counters, written by the owning loop and readable from any thread.
//!
//! Every field is a relaxed atomic: the loop is the only writer of each counter (except
//! `wakeups`, which senders bump), and readers want a recent value, not a synchronised one.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

/// Why a connection closed. Counted per loop, passed to `Handler::on_close`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// The peer closed its side (read returned 0).
    PeerClosed,
    /// A socket error: reset, broken pipe, or anything else the OS reported.
    Io(std::io::ErrorKind),
    /// The handler asked for it (`ConnCtx::close`).
    Handler,
    /// Another thread asked for it (`LoopHandle::close`).
    Command,
    /// No inbound bytes for longer than the connection's idle timeout.
    IdleTimeout,
    /// Its output queue passed the hard byte cap, or stayed above the soft cap too long.
    SlowConsumer,
    /// It sent more incomplete input than `max_inbound_bytes`.
    InputOverflow,
    /// The engine is stopping.
    Shutdown,
    /// Its first bytes were a PROXY header it may not send (its source is not a trusted
    /// proxy) or cannot be read (`proxy.rs`).
    ProxyHeader,
    /// The client a trusted proxy named is at `max_connections_per_ip`.
    OverIpLimit,
    /// Its TLS records could not be read (not TLS, a failed handshake, a bad record).
    Tls,
}

impl CloseReason {
    /// Number of distinct reasons, for the per-reason counters.
    pub const COUNT: usize = 11;

    /// One of each reason (`Io` with any kind: they share a counter), in index order, so
    /// an exporter cannot miss one.
    pub const ALL: [CloseReason; CloseReason::COUNT] = [
        CloseReason::PeerClosed,
        CloseReason::Io(std::io::ErrorKind::Other),
        CloseReason::Handler,
        CloseReason::Command,
        CloseReason::IdleTimeout,
        CloseReason::SlowConsumer,
        CloseReason::InputOverflow,
        CloseReason::Shutdown,
        CloseReason::ProxyHeader,
        CloseReason::OverIpLimit,
        CloseReason::Tls,
    ];

    /// A dense index for counters.
    pub const fn index(self) -> usize {
        match self {
            CloseReason::PeerClosed => 0,
            CloseReason::Io(_) => 1,
            CloseReason::Handler => 2,
            CloseReason::Command => 3,
            CloseReason::IdleTimeout => 4,
            CloseReason::SlowConsumer => 5,
            CloseReason::InputOverflow => 6,
            CloseReason::Shutdown => 7,
            CloseReason::ProxyHeader => 8,
            CloseReason::OverIpLimit => 9,
            CloseReason::Tls => 10,
        }
    }

    /// A short stable name, for metrics labels and logs.
    pub const fn name(self) -> &'static str {
        [
            "peer_closed",
            "io_error",
            "handler",
            "command",
            "idle_timeout",
            "slow_consumer",
            "input_overflow",
            "shutdown",
            "proxy_header",
            "over_ip_limit",
            "tls",
        ][self.index()]
    }
}

/// Counters of one event loop. See the module docs for the memory ordering.
#[derive(Debug, Default)]
pub struct LoopStats {
    /// Connections registered on this loop now.
    pub connections: AtomicUsize,
    /// Sockets the acceptor handed to this loop that it has not registered yet (in its
    /// inbox or waiting for the end of a turn). The acceptor's balancer counts them as load,
    /// and hands a loop no more than `MAX_PENDING_SOCKETS` of them (`acceptor.rs`).
    pub pending_sockets: AtomicUsize,
    /// Sockets this loop has taken from its inbox since it started.
    pub accepted: AtomicU64,
    /// Closes per [`CloseReason::index`].
    pub closed: [AtomicU64; CloseReason::COUNT],
    /// Bytes read from sockets.
    pub bytes_in: AtomicU64,
    /// Bytes written to sockets.
    pub bytes_out: AtomicU64,
    /// `write_vectored` calls.
    pub writev_calls: AtomicU64,
    /// Times the loop's `Waker` was actually signalled (coalesced wake-ups are not counted).
    pub wakeups: AtomicU64,
    /// Inbox commands processed.
    pub commands: AtomicU64,
    /// Commands dropped because their `ConnId` named a connection that is gone.
    pub stale_commands: AtomicU64,
    /// Loop turns (one `poll` each).
    pub turns: AtomicU64,
    /// Times a connection used up its read budget and was put on the backlog (R4).
    pub read_budget_yields: AtomicU64,
    /// Closes that reset the connection because output was left unwritten (a slow
    /// consumer, or a last write that did not take everything): `event_loop/close.rs`.
    pub unwritten_resets: AtomicU64,
    /// Bytes queued for writing on this loop's connections now (a gauge). Shared with each
    /// connection's [`crate::outbound::Outbound`], which keeps it as it queues, writes and
    /// drops bytes.
    pub queued_out: std::sync::Arc<AtomicUsize>,
}

impl LoopStats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    /// Connections closed for `reason`.
    pub fn closed_for(&self, reason: CloseReason) -> u64 {
        self.closed[reason.index()].load(Relaxed)
    }

    /// Slow-consumer closes: connections whose output queue went over its cap.
    pub fn slow_consumer_closes(&self) -> u64 {
        self.closed_for(CloseReason::SlowConsumer)
    }

    /// A plain copy of every counter.
    pub fn snapshot(&self) -> LoopStatsSnapshot {
        LoopStatsSnapshot {
            connections: self.connections.load(Relaxed),
            pending_sockets: self.pending_sockets.load(Relaxed),
            accepted: self.accepted.load(Relaxed),
            closed: std::array::from_fn(|i| self.closed[i].load(Relaxed)),
            bytes_in: self.bytes_in.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            writev_calls: self.writev_calls.load(Relaxed),
            wakeups: self.wakeups.load(Relaxed),
            commands: self.commands.load(Relaxed),
            stale_commands: self.stale_commands.load(Relaxed),
            turns: self.turns.load(Relaxed),
            read_budget_yields: self.read_budget_yields.load(Relaxed),
            unwritten_resets: self.unwritten_resets.load(Relaxed),
            queued_out: self.queued_out.load(Relaxed),
        }
    }
}

/// A copy of [`LoopStats`] at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoopStatsSnapshot {
    /// See [`LoopStats::connections`].
    pub connections: usize,
    /// See [`LoopStats::pending_sockets`].
    pub pending_sockets: usize,
    /// See [`LoopStats::accepted`].
    pub accepted: u64,
    /// See [`LoopStats::closed`].
    pub closed: [u64; CloseReason::COUNT],
    /// See [`LoopStats::bytes_in`].
    pub bytes_in: u64,
    /// See [`LoopStats::bytes_out`].
    pub bytes_out: u64,
    /// See [`LoopStats::writev_calls`].
    pub writev_calls: u64,
    /// See [`LoopStats::wakeups`].
    pub wakeups: u64,
    /// See [`LoopStats::commands`].
    pub commands: u64,
    /// See [`LoopStats::stale_commands`].
    pub stale_commands: u64,
    /// See [`LoopStats::turns`].
    pub turns: u64,
    /// See [`LoopStats::read_budget_yields`].
    pub read_budget_yields: u64,
    /// See [`LoopStats::unwritten_resets`].
    pub unwritten_resets: u64,
    /// Bytes queued for writing, at the time of the snapshot.
    pub queued_out: usize,
}

#[cfg(test)]
mod tests {
    use super::CloseReason;

    #[test]
    fn all_lists_every_reason_once_in_index_order() {
        for (i, reason) in CloseReason::ALL.iter().enumerate() {
            assert_eq!(reason.index(), i, "{reason:?}");
        }
    }
}
