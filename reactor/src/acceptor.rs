//! The acceptor: one thread with its own `mio::Poll` that owns every listener.
//!
//! It accepts until `WouldBlock`, sets socket options, asks the balancer for a loop, and
//! hands the socket to that loop's inbox. It never reads or writes a connection.
//!
//! # Accept gate (R9)
//! At `max_connections` the acceptor stops calling `accept` and leaves new arrivals in the
//! kernel's backlog. Loops wake it when the count falls below 90% of the limit (the
//! hysteresis keeps the gate from flapping); a one-second poll timeout while the gate is
//! closed is the backstop against a missed wake.
//!
//! # Handing a socket over
//! The balancer sees each loop's load as its connections plus the sockets handed to it and
//! not yet registered (`LoopStats::pending_sockets`); a loop that is gone or holds
//! `MAX_PENDING_SOCKETS` unregistered sockets counts as `usize::MAX` and is skipped. The
//! acceptor does not wait on one busy loop while another can take the socket: a loop
//! whose inbox is full is skipped. When every loop's inbox is full it waits on the least
//! loaded one, in line with that loop's other senders, checking the stop flag every
//! `BUSY_RECHECK`. When no loop has room at all it stops accepting for `BUSY_RECHECK` and
//! leaves new arrivals in the kernel's backlog, as the gate does; a socket it already
//! accepted waits in `held` and goes first, before the gate. So a loop's pending list
//! stays bounded.
//!
//! # Invariants
//! - Every socket kept gets an [`Admission`] before it is handed over; it counts the socket
//!   in `Global::connections` until whoever holds it drops it (`global.rs`).

use crate::balancer::Balancer;
use crate::global::{Admission, Global};
use crate::inbox::{Command, LoopHandle};
use crate::per_ip::IpSlot;
use crate::proxy::{Arrival, HeaderRule, ProxyTrust};
use crate::ListenerId;
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The acceptor's waker token; listener `i` uses `Token(i)`.
pub(crate) const ACCEPTOR_WAKER: Token = Token(usize::MAX);

/// How long to wait before accepting again after the process ran out of descriptors or
/// memory (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`): long enough for connections to close,
/// short enough that clients in the backlog don't time out.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Poll timeout while the gate is closed, as a backstop against a lost gate wake-up.
const GATE_RECHECK: Duration = Duration::from_secs(1);

/// Minimum time between two "accept gate closed" warnings: a warning that repeats per
/// event would flood the log exactly when the operator needs it readable.
const GATE_WARN_INTERVAL: Duration = Duration::from_secs(10);

/// Sockets handed to one loop and not yet registered, at most. A loop registers 128 per
/// turn (`ACCEPTS_PER_TURN`), so this is eight turns of a connect storm.
pub(crate) const MAX_PENDING_SOCKETS: usize = 1024;

/// How long the acceptor waits before it looks again when no loop has room.
const BUSY_RECHECK: Duration = Duration::from_millis(5);

pub(crate) struct Acceptor<M> {
    pub poll: Poll,
    pub listeners: Vec<TcpListener>,
    pub loops: Vec<LoopHandle<M>>,
    pub balancer: Box<dyn Balancer>,
    pub global: Arc<Global>,
    pub max_connections: usize,
    pub stop: Arc<AtomicBool>,
    /// A socket accepted that no loop could take yet: handed over before any other
    /// (dropped, with its admission, when the acceptor stops).
    pub held: Option<Command<M>>,
    /// Loops whose inbox is gone.
    pub dead: Vec<bool>,
    /// When the last per-address refusal was logged (warnings are rate-limited).
    pub last_refusal_warn: Option<Instant>,
    /// Per listener, the sources its PROXY headers are honoured from (`None`: it takes
    /// none).
    pub proxies: Vec<Option<(Arc<ProxyTrust>, HeaderRule)>>,
}

impl<M: Send> Acceptor<M> {
    pub fn register(poll: &Poll, listeners: &mut [TcpListener]) -> io::Result<()> {
        for (i, listener) in listeners.iter_mut().enumerate() {
            poll.registry()
                .register(listener, Token(i), Interest::READABLE)?;
        }
        Ok(())
    }

