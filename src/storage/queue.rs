//! The per-user offline queue (HTTP_API.md §7) as the storage writer changes it. Writer
//! thread only; every function runs inside the writer's open transaction.
//!
//! # Rules
//! - Seqs are issued per user in commit order: to a stored entry (SyncOnce, or no device
//!   online), or as a reservation for a recipient that gets a RECV
//!   ([`crate::message::QueueSlot`]). A delivery that misses is written at its reserved
//!   seq, so the queue follows each channel's seqs however late the miss is noticed.
//! - ...but only while no client can know a seq at or above it: its `syncack` would
//!   delete a row written behind what it knew, unseen. A client knows seqs from
//!   `/message/sync` and from RECVs of SyncOnce messages (HTTP_API.md §7); `exposure.rs`
//!   records both, and keeps a sync from reading while such a write is uncommitted. So
//!   the reserved seq is used when it is above the cursor and above everything shown
//!   (and free). Otherwise the entry goes to the end (counted: `requeued_late`), and
//!   counts as shown from then on, so the misses reserved before it (earlier in their
//!   channels) follow it to the end rather than go in place ahead of it. Each channel's
//!   order then holds unless a stored entry of the same channel lies between.
//! - `syncack` raises the cursor to at most the highest seq *stored*: the next entry is
//!   always above the cursor, so it is always visible.
//! - A message is in a user's queue at most once while its entry is there (checked
//!   through index `offline_by_message` before a requeue writes).
//! - An acknowledged entry is marked `delivered`: sync no longer returns it, and the cursor
//!   moves across a run of delivered entries (gaps left by unused reservations do not
//!   stop it), never past an undelivered one.
//! - A user holds at most `max_per_user` entries that channel history also holds; past
//!   that the oldest of those go (checked every [`TRIM_EVERY`] inserts, counted in
//!   `trimmed`), and `/channel/messagesync` and conversation sync still find them.
//!   Entries of command channels (`…____cmd`, written only by the HTTP API) are never
//!   trimmed: nothing else holds them.
//!
//! # Invariants
//! - `last >= stored_max >= cursor` for a cached user; both only grow while cached (also
//!   across a failed batch: the rolled-back seqs stay used, a harmless gap).

use super::exposure::Exposure;
use super::lru::LruMap;
use super::tx::{Result, WriteTx};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// Memory the per-user seq cache may hold (about 700,000 users at ~96 bytes each).
pub const USER_CACHE_BYTES: usize = 64 << 20;

/// Inserts into one user's queue between two checks of its length.
pub const TRIM_EVERY: u32 = 64;

/// What the writer's queues share with the rest of the server.
#[derive(Debug, Default)]
pub struct QueueShared {
    /// Counters, exported by `/metrics`.
    pub stats: QueueStats,
    /// What `/message/sync` has shown (module rules).
    pub exposure: Exposure,
}

/// Counters of the queue's unusual paths, exported by `/metrics`.
#[derive(Debug, Default)]
pub struct QueueStats {
    /// Entries written for deliveries that missed.
    pub requeued: AtomicU64,
    /// Of those, written at the end of the queue instead of at their reserved seq.
    pub requeued_late: AtomicU64,
    /// Entries marked delivered by a RECVACK.
    pub delivered: AtomicU64,
    /// Oldest entries removed by the per-user bound.
    pub trimmed: AtomicU64,
    /// Requeues or delivered marks given up after failing for
    /// [`super::writer::LANE_GIVE_UP`] (each is logged as an error).
    pub lane_dropped: AtomicU64,
}

#[derive(Debug)]
struct UserQueue {
    /// The highest seq issued to the user, stored or reserved.
    last: u32,
    /// The highest seq of a row ever written for the user (or its cursor).
    stored_max: u32,
    /// Inserts since the length was last checked.
    since_trim: u32,
}

