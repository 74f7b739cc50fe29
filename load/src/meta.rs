//! What a result file says about its own run (issue 14 item 6): when, on which commit and
//! machine, with which settings and server, and the unit of every figure. Written next
//! to the figures under the key `run`; the figures stay at the top level, where the
//! scripts read them.

use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// The run's description.
#[derive(Debug, Serialize)]
pub struct RunMeta {
    /// `ruyi-load <subcommand>`.
    pub tool: String,
    /// The repository's commit where the tool ran (`git`, "unknown" outside a checkout),
    /// "+modified" when the tree had changes.
    pub repo_commit: String,
    /// Start of the run, UTC, RFC 3339.
    pub date_utc: String,
    pub machine: Machine,
    /// The server under load, when its PID was given.
    pub server: Option<Server>,
    /// Every option of the run, as given or defaulted.
    pub settings: serde_json::Value,
    /// The unit or meaning of each figure.
    pub units: BTreeMap<&'static str, &'static str>,
}

#[derive(Debug, Serialize)]
pub struct Machine {
    pub cpu_model: String,
    /// Cores this process may run on.
    pub cores: usize,
    pub memory_bytes: Option<u64>,
    pub kernel: String,
}

#[derive(Debug, Serialize)]
pub struct Server {
    pub pid: u32,
    /// Its command line: the binary and every flag it was started with.
    pub command: Vec<String>,
    /// What its binary says to `--version` (Ruyi names its commit there).
    pub version: Option<String>,
}

/// Describes this run now. `settings` is the subcommand's options.
pub fn collect(
    subcommand: &str,
    server_pid: Option<u32>,
    settings: &impl Serialize,
    units: &[(&'static str, &'static str)],
) -> RunMeta {
    RunMeta {
        tool: format!("ruyi-load {subcommand}"),
        repo_commit: repo_commit(),
        date_utc: utc_now(),
        machine: machine(),
        server: server_pid.map(server),
        settings: serde_json::to_value(settings).unwrap_or(serde_json::Value::Null),
        units: units.iter().copied().collect(),
    }
}

/// Writes `report` with `meta` under `run` as pretty JSON to `path`, when given.
pub fn write_json<T: Serialize>(
    path: Option<&Path>,
    meta: &RunMeta,
    report: &T,
) -> std::io::Result<()> {
    #[derive(Serialize)]
    struct WithMeta<'a, T> {
        run: &'a RunMeta,
        #[serde(flatten)]
        report: &'a T,
    }
    crate::report::write_json(path, &WithMeta { run: meta, report })
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn repo_commit() -> String {
    let Some(commit) = output(Command::new("git").args(["rev-parse", "--short=12", "HEAD"])) else {
        return "unknown".into();
    };
    let dirty = output(Command::new("git").args(["status", "--porcelain", "--untracked-files=no"]))
        .is_some_and(|s| !s.is_empty());
    if dirty {
        format!("{commit}+modified")
    } else {
        commit
    }
}

fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, v)| v.trim())
        })
        .unwrap_or("unknown")
        .to_owned();
    let memory_bytes = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kib| kib * 1024)
    });
    Machine {
        cpu_model,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        memory_bytes,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or_else(|_| "unknown".into(), |k| k.trim().to_owned()),
    }
}

fn server(pid: u32) -> Server {
    let command = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|&b| b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| redact(&String::from_utf8_lossy(a)))
                .collect()
        })
        .unwrap_or_default();
    let version = output(Command::new(format!("/proc/{pid}/exe")).arg("--version"));
    Server {
        pid,
        command,
        version,
    }
}

/// An argument with any URL password replaced (`postgres://user:secret@host` becomes
/// `postgres://user:***@host`): results are shared, passwords are not.
fn redact(arg: &str) -> String {
    let Some(scheme_end) = arg.find("://") else {
        return arg.to_owned();
    };
    let rest = &arg[scheme_end + 3..];
    let Some(at) = rest.find('@') else {
        return arg.to_owned();
    };
    match rest[..at].find(':') {
        Some(colon) => format!(
            "{}{}:***{}",
            &arg[..scheme_end + 3],
            &rest[..colon],
            &rest[at..]
        ),
        None => arg.to_owned(),
    }
}

/// Now, UTC, as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_urls_are_redacted() {
        assert_eq!(
            redact("postgres://ruyi:s3cret@db:5432/ruyi"),
            "postgres://ruyi:***@db:5432/ruyi"
        );
        assert_eq!(redact("postgres://ruyi@db/ruyi"), "postgres://ruyi@db/ruyi");
        assert_eq!(redact("--store"), "--store");
    }

    #[test]
    fn dates_are_civil() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(20_422), (2025, 11, 30));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn the_run_is_described_and_the_figures_stay_on_top() {
        #[derive(Serialize)]
        struct Fig {
            sends_per_sec: f64,
        }
        let meta = collect(
            "person",
            None,
            &Fig { sends_per_sec: 0.0 },
            &[("sends_per_sec", "messages/s")],
        );
        let dir = std::env::temp_dir().join(format!("ruyi-meta-{}", std::process::id()));
        let path = dir.join("r.json");
        write_json(Some(&path), &meta, &Fig { sends_per_sec: 5.0 }).unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(v["sends_per_sec"], 5.0);
        assert_eq!(v["run"]["tool"], "ruyi-load person");
        assert!(v["run"]["machine"]["cores"].as_u64().unwrap() >= 1);
        assert_eq!(v["run"]["units"]["sends_per_sec"], "messages/s");
        assert!(v["run"]["date_utc"].as_str().unwrap().ends_with('Z'));
        let _ = std::fs::remove_dir_all(dir);
    }
}
