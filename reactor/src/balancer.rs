//! Picks the event loop for a new connection. Runs on the acceptor thread only.
//!
//! The acceptor passes every loop's load: its registered connections plus the sockets
//! handed to it and not registered yet (`LoopStats::pending_sockets`). A loop that cannot
//! take a socket now (gone, its inbox full, or `MAX_PENDING_SOCKETS` in flight) shows
//! `usize::MAX`; a balancer should not pick it, and if it does (round-robin ignores load)
//! the acceptor takes the least loaded loop instead. Loads are read with relaxed loads, so
//! they may be a few connections stale, which is fine for balancing.
//!
//! The engine's own balancers are chosen with `EngineConfig::balancing`; another one is
//! plugged in with [`crate::EngineBuilder::balancer`].

use crate::config::Balancing;

/// Chooses a loop for each accepted connection.
pub trait Balancer: Send {
    /// Returns an index into `loads` (module docs). `loads` is never empty, and at least
    /// one entry is below `usize::MAX`.
    fn pick(&mut self, loads: &[usize]) -> usize;
}

/// Each loop in turn, ignoring load.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: usize,
}

impl Balancer for RoundRobin {
    fn pick(&mut self, loads: &[usize]) -> usize {
        let chosen = self.next % loads.len();
        self.next = chosen + 1;
        chosen
    }
}

/// The loop with the fewest connections; among equals, the one after the last pick, so a
/// burst of accepts into an idle engine still spreads round-robin.
#[derive(Debug, Default)]
pub struct LeastConnections {
    next: usize,
}

impl Balancer for LeastConnections {
    fn pick(&mut self, loads: &[usize]) -> usize {
        let n = loads.len();
        let start = self.next % n;
        let chosen = (0..n)
            .map(|offset| (start + offset) % n)
            .min_by_key(|&i| loads[i])
            .unwrap_or(0);
        self.next = chosen + 1;
        chosen
    }
}

pub(crate) fn from_config(balancing: Balancing) -> Box<dyn Balancer> {
    match balancing {
        Balancing::LeastConnections => Box::new(LeastConnections::default()),
        Balancing::RoundRobin => Box::new(RoundRobin::default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_rotates() {
        let mut b = RoundRobin::default();
        let picks: Vec<_> = (0..6).map(|_| b.pick(&[5, 0, 9])).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn least_connections_prefers_the_emptiest_loop() {
        let mut b = LeastConnections::default();
        assert_eq!(b.pick(&[5, 1, 9]), 1);
        assert_eq!(b.pick(&[5, 7, 2]), 2);
    }

    #[test]
    fn least_connections_breaks_ties_round_robin() {
        let mut b = LeastConnections::default();
        let picks: Vec<_> = (0..4).map(|_| b.pick(&[0, 0, 0])).collect();
        assert_eq!(picks, [0, 1, 2, 0]);
    }
}
