//! Webhooks against a live local HTTP receiver (issue 5): bodies of `user.onlinestatus`,
//! `msg.notify` and `msg.offline`, and that a hanging endpoint does not slow delivery.

#![allow(clippy::unwrap_used)]

mod util;

use ruyi_proto::types::{channel_type, reason};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use util::*;

/// Reads one HTTP request: its request line and body; `None` at the end of the stream.
fn read_request(reader: &mut impl BufRead) -> Option<(String, Vec<u8>)> {
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return None;
    }
    let mut len = 0;
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).unwrap();
        if h == "\r\n" {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; len];
    reader.read_exact(&mut body).unwrap();
    Some((line, body))
}

/// A receiver that records `(event, body)` for every POST and answers 200, or, with
/// `hang`, accepts and never answers.
fn receiver(hang: bool) -> (SocketAddr, mpsc::Receiver<(String, Value)>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            if hang {
                held.push(stream); // never read, never answer
                continue;
            }
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut stream = stream;
                while let Some((line, body)) = read_request(&mut reader) {
                    let target = line.split_whitespace().nth(1).unwrap_or("").to_owned();
                    let event = target.split("event=").nth(1).unwrap_or("").to_owned();
                    let _ = tx.send((event, serde_json::from_slice(&body).unwrap()));
                    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
                }
            });
        }
    });
    (addr, rx)
}

fn next_event(rx: &mpsc::Receiver<(String, Value)>, name: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (event, body) = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect(name);
        if event == name {
            return body;
        }
    }
}

#[test]
fn webhooks_report_online_status_stored_and_offline_messages() {
    let (hook, events) = receiver(false);
    let server = start("webhook", |c| {
        c.webhook_url = Some(format!("http://{hook}/hook"))
    });
    register(&server, "amy", "t", 1, 0);
    let mut amy = Client::ok(server.tcp_addr(), &Login::new("amy", "t"));
    let online = next_event(&events, "user.onlinestatus");
    let entry = online[0].as_str().unwrap();
    assert!(
        entry.starts_with("amy-1-1-") && entry.ends_with("-1-1"),
        "{entry}"
    );

    amy.send("ben", channel_type::PERSON, br#"{"type":1}"#, "w1");
    let ack = amy.sendack();
    assert_eq!(ack.reason_code, reason::SUCCESS);
    // The two events travel on different threads: either may come first.
    let mut got = std::collections::HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.len() < 2 {
        let (event, body) = events
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("notify and offline");
        if event == "msg.notify" || event == "msg.offline" {
            got.insert(event, body);
        }
    }
    let notify = &got["msg.notify"];
    assert_eq!(notify[0]["client_msg_no"], "w1");
    assert_eq!(notify[0]["message_seq"], ack.message_seq);
    let offline = &got["msg.offline"];
    assert_eq!(offline["to_uids"], serde_json::json!(["ben"]));
    assert_eq!(
        (offline["channel_id"].as_str(), offline["from_uid"].as_str()),
        (Some("ben"), Some("amy"))
    );

    drop(amy);
    let gone = next_event(&events, "user.onlinestatus");
    let entry = gone[0].as_str().unwrap();
    assert!(
        entry.starts_with("amy-1-0-") && entry.ends_with("-0-0"),
        "{entry}"
    );
}

#[test]
fn a_hanging_webhook_never_slows_delivery() {
    let (hook, _events) = receiver(true);
    let server = start("webhookhang", |c| {
        c.webhook_url = Some(format!("http://{hook}/hook"))
    });
    register(&server, "cal", "t", 1, 0);
    register(&server, "dee", "t", 1, 0);
    let mut cal = Client::ok(server.tcp_addr(), &Login::new("cal", "t"));
    let mut dee = Client::ok(server.tcp_addr(), &Login::new("dee", "t"));
    // The endpoint now holds a request open for its 30 s timeout; deliveries go on.
    let started = Instant::now();
    for i in 0..200 {
        cal.send("dee", channel_type::PERSON, b"{}", &format!("h{i}"));
    }
    for _ in 0..200 {
        assert_eq!(cal.sendack().reason_code, reason::SUCCESS);
        let r = dee.recv();
        dee.recvack(&r);
    }
    // Far below the webhook timeouts (5 s connect, 30 s request): nothing waited for them.
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "delivery took {:?}",
        started.elapsed()
    );
}

