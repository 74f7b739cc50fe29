//! The pace of a graceful stop: a loop closes its client connections spread over the drain
//! window (`Config::shutdown_drain`), a few each tick, so their reconnects reach the other
//! servers (or this one, restarted) spread over the same window instead of as one herd.
//!
//! No DISCONNECT packet is sent: the official SDKs treat a server DISCONNECT as a kick and
//! never reconnect (PROTOCOL.md §5.8, JSSDK.md §6). A WebSocket gets a close frame 1001
//! ("going away"), a TCP connection a plain close after its pending output; both make an
//! SDK reconnect with its own back-off. At its turn a logged-in connection gets nothing
//! more, is still read for [`ACK_GRACE`] so the acknowledgements on their way count, and
//! is then closed; what it had not acknowledged goes to its user's offline queue, as for
//! any close.

use ruyi_reactor::ConnId;

/// How long a logged-in connection is still read after its turn, with nothing more sent
/// to it, before it is closed: RECVACKs already on their way arrive and count, rather
/// than their messages going back to the offline queue and being delivered twice.
pub const ACK_GRACE: Duration = Duration::from_millis(500);
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Connections still to close on one loop, each at its turn in the window.
#[derive(Debug)]
pub struct Drain {
    queue: VecDeque<ConnId>,
    total: usize,
    started: Instant,
    window: Duration,
}

impl Drain {
    /// Closes `conns` evenly over `window` from `now`: the k-th of n at `window * k / n`
    /// (the first at once), all at once when the window is zero.
    pub fn new(conns: Vec<ConnId>, window: Duration, now: Instant) -> Drain {
        Drain {
            total: conns.len(),
            queue: conns.into(),
            started: now,
            window,
        }
    }

    /// The connections whose turn has come by `now`.
    pub fn due(&mut self, now: Instant) -> Vec<ConnId> {
        let elapsed = now.saturating_duration_since(self.started);
        let done = self.total - self.queue.len();
        let owed = if elapsed >= self.window {
            self.total
        } else {
            // Turns passed: k with window * k / n <= elapsed.
            let k = (elapsed.as_nanos() * self.total as u128) / self.window.as_nanos().max(1);
            usize::try_from(k)
                .unwrap_or(self.total)
                .saturating_add(1)
                .min(self.total)
        };
        let n = owed.saturating_sub(done).min(self.queue.len());
        self.queue.drain(..n).collect()
    }

    /// True when every connection has had its turn.
    pub fn is_done(&self) -> bool {
        self.queue.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<ConnId> {
        (0..n).map(|i| ConnId::new(0, i, 1)).collect()
    }

    #[test]
    fn closes_are_spread_evenly_over_the_window() {
        let t0 = Instant::now();
        let window = Duration::from_secs(2);
        let mut d = Drain::new(ids(1000), window, t0);
        assert_eq!(d.due(t0).len(), 1, "the first goes at once");
        assert_eq!(d.due(t0 + window / 2).len(), 500);
        assert_eq!(d.due(t0 + window / 2).len(), 0, "nothing twice");
        assert_eq!(d.due(t0 + window).len(), 499);
        assert!(d.is_done());
    }

    #[test]
    fn few_connections_still_span_the_window_and_a_zero_window_closes_all_at_once() {
        let t0 = Instant::now();
        let mut d = Drain::new(ids(3), Duration::from_secs(3), t0);
        assert_eq!(d.due(t0).len(), 1);
        assert_eq!(d.due(t0 + Duration::from_millis(900)).len(), 0);
        assert_eq!(d.due(t0 + Duration::from_millis(1000)).len(), 1);
        assert_eq!(d.due(t0 + Duration::from_millis(2000)).len(), 1);
        let mut now = Drain::new(ids(500), Duration::ZERO, t0);
        assert_eq!(now.due(t0).len(), 500);
        assert!(now.is_done());
    }
}
