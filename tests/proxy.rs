//! Clients behind a load balancer (issue 19): PROXY protocol v1 and v2 headers on the TCP
//! and WebSocket listeners, and `X-Forwarded-For` / `X-Real-Ip` on WebSocket upgrades,
//! honoured only from `proxy_from` sources. The address they name is what `/connz` shows
//! and what `max_connections_per_ip` counts; from any other source a PROXY header closes
//! the connection and a forwarded header changes nothing.

#![allow(clippy::unwrap_used)]

mod util;

use bytes::BytesMut;
use ruyi::server::Server;
use ruyi::ws::{self, client_frame};
use ruyi_proto::crypto::{public_key_b64, random_secret};
use ruyi_proto::{ConnectPacket, Packet, LATEST_VERSION};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use util::metrics::{closed_for, closed_reaching};
use util::*;

/// A PROXY v2 header (PROXY command, TCP over IPv4) naming `client`.
fn v2_header(client: SocketAddr, to: SocketAddr) -> Vec<u8> {
    let (SocketAddr::V4(c), SocketAddr::V4(t)) = (client, to) else {
        panic!("IPv4 only here")
    };
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&c.ip().octets());
    h.extend_from_slice(&t.ip().octets());
    h.extend_from_slice(&c.port().to_be_bytes());
    h.extend_from_slice(&t.port().to_be_bytes());
    h
}

fn v1_header(client: SocketAddr, to: SocketAddr) -> Vec<u8> {
    format!(
        "PROXY TCP4 {} {} {} {}\r\n",
        client.ip(),
        to.ip(),
        client.port(),
        to.port()
    )
    .into_bytes()
}

/// The (ip, port) of every connection `/connz` lists, sorted.
fn connz(http: SocketAddr) -> Vec<(String, u64)> {
    let (status, body) = util::http(http, "GET", "/connz", &Value::Null);
    assert_eq!(status, 200, "{body}");
    let mut rows: Vec<(String, u64)> = body["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["ip"].as_str().unwrap().to_owned(),
                c["port"].as_u64().unwrap(),
            )
        })
        .collect();
    rows.sort();
    rows
}

