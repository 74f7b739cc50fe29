//! A latency histogram any thread may record into, without a lock.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds of the buckets, in microseconds: 100 µs to 10 s, about ×2.5 apart (the
/// Prometheus client defaults, with the sub-millisecond steps a commit or SENDACK needs).
pub const BOUNDS_MICROS: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// Counts of durations per bucket, their sum and number.
///
/// Each field is a relaxed atomic: a scrape may see a sample in `count` before its bucket
/// (off by one for a moment), never a torn value.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Non-cumulative: `buckets[i]` counts samples in `(BOUNDS[i-1], BOUNDS[i]]`; the last
    /// slot counts those above every bound.
    buckets: [AtomicU64; BOUNDS_MICROS.len() + 1],
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let slot = BOUNDS_MICROS.partition_point(|&b| b < micros);
        self.buckets[slot].fetch_add(1, Relaxed);
        self.sum_micros.fetch_add(micros, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    /// The recorded durations added up, in microseconds.
    pub fn sum_micros(&self) -> u64 {
        self.sum_micros.load(Relaxed)
    }

    /// Writes the `_bucket`, `_sum` and `_count` samples of family `name` (whose name ends
    /// in `_seconds`) in the Prometheus text format.
    pub fn write(&self, out: &mut String, name: &str) {
        let mut cumulative = 0;
        for (i, bound) in BOUNDS_MICROS.iter().enumerate() {
            cumulative += self.buckets[i].load(Relaxed);
            let le = *bound as f64 / 1e6;
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        cumulative += self.buckets[BOUNDS_MICROS.len()].load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum = self.sum_micros.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_bounds_inclusive() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(100)); // on a bound: that bucket
        h.observe(Duration::from_micros(101));
        h.observe(Duration::from_secs(60)); // above every bound
        let mut out = String::new();
        h.write(&mut out, "x_seconds");
        assert!(out.contains("x_seconds_bucket{le=\"0.0001\"} 1\n"), "{out}");
        assert!(
            out.contains("x_seconds_bucket{le=\"0.00025\"} 2\n"),
            "{out}"
        );
        assert!(out.contains("x_seconds_bucket{le=\"10\"} 2\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_seconds_count 3\n"), "{out}");
        assert!(out.contains("x_seconds_sum 60.000201\n"), "{out}");
        assert_eq!(h.count(), 3);
    }
}
