//! The JSON-RPC dialect (issue 19, PROTOCOL.md §10.4, EASYSDK.md) over real WebSocket
//! connections: login, person and group chat with binary-protocol users in the same
//! conversations, RECVACK, ping, refusals, kicks and protocol errors. The official Python
//! EasySDK runs against the server in `easysdk.rs`.

#![allow(clippy::unwrap_used)]

mod util;

use ruyi::server::Server;
use ruyi::ws::{self, client_frame};
use ruyi_proto::types::{channel_type, reason};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use util::*;

/// A JSON-RPC client over WebSocket, as the EasySDK speaks it: one JSON text per message.
struct RpcClient {
    s: TcpStream,
    buf: Vec<u8>,
}

impl RpcClient {
    fn open(server: &Server) -> RpcClient {
        let mut s = TcpStream::connect(server.ws_addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 101"));
        RpcClient { s, buf: Vec::new() }
    }

    fn write(&mut self, v: &Value) {
        self.write_text(&v.to_string());
    }

    fn write_text(&mut self, text: &str) {
        let frame = client_frame(ws::OP_TEXT, true, text.as_bytes(), [9, 8, 7, 6]);
        self.s.write_all(&frame).unwrap();
    }

    /// The next server message: (opcode, payload), or None once the connection ends.
    fn message(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if self.buf.len() >= 2 {
                let (len, at) = match self.buf[1] & 0x7F {
                    126 if self.buf.len() >= 4 => (
                        usize::from(u16::from_be_bytes([self.buf[2], self.buf[3]])),
                        4,
                    ),
                    127 if self.buf.len() >= 10 => (
                        usize::try_from(u64::from_be_bytes(self.buf[2..10].try_into().unwrap()))
                            .unwrap(),
                        10,
                    ),
                    n if n < 126 => (usize::from(n), 2),
                    _ => (usize::MAX, 0),
                };
                if len != usize::MAX && self.buf.len() >= at + len {
                    let op = self.buf[0] & 0x0F;
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

    /// The next JSON text the server sent (asserting it is a text message).
    fn next(&mut self) -> Value {
        let (op, payload) = self.message().expect("a message");
        assert_eq!(op, ws::OP_TEXT, "JSON-RPC goes in text messages");
        serde_json::from_slice(&payload).unwrap()
    }

    fn login(server: &Server, uid: &str) -> RpcClient {
        register(server, uid, "t", 2, 1); // A master device: a new login replaces it.
        let mut c = RpcClient::open(server);
        c.write(&json!({"id": "c1", "method": "connect", "params": {
            "uid": uid, "token": "t", "deviceId": "py", "deviceFlag": 2,
            "clientTimestamp": 1_700_000_000_000_i64}}));
        let answer = c.next();
        assert_eq!(answer["id"], "c1", "{answer}");
        assert_eq!(answer["result"]["reasonCode"], 1, "{answer}");
        assert!(answer.get("error").is_none());
        c
    }

    fn send(&mut self, id: &str, to: &str, channel_type: u8, payload: Value) -> Value {
        self.write(&json!({"id": id, "method": "send", "params": {
            "channelId": to, "channelType": channel_type, "clientMsgNo": id,
            "payload": payload, "header": {"redDot": true}}}));
        let answer = self.next();
        assert_eq!(answer["id"], id, "{answer}");
        answer["result"].clone()
    }
}

#[test]
fn a_json_rpc_user_chats_with_a_binary_user_both_ways_and_in_a_group() {
    let server = start("jsonrpc-chat", |_| {});
    let mut ann = RpcClient::login(&server, "ann");
    register(&server, "bo", "t", 1, 0);
    let mut bo = Client::ok(server.tcp_addr(), &Login::new("bo", "t"));
    // JSON-RPC → binary: an object payload arrives as the JSON text the client wrote.
    ann.write_text(r#"{"id":"s1","method":"send","params":{"channelId":"bo","channelType":1,"clientMsgNo":"s1","payload":{"type":1,"content":"hi"}}}"#);
    let answer = ann.next();
    assert_eq!(answer["id"], "s1", "{answer}");
    let ack = &answer["result"];
    assert_eq!(ack["reasonCode"], 1, "{ack}");
    assert_eq!(ack["messageSeq"], 1);
    let id: i64 = ack["messageId"].as_str().unwrap().parse().unwrap();
    let r = bo.recv();
    assert_eq!(&r.payload[..], br#"{"type":1,"content":"hi"}"#);
    assert_eq!((r.message_id, r.from_uid.as_str()), (id, "ann"));
    bo.recvack(&r);
    // Binary → JSON-RPC: JSON bytes arrive as a JSON value, other bytes as base64.
    bo.send(
        "ann",
        channel_type::PERSON,
        br#"{"type":1,"content":"yo"}"#,
        "b1",
    );
    assert_eq!(bo.sendack().reason_code, 1);
    bo.send("ann", channel_type::PERSON, b"\x00raw", "b2");
    assert_eq!(bo.sendack().reason_code, 1);
    let first = ann.next();
    assert_eq!(first["method"], "recv", "{first}");
    let p = &first["params"];
    assert_eq!(p["payload"], json!({"type": 1, "content": "yo"}));
    assert_eq!(
        (p["fromUid"].as_str(), p["channelId"].as_str()),
        (Some("bo"), Some("bo"))
    );
    assert_eq!(p["header"]["redDot"], true, "{first}");
    let second = ann.next();
    assert_eq!(second["params"]["payload"], "AHJhdw==", "{second}");
    for r in [&first, &second] {
        ann.write(&json!({"method": "recvack", "params": {
            "messageId": r["params"]["messageId"], "messageSeq": r["params"]["messageSeq"],
            "header": r["params"]["header"]}}));
    }
    // A base64 string payload is the bytes it encodes.
    let ack = ann.send("s2", "bo", channel_type::PERSON, json!("aGVsbG8="));
    assert_eq!(ack["reasonCode"], 1);
    assert_eq!(&bo.recv().payload[..], b"hello");
    // A group with both dialects.
    post(
        server.http_addr(),
        "/channel",
        json!({"channel_id": "g", "channel_type": 2, "subscribers": ["ann", "bo"]}),
    );
    let ack = ann.send("s3", "g", channel_type::GROUP, json!({"n": 3}));
    assert_eq!(
        (ack["reasonCode"].as_i64(), ack["messageSeq"].as_i64()),
        (Some(1), Some(1))
    );
    let r = bo.recv();
    assert_eq!(
        (r.channel_id.as_str(), &r.payload[..]),
        ("g", br#"{"n":3}"#.as_slice())
    );
    // Ping: a result of null, as the EasySDK requires.
    ann.write(&json!({"id": "p1", "method": "ping", "params": {}}));
    assert_eq!(ann.next(), json!({"id": "p1", "result": null}));
    // Acknowledged RECVs left the queue: a new login gets nothing again.
    drop(ann);
    let mut again = RpcClient::login(&server, "ann");
    again.write(&json!({"id": "p2", "method": "ping"}));
    assert_eq!(again.next()["id"], "p2", "a RECV acknowledged came again");
}

#[test]
fn refusals_are_answered_and_protocol_errors_close_with_1008() {
    let server = start("jsonrpc-refusals", |_| {});
    register(&server, "ann", "t", 2, 0);
    // A wrong token: an error whose code is the reason code, then the close.
    let mut c = RpcClient::open(&server);
    c.write(&json!({"id": "c1", "method": "connect", "params": {"uid": "ann", "token": "bad"}}));
    let answer = c.next();
    assert_eq!(
        answer["error"]["code"],
        i64::from(reason::AUTH_FAIL),
        "{answer}"
    );
    assert!(answer.get("result").is_none());
    // Anything but connect first: closed, nothing answered.
    let mut c = RpcClient::open(&server);
    c.write(&json!({"id": "x", "method": "ping"}));
    assert_eq!(c.message().map(|m| m.0), Some(ws::OP_CLOSE));
    // Logged in: unknown methods and bad params get errors and the session goes on.
    let mut c = RpcClient::login(&server, "ann");
    c.write(&json!({"id": "u1", "method": "subscribe", "params": {}}));
    assert_eq!(c.next()["error"]["code"], -32601);
    c.write(&json!({"id": "u2", "method": "send", "params": {"channelId": "bo"}}));
    assert_eq!(c.next()["error"]["code"], -32602);
    c.write(&json!({"id": "u3", "method": "ping"}));
    assert_eq!(c.next()["id"], "u3");
    // Text that is not JSON: a parse error, then a close with 1008.
    c.s.write_all(&client_frame(ws::OP_TEXT, true, b"}{", [1, 2, 3, 4]))
        .unwrap();
    assert_eq!(c.next()["error"]["code"], -32700);
    let (op, payload) = c.message().expect("a close frame");
    assert_eq!(
        (op, &payload[..2]),
        (ws::OP_CLOSE, &1008u16.to_be_bytes()[..])
    );
}

#[test]
fn a_login_elsewhere_kicks_a_json_rpc_session_with_a_disconnect_notification() {
    let server = start("jsonrpc-kick", |_| {});
    let mut first = RpcClient::login(&server, "ann");
    let _second = RpcClient::login(&server, "ann");
    let notice = first.next();
    assert_eq!(notice["method"], "disconnect", "{notice}");
    assert_eq!(
        notice["params"]["reasonCode"],
        i64::from(reason::CONNECT_KICK)
    );
}
