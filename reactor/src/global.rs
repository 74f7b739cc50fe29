//! What the acceptor and every loop share: the connection count behind the accept gate
//! (R9), the per-address table, and [`Admission`], the drop guard that keeps both exact.
//!
//! # Invariants
//! - `Global::connections` is the number of live [`Admission`]s: one is made by the
//!   acceptor for each socket it keeps, travels with the socket (inbox, pending list,
//!   connection) and gives the count back when it is dropped, however the socket ends: a
//!   close, a loop that stops with sockets in its inbox, or a loop thread that panics and
//!   drops its slab while unwinding.

use crate::per_ip::{IpSlot, PerIp};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// The numbers shared between the acceptor and all loops.
#[derive(Debug)]
pub(crate) struct Global {
    /// Open connections over all loops, plus sockets in flight to a loop: the live
    /// [`Admission`]s.
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
    /// One connection fewer; reopens the accept gate once below the low-water mark. Called
    /// only by `Admission::drop`.
    fn connection_closed(&self) {
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

/// One socket's place in `Global::connections` and in its source's per-address count,
/// both given back when it drops. Moved with the socket, never cloned.
#[derive(Debug)]
pub(crate) struct Admission {
    global: Arc<Global>,
    /// The socket's slot in `Global::per_ip` (`u32::MAX`: none), given back on drop. A
    /// number rather than an `IpSlot` keeps one `Arc` per connection, not two.
    ip_slot: u32,
}

impl Admission {
    /// Counts one more connection (the acceptor, before it hands the socket over).
    pub fn new(global: &Arc<Global>, ip: IpSlot) -> Admission {
        global.connections.fetch_add(1, Ordering::SeqCst);
        Admission {
            global: Arc::clone(global),
            ip_slot: ip.into_raw(),
        }
    }
}

impl Admission {
    /// Moves this socket's per-address count to `ip` (a client a trusted proxy named):
    /// false, and nothing changed, when `ip`'s source is at `max_connections_per_ip`.
    pub fn readmit(&mut self, ip: std::net::IpAddr) -> bool {
        let Some(per_ip) = &self.global.per_ip else {
            return true;
        };
        match per_ip.reassign(self.ip_slot, ip) {
            Some(slot) => {
                self.ip_slot = slot;
                true
            }
            None => false,
        }
    }

    /// Counts a connection refused for its source's count (`Engine::refused_per_ip`).
    pub fn count_refusal(&self) {
        self.global.refused_per_ip.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let (Some(per_ip), true) = (&self.global.per_ip, self.ip_slot != u32::MAX) {
            per_ip.release(self.ip_slot);
        }
        self.global.connection_closed();
    }
}
