//! The process's own resource use, from `/proc` (Linux; elsewhere every figure is `None`
//! and the `process_*` metrics are left out), as the Prometheus client libraries export it.

use std::fs;

/// One reading of the process's resources.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Process {
    /// Resident memory in bytes.
    pub resident_bytes: Option<u64>,
    /// Virtual memory in bytes.
    pub virtual_bytes: Option<u64>,
    /// User plus system CPU time, in seconds.
    pub cpu_seconds: Option<f64>,
    /// Open file descriptors.
    pub open_fds: Option<u64>,
    /// The soft limit on open file descriptors.
    pub max_fds: Option<u64>,
    /// Start time, in seconds since the Unix epoch.
    pub start_time_seconds: Option<f64>,
}

fn sysconf(name: libc::c_int) -> Option<u64> {
    // SAFETY: sysconf reads a configuration value; it has no preconditions.
    let v = unsafe { libc::sysconf(name) };
    u64::try_from(v).ok().filter(|&v| v > 0)
}

/// How long a reading is served again: counting open descriptors walks `/proc/self/fd`,
/// one entry per connection, and `/metrics` needs no credential, so a scrape flood must
/// not cost a walk each.
pub const CACHE_FOR: std::time::Duration = std::time::Duration::from_secs(1);

/// The figures, read at most once per [`CACHE_FOR`] whoever asks.
pub fn cached() -> Process {
    use std::sync::Mutex;
    use std::time::Instant;
    static LAST: Mutex<Option<(Instant, Process)>> = Mutex::new(None);
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    match *last {
        Some((at, p)) if at.elapsed() < CACHE_FOR => p,
        _ => {
            let p = read();
            *last = Some((Instant::now(), p));
            p
        }
    }
}

/// Reads the figures now. Each that cannot be read is `None`.
pub fn read() -> Process {
    let page = sysconf(libc::_SC_PAGESIZE).unwrap_or(4096);
    let ticks = sysconf(libc::_SC_CLK_TCK).unwrap_or(100) as f64;
    let mut p = Process::default();
    if let Ok(statm) = fs::read_to_string("/proc/self/statm") {
        let mut f = statm.split_whitespace().map(|v| v.parse::<u64>().ok());
        p.virtual_bytes = f.next().flatten().map(|v| v * page);
        p.resident_bytes = f.next().flatten().map(|v| v * page);
    }
    if let Ok(stat) = fs::read_to_string("/proc/self/stat") {
        // The command name (field 2) is in parentheses and may hold spaces: count fields
        // from after its closing one, where field 3 starts.
        if let Some((_, rest)) = stat.rsplit_once(')') {
            let f: Vec<&str> = rest.split_whitespace().collect();
            let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
            if let (Some(utime), Some(stime)) = (field(14), field(15)) {
                p.cpu_seconds = Some((utime + stime) as f64 / ticks);
            }
            if let (Some(start), Some(boot)) = (field(22), boot_time()) {
                p.start_time_seconds = Some(boot as f64 + start as f64 / ticks);
            }
        }
    }
    p.open_fds = fs::read_dir("/proc/self/fd").ok().map(|d| d.count() as u64);
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass, which lives across the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        p.max_fds = Some(limit.rlim_cur);
    }
    p
}

/// The system's boot time, in seconds since the Unix epoch (`btime` in `/proc/stat`).
fn boot_time() -> Option<u64> {
    fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_os = "linux")]
    fn every_figure_is_read_and_plausible() {
        let p = read();
        let rss = p.resident_bytes.expect("rss");
        assert!(rss > 1 << 20 && rss < 1 << 40, "{p:?}");
        assert!(p.virtual_bytes.expect("vsz") >= rss);
        assert!(p.cpu_seconds.expect("cpu") >= 0.0);
        let fds = p.open_fds.expect("fds");
        assert!(fds >= 3 && fds <= p.max_fds.expect("limit"), "{p:?}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs_f64();
        let start = p.start_time_seconds.expect("start");
        assert!(
            start <= now + 1.0 && start > now - 86_400.0 * 365.0,
            "{p:?}"
        );
    }
}