/// Connects from `source`, writes `header` in pieces of `piece` bytes (a pause between),
/// then logs in as `uid`.
fn login_behind(
    server: &Server,
    source: Ipv4Addr,
    header: &[u8],
    piece: usize,
    uid: &str,
) -> (Client, u8) {
    let mut s = connect_from(source, server.tcp_addr()).unwrap();
    s.set_nodelay(true).unwrap();
    for chunk in header.chunks(piece.max(1)) {
        s.write_all(chunk).unwrap();
        if piece < header.len() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    register(server, uid, "t", 1, 0);
    let (c, ack) = Client::login_over(s, &Login::new(uid, "t"));
    (c, ack.reason_code)
}

#[test]
fn a_trusted_balancer_names_the_client_in_v1_and_v2_even_split_across_writes() {
    let server = start("proxy-trusted", |c| {
        c.proxy_from = vec!["127.0.0.1/32".into()]
    });
    let tcp = server.tcp_addr();
    let one: SocketAddr = "203.0.113.7:5555".parse().unwrap();
    let two: SocketAddr = "198.51.100.9:6000".parse().unwrap();
    let lo = Ipv4Addr::LOCALHOST;
    let (mut a, code) = login_behind(&server, lo, &v1_header(one, tcp), 7, "ann");
    assert_eq!(code, 1);
    let (mut b, code) = login_behind(&server, lo, &v2_header(two, tcp), 5, "bo");
    assert_eq!(code, 1);
    // On the TCP port a trusted source must send one: were its range to carry clients'
    // own connections too (a NAT), they could not pass for the balancer.
    let s = TcpStream::connect(tcp).unwrap();
    register(&server, "cy", "t", 1, 0);
    s.set_nodelay(true).unwrap();
    let mut c = Client::from_stream(s);
    c.write(&connect_packet("cy"));
    assert!(c.closed_within(Duration::from_secs(5)));
    assert_eq!(closed_reaching(server.http_addr(), "proxy_header", 1), 1);
    assert_eq!(
        connz(server.http_addr()),
        vec![
            ("198.51.100.9".to_owned(), 6000),
            ("203.0.113.7".to_owned(), 5555),
        ]
    );
    // The header was taken off the stream whole: the protocol after it works.
    a.send("bo", 1, b"via the balancer", "m1");
    assert_eq!(a.sendack().reason_code, 1);
    assert_eq!(b.recv().payload.as_ref(), b"via the balancer");
}

fn connect_packet(uid: &str) -> Packet {
    Packet::Connect(ConnectPacket {
        version: LATEST_VERSION,
        device_flag: 1,
        device_id: "web".into(),
        uid: uid.into(),
        token: "t".into(),
        client_timestamp: 0,
        client_key: public_key_b64(random_secret().unwrap()),
    })
}

/// The port `/connz` shows for `uid`'s connection.
fn connz_port_of(server: &Server, uid: &str) -> u64 {
    let (_, body) = util::http(
        server.http_addr(),
        "GET",
        &format!("/connz?uid={uid}"),
        &Value::Null,
    );
    body["connections"][0]["port"].as_u64().unwrap()
}

#[test]
fn a_header_from_an_untrusted_source_or_a_broken_one_closes_the_connection() {
    let server = start("proxy-untrusted", |c| {
        c.proxy_from = vec!["127.0.0.2".into()]
    });
    let tcp = server.tcp_addr();
    let forged: SocketAddr = "203.0.113.7:5555".parse().unwrap();
    // Whole headers, and a signature alone: refused at once, not at the login deadline.
    let signature = b"PROXY ".to_vec();
    for header in [v1_header(forged, tcp), v2_header(forged, tcp), signature] {
        let mut s = connect_from(Ipv4Addr::LOCALHOST, tcp).unwrap();
        s.write_all(&header).unwrap();
        let mut c = Client::from_stream(s);
        assert!(
            c.closed_within(Duration::from_secs(5)),
            "an untrusted source's header was taken"
        );
    }
    // From the trusted source, a header that cannot be read closes it too.
    let mut s = connect_from(Ipv4Addr::new(127, 0, 0, 2), tcp).unwrap();
    s.write_all(b"PROXY TCP4 not-an-address 127.0.0.1 1 2\r\n")
        .unwrap();
    assert!(Client::from_stream(s).closed_within(Duration::from_secs(5)));
    // The engine closed all four for their header, before the protocol saw a byte.
    assert_eq!(closed_reaching(server.http_addr(), "proxy_header", 4), 4);
    // Without proxy_from at all, every header is refused; plain clients are served.
    let plain = start("proxy-none", |_| {});
    let mut s = TcpStream::connect(plain.tcp_addr()).unwrap();
    s.write_all(&v1_header(forged, plain.tcp_addr())).unwrap();
    assert!(Client::from_stream(s).closed_within(Duration::from_secs(5)));
    register(&plain, "dee", "t", 1, 0);
    let _dee = Client::ok(plain.tcp_addr(), &Login::new("dee", "t"));
    assert_eq!(
        connz(plain.http_addr()),
        vec![("127.0.0.1".to_owned(), connz_port_of(&plain, "dee"))]
    );
}

#[test]
fn the_per_ip_limit_counts_the_named_client_not_the_balancer() {
    let server = start("proxy-perip", |c| {
        c.proxy_from = vec!["127.0.0.1".into()];
        c.max_connections_per_ip = 2;
    });
    let tcp = server.tcp_addr();
    // Five clients behind one balancer address: each its own count.
    let mut kept = Vec::new();
    for i in 0..5u8 {
        let client = SocketAddr::from(([203, 0, 113, 10 + i], 4000));
        let (c, code) = login_behind(
            &server,
            Ipv4Addr::LOCALHOST,
            &v2_header(client, tcp),
            64,
            &format!("u{i}"),
        );
        assert_eq!(code, 1);
        kept.push(c);
    }
    // One client behind it twice is at its limit; a third time is closed.
    let same = SocketAddr::from(([198, 51, 100, 1], 4000));
    for uid in ["s1", "s2"] {
        let (c, code) = login_behind(&server, Ipv4Addr::LOCALHOST, &v1_header(same, tcp), 64, uid);
        assert_eq!(code, 1);
        kept.push(c);
    }
    let mut s = TcpStream::connect(tcp).unwrap();
    s.write_all(&v1_header(same, tcp)).unwrap();
    assert!(
        Client::from_stream(s).closed_within(Duration::from_secs(5)),
        "a client over its limit was served because a balancer relayed it"
    );
    assert_eq!(closed_reaching(server.http_addr(), "over_ip_limit", 1), 1);
    assert_eq!(connz(server.http_addr()).len(), 7);
    // Closing one gives its client's slot back. The slot goes with the connection's
    // entry in its loop, so once `/connz` no longer lists it the slot is free (a login
    // tried before that would be closed as over the limit, rightly).
    kept.pop();
    let deadline = Instant::now() + Duration::from_secs(5);
    while connz(server.http_addr()).len() != 6 {
        assert!(Instant::now() < deadline, "the closed connection stayed");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (_s3, code) = login_behind(
        &server,
        Ipv4Addr::LOCALHOST,
        &v1_header(same, tcp),
        64,
        "s3",
    );
    assert_eq!(code, 1, "a closed connection kept its slot");
}

/// Upgrades to WebSocket from `source` with `extra` headers (after an optional PROXY
/// header), logs in as `uid`, and returns the socket.
fn ws_login(server: &Server, source: Ipv4Addr, proxy: &[u8], extra: &[u8], uid: &str) -> TcpStream {
    register(server, uid, "t", 1, 0);
    let mut s = connect_from(source, server.ws_addr()).unwrap();
    s.write_all(proxy).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n")
        .unwrap();
    s.write_all(extra).unwrap();
    s.write_all(
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .unwrap();
    let mut b = BytesMut::new();
    Packet::Connect(ConnectPacket {
        version: LATEST_VERSION,
        device_flag: 1,
        device_id: "web".into(),
        uid: uid.into(),
        token: "t".into(),
        client_timestamp: 0,
        client_key: public_key_b64(random_secret().unwrap()),
    })
    .encode(LATEST_VERSION, &mut b)
    .unwrap();
    s.write_all(&client_frame(ws::OP_BINARY, true, &b, [1, 2, 3, 4]))
        .unwrap();
    // The 101, then the CONNACK's message: wait until the login shows in /connz.
    let deadline = Instant::now() + Duration::from_secs(5);
    while connz_ip_of(server, uid).is_none() {
        assert!(
            Instant::now() < deadline,
            "{uid} did not log in over WebSocket"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    s
}

fn connz_ip_of(server: &Server, uid: &str) -> Option<String> {
    let (_, body) = util::http(
        server.http_addr(),
        "GET",
        &format!("/connz?uid={uid}"),
        &Value::Null,
    );
    body["connections"][0]["ip"].as_str().map(str::to_owned)
}

#[test]
fn websocket_upgrades_take_forwarded_headers_and_proxy_headers_only_from_trusted_sources() {
    let server = start("proxy-ws", |c| c.proxy_from = vec!["127.0.0.1".into()]);
    let lo = Ipv4Addr::LOCALHOST;
    let other = Ipv4Addr::new(127, 0, 0, 3);
    // nginx-style: the rightmost address that is not a trusted proxy is the client, so a
    // forged first entry does not count.
    let _a = ws_login(
        &server,
        lo,
        b"",
        b"X-Forwarded-For: 1.1.1.1, 203.0.113.20\r\n",
        "wa",
    );
    assert_eq!(connz_ip_of(&server, "wa").as_deref(), Some("203.0.113.20"));
    // Only the header the operator named (X-Forwarded-For by default) is read: the proxy
    // passes the others through as the client wrote them, and a list that is not text
    // names nobody rather than let another header stand in.
    let _b = ws_login(&server, lo, b"", b"X-Real-Ip: 6.6.6.6\r\n", "wb");
    assert_eq!(connz_ip_of(&server, "wb").as_deref(), Some("127.0.0.1"));
    let forged = b"X-Forwarded-For: \xff, 203.0.113.40\r\nX-Real-Ip: 6.6.6.6\r\n";
    let _b2 = ws_login(&server, lo, b"", forged, "wb2");
    assert_eq!(connz_ip_of(&server, "wb2").as_deref(), Some("127.0.0.1"));
    // A PROXY header on the WebSocket port.
    let header = v1_header("198.51.100.30:7000".parse().unwrap(), server.ws_addr());
    let _c = ws_login(&server, lo, &header, b"", "wc");
    assert_eq!(connz_ip_of(&server, "wc").as_deref(), Some("198.51.100.30"));
    // From an untrusted source a forwarded header changes nothing...
    let _d = ws_login(
        &server,
        other,
        b"",
        b"X-Forwarded-For: 203.0.113.22\r\nX-Real-Ip: 203.0.113.22\r\n",
        "wd",
    );
    assert_eq!(connz_ip_of(&server, "wd").as_deref(), Some("127.0.0.3"));
    // ...and a PROXY header closes the connection.
    let mut s = connect_from(other, server.ws_addr()).unwrap();
    s.write_all(&header).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 64];
    assert!(
        matches!(s.read(&mut buf), Ok(0) | Err(_)),
        "an untrusted PROXY header on the WebSocket port was taken"
    );
}

#[test]
fn x_real_ip_is_read_when_named_the_last_one_and_a_move_to_the_same_client_costs_no_slot() {
    let server = start("proxy-real-ip", |c| {
        c.proxy_from = vec!["127.0.0.1".into()];
        c.proxy_client_header = "X-Real-IP".into();
        c.max_connections_per_ip = 2;
    });
    let lo = Ipv4Addr::LOCALHOST;
    // A proxy that appends its X-Real-Ip after the client's: the last one is its.
    let two = b"X-Real-Ip: 6.6.6.6\r\nX-Real-Ip: 203.0.113.41\r\nX-Forwarded-For: 6.6.6.7\r\n";
    let _a = ws_login(&server, lo, b"", two, "ra");
    assert_eq!(connz_ip_of(&server, "ra").as_deref(), Some("203.0.113.41"));
    // A chain (an L4 balancer's PROXY header, then the HTTP proxy's header) naming the
    // same client twice counts it once: its second connection still fits a limit of two.
    let client: SocketAddr = "203.0.113.41:9000".parse().unwrap();
    let header = v1_header(client, server.ws_addr());
    let _b = ws_login(&server, lo, &header, b"X-Real-Ip: 203.0.113.41\r\n", "rb");
    assert_eq!(connz_ip_of(&server, "rb").as_deref(), Some("203.0.113.41"));
    assert_eq!(closed_for(server.http_addr(), "over_ip_limit"), 0);
}
