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
//! # Invariants
//! - `Global::connections` is incremented here before a socket is handed to a loop and
//!   decremented by whoever drops the socket, so it never undercounts.

use crate::balancer::Balancer;
use crate::event_loop::Global;
use crate::inbox::{Command, LoopHandle};
use crate::per_ip::IpSlot;
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

/// Minimum time between two "accept gate closed" warnings (STYLE §5: rate-limit warns).
const GATE_WARN_INTERVAL: Duration = Duration::from_secs(10);

pub(crate) struct Acceptor<M> {
    pub poll: Poll,
    pub listeners: Vec<TcpListener>,
    pub loops: Vec<LoopHandle<M>>,
    pub balancer: Box<dyn Balancer>,
    pub global: Arc<Global>,
    pub max_connections: usize,
    pub stop: Arc<AtomicBool>,
    /// Sockets handed to each loop so far; compared with the loop's `accepted` counter to
    /// know how many are still in its inbox.
    pub handed_over: Vec<u64>,
    /// Loops whose inbox is gone.
    pub dead: Vec<bool>,
    /// When the last per-address refusal was logged (warnings are rate-limited).
    pub last_refusal_warn: Option<Instant>,
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
            let timeout = if backoff_until.is_some() {
                Some(ACCEPT_ERROR_BACKOFF)
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
            if !self.gate_open(last_gate_warn) {
                return AcceptEnd::Gated;
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
            let ip_slot = match &self.global.per_ip {
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
            // A loop's load is its open connections plus the sockets still in its inbox:
            // without the second term a burst of accepts all lands on whichever loop looked
            // emptiest before the burst.
            self.global.connections.fetch_add(1, Ordering::SeqCst);
            let mut cmd = Command::Register {
                stream,
                listener: ListenerId(index as u16),
                peer,
                ip_slot,
            };
            // A loop that died (repeated poll failures, a panicking handler) is marked and
            // skipped; the socket goes to another loop. Bounded: each loop can die once.
            let mut attempts = 0;
            loop {
                attempts += 1;
                if self.dead.iter().all(|&d| d) || attempts > 2 * self.loops.len() {
                    log::error!("no event loop is running; dropping a new connection from {peer}");
                    self.global.connection_closed();
                    return AcceptEnd::Stopped;
                }
                let chosen = self.pick();
                self.handed_over[chosen] += 1;
                // Blocking here is backpressure: a loop that cannot keep up with its inbox
                // slows the accept rate. The acceptor is not a loop thread, so it may block
                // (R2).
                match self.loops[chosen].push_or_return(cmd) {
                    Ok(()) => break,
                    Err(returned) => {
                        log::error!("event loop {chosen} has stopped; accepting on the others");
                        self.dead[chosen] = true;
                        cmd = returned;
                    }
                }
            }
        }
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

    /// Asks the balancer for a loop. A loop's load is its open connections plus the sockets
    /// still in its inbox: without the second term a burst of accepts all lands on
    /// whichever loop looked emptiest before the burst. Dead loops look full.
    fn pick(&mut self) -> usize {
        let loads: Vec<usize> = self
            .loops
            .iter()
            .zip(&self.handed_over)
            .zip(&self.dead)
            .map(|((l, &handed), &dead)| {
                if dead {
                    return usize::MAX;
                }
                let taken = l.stats().accepted.load(Ordering::Relaxed);
                let in_flight = handed.saturating_sub(taken) as usize;
                l.stats().connections.load(Ordering::Relaxed) + in_flight
            })
            .collect();
        self.balancer.pick(&loads)
    }
}

enum AcceptEnd {
    Drained,
    Gated,
    Backoff,
    Stopped,
}

fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}
