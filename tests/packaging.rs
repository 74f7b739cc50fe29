//! The service files in `packaging/` and the `Dockerfile` (issue 15 item 10): the unit
//! passes `systemd-analyze verify`, and every command line they start the binary with is
//! one the binary accepts, with settings that would start. The image itself is built by
//! hand where a Docker engine runs (README, "Running in a container").

#![allow(clippy::unwrap_used)]

mod util;

use std::path::Path;
use std::process::Command;
use util::*;

fn repo(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

/// The arguments of the unit's `ExecStart=` (plain words, as the unit writes them).
fn unit_args() -> Vec<String> {
    let unit = repo("packaging/ruyi.service");
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    line.split_whitespace().skip(1).map(str::to_owned).collect()
}

/// The arguments of the Dockerfile's exec-form `ENTRYPOINT`.
fn image_args() -> Vec<String> {
    let file = repo("Dockerfile");
    let line = file
        .lines()
        .find_map(|l| l.strip_prefix("ENTRYPOINT "))
        .expect("ENTRYPOINT");
    let words: Vec<String> = serde_json::from_str(line).expect("exec form: a JSON array");
    words[1..].to_vec()
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        return skip("systemd-analyze is not installed (Debian: apt-get install systemd)");
    }
    // `verify` checks that ExecStart's program exists: point it at the binary just built.
    let dir = temp_dir("unit");
    let unit = repo("packaging/ruyi.service").replace(
        "ExecStart=/usr/local/bin/ruyi",
        &format!("ExecStart={}", env!("CARGO_BIN_EXE_ruyi")),
    );
    let path = dir.join("ruyi.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{stderr}"
    );
    // Unknown keys and bad values are only warnings (and ignored by systemd): none allowed.
    assert!(
        !stderr.contains("ruyi.service:"),
        "systemd-analyze has remarks on the unit:\n{stderr}"
    );
}

#[test]
fn the_unit_and_the_image_start_the_binary_with_settings_that_would_start() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (what, args) in [("unit", unit_args()), ("image", image_args())] {
        // The unit reads its settings from /etc/ruyi/ruyi.toml: the repository's copy.
        let args: Vec<String> = args
            .into_iter()
            .map(|a| match a.as_str() {
                "/etc/ruyi/ruyi.toml" => root.join("packaging/ruyi.toml").display().to_string(),
                _ => a,
            })
            .collect();
        let out = Command::new(env!("CARGO_BIN_EXE_ruyi"))
            .args(&args)
            .arg("check")
            // Both listen beyond loopback, which needs the token from the environment.
            .env("RUYI_MANAGER_TOKEN", "a-long-random-manager-token")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "the {what}'s command line {args:?} would not start:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn check_refuses_settings_that_cannot_start_with_status_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_ruyi"))
        .args(["--http-addr", "0.0.0.0:5001", "check"])
        .env_remove("RUYI_MANAGER_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("manager token"));
}

#[test]
fn check_refuses_unusable_ca_files_stores_and_a_drain_past_a_minute() {
    let dir = temp_dir("check-ca");
    let bad = dir.join("ca.pem");
    std::fs::write(&bad, "not a certificate").unwrap();
    for args in [
        vec![
            "--webhook-url".to_owned(),
            "https://hooks.internal/x".to_owned(),
            "--webhook-ca-file".to_owned(),
            bad.display().to_string(),
        ],
        vec!["--shutdown-drain-secs".to_owned(), "3600".to_owned()],
        // The store's URL, its CA file and its pool, checked without connecting.
        vec![
            "--store".to_owned(),
            "postgres://u@db.internal/ruyi?sslmode=require".to_owned(),
            "--store-ca-file".to_owned(),
            bad.display().to_string(),
        ],
        vec!["--store".to_owned(), "mysql://db.internal/ruyi".to_owned()],
        vec!["--store-pool-size".to_owned(), "0".to_owned()],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_ruyi"))
            .args(&args)
            .arg("check")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?} passed the check");
    }
}
