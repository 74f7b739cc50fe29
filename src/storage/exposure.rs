//! What clients may know of each user's offline queue (the seqs `/message/sync` returned,
//! and those RECVs of SyncOnce messages carried), so the writer can put a missed delivery
//! back at its reserved seq without hiding it (`queue.rs` rules).
//!
//! # The hazard
//! A delivery that misses is written at the seq reserved for it, which may lie below
//! entries stored since. If a client had already read those higher entries, its `syncack`
//! of them would delete the late row unseen: an acknowledged message lost. So the writer
//! may write at a reserved seq only when nothing at or above it can have been shown.
//!
//! # The handshake (one mutex; nobody holds it across I/O)
//! - A sync read first waits until no in-place write for its user is uncommitted
//!   ([`Exposure::expose`]), registers itself as reading, reads, then records the highest
//!   seq it read and unregisters.
//! - The writer claims an in-place write ([`Exposure::claim`]) only when no read of that
//!   user is running and the seq is above everything recorded as read; the claim stays
//!   registered until the batch has committed or rolled back ([`Exposure::settle`]).
//!
//! So a read either runs wholly before a claim (its highest seq is recorded, and the claim
//! is refused at or below it) or wholly after the claimed row committed (it sees the row).
//!
//! # Memory
//! The highest seq read per user is kept in a fixed table of [`ROWS`] × [`COLUMNS`]
//! counters, each user hashed to one counter per row; a user's value is the least of its
//! counters. A counter shared with another user only ever reads high, which refuses an
//! in-place write that was safe (the entry goes to the end of the queue: an order break,
//! counted as `requeued_late`), never the reverse. The table is 8 MiB whatever the number
//! of users, and forgets nothing until the server restarts; reservations do not survive a
//! restart either.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Hash rows of the table.
pub const ROWS: usize = 2;
/// Counters per row.
pub const COLUMNS: usize = 1 << 20;

/// How long a sync read waits for the writer to settle an in-place write of its user
/// (one commit, normally a few milliseconds) before it gives up with [`Busy`].
pub const SETTLE_WAIT: Duration = Duration::from_secs(2);

/// A sync read gave up waiting for the writer (answered as "storage busy").
#[derive(Debug, PartialEq, Eq)]
pub struct Busy;

/// See the module docs.
#[derive(Debug)]
pub struct Exposure {
    state: Mutex<State>,
    settled: Condvar,
    /// One per table row, and one for the keys of `reading` and `claimed`.
    hashers: [RandomState; ROWS + 1],
}

/// A user as the maps know it: a salted 64-bit hash, computed outside the lock (a uid is
/// client input of any length). Two users sharing one only make each other wait or go
/// to the end of the queue, never the reverse.
type UserKey = u64;

#[derive(Debug)]
struct State {
    /// `ROWS` rows of `COLUMNS` counters: the highest seq shown, per hash.
    shown: Vec<u32>,
    /// Sync reads running, per user.
    reading: HashMap<UserKey, u32>,
    /// Users with an in-place write not yet committed or rolled back.
    claimed: HashMap<UserKey, u32>,
}

impl Default for Exposure {
    fn default() -> Exposure {
        Exposure {
            state: Mutex::new(State {
                shown: vec![0; ROWS * COLUMNS],
                reading: HashMap::new(),
                claimed: HashMap::new(),
            }),
            settled: Condvar::new(),
            hashers: [RandomState::new(), RandomState::new(), RandomState::new()],
        }
    }
}

impl Exposure {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state consistent, so a poisoned lock (a panic
        // elsewhere while holding it) is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn cells(&self, uid: &str) -> [usize; ROWS] {
        let mut cells = [0; ROWS];
        for (row, hasher) in self.hashers[..ROWS].iter().enumerate() {
            cells[row] = row * COLUMNS + (hasher.hash_one(uid) as usize % COLUMNS);
        }
        cells
    }

    fn key(&self, uid: &str) -> UserKey {
        self.hashers[ROWS].hash_one(uid)
    }

    fn shown_in(&self, state: &State, cells: &[usize; ROWS]) -> u32 {
        cells.iter().map(|&c| state.shown[c]).min().unwrap_or(0)
    }

    /// The highest seq of `uid`'s queue that may have been shown to a client.
    pub fn shown(&self, uid: &str) -> u32 {
        let cells = self.cells(uid);
        self.shown_in(&self.lock(), &cells)
    }

