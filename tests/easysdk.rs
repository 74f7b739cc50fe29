//! End-to-end: the official Python EasySDK (`wukong-easy-sdk` 0.1.0 on PyPI, pinned with
//! hashes by `e2e/easysdk/requirements.txt`) under Python 3.11 speaks JSON-RPC over
//! WebSocket to Ruyi: person chat between two SDK users, a group shared with a
//! binary-protocol user (messages both ways), ping, and a wrong token.
//!
//! Needs the virtualenv `e2e/easysdk/.venv` with the pinned packages (`.ci/run` makes it).
//! Without it the test says `SKIPPED` loudly and passes; under `CI=true` it fails.

#![allow(clippy::unwrap_used)]

mod util;

use ruyi_proto::types::channel_type;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;
use util::*;

fn python() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("e2e/easysdk");
    let python = dir.join(".venv/bin/python");
    let ready = Command::new(&python)
        .args(["-c", "import wukong_easy_sdk"])
        .status()
        .is_ok_and(|s| s.success());
    if !ready {
        skip(
            "EasySDK end-to-end test: make e2e/easysdk/.venv with Python 3.11 and \
             `pip install --require-hashes -r requirements.txt`",
        );
        return None;
    }
    Some(python)
}

#[test]
fn the_official_python_easysdk_chats_with_sdk_and_binary_users() {
    let Some(python) = python() else { return };
    let server = start("easysdk", |_| {});
    let url = format!("ws://{}", server.ws_addr());
    chat(&python, &server, &url, None);
}

#[test]
fn the_official_python_easysdk_chats_over_wss_trusting_a_private_ca() {
    let Some(python) = python() else { return };
    let pki = util::tls::Pki::new(&temp_dir("easysdk-wss-pki"), "a");
    let server = util::tls::start_tls("easysdk-wss", &pki, |_| {});
    let url = format!("wss://{}", server.wss_addr().unwrap());
    chat(&python, &server, &url, Some(&pki.ca));
}

/// Runs `e2e/easysdk/chat.py` against `url` (trusting `ca` for wss) and checks each step.
fn chat(
    python: &std::path::Path,
    server: &ruyi::server::Server,
    url: &str,
    ca: Option<&std::path::Path>,
) {
    for uid in ["ann", "bo"] {
        register(server, uid, &format!("t-{uid}"), 2, 1);
    }
    register(server, "cy", "t", 1, 1);
    post(
        server.http_addr(),
        "/channel",
        json!({"channel_id": "g", "channel_type": 2, "subscribers": ["ann", "bo", "cy"]}),
    );
    let mut cy = Client::ok(server.tcp_addr(), &Login::new("cy", "t"));
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("e2e/easysdk/chat.py");
    let mut child = Command::new(python)
        .arg(script)
        .arg(url)
        .args(ca)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel::<Value>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str(&line) {
                let _ = tx.send(v);
            }
        }
    });
    let mut steps = std::collections::HashMap::new();
    while let Ok(v) = lines.recv_timeout(Duration::from_secs(30)) {
        let step = v["step"].as_str().unwrap_or_default().to_owned();
        if step == "connected" {
            cy.send(
                "ann",
                channel_type::PERSON,
                br#"{"type":1,"content":"from cy"}"#,
                "cy-1",
            );
            assert_eq!(cy.sendack().reason_code, 1);
        }
        let done = step == "done" || step == "timeout";
        steps.insert(step, v);
        if done {
            break;
        }
    }
    let status = child.wait().unwrap();
    assert!(
        status.success() && steps.contains_key("done"),
        "the SDK run did not finish: {steps:?}"
    );
    let person = &steps["person"];
    assert_eq!(person["reasonCode"], 1);
    assert_eq!(person["messageSeq"], 1);
    assert_eq!(person["payload"], json!({"type": 1, "content": "hello bo"}));
    assert_eq!(
        (person["fromUid"].as_str(), person["channelId"].as_str()),
        (Some("ann"), Some("ann"))
    );
    assert_eq!(
        steps["reply"]["payload"],
        json!({"type": 1, "content": "hi ann"})
    );
    let group = &steps["group"];
    assert_eq!(
        group["payload"],
        json!({"type": 1, "content": "to the group"})
    );
    assert_eq!(
        (group["channelId"].as_str(), group["channelType"].as_i64()),
        (Some("g"), Some(2))
    );
    assert_eq!(
        steps["binary"]["payload"],
        json!({"type": 1, "content": "from cy"})
    );
    assert_eq!(steps["binary"]["fromUid"], "cy");
    assert_eq!(steps["wrong-token"]["code"], 2, "a wrong token is reason 2");
    // The binary-protocol member got the SDK user's group message as its JSON text.
    let r = cy.recv();
    assert_eq!(r.channel_id, "g");
    let payload: Value = serde_json::from_slice(&r.payload).unwrap();
    assert_eq!(payload, json!({"type": 1, "content": "to the group"}));
}
