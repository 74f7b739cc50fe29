//! Message ids: 64-bit Snowflakes (bwmarrin layout, PROTOCOL.md §9.3): 41 bits of
//! milliseconds since 2010-11-04 01:42:54.657 UTC, 10 bits of node id, 12 bits of counter.
//!
//! One generator is shared by all channel workers; a compare-and-swap on one `AtomicI64`
//! keeps ids unique and increasing without a lock. `floor` (the largest id in storage at
//! start) keeps ids increasing across restarts even if the clock stepped back.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The Twitter/bwmarrin epoch in Unix milliseconds.
const EPOCH_MS: i64 = 1_288_834_974_657;
const NODE_BITS: u32 = 10;
const STEP_BITS: u32 = 12;

/// A lock-free Snowflake generator.
#[derive(Debug)]
pub struct IdGenerator {
    node: i64,
    /// Every id this generator gives is above it.
    floor: i64,
    last: AtomicI64,
}

impl IdGenerator {
    /// A generator for `node` (masked to 10 bits) whose ids are all above `floor`.
    pub fn new(node: u16, floor: i64) -> IdGenerator {
        IdGenerator {
            node: i64::from(node) & ((1 << NODE_BITS) - 1),
            floor,
            last: AtomicI64::new(floor),
        }
    }

    /// The smallest id with this node's bits above `last` (same millisecond or clock
    /// behind). `last` may carry another node's bits: the floor is the largest stored id,
    /// whichever node made it, and an id must never take another node's bits (in a
    /// cluster that node makes ids too).
    fn after(&self, last: i64) -> i64 {
        let ms = last >> (NODE_BITS + STEP_BITS);
        let node_of_last = (last >> STEP_BITS) & ((1 << NODE_BITS) - 1);
        let at =
            |ms: i64, step: i64| (ms << (NODE_BITS + STEP_BITS)) | (self.node << STEP_BITS) | step;
        if node_of_last == self.node {
            let step = (last & ((1 << STEP_BITS) - 1)) + 1;
            if step == 1 << STEP_BITS {
                at(ms + 1, 0) // the counter is used up: the next millisecond
            } else {
                at(ms, step)
            }
        } else if self.node > node_of_last {
            at(ms, 0)
        } else {
            at(ms + 1, 0)
        }
    }

    /// True only for ids this generator may have given: this node's bits, above the
    /// floor it started from. A cluster's leader uses it to tell the messages it planned
    /// from those an earlier leader did (`cluster/lead.rs`); an id from this node's earlier
    /// process is at most the floor, so it reads as not made here.
    pub fn made_here(&self, id: i64) -> bool {
        id > self.floor && (id >> STEP_BITS) & ((1 << NODE_BITS) - 1) == self.node
    }

    fn now_ms() -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    }

    /// The next id: the current millisecond's first free counter value, or, when the
    /// counter is used up (4096 ids in one ms) or the clock is behind, the last id + 1
    /// with this node's bits (borrowing from the next millisecond).
    pub fn next(&self) -> i64 {
        let time_based =
            ((Self::now_ms() - EPOCH_MS) << (NODE_BITS + STEP_BITS)) | (self.node << STEP_BITS);
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let candidate = if time_based > last {
                time_based
            } else {
                self.after(last)
            };
            match self.last.compare_exchange_weak(
                last,
                candidate,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return candidate,
                Err(seen) => last = seen,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_are_unique_and_increasing_across_threads() {
        let g = std::sync::Arc::new(IdGenerator::new(1001, 0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let g = g.clone();
                std::thread::spawn(move || (0..20_000).map(|_| g.next()).collect::<Vec<_>>())
            })
            .collect();
        let mut all = HashSet::new();
        for t in threads {
            let ids = t.join().unwrap();
            assert!(ids.windows(2).all(|w| w[0] < w[1]));
            all.extend(ids);
        }
        assert_eq!(all.len(), 80_000);
    }

    #[test]
    fn ids_stay_above_the_floor_and_carry_the_node() {
        let floor = i64::MAX / 2;
        let g = IdGenerator::new(1001, floor);
        let id = g.next();
        assert!(id > floor);
        let fresh = IdGenerator::new(1001, 0).next();
        assert_eq!((fresh >> 12) & 1023, 1001);
    }

    #[test]
    fn only_its_own_ids_above_its_floor_are_made_here() {
        let before = IdGenerator::new(7, 0).next();
        let other = IdGenerator::new(8, 0).next();
        let g = IdGenerator::new(7, other.max(before));
        let mine = g.next();
        assert!(g.made_here(mine));
        assert!(!g.made_here(before), "an earlier process of this node");
        assert!(!g.made_here(other), "another node");
        // Above another node's id in the same millisecond, and below it: own bits always.
        for (node, floor_node) in [(7, 8), (9, 8)] {
            let floor = IdGenerator::new(floor_node, i64::MAX / 4).next();
            let g = IdGenerator::new(node, floor);
            let (a, b) = (g.next(), g.next());
            assert!(floor < a && a < b);
            assert_eq!(
                ((a >> 12) & 1023, (b >> 12) & 1023),
                (node.into(), node.into())
            );
        }
    }
}
