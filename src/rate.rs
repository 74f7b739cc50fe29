//! Rate limits as token buckets: SENDs per connection (`Config::max_sends_per_sec`), SEND
//! bytes per connection (`Config::max_send_bytes_per_sec`, counted in KiB), and logins per
//! uid and (optionally) per peer address ([`KeyedBuckets`], `Config::max_logins_per_sec_per_uid`
//! and `_per_ip`).
//!
//! A token bucket: a connection may send `burst` messages at once and `rate` per second
//! after that. A SEND over the limit is answered with SENDACK reason 22 (RateLimit,
//! PROTOCOL.md §4.2) and is neither stored nor delivered; the client may send it again
//! later. Nothing else happens to the connection: a well-behaved client that bursts once
//! (a reconnecting SDK flushing its outbox, say) keeps working.
//!
//! Credit is kept in thousandths of a message so that a whole-number rate refills exactly
//! with integer arithmetic and the bucket stays 12 bytes per connection.

/// One connection's send credit.
#[derive(Debug, Clone, Copy)]
pub struct SendBucket {
    /// Credit in thousandths of a message, at most `burst * 1000`.
    milli: u32,
    /// When `milli` was last refilled, in milliseconds of the server's clock.
    at_ms: u64,
}

/// The limit: `rate` messages per second, `burst` at once. `rate == 0` turns it off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendLimit {
    pub rate: u32,
    pub burst: u32,
}

impl SendLimit {
    /// True when sends are limited at all.
    pub fn is_on(self) -> bool {
        self.rate > 0
    }
}

impl SendBucket {
    /// A full bucket at time `now_ms`.
    pub fn full(limit: SendLimit, now_ms: u64) -> SendBucket {
        SendBucket {
            milli: limit.burst.saturating_mul(1000),
            at_ms: now_ms,
        }
    }

    /// Takes credit for one message, or returns false if there is none.
    pub fn take(&mut self, limit: SendLimit, now_ms: u64) -> bool {
        self.take_n(limit, now_ms, 1)
    }

    /// True when the bucket has refilled to its cap by `now_ms` (nothing to remember).
    pub fn is_full(&self, limit: SendLimit, now_ms: u64) -> bool {
        let earned = now_ms
            .saturating_sub(self.at_ms)
            .saturating_mul(u64::from(limit.rate));
        u64::from(self.milli).saturating_add(earned) >= u64::from(limit.burst.max(1)) * 1000
    }

    /// Takes credit for `units` (at least one), or returns false if there is not that
    /// much; a request larger than the whole burst passes only from a full bucket, which it
    /// then empties, so nothing is refused for ever.
    pub fn take_n(&mut self, limit: SendLimit, now_ms: u64, units: u32) -> bool {
        if !limit.is_on() {
            return true;
        }
        let cap = u64::from(limit.burst.max(1)) * 1000;
        // rate msgs/s = rate milli-msgs/ms.
        let earned = now_ms
            .saturating_sub(self.at_ms)
            .saturating_mul(u64::from(limit.rate));
        let credit = u64::from(self.milli).saturating_add(earned).min(cap);
        self.at_ms = self.at_ms.max(now_ms);
        let cost = (u64::from(units.max(1)) * 1000).min(cap);
        if credit < cost {
            self.milli = credit as u32;
            return false;
        }
        self.milli = (credit - cost) as u32;
        true
    }

    /// Gives back the credit of one message that was taken but not sent (the channel
    /// queue was full and the SEND will be read again).
    pub fn refund(&mut self, limit: SendLimit) {
        self.refund_n(limit, 1);
    }

    /// Gives back `units` taken for a SEND that will be read again.
    pub fn refund_n(&mut self, limit: SendLimit, units: u32) {
        let cap = limit.burst.max(1).saturating_mul(1000);
        self.milli = self
            .milli
            .saturating_add(units.saturating_mul(1000))
            .min(cap);
    }
}

/// Token buckets by key (a peer address, a uid), for limits that span connections; shared
/// by the auth workers. A key is kept as a 64-bit hash under a per-process random seed, so
/// an entry is 16 bytes whatever the key's length and nobody can aim a key at another's
/// bucket. Sharded so workers rarely meet on a lock; a lock is held for one map operation.
/// Bounded: past [`KEYS_PER_SHARD`] keys a shard forgets every bucket that has refilled
/// (it would start full anyway).
#[derive(Debug)]
pub struct KeyedBuckets {
    limit: SendLimit,
    seed: std::collections::hash_map::RandomState,
    shards: Vec<std::sync::Mutex<std::collections::HashMap<u64, SendBucket>>>,
}

/// Keys per shard before the refilled ones are forgotten.
pub const KEYS_PER_SHARD: usize = 4096;

/// Shards of a [`KeyedBuckets`].
const SHARDS: usize = 16;