    /// Records that a client may know `uid`'s seqs up to `seq` by another way than a sync:
    /// a RECV of a SyncOnce message carries its per-user seq (HTTP_API.md §7), which the
    /// client may `syncack`. Also used by the writer to keep a miss it sent to the end of
    /// the queue ahead of later misses (`queue.rs`).
    pub fn show(&self, uid: &str, seq: u32) {
        let cells = self.cells(uid);
        let mut state = self.lock();
        for c in cells {
            state.shown[c] = state.shown[c].max(seq);
        }
    }

    /// Runs `read`, a read of `uid`'s queue that returns what it read and the highest seq
    /// among it, under the handshake of the module docs.
    ///
    /// # Errors
    /// `Ok(Err(e))` when `read` fails; `Err(Busy)` when the writer kept an in-place write
    /// of this user unsettled for [`SETTLE_WAIT`].
    pub fn expose<T, E>(
        &self,
        uid: &str,
        read: impl FnOnce() -> Result<(T, u32), E>,
    ) -> Result<Result<T, E>, Busy> {
        let deadline = Instant::now() + SETTLE_WAIT;
        let key = self.key(uid);
        let mut state = self.lock();
        while state.claimed.contains_key(&key) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Busy);
            }
            state = self
                .settled
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *state.reading.entry(key).or_default() += 1;
        drop(state);
        // Unregisters on every path, a panic in `read` included.
        let guard = Reading {
            exposure: self,
            key,
        };
        let result = read();
        let highest = result.as_ref().map_or(0, |(_, highest)| *highest);
        if highest > 0 {
            self.show(uid, highest);
        }
        drop(guard);
        Ok(result.map(|(value, _)| value))
    }

    /// Whether the writer may write `uid`'s entry at `seq`, below entries already stored
    /// (module docs). When it may, the claim holds until [`Exposure::settle`].
    pub fn claim(&self, uid: &str, seq: u32) -> bool {
        let (cells, key) = (self.cells(uid), self.key(uid));
        let mut state = self.lock();
        if state.reading.contains_key(&key) || seq <= self.shown_in(&state, &cells) {
            return false;
        }
        *state.claimed.entry(key).or_default() += 1;
        true
    }

    /// Ends every claim: the writer's batch committed or rolled back.
    pub fn settle(&self) {
        let mut state = self.lock();
        if !state.claimed.is_empty() {
            state.claimed.clear();
            self.settled.notify_all();
        }
    }
}

/// A running sync read, unregistered when dropped.
struct Reading<'a> {
    exposure: &'a Exposure,
    key: UserKey,
}

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        let mut state = self.exposure.lock();
        if let Some(n) = state.reading.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                state.reading.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn read(highest: u32) -> impl FnOnce() -> Result<((), u32), ()> {
        move || Ok(((), highest))
    }

    #[test]
    fn a_claim_at_or_below_what_was_read_is_refused() {
        let e = Exposure::default();
        assert!(e.claim("bob", 1), "nothing read yet");
        e.settle();
        assert_eq!(e.expose("bob", read(7)), Ok(Ok(())));
        assert!(!e.claim("bob", 7));
        assert!(!e.claim("bob", 3));
        assert!(e.claim("bob", 8));
        assert!(e.claim("alice", 2), "another user's reads do not count");
        e.show("alice", 9); // a RECV carried alice's seq 9
        assert!(!e.claim("alice", 9));
        assert_eq!(e.shown("alice"), 9);
    }

    #[test]
    fn a_failed_read_records_nothing() {
        let e = Exposure::default();
        let failed: Result<Result<(), ()>, Busy> = e.expose("bob", || Err(()));
        assert_eq!(failed, Ok(Err(())));
        assert!(e.claim("bob", 1));
    }

    #[test]
    fn no_claim_while_a_read_runs() {
        let e = Exposure::default();
        let inside = e.expose("bob", || Ok::<_, ()>((e.claim("bob", 100), 0)));
        assert_eq!(inside, Ok(Ok(false)));
        assert!(e.claim("bob", 100), "the read has ended");
    }

    #[test]
    fn a_read_waits_for_the_claim_to_settle() {
        let e = Arc::new(Exposure::default());
        assert!(e.claim("bob", 5));
        let writer = {
            let e = Arc::clone(&e);
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                e.settle();
            })
        };
        let started = Instant::now();
        assert_eq!(e.expose("bob", read(5)), Ok(Ok(())));
        assert!(started.elapsed() >= Duration::from_millis(40));
        writer.join().expect("writer thread");
        assert!(!e.claim("bob", 5));
    }
}