#[test]
fn a_redirecting_endpoint_cannot_bounce_the_server_elsewhere() {
    // The "internal host" a hostile endpoint points the server at.
    let (internal, internal_rx) = receiver(false);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let hook = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let answer = format!(
                "HTTP/1.1 307 Temporary Redirect\r\nLocation: http://{internal}/steal\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            let _ = stream.write_all(answer.as_bytes());
        }
    });
    let server = start("hook-redirect", |c| {
        c.webhook_url = Some(format!("http://{hook}/hook"));
        c.token_auth = false;
    });
    let _c = Client::ok(server.tcp_addr(), &Login::new("u1", "x"));
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        internal_rx.try_recv().is_err(),
        "the server followed a webhook redirect"
    );
}

#[test]
fn an_https_endpoint_gets_events_over_tls() {
    // A self-signed endpoint on 127.0.0.1, trusted through webhook_ca_file.
    let (cert, key) = localhost_cert();
    let dir = temp_dir("https-hook");
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, cert.pem()).unwrap();
    let tls = std::sync::Arc::new(
        rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let (tls, tx) = (std::sync::Arc::clone(&tls), tx.clone());
            std::thread::spawn(move || {
                let conn = rustls::ServerConnection::new(tls).unwrap();
                let mut reader = BufReader::new(rustls::StreamOwned::new(conn, stream));
                let Some((line, _body)) = read_request(&mut reader) else {
                    return;
                };
                let _ = tx.send(line);
                let stream = reader.get_mut();
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                stream.conn.send_close_notify();
                let _ = stream.flush();
            });
        }
    });
    let server = start("hook-https", |c| {
        c.webhook_url = Some(format!("https://{addr}/hook"));
        c.webhook_ca_file = Some(ca.clone());
        c.token_auth = false;
    });
    let _c = Client::ok(server.tcp_addr(), &Login::new("tls-user", "x"));
    let line = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("no event reached the https endpoint");
    assert!(line.contains("event=user.onlinestatus"), "{line}");
}

#[test]
fn a_webhook_url_without_a_scheme_is_refused_at_start() {
    let mut config = ruyi::Config::for_test(temp_dir("hook-bad"));
    config.webhook_url = Some("ftp://example/hook".into());
    let err = ruyi::Server::start(config).expect_err("an ftp webhook started");
    assert!(err.to_string().contains("http:// or https://"), "{err}");
}

#[test]
fn a_no_persist_message_still_gets_msg_offline_but_no_msg_notify() {
    // HTTP_API.md §9.3 excludes only Agent channels and EVENT frames from msg.offline;
    // msg.notify is for stored messages (§9.4).
    let (hook, events) = receiver(false);
    let server = start("webhook-nopersist", |c| {
        c.webhook_url = Some(format!("http://{hook}/hook"))
    });
    register(&server, "amy", "t", 1, 0);
    let mut amy = Client::ok(server.tcp_addr(), &Login::new("amy", "t"));
    amy.send_with(
        1,
        "ben",
        channel_type::PERSON,
        b"{}",
        "np1",
        ruyi_proto::Flags(ruyi_proto::Flags::NO_PERSIST),
    );
    assert_eq!(amy.sendack().reason_code, reason::SUCCESS);
    amy.send("ben", channel_type::PERSON, b"{}", "stored1");
    assert_eq!(amy.sendack().reason_code, reason::SUCCESS);
    let (mut offline, mut notified) = (Vec::new(), Vec::new());
    let deadline = Instant::now() + Duration::from_secs(10);
    while offline.len() < 2 || notified.is_empty() {
        let (event, body) = events
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the offline events and the stored message's notify");
        match event.as_str() {
            "msg.offline" => offline.push(body["client_msg_no"].as_str().unwrap().to_owned()),
            "msg.notify" => notified.extend(
                body.as_array()
                    .unwrap()
                    .iter()
                    .map(|m| m["client_msg_no"].as_str().unwrap().to_owned()),
            ),
            _ => {}
        }
    }
    offline.sort();
    assert_eq!(offline, ["np1", "stored1"]);
    assert_eq!(
        notified,
        ["stored1"],
        "a NoPersist message was notified as stored"
    );
}
