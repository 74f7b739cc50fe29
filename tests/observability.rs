//! What an operator sees (issue 15 items 6, 7 and 10): `/metrics` as a standard parser
//! reads it, `/varz`, the access log, failed-login lines and `--version`.

#![allow(clippy::unwrap_used)]

mod util;

use ruyi_proto::types::{channel_type::PERSON, reason};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use util::*;

/// The Prometheus text format, read strictly: every sample belongs to the family whose
/// `# TYPE` line came last, every family has a HELP and a TYPE, counters end in `_total`,
/// histograms have cumulative buckets ending in `+Inf` equal to `_count`. Returns each
/// sample (name with labels) and its value.
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    let mut samples = HashMap::new();
    let mut helped = None;
    let mut family: Option<(String, String)> = None;
    let mut last_bucket: Option<f64> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            helped = Some(rest.split(' ').next().unwrap().to_owned());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert_eq!(helped.as_deref(), Some(name), "TYPE without HELP: {line}");
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            if kind == "counter" {
                assert!(
                    name.ends_with("_total"),
                    "counter {name} must end in _total"
                );
            }
            family = Some((name.to_owned(), kind.to_owned()));
            last_bucket = None;
            continue;
        }
        assert!(!line.starts_with('#'), "stray comment {line}");
        let (series, value) = line.rsplit_once(' ').unwrap();
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        let name = series.split('{').next().unwrap();
        let (fam, kind) = family.as_ref().unwrap_or_else(|| panic!("untyped: {line}"));
        if kind == "histogram" {
            let suffix = name.strip_prefix(fam.as_str()).unwrap_or_else(|| {
                panic!("{line} is not of family {fam}");
            });
            assert!(["_bucket", "_sum", "_count"].contains(&suffix), "{line}");
            if suffix == "_bucket" {
                assert!(value >= last_bucket.unwrap_or(0.0), "buckets fall: {line}");
                last_bucket = Some(value);
            }
            if suffix == "_count" {
                assert_eq!(Some(value), last_bucket, "count is not the +Inf bucket");
            }
        } else {
            assert_eq!(name, fam, "{line} is not of family {fam}");
        }
        assert!(
            samples.insert(series.to_owned(), value).is_none(),
            "sample twice: {series}"
        );
    }
    samples
}

fn metrics(http: SocketAddr) -> HashMap<String, f64> {
    let (status, text) = http_text(http, "/metrics");
    assert_eq!(status, 200);
    parse_metrics(&text)
}

#[test]
fn metrics_are_typed_next_to_their_samples_and_follow_the_traffic() {
    let server = start("metrics", |_| {});
    let http = server.http_addr();
    register(&server, "alice", "t", 1, 0);
    register(&server, "bob", "t", 1, 0);
    let before = metrics(http);
    let mut alice = Client::ok(server.tcp_addr(), &Login::new("alice", "t"));
    let (_, connack) = Client::login(server.tcp_addr(), &Login::new("bob", "wrong"));
    assert_eq!(connack.reason_code, reason::AUTH_FAIL);
    for i in 0..5 {
        alice.send("bob", PERSON, b"{}", &format!("m{i}"));
        assert_eq!(alice.sendack().reason_code, reason::SUCCESS);
    }
    let after = metrics(http);
    let grew = |name: &str, by: f64| {
        let (b, a) = (before.get(name), after.get(name));
        assert!(
            a.unwrap_or_else(|| panic!("{name} missing")) - b.unwrap_or(&0.0) >= by,
            "{name}: {b:?} -> {a:?}"
        );
    };
    grew("ruyi_sendack_seconds_count", 5.0);
    grew("ruyi_storage_commit_seconds_count", 1.0);
    grew("ruyi_http_request_seconds_count", 1.0); // the first scrape
    grew("ruyi_logins_failed_total", 1.0);
    grew("ruyi_connections_accepted_total{loop=\"0\"}", 0.0);
    let accepted: f64 = after
        .iter()
        .filter(|(k, _)| k.starts_with("ruyi_connections_accepted_total{"))
        .map(|(_, v)| v)
        .sum();
    assert!(accepted >= 2.0, "accepted {accepted}");
    assert!(after["process_resident_memory_bytes"] > 1e6);
    assert!(after["process_open_fds"] >= 3.0);
    assert!(after["process_start_time_seconds"] > 1.6e9);
    assert!(after.contains_key("process_cpu_seconds_total"));
    assert!(after.contains_key("ruyi_connections_refused_per_ip_total"));
    assert!(after.contains_key("ruyi_loop_queued_bytes{loop=\"0\"}"));
    assert!(after.contains_key("ruyi_http_sends_failed_total"));
    let build = after
        .keys()
        .find(|k| k.starts_with("ruyi_build_info{"))
        .expect("build info");
    assert!(build.contains("commit=\""), "{build}");
}