    pub fn run(mut self) {
        let mut events = Events::with_capacity(64);
        let mut backoff_until: Option<Instant> = None;
        let mut last_gate_warn: Option<Instant> = None;
        loop {
            let timeout = if let Some(until) = backoff_until {
                Some(until.saturating_duration_since(Instant::now()))
            } else if self.global.gate_closed.load(Ordering::Acquire) {
                Some(GATE_RECHECK)
            } else {
                None
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    log::error!("acceptor poll failed: {e}");
                    std::thread::sleep(ACCEPT_ERROR_BACKOFF);
                }
                continue;
            }
            if self.stop.load(Ordering::Acquire) {
                break;
            }
            if backoff_until.is_some_and(|t| Instant::now() < t) {
                continue;
            }
            backoff_until = None;
            // Edge-triggered listeners: after any wake-up (a listener event, the gate
            // reopening, a backoff ending) try every listener until WouldBlock.
            for index in 0..self.listeners.len() {
                match self.accept_all(index, &mut last_gate_warn) {
                    AcceptEnd::Drained | AcceptEnd::Gated => {}
                    AcceptEnd::Backoff => {
                        backoff_until = Some(Instant::now() + ACCEPT_ERROR_BACKOFF)
                    }
                    // Every loop is behind: look again soon (an edge-triggered listener
                    // would not report the waiting connections again).
                    AcceptEnd::Busy => backoff_until = Some(Instant::now() + BUSY_RECHECK),
                    AcceptEnd::Stopped => {
                        if self.stop.load(Ordering::Acquire) {
                            break;
                        }
                        // Every loop is gone: nothing can serve a connection.
                        log::error!("acceptor stopping: no event loop is running");
                        return;
                    }
                }
            }
        }
        log::info!("acceptor stopped");
    }

    /// True when a new connection may be accepted now; updates the gate.
    fn gate_open(&self, last_warn: &mut Option<Instant>) -> bool {
        let g = &self.global;
        let count = g.connections.load(Ordering::Acquire);
        if g.gate_closed.load(Ordering::Acquire) {
            if count >= g.resume_below {
                return false;
            }
            g.gate_closed.store(false, Ordering::Release);
            log::info!("accept gate open again at {count} connections");
        }
        if count < self.max_connections {
            return true;
        }
        g.gate_closed.store(true, Ordering::SeqCst);
        // A loop may have dropped below the mark between our load and the store, seen the
        // gate open and not woken us: look once more now that the gate is visibly closed.
        // SeqCst on both sides (see `Global::connection_closed`) makes this look reliable.
        if g.connections.load(Ordering::SeqCst) < g.resume_below {
            g.gate_closed.store(false, Ordering::Release);
            return true;
        }
        if last_warn.is_none_or(|t| t.elapsed() >= GATE_WARN_INTERVAL) {
            *last_warn = Some(Instant::now());
            log::warn!("accept gate closed at {count} connections (max_connections)");
        }
        false
    }

    fn accept_all(&mut self, index: usize, last_gate_warn: &mut Option<Instant>) -> AcceptEnd {
        loop {
            if self.stop.load(Ordering::Acquire) {
                return AcceptEnd::Stopped;
            }
            // A socket accepted earlier that no loop could take goes first, before the
            // gate: it is counted already, and a closed gate must not strand it.
            if let Some(cmd) = self.held.take() {
                match self.hand_over(cmd) {
                    Ok(()) => {}
                    Err(Some(cmd)) => {
                        self.held = Some(cmd);
                        return AcceptEnd::Busy;
                    }
                    Err(None) => return AcceptEnd::Stopped,
                }
            }
            if !self.gate_open(last_gate_warn) {
                return AcceptEnd::Gated;
            }
            // Accept only what some loop can take (module docs).
            if self.loads().iter().all(|&l| l == usize::MAX) {
                if self.dead.iter().all(|&d| d) {
                    return AcceptEnd::Stopped;
                }
                return AcceptEnd::Busy;
            }
            let (stream, peer) = match self.listeners[index].accept() {
                Ok(pair) => pair,
                Err(e) => match e.kind() {
                    io::ErrorKind::WouldBlock => return AcceptEnd::Drained,
                    // The peer gave up while in the backlog, or a signal: the next one may be fine.
                    io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::Interrupted => continue,
                    _ if is_resource_exhaustion(&e) => {
                        log::warn!("accept: {e}; backing off {ACCEPT_ERROR_BACKOFF:?}");
                        return AcceptEnd::Backoff;
                    }
                    _ => {
                        log::error!("accept: {e}");
                        return AcceptEnd::Backoff;
                    }
                },
            };
            let arrival = match &self.proxies[index] {
                None => Arrival::Direct,
                Some((trust, rule)) if trust.trusts(peer.ip()) => Arrival::Trusted(*rule),
                Some(_) => Arrival::Untrusted,
            };
            let ip_slot = match &self.global.per_ip {
                // A trusted proxy carries every client behind it: each is counted by the
                // address its header names (`proxy.rs`), not all by the proxy's.
                _ if matches!(arrival, Arrival::Trusted(_)) => IpSlot::none(),
                None => IpSlot::none(),
                Some(per_ip) => match per_ip.acquire(peer.ip()) {
                    Some(slot) => slot,
                    None => {
                        self.refuse_over_limit(stream, peer);
                        continue;
                    }
                },
            };
            if let Err(e) = socket2::SockRef::from(&stream).set_nodelay(true) {
                log::debug!("set TCP_NODELAY for {peer}: {e}");
            }
            let cmd = Command::Register {
                stream,
                listener: ListenerId(index as u16),
                peer,
                admission: Admission::new(&self.global, ip_slot),
                arrival,
            };
            match self.hand_over(cmd) {
                Ok(()) => {}
                Err(Some(cmd)) => {
                    self.held = Some(cmd);
                    return AcceptEnd::Busy;
                }
                Err(None) => {
                    log::error!("no event loop is running; dropped a new connection from {peer}");
                    return AcceptEnd::Stopped;
                }
            }
        }
    }

    /// Gives a socket to the loop the balancer picks among those with room, without
    /// waiting on any one loop: a loop whose inbox is full is skipped and another picked, a
    /// loop found gone is marked dead. Only when every loop with room has a full inbox does
    /// it wait, on the least loaded one, in the same queue as the loop's other senders
    /// (backpressure: every loop is behind), looking at the stop flag every
    /// `BUSY_RECHECK`. When no loop has room at all (each is gone or at
    /// `MAX_PENDING_SOCKETS`), the socket is handed back for the acceptor to hold
    /// (`held`). `Err(None)`: every loop is gone or the acceptor is stopping (the socket is
    /// dropped).
    fn hand_over(&mut self, mut cmd: Command<M>) -> Result<(), Option<Command<M>>> {
        let mut full = vec![false; self.loops.len()];
        loop {
            if self.dead.iter().all(|&d| d) {
                return Err(None);
            }
            let loads = self.loads();
            if loads.iter().all(|&l| l == usize::MAX) {
                return Err(Some(cmd));
            }
            let mut open = loads.clone();
            for (load, &f) in open.iter_mut().zip(&full) {
                if f {
                    *load = usize::MAX;
                }
            }
            let (chosen, wait) = if open.iter().all(|&l| l == usize::MAX) {
                let least = (0..loads.len()).min_by_key(|&i| loads[i]).unwrap_or(0);
                (least, true)
            } else {
                (self.pick(&open), false)
            };
            let pending = &self.loops[chosen].stats().pending_sockets;
            pending.fetch_add(1, Ordering::Relaxed);
            let pushed = if wait {
                self.loops[chosen].push_within(cmd, BUSY_RECHECK)
            } else {
                self.loops[chosen].try_push_or_return(cmd)
            };
            match pushed {
                Ok(()) => return Ok(()),
                Err((returned, gone)) => {
                    pending.fetch_sub(1, Ordering::Relaxed);
                    if gone {
                        self.mark_dead(chosen);
                    } else if wait && self.stop.load(Ordering::Acquire) {
                        return Err(None);
                    } else {
                        full[chosen] = true;
                    }
                    cmd = returned;
                }
            }
        }
    }

    fn mark_dead(&mut self, index: usize) {
        log::error!("event loop {index} has stopped; accepting on the others");
        self.dead[index] = true;
    }
}

