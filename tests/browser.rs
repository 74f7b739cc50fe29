//! End-to-end in a real browser: the console (`/console/`) and the demo chat (`/demo/`)
//! served by Ruyi, driven in headless Chromium (Debian's `chromium`) by
//! `e2e/browser/console.mjs` (playwright-core, pinned by its package-lock.json).
//!
//! Checked: the overview shows the connection count `/varz` reports; the Connections
//! tab's kick button closes a real connection; two browser contexts chat in the demo
//! (person and group) and each sees the other's messages in order; no page throws.
//! Screenshots go to `target/screenshots/`. Without Node, the npm packages or Chromium the
//! test says SKIPPED loudly; under `CI=true` it fails.

#![allow(clippy::unwrap_used)]

mod util;

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use util::*;

/// `CHROMIUM`, else `chromium` on the `PATH` (where `.ci/run` looks for it).
fn chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("chromium"))
        .find(|p| p.is_file())
}

fn ready() -> Option<(PathBuf, PathBuf)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("e2e/browser");
    let node = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !node {
        skip("browser test: `node` is not installed");
        return None;
    }
    if !dir.join("node_modules/playwright-core").exists() {
        skip("browser test: run `npm ci` in e2e/browser first");
        return None;
    }
    let Some(chromium) = chromium() else {
        skip("browser test: no Chromium (install Debian's `chromium`, or set CHROMIUM)");
        return None;
    };
    Some((dir, chromium))
}

/// Runs one of `e2e/browser`'s scripts; calls `on_event` with each JSON line it prints,
/// and returns them all once it ended with `done` (or panics with what it printed).
fn run_script(
    dir: &std::path::Path,
    chromium: &std::path::Path,
    args: &[String],
    mut on_event: impl FnMut(&Value),
) -> Vec<Value> {
    let mut child = Command::new("node")
        .current_dir(dir)
        .args(args)
        .env("CHROMIUM", chromium)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, events) = std::sync::mpsc::channel::<Value>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                let _ = tx.send(v);
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = Vec::new();
    while let Ok(v) = events.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        on_event(&v);
        let end = v["event"] == "done" || v["event"] == "failed";
        seen.push(v);
        if end {
            break;
        }
    }
    let status = child.wait().unwrap();
    assert!(
        status.success() && seen.last().is_some_and(|v| v["event"] == "done"),
        "the browser run failed: {seen:?}"
    );
    seen
}

fn shots() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/screenshots")
}

#[test]
fn the_console_and_the_demo_work_in_a_real_browser() {
    let Some((dir, chromium)) = ready() else {
        return;
    };
    let server = start("browser", |_| {});
    // Three clients of the binary protocol: what the overview must count; one is kicked.
    let mut clients = Vec::new();
    for uid in ["watcher1", "watcher2", "kickme"] {
        register(&server, uid, "tok", 0, 0);
        let mut login = Login::new(uid, "tok");
        login.device_flag = 0;
        let (client, ack) = Client::login(server.tcp_addr(), &login);
        assert_eq!(ack.reason_code, 1, "{uid} logged in");
        clients.push(client);
    }
    let shots = shots();
    let mut kick_checked = false;
    let args = [
        "console.mjs".to_owned(),
        format!("http://{}", server.http_addr()),
        "3".to_owned(),
        "kickme".to_owned(),
        shots.display().to_string(),
    ];
    run_script(&dir, &chromium, &args, |v| {
        if v["event"] == "kicked" {
            // The button went through the API to the real connection.
            assert!(
                clients[2].closed_within(Duration::from_secs(10)),
                "the kicked connection stayed open"
            );
            kick_checked = true;
        }
    });
    assert!(kick_checked, "the kick step never ran");
    // The other two were left alone.
    for c in &mut clients[..2] {
        assert!(!c.closed_within(Duration::from_millis(200)));
    }
    for shot in [
        "console-overview.png",
        "console-connections.png",
        "demo-alice.png",
        "demo-bob.png",
    ] {
        assert!(shots.join(shot).exists(), "{shot} was not written");
    }
}

#[test]
fn behind_a_manager_token_the_console_asks_for_it_once_and_every_tab_works() {
    let Some((dir, chromium)) = ready() else {
        return;
    };
    let server = start("browser-token", |c| c.manager_token = Some("s3cret".into()));
    let args = [
        "tabs.mjs".to_owned(),
        format!("http://{}", server.http_addr()),
        "s3cret".to_owned(),
        shots().display().to_string(),
    ];
    let seen = run_script(&dir, &chromium, &args, |_| {});
    for step in ["asked", "users", "channels", "connections", "nodes"] {
        assert!(
            seen.iter().any(|v| v["event"] == step),
            "{step} missing: {seen:?}"
        );
    }
}
