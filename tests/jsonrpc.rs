//! The JSON-RPC dialect (issue 19, PROTOCOL.md §10.4, EASYSDK.md) over real WebSocket
//! connections: login, person and group chat with binary-protocol users in the same
//! conversations, RECVACK, ping, refusals, kicks and protocol errors. The official Python
//! EasySDK runs against the server in `easysdk.rs`.

#![allow(clippy::unwrap_used)]

mod util;

use ruyi::ws::{self, client_frame};
use ruyi_proto::types::{channel_type, reason};
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use util::rpc::RpcClient;
use util::*;

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

/// The close code of the close frame the server sends next (skipping other messages).
fn close_code(c: &mut RpcClient) -> Option<u16> {
    while let Some((op, payload)) = c.message() {
        if op == ws::OP_CLOSE {
            return payload.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]]));
        }
    }
    None
}

#[test]
fn request_ids_are_no_dedupe_key_and_strings_too_long_for_binary_clients_are_refused() {
    let server = start("jsonrpc-ids", |_| {});
    register(&server, "bo", "t", 1, 0);
    let mut bo = Client::ok(server.tcp_addr(), &Login::new("bo", "t"));
    // A hand-written client numbers its requests from 1 on every connection, without
    // clientMsgNo: each SEND is its own message.
    let mut ids = Vec::new();
    for n in 1..=2 {
        let mut ann = RpcClient::login(&server, "ann");
        ann.write_text(&format!(
            r#"{{"id":"1","method":"send","params":{{"channelId":"bo","channelType":1,"payload":{{"n":{n}}}}}}}"#
        ));
        let answer = ann.next();
        assert_eq!(answer["result"]["reasonCode"], 1, "{answer}");
        ids.push(answer["result"]["messageId"].clone());
        let r = bo.recv();
        assert_eq!(&r.payload[..], format!(r#"{{"n":{n}}}"#).as_bytes());
        bo.recvack(&r);
    }
    assert_ne!(ids[0], ids[1], "the second SEND was taken for the first");
    // What a binary client could not receive is refused, not stored.
    let mut ann = RpcClient::login(&server, "ann");
    let long = "x".repeat(40_000);
    ann.write(&json!({"id": "l", "method": "send", "params": {
        "channelId": "bo", "channelType": 1, "clientMsgNo": long, "payload": {"n": 3}}}));
    assert_eq!(ann.next()["error"]["code"], -32602);
    // An id too long to keep is not echoed: the request goes unanswered.
    ann.write(&json!({"id": "x".repeat(300), "method": "ping"}));
    ann.write(&json!({"id": "ok", "method": "ping"}));
    assert_eq!(ann.next()["id"], "ok");
    assert!(
        bo.quiet_for(Duration::from_millis(300)),
        "a refused SEND was delivered"
    );
}

#[test]
fn recv_payloads_are_the_stored_json_text_byte_for_byte() {
    let server = start("jsonrpc-raw", |_| {});
    let mut ann = RpcClient::login(&server, "ann");
    register(&server, "bo", "t", 1, 0);
    let mut bo = Client::ok(server.tcp_addr(), &Login::new("bo", "t"));
    let exact = br#"{"b":1,"a":123456789012345678901234567890}"#;
    bo.send("ann", channel_type::PERSON, exact, "r1");
    assert_eq!(bo.sendack().reason_code, 1);
    // A JSON string would read as base64 to the EasySDK: it goes as base64 of its bytes.
    bo.send("ann", channel_type::PERSON, br#""aGk=""#, "r2");
    assert_eq!(bo.sendack().reason_code, 1);
    let (_, first) = ann.message().unwrap();
    let first = String::from_utf8(first).unwrap();
    assert!(
        first.contains(r#""payload":{"b":1,"a":123456789012345678901234567890}"#),
        "{first}"
    );
    let second = ann.next();
    assert_eq!(second["params"]["payload"], "ImFHaz0i", "{second}");
}

#[test]
fn a_drain_closes_json_rpc_clients_with_1001_which_they_retry_not_1008() {
    let server = start("jsonrpc-drain", |c| {
        c.shutdown_drain = Duration::from_secs(3)
    });
    let addr = server.ws_addr();
    let _first = RpcClient::login(&server, "ann");
    register(&server, "bo", "t", 2, 1);
    let stopper = std::thread::spawn(move || server.stop());
    std::thread::sleep(Duration::from_millis(300));
    // A client that comes back during the drain is turned away, to come back later.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").unwrap();
    let mut late = RpcClient { s, buf: Vec::new() };
    late.write(&json!({"id": "c", "method": "connect", "params": {"uid": "bo", "token": "t"}}));
    // The 101 comes first; then the close.
    let code = close_code_after_upgrade(&mut late);
    assert_eq!(
        code,
        Some(ws::close_code::GOING_AWAY),
        "a retryable close must not be 1008"
    );
    stopper.join().unwrap();
}

fn close_code_after_upgrade(c: &mut RpcClient) -> Option<u16> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        c.s.read_exact(&mut byte).ok()?;
        head.push(byte[0]);
    }
    close_code(c)
}

#[test]
fn with_json_rpc_off_a_json_client_is_closed_like_any_non_connect() {
    let server = start("jsonrpc-off", |c| c.jsonrpc = false);
    register(&server, "ann", "t", 2, 1);
    let mut c = RpcClient::open(&server);
    c.write(&json!({"id": "c", "method": "connect", "params": {"uid": "ann", "token": "t"}}));
    assert!(
        !matches!(c.message(), Some((ws::OP_TEXT, _))),
        "a JSON-RPC answer with JSON-RPC off"
    );
}
