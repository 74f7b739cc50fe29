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

fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from)
}

fn ready() -> Option<PathBuf> {
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
    if !chromium().exists() {
        skip("browser test: no Chromium (install Debian's `chromium`, or set CHROMIUM)");
        return None;
    }
    Some(dir)
}

#[test]
fn the_console_and_the_demo_work_in_a_real_browser() {
    let Some(dir) = ready() else { return };
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
    let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    let mut child = Command::new("node")
        .current_dir(&dir)
        .arg("console.mjs")
        .arg(format!("http://{}", server.http_addr()))
        .arg("3")
        .arg("kickme")
        .arg(&shots)
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
    let mut kick_checked = false;
    while let Ok(v) = events.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        if v["event"] == "kicked" {
            // The button went through the API to the real connection.
            assert!(
                clients[2].closed_within(Duration::from_secs(10)),
                "the kicked connection stayed open"
            );
            kick_checked = true;
        }
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
    assert!(kick_checked, "the kick step never ran: {seen:?}");
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
