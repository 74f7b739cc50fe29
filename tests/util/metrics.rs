//! Reading the server's own counters in tests.

use super::http_text;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// `ruyi_connections_closed_total` for `reason` once it reaches `n` (it is counted when
/// the loop reaps the connection, which may be a moment after its peer saw the close);
/// what it is after 5 s otherwise.
pub fn closed_reaching(http: SocketAddr, reason: &str, n: u64) -> u64 {
    reaching(n, || closed_for(http, reason))
}

/// What `read` gives once it reaches `n`, polled every 20 ms; what it gives after 5 s
/// otherwise.
fn reaching(n: u64, read: impl Fn() -> u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = read();
        if now >= n || Instant::now() > deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `ruyi_connections_closed_total` for `reason`, over the loops.
pub fn closed_for(http: SocketAddr, reason: &str) -> u64 {
    let (status, text) = http_text(http, "/metrics");
    assert_eq!(status, 200);
    let label = format!("reason=\"{reason}\"");
    text.lines()
        .filter(|l| l.starts_with("ruyi_connections_closed_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Counter `name` (a sample without labels) in the server's `/metrics`.
pub fn counter(http: SocketAddr, name: &str) -> u64 {
    let (_, metrics) = http_text(http, "/metrics");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} is not exported"))
}

/// [`counter`] once it reaches `n`; what it is after 5 s otherwise.
pub fn counter_reaching(http: SocketAddr, name: &str, n: u64) -> u64 {
    reaching(n, || counter(http, name))
}