/// The writer's view of every user's queue. See the module docs.
#[derive(Debug)]
pub struct Queues {
    users: LruMap<String, UserQueue>,
    max_per_user: u32,
    /// Shared with the metrics and `/message/sync`.
    pub shared: Arc<QueueShared>,
    /// What the open batch did, published to `shared.stats` only once it commits: a
    /// counter must not tell of an entry a reader cannot see yet, nor of a rolled-back one.
    counts: BatchCounts,
}

/// The queue counters' increments of one batch (`Queues::counts`).
#[derive(Debug, Default)]
struct BatchCounts {
    requeued: u64,
    requeued_late: u64,
    delivered: u64,
    trimmed: u64,
}

impl Queues {
    /// Queues bounded at `max_per_user` entries per user.
    pub fn new(max_per_user: u32, shared: Arc<QueueShared>) -> Queues {
        Queues {
            users: LruMap::new(USER_CACHE_BYTES),
            max_per_user: max_per_user.max(1),
            shared,
            counts: BatchCounts::default(),
        }
    }

    /// The batch committed: its counts go to the shared counters.
    pub fn publish_counts(&mut self) {
        let c = std::mem::take(&mut self.counts);
        let st = &self.shared.stats;
        for (counter, n) in [
            (&st.requeued, c.requeued),
            (&st.requeued_late, c.requeued_late),
            (&st.delivered, c.delivered),
            (&st.trimmed, c.trimmed),
        ] {
            if n > 0 {
                counter.fetch_add(n, Relaxed);
            }
        }
    }

    /// The batch rolled back: nothing it counted happened.
    pub fn forget_counts(&mut self) {
        self.counts = BatchCounts::default();
    }

    fn user<T: WriteTx + ?Sized>(&mut self, tx: &T, uid: &str) -> Result<&mut UserQueue> {
        if !self.users.contains_key(uid) {
            // Nothing issued above both the entries and the cursor can still be waited on,
            // except reservations forgotten by an eviction (handled in `requeue`).
            let last = tx.offline_max_seq(uid)?.max(tx.offline_cursor(uid)?);
            let cost = 96 + uid.len();
            self.users.insert(
                uid.to_owned(),
                UserQueue {
                    last,
                    stored_max: last,
                    since_trim: 0,
                },
                cost,
            );
        }
        Ok(self.users.get_mut(uid).expect("inserted above"))
    }

    /// Reserves the user's next seq for a delivery; 0 when the user's seqs are exhausted
    /// (4 billion issued: logged, the message is then not queued for them).
    pub fn reserve<T: WriteTx + ?Sized>(&mut self, tx: &T, uid: &str) -> Result<u32> {
        let user = self.user(tx, uid)?;
        match user.last.checked_add(1) {
            Some(next) => {
                user.last = next;
                Ok(next)
            }
            None => {
                log::error!("uid={uid}: offline-queue seqs exhausted; not queued");
                Ok(0)
            }
        }
    }

    /// Appends a stored entry for message (`row`, `channel_seq`); its seq, or 0 (see
    /// [`Queues::reserve`]). `keep`: a command-channel message, never trimmed.
    pub fn append<T: WriteTx + ?Sized>(
        &mut self,
        tx: &T,
        uid: &str,
        row: i64,
        channel_seq: u32,
        keep: bool,
    ) -> Result<u32> {
        let seq = self.reserve(tx, uid)?;
        if seq > 0 {
            self.insert(tx, uid, seq, (row, channel_seq), keep)?;
        }
        Ok(seq)
    }

    fn insert<T: WriteTx + ?Sized>(
        &mut self,
        tx: &T,
        uid: &str,
        seq: u32,
        (row, channel_seq): (i64, u32),
        keep: bool,
    ) -> Result<()> {
        tx.offline_insert(uid, seq, row, channel_seq, keep)?;
        let max = self.max_per_user;
        let user = self.user(tx, uid)?;
        user.stored_max = user.stored_max.max(seq);
        user.since_trim += 1;
        if user.since_trim >= TRIM_EVERY {
            user.since_trim = 0;
            let gone = tx.offline_trim(uid, max)?;
            if gone > 0 {
                self.counts.trimmed += gone as u64;
                log::warn!("uid={uid}: {gone} oldest offline entries over the bound of {max}");
            }
        }
        Ok(())
    }

