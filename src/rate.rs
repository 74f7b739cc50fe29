//! The per-connection SEND rate limit (`Config::max_sends_per_sec`).
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
        if credit < 1000 {
            self.milli = credit as u32;
            return false;
        }
        self.milli = (credit - 1000) as u32;
        true
    }

    /// Gives back the credit of one message that was taken but not sent (the channel
    /// queue was full and the SEND will be read again).
    pub fn refund(&mut self, limit: SendLimit) {
        let cap = limit.burst.max(1).saturating_mul(1000);
        self.milli = self.milli.saturating_add(1000).min(cap);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: SendLimit = SendLimit { rate: 10, burst: 3 };

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
