//! The writer's per-channel numbers: the storage row, the last seq, and the dedupe window.
//! Writer thread only.
//!
//! # Invariants
//! A cached channel's `last_seq` equals `MAX(seq)` in the database (or the deleted
//! channel's high-water mark) after every commit; after a failed commit the writer drops
//! the cache and reloads from the database, so a failed batch leaves no gap and no
//! duplicate.
//!
//! # Dedupe
//! A resend of the same `client_msg_no` by the same sender in the same channel is answered
//! with the original id and seq and not stored again. The window is the last
//! [`DEDUPE_PER_CHANNEL`] messages of each cached channel, reloaded from the database when
//! a channel is first touched after a restart or an eviction, so a resend after either is
//! caught too.

use super::lru::LruMap;
use super::tx::{Result, WriteTx};
use crate::message::ChannelKey;
use std::collections::{HashMap, VecDeque};

/// Recent (from_uid, client_msg_no) pairs remembered per channel for dedupe. The SDK
/// resends only what was in flight when its connection dropped, a handful of messages.
pub const DEDUPE_PER_CHANNEL: usize = 128;

/// Memory the channel cache may hold. Charged per channel as a full dedupe window (about
/// 5 KiB), so this keeps about 50,000 channels hot; one that falls out costs two indexed
/// queries and a 128-row range scan when it is next used. The cache used to be cleared at
/// 200,000 channels, by which time it could hold about 1.6 GB.
pub const CHANNEL_CACHE_BYTES: usize = 256 << 20;

/// Bytes charged per remembered pair: the map entry, the order entry, and hash-map slack.
const BYTES_PER_PAIR: usize = 40;

/// One channel's numbers (module docs).
#[derive(Debug)]
pub struct ChannelState {
    /// The channel's row id.
    pub row: i64,
    /// The highest seq given out.
    pub last_seq: u32,
    /// Dedupe window: [`dedupe_key`] → (message id, seq).
    recent: HashMap<u64, (i64, u32)>,
    order: VecDeque<u64>,
}

/// A 64-bit FNV-1a hash of (from_uid, client_msg_no), so the dedupe window stores and looks
/// up a number instead of allocating two strings per message. Two different pairs share a
/// key with probability about 2^-57 within a 128-entry window.
fn dedupe_key(from: &str, client_msg_no: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in from
        .bytes()
        .chain(std::iter::once(0xFF))
        .chain(client_msg_no.bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl ChannelState {
    /// Remembers a stored message for dedupe.
    pub fn remember(&mut self, from: &str, client_msg_no: &str, id: i64, seq: u32) {
        if client_msg_no.is_empty() {
            return;
        }
        let key = dedupe_key(from, client_msg_no);
        if self.recent.insert(key, (id, seq)).is_none() {
            self.order.push_back(key);
            if self.order.len() > DEDUPE_PER_CHANNEL {
                if let Some(old) = self.order.pop_front() {
                    self.recent.remove(&old);
                }
            }
        }
    }

    /// The id and seq a resend gets, if it is one.
    pub fn recall(&self, from: &str, client_msg_no: &str) -> Option<(i64, u32)> {
        if client_msg_no.is_empty() {
            return None;
        }
        self.recent.get(&dedupe_key(from, client_msg_no)).copied()
    }
}

/// The cache of [`ChannelState`]s, bounded in bytes.
pub type Channels = LruMap<ChannelKey, ChannelState>;

/// A new, empty cache.
pub fn new_cache() -> Channels {
    LruMap::new(CHANNEL_CACHE_BYTES)
}

/// The state of `key`, loaded (and the channel row created) on first use.
///
/// # Errors
/// The store's errors.
pub fn state<'a, T: WriteTx + ?Sized>(
    tx: &T,
    cache: &'a mut Channels,
    key: &ChannelKey,
) -> Result<&'a mut ChannelState> {
    if !cache.contains_key(key) {
        let loaded = load(tx, key)?;
        let cost = 256 + key.id.len() + DEDUPE_PER_CHANNEL * BYTES_PER_PAIR;
        cache.insert(key.clone(), loaded, cost);
    }
    Ok(cache.get_mut(key).expect("inserted above"))
}

fn load<T: WriteTx + ?Sized>(tx: &T, key: &ChannelKey) -> Result<ChannelState> {
    let row = tx.ensure_channel(key)?;
    // A deleted channel's messages are gone but its seq is not reused: the store keeps the
    // high-water mark (`AdminWrite::DeleteChannel`).
    let last_seq = tx.channel_high_water(row)?;
    let mut state = ChannelState {
        row,
        last_seq,
        recent: HashMap::new(),
        order: VecDeque::new(),
    };
    let after = last_seq.saturating_sub(DEDUPE_PER_CHANNEL as u32);
    for (from, cmn, id, seq) in tx.recent_messages(row, after)? {
        state.remember(&from, &cmn, id, seq);
    }
    Ok(state)
}