#[test]
fn the_parser_above_rejects_what_a_standard_parser_reads_as_untyped() {
    // Families declared at the top and samples further down: the old layout.
    let old =
        "# HELP a_total A.\n# TYPE a_total counter\n# HELP b B.\n# TYPE b gauge\na_total 1\nb 2\n";
    assert!(std::panic::catch_unwind(|| parse_metrics(old)).is_err());
}

#[test]
fn varz_reports_memory_cpu_and_the_commit() {
    let server = start("varz-figures", |_| {});
    let (status, v) = http(server.http_addr(), "GET", "/varz", &Value::Null);
    assert_eq!(status, 200);
    assert!(v["mem"].as_u64().unwrap() > 1_000_000, "{v}");
    assert!(v["cpu"].as_f64().unwrap() >= 0.0, "{v}");
    assert!(!v["commit"].as_str().unwrap().is_empty(), "{v}");
}

#[test]
fn version_names_the_commit() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ruyi"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    let line = String::from_utf8_lossy(&out.stdout);
    // "ruyi 0.1.0 (1234abcd5678)" or "(…, modified)"; "unknown" only outside git.
    let commit = line
        .split_once('(')
        .and_then(|(_, r)| r.split([',', ')']).next())
        .unwrap_or_else(|| panic!("no commit in {line:?}"));
    assert!(
        commit == "unknown"
            || (commit.len() == 12 && commit.chars().all(|c| c.is_ascii_hexdigit())),
        "{line:?}"
    );
}

#[test]
fn a_misspelt_rust_log_is_warned_about_even_when_it_silences_the_logger() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ruyi"))
        .arg("--version")
        .env("RUST_LOG", "ruiy=debug")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no log target \"ruiy\""), "{stderr}");
}

#[test]
fn the_binary_logs_admin_calls_and_failed_logins_with_addresses_never_secrets() {
    let dir = temp_dir("audit");
    let (tcp, http) = (free_addr(), free_addr());
    let log_path = dir.join("stderr.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ruyi"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args([
            "--tcp-addr",
            &tcp.to_string(),
            "--http-addr",
            &http.to_string(),
        ])
        .args(["--ws-addr", &free_addr().to_string()])
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(http).is_err() || TcpStream::connect(tcp).is_err() {
        assert!(Instant::now() < deadline, "ruyi did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
    let secret = "sekrit-token-4711";
    let body = json!({"uid": "u1", "token": secret, "device_flag": 1, "device_level": 1});
    assert_eq!(post(http, "/user/token", body).0, 200);
    assert_eq!(post(http, "/user/token", json!({"uid": ""})).0, 400);
    let (_, connack) = Client::login(tcp, &Login::new("u1", "guess"));
    assert_eq!(connack.reason_code, reason::AUTH_FAIL);
    std::thread::sleep(Duration::from_millis(200));
    let _ = child.kill();
    let _ = child.wait();
    let mut log = String::new();
    std::fs::File::open(&log_path)
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(!log.contains(secret), "a token reached the log:\n{log}");
    assert!(
        log.contains("POST /user/token from 127.0.0.1: 200"),
        "no access line:\n{log}"
    );
    assert!(
        log.contains("POST /user/token from 127.0.0.1: 400"),
        "no access line for the refused call:\n{log}"
    );
    assert!(
        log.contains("login refused for uid \"u1\" from 127.0.0.1: reason"),
        "no failed-login line:\n{log}"
    );
    assert!(log.contains("ruyi 0.1.0 ("), "no version at start:\n{log}");
    // Millisecond timestamps: "[2026-11-30T09:00:00.123Z INFO ...".
    let first = log.lines().next().unwrap_or("");
    let stamp = first
        .trim_start_matches('[')
        .split(' ')
        .next()
        .unwrap_or("");
    assert!(
        stamp.len() == 24 && stamp.as_bytes()[19] == b'.',
        "not a millisecond timestamp: {first}"
    );
}

#[test]
fn requests_without_the_manager_token_are_counted() {
    let server = start("unauthorized", |c| c.manager_token = Some("s3cret".into()));
    let http = server.http_addr();
    for _ in 0..3 {
        assert_eq!(http_text(http, "/varz").0, 401);
    }
    // /metrics needs no token (README: probes and scrapers hold no credential).
    let m = metrics(http);
    assert_eq!(m["ruyi_http_unauthorized_total"], 3.0);
}
