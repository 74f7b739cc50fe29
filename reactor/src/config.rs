//! Engine configuration: how many loops, and the limits every connection lives within.
//!
//! Every number here has a reason written next to it, because each one trades memory,
//! fairness or latency against another, and the defaults are what an IM server on a small
//! machine wants.

use std::time::Duration;

/// Limits and tuning of the engine. Build it with [`EngineConfig::default`] and change the
/// fields you need; [`crate::Engine::builder`] wraps it.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Number of event-loop threads. Default: the number of available cores, because each
    /// loop is one busy thread and more loops than cores only adds context switches. At
    /// most 256.
    pub loops: usize,
    /// Which loop a new connection goes to.
    pub balancing: Balancing,
    /// Connections accepted at most, over all listeners and loops. At the limit the acceptor
    /// stops accepting and the kernel's backlog absorbs new arrivals; it accepts again below
    /// 90% of the limit (see [`crate::Engine`]). Default 1,000,000.
    pub max_connections: usize,
    /// Connections open at most from one source address (an IPv4 address or an IPv6 /64),
    /// so one host cannot take every descriptor. Past it a new connection is reset at
    /// accept. 0 = no limit. Default 0: an engine does not know whether its clients sit
    /// behind a NAT; the IM server sets its own default.
    pub max_connections_per_ip: usize,
    /// `listen(2)` backlog. Default 1,024, the usual `somaxconn` (the kernel caps it
    /// there); it absorbs connect storms while the accept gate is closed.
    pub listen_backlog: i32,
    /// Hard cap on bytes queued for one connection. Past it the connection is a slow consumer
    /// and is closed: its messages are stored, so it recovers by syncing after it reconnects.
    /// Default 4 MiB, a few seconds of a busy chat at mobile speeds.
    pub max_outbound_bytes: usize,
    /// Optional soft cap: a connection whose queue stays above this many bytes for longer than
    /// `soft_limit_window` is closed too (redis' soft output limit). `None` disables it.
    pub soft_outbound_bytes: Option<usize>,
    /// How long a queue may stay above `soft_outbound_bytes` before the connection is closed.
    pub soft_limit_window: Duration,
    /// Bytes of incomplete input a connection may hold between reads. The handler consumes
    /// whole frames; this bounds a client that announces a frame and never finishes it.
    /// Default 1 MiB + 64 KiB: one maximal protocol frame plus slack.
    pub max_inbound_bytes: usize,
    /// Bytes read from one connection per loop turn before the loop moves on. 64 KiB is redis'
    /// per-event write cap and gnet's chunk size: big enough to amortise the syscall, small
    /// enough that one flooding client cannot starve the others.
    pub read_budget_bytes: usize,
    /// Bytes written to one connection per turn. Same reasoning as `read_budget_bytes`; a
    /// little larger because one write often carries a fan-out of many small frames.
    /// Default 256 KiB.
    pub write_budget_bytes: usize,
    /// Size of each loop's scratch read buffer. One per loop, shared by all its connections,
    /// so idle connections hold no read buffer at all. Default 64 KiB (one read budget).
    pub read_buffer_bytes: usize,
    /// Close a connection after this long without inbound bytes. `None`: never. Handlers can
    /// change it per connection (for example short before login, long after).
    pub idle_timeout: Option<Duration>,
    /// Idle connections closed per tick at most; the rest wait for the next tick. Thousands
    /// of connections opened together (a connect storm that never speaks) expire together,
    /// and closing them all in one turn would stall every other connection of the loop
    /// for that turn. Default 256: 2,560 per second per loop at the default tick.
    pub max_idle_closes_per_tick: usize,
    /// Resolution of the idle timer wheel and the period of `Handler::on_tick`. 100 ms keeps
    /// timer work negligible while being far finer than any protocol timeout (seconds).
    pub tick: Duration,
    /// Commands drained from a loop's inbox per turn before it looks at sockets again (gnet
    /// drains 256, rumqttd 500); a batch counts as the frames or messages it holds, so the
    /// budget bounds the work of a turn. The turn that crosses it finishes its last batch.
    /// Default 1,024.
    pub max_commands_per_turn: usize,
    /// Capacity of each loop's inbox, in commands. Producers outside the loops block when it
    /// is full, which slows them to the loop's pace; loop threads only `try_send`.
    /// Default 16,384.
    pub inbox_capacity: usize,
    /// Bytes of frames (`LoopHandle::send` and `send_batch`) each loop's inbox holds at
    /// most: without it, 16,384 commands of 64 KiB frames would be a gigabyte per loop
    /// before any connection's `max_outbound_bytes` sees them. Blocking senders wait for
    /// room, `try_` senders get `Full`; a single frame larger than the bound goes through
    /// an empty inbox. Handler messages (`post`) are not counted here: their size is the
    /// handler's to bound. Default 64 MiB.
    pub max_inbox_bytes: usize,
    /// Events fetched per `poll` call. Default 1,024, as mio's examples and sozu use.
    pub events_capacity: usize,
    /// How long a soft stop waits for queued output to drain before closing anyway.
    /// Default 5 s.
    pub shutdown_grace: Duration,
    /// How long a connection that is closing after its flush (`close_after_flush`, or a
    /// peer's half-close with output queued) may go without reading any of what is queued.
    /// Past it the connection is closed anyway, with a reset since output is left: a peer
    /// that stops reading cannot hold a closing connection open, and one that reads slowly
    /// still gets it all. Default 10 s.
    pub close_linger: Duration,
}

