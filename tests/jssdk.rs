//! End-to-end: the official WuKongIM JS SDK (`wukongimjssdk@1.0.4`, npm, pinned by
//! `e2e/jssdk/package-lock.json`) under Node 20 connects to Ruyi over WebSocket with
//! encryption, and sends and receives person and group messages.
//!
//! Needs `node` and `npm ci` in `e2e/jssdk` (`.ci/run` does both). When either is missing
//! the test says `SKIPPED` loudly and passes, so a machine without Node still runs the
//! rest of the suite; under `CI=true` it fails instead.

#![allow(clippy::unwrap_used)]

mod util;

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use util::*;

fn sdk_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("e2e/jssdk");
    let node = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !node {
        skip("jssdk end-to-end test: `node` is not installed");
        return None;
    }
    if !dir.join("node_modules/wukongimjssdk/lib/sdk.js").exists() {
        skip("jssdk end-to-end test: run `npm ci` in e2e/jssdk first");
        return None;
    }
    Some(dir)
}

struct SdkUser {
    child: Child,
    stdin: ChildStdin,
    events: mpsc::Receiver<Value>,
    seen: Vec<Value>,
}

impl SdkUser {
    /// `ca`: a CA for Node to trust beyond its own (`NODE_EXTRA_CA_CERTS`), for wss://.
    fn spawn(dir: &PathBuf, url: &str, uid: &str, plan: Value, ca: Option<&Path>) -> SdkUser {
        let mut command = Command::new("node");
        if let Some(ca) = ca {
            command.env("NODE_EXTRA_CA_CERTS", ca);
        }
        let mut child = command
            .current_dir(dir)
            .args([
                "--import",
                "./register.mjs",
                "client.mjs",
                url,
                uid,
                "tok-secret",
                &plan.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let stdin = child.stdin.take().unwrap();
        let (tx, events) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // The SDK logs to stdout too; our events are the JSON lines.
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    let _ = tx.send(v);
                }
            }
        });
        SdkUser {
            child,
            stdin,
            events,
            seen: Vec::new(),
        }
    }

    /// Waits for an event named `name`; returns false at the deadline.
    fn wait_for(&mut self, name: &str, deadline: Instant) -> bool {
        while let Ok(v) = self
            .events
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            let hit = v["event"] == name;
            self.seen.push(v);
            if hit {
                return true;
            }
        }
        false
    }

    fn of(&self, name: &str) -> Vec<&Value> {
        self.seen.iter().filter(|v| v["event"] == name).collect()
    }
}

#[test]
fn the_official_js_sdk_chats_through_ruyi() {
    let Some(dir) = sdk_dir() else { return };
    let server = start("jssdk", |_| {});
    let url = format!("ws://{}", server.ws_addr());
    chat(&dir, &server, &url, None);
}

#[test]
fn the_official_js_sdk_chats_over_wss_trusting_a_private_ca() {
    let Some(dir) = sdk_dir() else { return };
    let pki = util::tls::Pki::new(&temp_dir("jssdk-wss-pki"), "a");
    let server = util::tls::start_tls("jssdk-wss", &pki, |_| {});
    let url = format!("wss://{}", server.wss_addr().unwrap());
    chat(&dir, &server, &url, Some(&pki.ca));
}

/// Two SDK users chat through `server` at `url`: person both ways and a group.
fn chat(dir: &PathBuf, server: &ruyi::server::Server, url: &str, ca: Option<&Path>) {
    for uid in ["alice", "bob"] {
        register(server, uid, "tok-secret", 1, 0); // the SDK logs in as WEB (flag 1)
    }
    let (status, _) = post(
        server.http_addr(),
        "/channel",
        json!({"channel_id": "g1", "channel_type": 2, "subscribers": ["alice", "bob"]}),
    );
    assert_eq!(status, 200);
    let mut bob = SdkUser::spawn(
        dir,
        url,
        "bob",
        json!({"sends": [{"to": "alice", "type": 1, "text": "hello alice"}], "expect": 2, "timeoutMs": 30000}),
        ca,
    );
    let mut alice = SdkUser::spawn(
        dir,
        url,
        "alice",
        json!({"sends": [{"to": "bob", "type": 1, "text": "hello bob"}, {"to": "g1", "type": 2, "text": "hi group"}], "expect": 1, "timeoutMs": 30000}),
        ca,
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    assert!(
        bob.wait_for("connected", deadline),
        "bob never connected: {:?}",
        bob.seen
    );
    assert!(
        alice.wait_for("connected", deadline),
        "alice never connected: {:?}",
        alice.seen
    );
    for user in [&mut bob, &mut alice] {
        writeln!(user.stdin, "go").unwrap();
    }
    assert!(alice.wait_for("done", deadline), "alice: {:?}", alice.seen);
    assert!(bob.wait_for("done", deadline), "bob: {:?}", bob.seen);
    for user in [&mut alice, &mut bob] {
        let _ = user.child.wait();
        assert!(
            user.of("sendack").iter().all(|a| a["reasonCode"] == 1),
            "{:?}",
            user.seen
        );
    }
    let alice_got = alice.of("recv");
    assert_eq!(alice_got.len(), 1);
    assert_eq!(
        (
            &alice_got[0]["from"],
            &alice_got[0]["channelID"],
            &alice_got[0]["text"]
        ),
        (&json!("bob"), &json!("bob"), &json!("hello alice"))
    );
    let mut bob_got: Vec<(String, i64, String)> = bob
        .of("recv")
        .iter()
        .map(|v| {
            (
                v["channelID"].as_str().unwrap().to_owned(),
                v["channelType"].as_i64().unwrap(),
                v["text"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    bob_got.sort();
    assert_eq!(
        bob_got,
        [
            ("alice".into(), 1, "hello bob".into()),
            ("g1".into(), 2, "hi group".into())
        ]
    );
}
