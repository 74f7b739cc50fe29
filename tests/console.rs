//! The console's and the demo's files and the API they add (`/connz`,
//! `/console/api/channel`), over real sockets. The pages in a real browser are
//! `tests/browser.rs`.

#![allow(clippy::unwrap_used)]

mod util;

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use util::*;

/// Sends `request` as is and returns the whole response (head and body, raw).
fn raw(addr: SocketAddr, request: &str) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    out
}

fn head_of(response: &[u8]) -> String {
    let end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(response.len());
    String::from_utf8_lossy(&response[..end]).into_owned()
}

fn get(path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}Connection: close\r\n\r\n")
}

#[test]
fn pages_load_without_the_manager_token_and_the_api_they_call_still_needs_it() {
    let server = start("console-token", |c| c.manager_token = Some("s3cret".into()));
    let http = server.http_addr();
    let root = head_of(&raw(http, &get("/", "")));
    assert!(
        root.starts_with("HTTP/1.1 302") && root.contains("Location: /console/"),
        "{root}"
    );
    for page in ["/console/", "/demo/"] {
        let r = raw(http, &get(page, ""));
        let head = head_of(&r);
        assert!(head.starts_with("HTTP/1.1 200"), "{page}: {head}");
        assert!(head.contains("Content-Type: text/html"), "{head}");
        assert!(
            head.contains("Content-Security-Policy: default-src 'self'"),
            "{head}"
        );
        assert!(head.contains("X-Frame-Options: DENY"), "{head}");
        assert!(
            !String::from_utf8_lossy(&r).contains("s3cret"),
            "a page holds the token"
        );
    }
    // What the pages call is the API, token and all.
    let denied = head_of(&raw(http, &get("/connz", "")));
    assert!(denied.starts_with("HTTP/1.1 401"), "{denied}");
    let allowed = head_of(&raw(http, &get("/connz", "token: s3cret\r\n")));
    assert!(allowed.starts_with("HTTP/1.1 200"), "{allowed}");
    // A page is not a way to send a body past the token.
    let body = head_of(&raw(
        http,
        "GET /console/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    ));
    assert!(body.starts_with("HTTP/1.1 400"), "{body}");
    let unknown = head_of(&raw(http, &get("/console/secret.txt", "")));
    assert!(
        unknown.starts_with("HTTP/1.1 401"),
        "an unknown path is the API's: {unknown}"
    );
}

#[test]
fn files_come_gzipped_when_asked_and_a_matching_etag_gets_304() {
    let server = start("console-gzip", |_| {});
    let http = server.http_addr();
    let plain = raw(http, &get("/vendor/wukongimjssdk.js", ""));
    let zipped = raw(
        http,
        &get("/vendor/wukongimjssdk.js", "Accept-Encoding: gzip, br\r\n"),
    );
    let (ph, zh) = (head_of(&plain), head_of(&zipped));
    assert!(
        !ph.contains("Content-Encoding") && zh.contains("Content-Encoding: gzip"),
        "{zh}"
    );
    assert!(
        zipped.len() * 2 < plain.len(),
        "gzip saved little: {} vs {}",
        zipped.len(),
        plain.len()
    );
    let etag = ph
        .lines()
        .find_map(|l| l.strip_prefix("ETag: "))
        .unwrap()
        .to_owned();
    let again = head_of(&raw(
        http,
        &get(
            "/vendor/wukongimjssdk.js",
            &format!("If-None-Match: {etag}\r\n"),
        ),
    ));
    assert!(again.starts_with("HTTP/1.1 304"), "{again}");
    let head_only = raw(
        http,
        "HEAD /console/app.js HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    );
    let hh = head_of(&head_only);
    assert!(
        hh.starts_with("HTTP/1.1 200") && head_only.len() == hh.len() + 4,
        "HEAD sent a body"
    );
}

#[test]
fn requests_pipelined_behind_a_page_are_all_answered() {
    let server = start("console-pipeline", |_| {});
    let mut s = TcpStream::connect(server.http_addr()).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    // Three requests in one write: two files, then an API call, the last one closing.
    s.write_all(
        b"GET /console/style.css HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n\
          GET /console/api.js HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n\
          GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out);
    assert_eq!(text.matches("HTTP/1.1 200").count(), 3, "{text}");
    let css = text.find("text/css").unwrap();
    let js = text.find("text/javascript").unwrap();
    assert!(css < js, "answers out of order");
}

#[test]
fn connz_lists_logged_in_connections_filtered_sorted_and_paged() {
    let server = start("connz", |_| {});
    let http = server.http_addr();
    let mut clients = Vec::new();
    for uid in ["ann", "bo", "bo", "cy"] {
        register(&server, uid, "t", 1, 0);
        let mut login = Login::new(uid, "t");
        let id = format!("dev-{}", clients.len());
        login.device_id = &id;
        clients.push(Client::ok(server.tcp_addr(), &login));
    }
    // Activity to sort by: ann sends twice, so ann has the most in_msgs.
    post(
        http,
        "/channel",
        json!({"channel_id": "g", "channel_type": 2, "subscribers": ["ann", "bo", "cy"]}),
    );
    for text in ["a", "b"] {
        clients[0].send("g", 2, text.as_bytes(), &format!("m-{text}"));
        assert_eq!(clients[0].sendack().reason_code, 1);
    }
    let (status, all) = http_json(http, "/connz?sort=in_msgs");
    assert_eq!(status, 200, "{all}");
    assert_eq!(all["total"], 4, "{all}");
    assert_eq!(
        all["connections"][0]["uid"], "ann",
        "the busiest first: {all}"
    );
    assert_eq!(all["connections"][0]["in_msgs"], 2);
    assert_eq!(all["connections"][0]["ip"], "127.0.0.1");
    let (_, bo) = http_json(http, "/connz?uid=bo");
    assert_eq!(bo["total"], 2, "{bo}");
    let (_, page) = http_json(http, "/connz?offset=1&limit=2&sort=id");
    assert_eq!(
        (
            page["total"].as_u64(),
            page["connections"].as_array().map(Vec::len)
        ),
        (Some(4), Some(2))
    );
    for bad in ["/connz?sort=bytes", "/connz?limit=x"] {
        let (status, body) = http_json(http, bad);
        assert_eq!(status, 400, "{bad}: {body}");
    }
}

#[test]
fn the_channel_page_reads_what_the_api_wrote() {
    let server = start("console-channel", |_| {});
    let http = server.http_addr();
    post(
        http,
        "/channel",
        json!({"channel_id": "team", "channel_type": 2, "subscribers": ["ann", "bo"]}),
    );
    post(
        http,
        "/channel/blacklist_add",
        json!({"channel_id": "team", "channel_type": 2, "uids": ["bo"]}),
    );
    let (status, v) = http_json(http, "/console/api/channel?channel_id=team&channel_type=2");
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (
            &v["exists"],
            &v["subscribers"],
            &v["denylist"],
            &v["allowlist"]
        ),
        (
            &json!(true),
            &json!(["ann", "bo"]),
            &json!(["bo"]),
            &json!([])
        ),
    );
    let (_, none) = http_json(
        http,
        "/console/api/channel?channel_id=nobody&channel_type=2",
    );
    assert_eq!(none["exists"], false);
    let (status, _) = http_json(http, "/console/api/channel?channel_id=team");
    assert_eq!(status, 400, "a channel type is required");
}

fn http_json(addr: SocketAddr, path: &str) -> (u16, Value) {
    http(addr, "GET", path, &Value::Null)
}

#[test]
fn connz_runs_one_at_a_time_per_server_not_per_process() {
    // Two servers in one process: each may walk its own loops while the other does.
    let servers = [start("connz-a", |_| {}), start("connz-b", |_| {})];
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.http_addr()).collect();
    let callers: Vec<_> = addrs
        .into_iter()
        .map(|addr| {
            std::thread::spawn(move || {
                (0..200)
                    .map(|_| http_json(addr, "/connz").0)
                    .filter(|&status| status != 200)
                    .count()
            })
        })
        .collect();
    for c in callers {
        assert_eq!(
            c.join().unwrap(),
            0,
            "a /connz was refused for another server's walk"
        );
    }
}