    /// Writes the entry of a delivery that missed, at its `reserved` seq when it still can
    /// (module rules), else at the end. Nothing when the message is queued already. `keep`
    /// as for [`Queues::append`].
    pub fn requeue<T: WriteTx + ?Sized>(
        &mut self,
        tx: &T,
        uid: &str,
        (row, channel_seq): (i64, u32),
        reserved: u32,
        keep: bool,
    ) -> Result<()> {
        if tx.offline_holds(uid, row, channel_seq)? {
            return Ok(());
        }
        let stored_max = self.user(tx, uid)?.stored_max;
        // After a cache eviction a reload may have issued this seq again.
        let free = reserved > 0 && !tx.offline_seq_taken(uid, reserved)?;
        // Above every stored row: above anything a client read and the cursor. Below one:
        // above the cursor, and above everything a sync has shown (`exposure.rs`).
        let exposure = &self.shared.exposure;
        let usable = free
            && if reserved > stored_max {
                reserved > exposure.shown(uid)
            } else {
                reserved > tx.offline_cursor(uid)? && exposure.claim(uid, reserved)
            };
        let at = if usable {
            let user = self.user(tx, uid)?;
            // After an eviction the reloaded `last` can be below a live reservation.
            user.last = user.last.max(reserved);
            reserved
        } else {
            if reserved > 0 {
                self.counts.requeued_late += 1;
            }
            let seq = self.reserve(tx, uid)?;
            if seq == 0 {
                return Ok(());
            }
            // Misses reserved before this one (earlier in their channels) must not go in
            // place ahead of it now.
            self.shared.exposure.show(uid, seq);
            seq
        };
        self.insert(tx, uid, at, (row, channel_seq), keep)?;
        self.counts.requeued += 1;
        Ok(())
    }

    /// Marks entry `seq` delivered (a RECVACK) and moves the cursor across the run of
    /// delivered entries above it.
    pub fn mark_delivered<T: WriteTx + ?Sized>(
        &mut self,
        tx: &T,
        uid: &str,
        seq: u32,
    ) -> Result<()> {
        if tx.offline_mark_delivered(uid, seq)? {
            self.counts.delivered += 1;
            advance(tx, uid)?;
        }
        Ok(())
    }

    /// `/message/syncack`: the cursor rises to `seq`, clamped to the highest seq stored,
    /// and on across delivered entries; entries at or below it are deleted.
    pub fn sync_ack<T: WriteTx + ?Sized>(&mut self, tx: &T, uid: &str, seq: u32) -> Result<()> {
        let seq = seq.min(self.user(tx, uid)?.stored_max);
        if seq > 0 {
            tx.offline_raise_cursor(uid, seq)?;
        }
        advance(tx, uid)
    }
}

/// Entries read per step while walking a delivered run.
const WALK_STEP: usize = 256;

/// Moves the cursor across the delivered entries just above it (module rules).
fn advance<T: WriteTx + ?Sized>(tx: &T, uid: &str) -> Result<()> {
    let start = tx.offline_cursor(uid)?;
    let mut to = start;
    loop {
        let rows = tx.offline_walk(uid, to, WALK_STEP)?;
        let full = rows.len() == WALK_STEP;
        let mut blocked = false;
        for (seq, delivered) in rows {
            if !delivered {
                blocked = true;
                break;
            }
            to = seq;
        }
        if blocked || !full {
            break;
        }
    }
    if to > start {
        tx.offline_raise_cursor(uid, to)?;
    }
    Ok(())
}