/// How the acceptor picks a loop for a new connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Balancing {
    /// The loop with the fewest connections; ties go round-robin. The default, because
    /// long-lived IM connections close unevenly and plain rotation drifts out of balance.
    LeastConnections,
    /// Each loop in turn.
    RoundRobin,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            loops: std::thread::available_parallelism().map_or(1, |n| n.get()),
            balancing: Balancing::LeastConnections,
            max_connections: 1_000_000,
            max_connections_per_ip: 0,
            listen_backlog: 1024,
            max_outbound_bytes: 4 << 20,
            soft_outbound_bytes: None,
            soft_limit_window: Duration::from_secs(10),
            max_inbound_bytes: (1 << 20) + (64 << 10),
            read_budget_bytes: 64 << 10,
            write_budget_bytes: 256 << 10,
            read_buffer_bytes: 64 << 10,
            idle_timeout: None,
            max_idle_closes_per_tick: 256,
            tick: Duration::from_millis(100),
            max_commands_per_turn: 1024,
            inbox_capacity: 16 << 10,
            max_inbox_bytes: 64 << 20,
            events_capacity: 1024,
            shutdown_grace: Duration::from_secs(5),
            close_linger: Duration::from_secs(10),
        }
    }
}

impl EngineConfig {
    /// Checks that the numbers can work together.
    ///
    /// # Errors
    /// A message naming the first field that cannot work.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("loops", self.loops),
            ("max_connections", self.max_connections),
            ("max_outbound_bytes", self.max_outbound_bytes),
            ("max_inbound_bytes", self.max_inbound_bytes),
            ("read_budget_bytes", self.read_budget_bytes),
            ("write_budget_bytes", self.write_budget_bytes),
            ("read_buffer_bytes", self.read_buffer_bytes),
            ("max_commands_per_turn", self.max_commands_per_turn),
            ("max_idle_closes_per_tick", self.max_idle_closes_per_tick),
            ("inbox_capacity", self.inbox_capacity),
            ("max_inbox_bytes", self.max_inbox_bytes),
            ("events_capacity", self.events_capacity),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{name} must be greater than zero"));
        }
        if self.loops > 256 {
            return Err("loops must be at most 256".into());
        }
        if self.tick.is_zero() {
            return Err("tick must be greater than zero".into());
        }
        if self.close_linger.is_zero() {
            return Err("close_linger must be greater than zero".into());
        }
        Ok(())
    }
}
