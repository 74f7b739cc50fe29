//! A map bounded in bytes that forgets its least recently used entries: the writer's
//! caches (channel numbers and dedupe windows, users' queue seqs). Writer thread only.
//!
//! # Policy
//! Each entry is charged an estimate of its memory when it is inserted (the caller's
//! `cost`, sized for the entry's largest state, so growth after insertion is covered).
//! When the total passes the budget, the older half of the entries by last use goes in one
//! O(n) pass, so eviction work is paid once per many inserts, not on every one. An evicted
//! entry is reloaded from the database on its next use: eviction costs a query, never
//! correctness.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;

/// See the module docs.
#[derive(Debug)]
pub struct LruMap<K, V> {
    map: HashMap<K, Slot<V>>,
    bytes: usize,
    budget_bytes: usize,
    clock: u64,
    evicted: u64,
}

#[derive(Debug)]
struct Slot<V> {
    value: V,
    used: u64,
    cost: usize,
}

impl<K: Eq + Hash + Clone, V> LruMap<K, V> {
    /// An empty map that keeps its charges under `budget_bytes`.
    pub fn new(budget_bytes: usize) -> Self {
        LruMap {
            map: HashMap::new(),
            bytes: 0,
            budget_bytes,
            clock: 0,
            evicted: 0,
        }
    }

    /// The entry for `key`, marked used.
    pub fn get_mut<Q: Hash + Eq + ?Sized>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
    {
        self.clock += 1;
        let clock = self.clock;
        self.map.get_mut(key).map(|slot| {
            slot.used = clock;
            &mut slot.value
        })
    }

    /// True when `key` is cached (does not mark it used).
    pub fn contains_key<Q: Hash + Eq + ?Sized>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.map.contains_key(key)
    }

    /// Inserts `value` charged `cost` bytes, then evicts if the budget is passed (never
    /// the entry just inserted: it is the most recently used).
    pub fn insert(&mut self, key: K, value: V, cost: usize) {
        self.clock += 1;
        let slot = Slot {
            value,
            used: self.clock,
            cost,
        };
        if let Some(old) = self.map.insert(key, slot) {
            self.bytes -= old.cost;
        }
        self.bytes += cost;
        if self.bytes > self.budget_bytes && self.map.len() > 1 {
            self.evict_older_half();
        }
    }

    /// Forgets `key`.
    pub fn remove(&mut self, key: &K) {
        if let Some(old) = self.map.remove(key) {
            self.bytes -= old.cost;
        }
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.map.clear();
        self.bytes = 0;
    }

    /// Entries cached.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Bytes charged now.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Entries evicted since creation.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    fn evict_older_half(&mut self) {
        let mut uses: Vec<u64> = self.map.values().map(|s| s.used).collect();
        // At or below the lower median go: with two entries, only the older.
        let mid = (uses.len() - 1) / 2;
        let (_, &mut median, _) = uses.select_nth_unstable(mid);
        let before = self.map.len();
        let mut freed = 0;
        self.map.retain(|_, slot| {
            let keep = slot.used > median;
            if !keep {
                freed += slot.cost;
            }
            keep
        });
        self.bytes -= freed;
        self.evicted += (before - self.map.len()) as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_holds_and_recent_entries_survive() {
        let mut m = LruMap::new(1000);
        for i in 0..100u32 {
            m.insert(i, i, 100);
            // Key 0 is used all the time: it must never be the one forgotten.
            assert!(m.get_mut(&0).is_some(), "0 evicted at {i}");
            assert!(m.bytes() <= 1000, "{} bytes at {i}", m.bytes());
        }
        assert!(m.get_mut(&99).is_some());
        assert!(m.evicted() >= 90);
        let mut two = LruMap::new(150);
        two.insert(1, 1, 100);
        two.insert(2, 2, 100);
        assert!(two.contains_key(&2), "the entry just inserted was evicted");
        m.remove(&99);
        assert!(!m.contains_key(&99));
    }
}