impl<M: Send> Acceptor<M> {
    /// Resets a connection whose source already has `max_connections_per_ip` open. A reset
    /// (linger 0) rather than a FIN: it leaves no TIME_WAIT behind on our side, and a flood
    /// of refused connections costs us nothing after this call.
    fn refuse_over_limit(&mut self, stream: mio::net::TcpStream, peer: SocketAddr) {
        if let Err(e) = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO)) {
            log::debug!("set SO_LINGER for {peer}: {e}");
        }
        // Counted before the reset goes out: whoever sees the reset also sees the count (the
        // engine test reads it right after its connection is refused).
        let refused = self.global.refused_per_ip.fetch_add(1, Ordering::Relaxed) + 1;
        drop(stream);
        if self
            .last_refusal_warn
            .is_none_or(|t| t.elapsed() >= GATE_WARN_INTERVAL)
        {
            self.last_refusal_warn = Some(Instant::now());
            log::warn!(
                "refused a connection from {}: its source is at max_connections_per_ip ({refused} refused so far)",
                peer.ip()
            );
        }
    }

    /// Each loop's load: its connections plus the sockets handed to it and not yet
    /// registered; `usize::MAX` for a loop that is gone or holds `MAX_PENDING_SOCKETS`. (A
    /// full inbox is not "no room": it frees a slot per command the loop takes, and
    /// `hand_over` waits for one in line with the loop's other senders.)
    fn loads(&self) -> Vec<usize> {
        self.loops
            .iter()
            .zip(&self.dead)
            .map(|(l, &dead)| {
                let pending = l.stats().pending_sockets.load(Ordering::Relaxed);
                if dead || pending >= MAX_PENDING_SOCKETS {
                    return usize::MAX;
                }
                l.stats().connections.load(Ordering::Relaxed) + pending
            })
            .collect()
    }

    /// Asks the balancer for a loop among `loads`, at least one of which is below
    /// `usize::MAX`. A balancer that ignores load (round-robin) and names a loop without
    /// room gets the least loaded one instead.
    fn pick(&mut self, loads: &[usize]) -> usize {
        let chosen = self.balancer.pick(loads).min(loads.len() - 1);
        if loads[chosen] != usize::MAX {
            return chosen;
        }
        (0..loads.len()).min_by_key(|&i| loads[i]).unwrap_or(0)
    }
}

enum AcceptEnd {
    /// `WouldBlock`: the next connection raises a new edge.
    Drained,
    /// At `max_connections`: a loop wakes us below the mark.
    Gated,
    /// Out of descriptors or memory, or an unexpected accept error: wait a little.
    Backoff,
    /// No loop has room for another socket now.
    Busy,
    /// Stopping, or no loop is left.
    Stopped,
}

fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}
