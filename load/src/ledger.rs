//! The ledger: every message the server acknowledged, checked at every receiver that
//! should have it, after the run has drained.
//!
//! A loss used to be counted only when a later message from the same sender arrived, so
//! everything lost at the end of a run went unseen (1,389 of 3,389 acknowledged messages
//! from a server that stopped delivering read as `lost=0`), and a swapped pair read as one
//! lost and one duplicated. Now each receiver keeps the set of counters it got from each
//! sender, each sender the counters the server acknowledged, and the audit compares them:
//! - **lost**: acknowledged, and missing at a receiver that should have it;
//! - **duplicated**: received more than once;
//! - **reordered**: received after a later counter of the same sender (nothing missing).
//!
//! A refused SEND was never acknowledged, so it is never owed.

use std::collections::HashMap;

/// What one receiver got from one sender: a bitmap of counters (dense from 1).
#[derive(Debug, Default, Clone)]
pub struct Seen {
    bits: Vec<u64>,
    last: u64,
}

/// How a counter arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// First time, in order.
    New,
    /// Seen before.
    Duplicate,
    /// First time, after a later counter.
    Reordered,
}

impl Seen {
    /// Records `counter` (counters start at 1).
    pub fn record(&mut self, counter: u64) -> Arrival {
        let (word, bit) = ((counter / 64) as usize, counter % 64);
        if self.bits.len() <= word {
            self.bits.resize(word + 1, 0);
        }
        if self.bits[word] & (1 << bit) != 0 {
            return Arrival::Duplicate;
        }
        self.bits[word] |= 1 << bit;
        if counter < self.last {
            return Arrival::Reordered;
        }
        self.last = counter;
        Arrival::New
    }

    /// Records `counter` read back from history after a failover (`im/recover.rs`):
    /// neither a duplicate nor a reorder. True when it had not arrived.
    pub fn recover(&mut self, counter: u64) -> bool {
        let (word, bit) = ((counter / 64) as usize, counter % 64);
        if self.bits.len() <= word {
            self.bits.resize(word + 1, 0);
        }
        let new = self.bits[word] & (1 << bit) == 0;
        self.bits[word] |= 1 << bit;
        new
    }

    /// True when `counter` arrived.
    pub fn has(&self, counter: u64) -> bool {
        let (word, bit) = ((counter / 64) as usize, counter % 64);
        self.bits.get(word).is_some_and(|w| w & (1 << bit) != 0)
    }
}

/// A sender as the audit needs it.
#[derive(Debug)]
pub struct Sender<'a> {
    /// Its index among the run's senders (the one its payloads carry).
    pub index: usize,
    /// Its uid (a group member does not receive its own messages).
    pub uid: &'a str,
    /// Where it sends: a uid (person) or a group id, and the channel type.
    pub target: (&'a str, u8),
}

/// A receiver as the audit needs it.
#[derive(Debug)]
pub struct Receiver<'a> {
    /// Its uid.
    pub uid: &'a str,
    /// The group it is a member of, if any.
    pub member_of: Option<&'a str>,
    /// What it got, by sender index.
    pub seen: &'a HashMap<usize, Seen>,
}

/// Counts the acknowledged messages missing at receivers that should have them.
/// `acked[s]` lists the counters the server acknowledged for sender `s`.
pub fn lost(
    senders: &[Sender<'_>],
    receivers: &[Receiver<'_>],
    acked: &HashMap<usize, Vec<u64>>,
) -> u64 {
    let mut lost = 0;
    for r in receivers {
        for s in senders {
            let owed = match s.target {
                (uid, 1) => uid == r.uid,
                (group, _) => r.member_of == Some(group) && s.uid != r.uid,
            };
            if !owed {
                continue;
            }
            let seen = r.seen.get(&s.index);
            for &counter in acked.get(&s.index).map_or(&[][..], Vec::as_slice) {
                if !seen.is_some_and(|seen| seen.has(counter)) {
                    if lost < 10 {
                        // The first few, to look for in the server's logs and storage.
                        log::warn!("lost: message {counter} of {} to {}", s.uid, r.uid);
                    }
                    lost += 1;
                }
            }
        }
    }
    lost
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrivals_are_told_apart() {
        let mut s = Seen::default();
        assert_eq!(s.record(1), Arrival::New);
        assert_eq!(s.record(3), Arrival::New);
        assert_eq!(s.record(2), Arrival::Reordered);
        assert_eq!(s.record(3), Arrival::Duplicate);
        assert!(s.has(2) && !s.has(4));
    }

    #[test]
    fn the_tail_and_every_gap_count_as_lost() {
        let mut seen = HashMap::new();
        let mut got = Seen::default();
        for c in [1, 2, 4] {
            got.record(c);
        }
        seen.insert(0, got);
        let senders = [Sender {
            index: 0,
            uid: "a",
            target: ("b", 1),
        }];
        let receivers = [Receiver {
            uid: "b",
            member_of: None,
            seen: &seen,
        }];
        let acked = HashMap::from([(0, vec![1, 2, 3, 4, 5, 6])]);
        assert_eq!(
            lost(&senders, &receivers, &acked),
            3,
            "3 in the middle, 5 and 6 at the end"
        );
        let own = [Receiver {
            uid: "a",
            member_of: None,
            seen: &seen,
        }];
        assert_eq!(
            lost(&senders, &own, &acked),
            0,
            "a sender is owed nothing of its own"
        );
    }
}
