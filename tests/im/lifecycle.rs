//! A connection's life outside chat: PING and the idle limit, the login deadline, bad
//! HTTP input, and a server's stop.

use super::*;

#[test]
fn http_bad_input_gets_a_json_400() {
    let server = start("httpbad", |_| {});
    let (status, body) = post(
        server.http_addr(),
        "/user/token",
        json!({"uid": "a@b", "token": "t"}),
    );
    assert_eq!((status, body["status"].as_u64()), (400, Some(400)));
    let (status, _) = http(
        server.http_addr(),
        "POST",
        "/user/token",
        &json!("not an object"),
    );
    assert_eq!(status, 400);
    let (status, _) = post(server.http_addr(), "/no/such/route", json!({}));
    assert_eq!(status, 404);
    let (status, body) = http(server.http_addr(), "GET", "/health", &json!(null));
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
}

#[test]
fn ping_gets_a_one_byte_pong_and_silence_gets_closed() {
    let server = start("idle", |c| c.idle_timeout = Duration::from_millis(600));
    register(&server, "pat", "t", 1, 0);
    register(&server, "quinn", "t", 1, 0);
    let mut chatty = Client::ok(server.tcp_addr(), &Login::new("pat", "t"));
    let mut silent = Client::ok(server.tcp_addr(), &Login::new("quinn", "t"));
    for _ in 0..6 {
        use std::io::Write;
        chatty.stream.write_all(&[0x70]).unwrap();
        let mut pong = [0u8; 2];
        use std::io::Read;
        chatty
            .stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        chatty.stream.read_exact(&mut pong[..1]).unwrap();
        assert_eq!(pong[0], 0x80, "PONG is the single byte 0x80");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        silent.closed_within(Duration::from_secs(3)),
        "idle connection closed"
    );
    chatty.send("quinn", PERSON, b"{}", "alive");
    assert_eq!(
        chatty.sendack().reason_code,
        reason::SUCCESS,
        "the pinging one is still served"
    );
}

#[test]
fn a_connection_that_never_sends_connect_is_closed() {
    let server = start("noconnect", |c| {
        c.connect_timeout = Duration::from_millis(300)
    });
    let s = std::net::TcpStream::connect(server.tcp_addr()).unwrap();
    let mut c = Client::from_stream(s);
    assert!(c.closed_within(Duration::from_secs(3)));
}

#[test]
fn trickling_bytes_does_not_extend_the_login_deadline() {
    let server = start("trickle", |c| {
        c.connect_timeout = Duration::from_millis(500)
    });
    let mut s = std::net::TcpStream::connect(server.tcp_addr()).unwrap();
    use std::io::Write;
    // A CONNECT header announcing 127 bytes, then one byte every 100 ms: each read would
    // reset an idle timer, but the login deadline counts from accept.
    s.write_all(&[0x10, 0x7F]).unwrap();
    let started = std::time::Instant::now();
    let mut closed = false;
    while started.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(100));
        if s.write_all(&[0x00]).is_err() {
            closed = true;
            break;
        }
    }
    let mut c = Client::from_stream(s);
    assert!(
        closed || c.closed_within(Duration::from_millis(500)),
        "closed at the login deadline"
    );
}

#[test]
fn stop_returns_and_ends_the_pools() {
    let server = start("stop", |_| {});
    register(&server, "sam", "t", 1, 0);
    let mut sam = Client::ok(server.tcp_addr(), &Login::new("sam", "t"));
    sam.send("tom", PERSON, b"{}", "s1");
    assert_eq!(sam.sendack().reason_code, reason::SUCCESS);
    let (done_tx, done) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        server.stop();
        let _ = done_tx.send(());
    });
    done.recv_timeout(Duration::from_secs(15))
        .expect("Server::stop returned");
    assert!(sam.closed_within(Duration::from_secs(2)));
}

#[test]
fn conflicting_content_lengths_are_refused() {
    let server = start("cl", |_| {});
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(server.http_addr()).unwrap();
    s.write_all(b"POST /health HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 5\r\n\r\n{}")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
}
