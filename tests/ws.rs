//! The binary protocol over WebSocket (issue 5): the upgrade, masked and fragmented client
//! frames, control frames, limits, and one protocol packet per server message.

#![allow(clippy::unwrap_used)]

mod util;

use bytes::BytesMut;
use ruyi::ws::{self, client_frame};
use ruyi_proto::crypto::{public_key_b64, random_secret};
use ruyi_proto::types::{channel_type, reason};
use ruyi_proto::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;
use util::*;

/// A minimal WebSocket client speaking the protocol, as a browser SDK would.
struct WsClient {
    s: TcpStream,
    buf: Vec<u8>,
    cipher: Option<SessionCipher>,
}

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

impl WsClient {
    fn open(addr: SocketAddr) -> WsClient {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
        WsClient {
            s,
            buf: Vec::new(),
            cipher: None,
        }
    }

    fn send_packet(&mut self, p: &Packet, version: u8) {
        let mut b = BytesMut::new();
        p.encode(version, &mut b).unwrap();
        self.s
            .write_all(&client_frame(ws::OP_BINARY, true, &b, MASK))
            .unwrap();
    }

    /// Reads one server message; returns (opcode, payload).
    fn message(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if self.buf.len() >= 2 {
                let op = self.buf[0] & 0x0F;
                assert_eq!(self.buf[1] & 0x80, 0, "server frames are not masked");
                let (len, at) = match self.buf[1] & 0x7F {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    127 if self.buf.len() >= 10 => (
                        u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize,
                        10,
                    ),
                    n if n < 126 => (n as usize, 2),
                    _ => (usize::MAX, 0),
                };
                if len != usize::MAX && self.buf.len() >= at + len {
                    let payload = self.buf[at..at + len].to_vec();
                    self.buf.drain(..at + len);
                    return Some((op, payload));
                }
            }
            let mut chunk = [0u8; 65536];
            match self.s.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The next protocol packet, asserting its message holds exactly that one packet.
    fn packet(&mut self, version: u8) -> Packet {
        let (op, payload) = self.message().expect("a message");
        assert_eq!(op, ws::OP_BINARY);
        let (p, used) = decode_packet(&payload, version, MAX_BODY_BYTES)
            .unwrap()
            .expect("a whole packet");
        assert_eq!(
            used,
            payload.len(),
            "exactly one packet per WebSocket message"
        );
        p
    }

    fn login(&mut self, uid: &str, version: u8) {
        let secret = random_secret().unwrap();
        self.send_packet(
            &Packet::Connect(ConnectPacket {
                version,
                device_flag: 1,
                device_id: "web".into(),
                uid: uid.into(),
                token: "t".into(),
                client_timestamp: 0,
                client_key: public_key_b64(secret),
            }),
            version,
        );
        let Packet::Connack(ack) = self.packet(version) else {
            panic!("no CONNACK")
        };
        assert_eq!(ack.reason_code, reason::SUCCESS);
        self.cipher = Some(SessionCipher::derive(secret, &ack.server_key, &ack.salt).unwrap());
    }

    fn closed(&mut self) -> bool {
        loop {
            match self.message() {
                None => return true,
                Some((ws::OP_CLOSE, _)) => continue,
                Some(_) => continue,
            }
        }
    }
}

#[test]
fn a_websocket_client_chats_with_a_tcp_client_like_the_js_sdk() {
    let server = start("ws", |_| {});
    register(&server, "web", "t", 1, 0);
    register(&server, "app", "t", 1, 0);
    let mut web = WsClient::open(server.ws_addr());
    web.login("web", 2); // the JS SDK speaks version 2
    let mut app = Client::ok(server.tcp_addr(), &Login::new("app", "t"));

    // web → app, with the SEND split over two fragments of one message.
    let cipher = web.cipher.unwrap();
    let wire = cipher.encrypt_b64(br#"{"type":1,"content":"from the browser"}"#);
    let key = cipher.send_msg_key(1, "w1", "app", channel_type::PERSON, wire.as_bytes());
    let mut b = BytesMut::new();
    Packet::Send(SendPacket {
        flags: Flags(Flags::RED_DOT),
        client_seq: 1,
        client_msg_no: "w1".into(),
        channel_id: "app".into(),
        channel_type: channel_type::PERSON,
        msg_key: key,
        payload: bytes::Bytes::from(wire.into_bytes()),
        ..Default::default()
    })
    .encode(2, &mut b)
    .unwrap();
    let (first, second) = b.split_at(7);
    web.s
        .write_all(&client_frame(ws::OP_BINARY, false, first, MASK))
        .unwrap();
    web.s
        .write_all(&client_frame(ws::OP_CONTINUATION, true, second, MASK))
        .unwrap();
    let Packet::Sendack(ack) = web.packet(2) else {
        panic!("no SENDACK")
    };
    assert_eq!(ack.reason_code, reason::SUCCESS);
    let r = app.recv();
    assert_eq!(
        (r.channel_id.as_str(), &r.payload[..]),
        ("web", &br#"{"type":1,"content":"from the browser"}"#[..])
    );

    // app → web: several messages arrive, each in its own WebSocket message.
    for i in 0..3 {
        app.send(
            "web",
            channel_type::PERSON,
            format!("{{\"n\":{i}}}").as_bytes(),
            &format!("a{i}"),
        );
    }
    for i in 0..3 {
        let Packet::Recv(r) = web.packet(2) else {
            panic!("no RECV")
        };
        let plain = cipher.open_recv(&r).unwrap();
        assert_eq!(plain, format!("{{\"n\":{i}}}").as_bytes());
        assert_eq!(r.channel_id, "app");
    }

    // PING inside a binary message gets the bare one-byte PONG in its own message.
    web.s
        .write_all(&client_frame(ws::OP_BINARY, true, &PING, MASK))
        .unwrap();
    assert_eq!(web.message().unwrap(), (ws::OP_BINARY, PONG.to_vec()));
    // A WebSocket ping gets a WebSocket pong with the same payload.
    web.s
        .write_all(&client_frame(ws::OP_PING, true, b"hb", MASK))
        .unwrap();
    assert_eq!(web.message().unwrap(), (ws::OP_PONG, b"hb".to_vec()));
}

#[test]
fn websocket_protocol_violations_close_only_that_connection() {
    let server = start("wsbad", |_| {});
    register(&server, "ok", "t", 1, 0);
    let mut healthy = WsClient::open(server.ws_addr());
    healthy.login("ok", 5);

    // An unmasked client frame.
    let mut c = WsClient::open(server.ws_addr());
    c.s.write_all(&[0x82, 0x01, 0x70]).unwrap();
    assert_eq!(c.message().unwrap().0, ws::OP_CLOSE);
    assert!(c.closed());

    // A frame header claiming 1 GiB.
    let mut c = WsClient::open(server.ws_addr());
    let mut huge = vec![0x82u8, 0x80 | 127];
    huge.extend_from_slice(&(1u64 << 30).to_be_bytes());
    c.s.write_all(&huge).unwrap();
    let (op, payload) = c.message().unwrap();
    assert_eq!(
        (op, payload),
        (ws::OP_CLOSE, ws::close_code::TOO_BIG.to_be_bytes().to_vec())
    );
    assert!(c.closed());

    // Not an upgrade at all.
    let mut s = TcpStream::connect(server.ws_addr()).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");

    // A close frame is answered and the connection ends.
    let mut c = WsClient::open(server.ws_addr());
    c.s.write_all(&client_frame(
        ws::OP_CLOSE,
        true,
        &1000u16.to_be_bytes(),
        MASK,
    ))
    .unwrap();
    assert_eq!(c.message().unwrap().0, ws::OP_CLOSE);
    assert!(c.closed());

    healthy.send_packet(&Packet::Ping, 5);
    assert_eq!(healthy.message().unwrap(), (ws::OP_BINARY, PONG.to_vec()));
}

#[test]
fn a_graceful_stop_closes_clients_spread_over_the_drain_window_without_a_kick() {
    // Issue 15 item 9. A DISCONNECT would make the SDKs stop reconnecting (PROTOCOL.md
    // §5.8): TCP clients get a plain close, WebSocket clients a close frame 1001, spread
    // over the drain window; meanwhile /ready says 503 and new logins are turned away
    // without a CONNACK (which the SDKs would also take as final).
    let window = Duration::from_secs(1);
    let server = start("drain", |c| c.shutdown_drain = window);
    let (tcp, http) = (server.tcp_addr(), server.http_addr());
    let tcp_clients: Vec<Client> = (0..24)
        .map(|i| {
            let uid = format!("t{i}");
            register(&server, &uid, "t", 1, 0);
            Client::ok(tcp, &Login::new(&uid, "t"))
        })
        .collect();
    let ws_clients: Vec<WsClient> = (0..4)
        .map(|i| {
            let uid = format!("w{i}");
            register(&server, &uid, "t", 1, 0);
            let mut w = WsClient::open(server.ws_addr());
            w.login(&uid, 5);
            w
        })
        .collect();
    let began = std::time::Instant::now();
    let stopper = std::thread::spawn(move || server.stop());
    let mut watchers = Vec::new();
    for mut c in tcp_clients {
        watchers.push(std::thread::spawn(move || {
            while let Some(p) = c.read_packet(Duration::from_secs(5)) {
                assert!(
                    !matches!(p, Packet::Disconnect(_)),
                    "a DISCONNECT: the SDKs would never reconnect"
                );
            }
            (std::time::Instant::now(), None)
        }));
    }
    for mut w in ws_clients {
        watchers.push(std::thread::spawn(move || {
            let mut code = None;
            while let Some((op, payload)) = w.message() {
                if op == ws::OP_CLOSE && payload.len() >= 2 {
                    code = Some(u16::from_be_bytes([payload[0], payload[1]]));
                }
            }
            assert_eq!(
                code,
                Some(ws::close_code::GOING_AWAY),
                "no close frame 1001"
            );
            (std::time::Instant::now(), code)
        }));
    }
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(http_text(http, "/ready").0, 503, "ready while draining");
    assert!(
        Client::connect_is_dropped(tcp, "t0"),
        "a login was taken during the drain"
    );
    let mut closes = Vec::new();
    for w in watchers {
        let (at, code) = w.join().unwrap();
        if let Some(code) = code {
            assert_eq!(code, ws::close_code::GOING_AWAY);
        }
        closes.push(at.duration_since(began));
    }
    stopper.join().unwrap();
    closes.sort();
    let (first, last) = (closes[0], closes[closes.len() - 1]);
    assert!(
        last - first >= window / 2,
        "closes not spread: {first:?} .. {last:?}"
    );
    assert!(
        last < window + Duration::from_secs(3),
        "the drain overran: {last:?}"
    );
}