impl KeyedBuckets {
    /// Buckets of `limit` (off when its rate is 0).
    pub fn new(limit: SendLimit) -> Self {
        KeyedBuckets {
            limit,
            seed: std::collections::hash_map::RandomState::new(),
            shards: (0..SHARDS).map(|_| Default::default()).collect(),
        }
    }

    /// True when the limit is on at all.
    pub fn is_on(&self) -> bool {
        self.limit.is_on()
    }

    /// Takes one unit for `key` at `now_ms`; false when over the limit.
    pub fn take(&self, key: impl std::hash::Hash, now_ms: u64) -> bool {
        if !self.limit.is_on() {
            return true;
        }
        use std::hash::BuildHasher;
        let hash = self.seed.hash_one(key);
        let shard = &self.shards[(hash % SHARDS as u64) as usize];
        let mut map = shard.lock().unwrap_or_else(|e| e.into_inner());
        let limit = self.limit;
        if map.len() >= KEYS_PER_SHARD {
            map.retain(|_, b| !b.is_full(limit, now_ms));
        }
        map.entry(hash)
            .or_insert_with(|| SendBucket::full(limit, now_ms))
            .take(limit, now_ms)
    }
}

/// The key a login limit counts a peer under: an IPv4 address, or an IPv6 /64 (one
/// subscriber's block, as the per-address connection limit counts it).
pub fn address_key(ip: std::net::IpAddr) -> u128 {
    match ip {
        std::net::IpAddr::V4(v4) => u128::from(u32::from(v4)),
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => u128::from(u32::from(v4)),
            None => (u128::from(v6) >> 64) | (1 << 64),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: SendLimit = SendLimit { rate: 10, burst: 3 };

    #[test]
    fn keyed_buckets_limit_each_key_and_stay_bounded() {
        let k = KeyedBuckets::new(LIMIT);
        assert!((0..3).all(|_| k.take("a", 0)));
        assert!(!k.take("a", 0), "a's burst is spent");
        assert!(k.take("b", 0), "b has its own");
        let long = "u".repeat(16 << 10);
        for i in 0..(20 * KEYS_PER_SHARD as u64) {
            k.take((&long, i), 10_000 + i);
        }
        let held: usize = k.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(held <= SHARDS * KEYS_PER_SHARD, "{held} keys held");
    }

    #[test]
    fn an_ipv6_block_is_one_address() {
        let a: std::net::IpAddr = "2001:db8:1:2::a".parse().unwrap();
        let b: std::net::IpAddr = "2001:db8:1:2::b".parse().unwrap();
        let c: std::net::IpAddr = "2001:db8:1:3::a".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(c));
        let mapped: std::net::IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(
            address_key(mapped),
            address_key("10.0.0.1".parse().unwrap())
        );
    }

    #[test]
    fn take_n_charges_units_and_a_huge_request_needs_a_full_bucket() {
        let mut b = SendBucket::full(LIMIT, 0);
        assert!(b.take_n(LIMIT, 0, 2));
        assert!(!b.take_n(LIMIT, 0, 2), "one unit left");
        assert!(
            b.take_n(LIMIT, 1000, 100),
            "a full bucket lets any size through once"
        );
        assert!(!b.take(LIMIT, 1000));
    }

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        let mut b = SendBucket::full(LIMIT, 0);
        assert!((0..3).all(|_| b.take(LIMIT, 0)));
        assert!(!b.take(LIMIT, 0), "a fourth message at once");
        // 10/s: one message of credit every 100 ms.
        assert!(!b.take(LIMIT, 99));
        assert!(b.take(LIMIT, 100));
        assert!(!b.take(LIMIT, 150));
        assert!(b.take(LIMIT, 200));
    }

    #[test]
    fn credit_never_exceeds_the_burst() {
        let mut b = SendBucket::full(LIMIT, 0);
        assert!(b.take(LIMIT, 0));
        // An hour idle refills three messages, not 36,000.
        let later = 3_600_000;
        assert_eq!((0..10).filter(|_| b.take(LIMIT, later)).count(), 3);
    }

    #[test]
    fn refund_returns_one_message_and_off_means_unlimited() {
        let mut b = SendBucket::full(LIMIT, 0);
        assert!((0..3).all(|_| b.take(LIMIT, 0)));
        b.refund(LIMIT);
        assert!(b.take(LIMIT, 0));
        assert!(!b.take(LIMIT, 0));
        let off = SendLimit { rate: 0, burst: 0 };
        let mut b = SendBucket::full(off, 0);
        assert!((0..100_000).all(|_| b.take(off, 0)));
    }

    #[test]
    fn a_clock_that_goes_backwards_grants_nothing() {
        let mut b = SendBucket::full(LIMIT, 1000);
        assert!((0..3).all(|_| b.take(LIMIT, 1000)));
        assert!(!b.take(LIMIT, 500));
        assert!(!b.take(LIMIT, 1050));
        assert!(b.take(LIMIT, 1100));
    }
}
