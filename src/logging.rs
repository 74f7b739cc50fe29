//! Logging: the process's logger (millisecond UTC timestamps, `RUST_LOG` checked for
//! typos), lines that may repeat at a high rate ([`LogEvery`]), and the admin API's
//! access log (target `ruyi::audit`).
//!
//! Every line goes to standard error: under systemd the journal takes it (and rotates
//! it); in a container, the runtime's log driver. Nothing here writes files.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Log targets `RUST_LOG` may name: this binary's crates. A directive for any other
/// target (a typo such as `ruiy=debug`) silences nothing it meant to and is warned about.
const KNOWN_TARGETS: [&str; 3] = ["ruyi", "ruyi_reactor", "ruyi_proto"];

const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// Starts the process's logger: `RUST_LOG` when set (default `info`), millisecond
/// timestamps; then warns about directives that cannot mean what was meant. The warning
/// bypasses the logger: the faulty filter may well silence it.
pub fn init() {
    let filter = std::env::var("RUST_LOG").unwrap_or_default();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    for problem in filter_problems(&filter) {
        eprintln!("ruyi: warning: RUST_LOG={filter:?}: {problem}");
    }
}

/// What is wrong with a `RUST_LOG` value: unknown levels and targets outside this binary.
/// (`env_logger` ignores a directive it cannot parse, and a misspelt target matches
/// nothing, so either can silence the logs without a word.)
pub fn filter_problems(filter: &str) -> Vec<String> {
    let mut problems = Vec::new();
    // A `/regex` suffix filters messages; it is not a directive.
    let directives = filter.split('/').next().unwrap_or("");
    for d in directives
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
    {
        let (target, level) = match d.split_once('=') {
            Some((t, l)) => (Some(t.trim()), Some(l.trim())),
            None if LEVELS.contains(&d.to_ascii_lowercase().as_str()) => (None, Some(d)),
            None => (Some(d), None),
        };
        if let Some(l) = level {
            if !LEVELS.contains(&l.to_ascii_lowercase().as_str()) {
                problems.push(format!("{d:?}: unknown level {l:?} (one of {LEVELS:?})"));
                continue;
            }
        }
        if let Some(t) = target {
            let root = t.split("::").next().unwrap_or(t);
            if !KNOWN_TARGETS.contains(&root) {
                problems.push(format!(
                    "{d:?}: no log target {root:?} here (targets: {KNOWN_TARGETS:?})"
                ));
            }
        }
    }
    problems
}

/// Lets a log line through at most once per period and counts the lines it held back,
/// so a flood (failed logins, a dead webhook endpoint) costs a line per period.
#[derive(Debug)]
pub struct LogEvery {
    period_ms: u64,
    started: Instant,
    /// When the next line may go out, in ms since `started`.
    next_ms: AtomicU64,
    held: AtomicU64,
}

impl LogEvery {
    /// At most one line per `period`.
    pub fn new(period: Duration) -> LogEvery {
        LogEvery {
            period_ms: u64::try_from(period.as_millis()).unwrap_or(u64::MAX),
            started: Instant::now(),
            next_ms: AtomicU64::new(0),
            held: AtomicU64::new(0),
        }
    }

    /// `Some(lines held back since the last one let through)` when this line may go out.
    pub fn allow(&self) -> Option<u64> {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let next = self.next_ms.load(Relaxed);
        if now >= next
            && self
                .next_ms
                .compare_exchange(next, now.saturating_add(self.period_ms), Relaxed, Relaxed)
                .is_ok()
        {
            return Some(self.held.swap(0, Relaxed));
        }
        self.held.fetch_add(1, Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_in_rust_log_are_named() {
        assert!(filter_problems("").is_empty());
        assert!(filter_problems("info").is_empty());
        assert!(filter_problems("ruyi=debug,ruyi_reactor::event_loop=trace").is_empty());
        assert!(filter_problems("warn,ruyi::audit=info/login").is_empty());
        let p = filter_problems("ruiy=debug");
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("ruiy"), "{p:?}");
        assert_eq!(filter_problems("ruyi=verbose").len(), 1);
        assert_eq!(filter_problems("inof").len(), 1, "a bare word is a target");
    }

    #[test]
    fn a_flood_gets_one_line_per_period_and_a_count() {
        let every = LogEvery::new(Duration::from_secs(3600));
        assert_eq!(every.allow(), Some(0));
        assert_eq!(every.allow(), None);
        assert_eq!(every.allow(), None);
        every.next_ms.store(0, Relaxed); // the period has passed
        assert_eq!(every.allow(), Some(2));
    }
}
