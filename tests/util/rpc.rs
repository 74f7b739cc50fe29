//! A JSON-RPC client over WebSocket for the tests (`tests/jsonrpc.rs`), as the EasySDK
//! speaks: one JSON text per message.

use super::*;
use ruyi::server::Server;
use ruyi::ws::{self, client_frame};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A JSON-RPC client over WebSocket, as the EasySDK speaks it: one JSON text per message.
pub struct RpcClient {
    pub s: TcpStream,
    pub buf: Vec<u8>,
}

impl RpcClient {
    pub fn open(server: &Server) -> RpcClient {
        Self::open_at(server.ws_addr())
    }

    /// [`RpcClient::open`] on the WebSocket port at `addr` (a TLS relay's, say).
    pub fn open_at(addr: std::net::SocketAddr) -> RpcClient {
        let mut s = TcpStream::connect(addr).unwrap();
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

    pub fn write(&mut self, v: &Value) {
        self.write_text(&v.to_string());
    }

    pub fn write_text(&mut self, text: &str) {
        let frame = client_frame(ws::OP_TEXT, true, text.as_bytes(), [9, 8, 7, 6]);
        self.s.write_all(&frame).unwrap();
    }

    /// The next server message: (opcode, payload), or None once the connection ends.
    pub fn message(&mut self) -> Option<(u8, Vec<u8>)> {
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
    pub fn next(&mut self) -> Value {
        let (op, payload) = self.message().expect("a message");
        assert_eq!(op, ws::OP_TEXT, "JSON-RPC goes in text messages");
        serde_json::from_slice(&payload).unwrap()
    }

    pub fn login(server: &Server, uid: &str) -> RpcClient {
        Self::login_at(server, server.ws_addr(), uid)
    }

    /// [`RpcClient::login`] through the WebSocket port at `addr`.
    pub fn login_at(server: &Server, addr: std::net::SocketAddr, uid: &str) -> RpcClient {
        register(server, uid, "t", 2, 1); // A master device: a new login replaces it.
        let mut c = RpcClient::open_at(addr);
        c.write(&json!({"id": "c1", "method": "connect", "params": {
            "uid": uid, "token": "t", "deviceId": "py", "deviceFlag": 2,
            "clientTimestamp": 1_700_000_000_000_i64}}));
        let answer = c.next();
        assert_eq!(answer["id"], "c1", "{answer}");
        assert_eq!(answer["result"]["reasonCode"], 1, "{answer}");
        assert!(answer.get("error").is_none());
        c
    }

    pub fn send(&mut self, id: &str, to: &str, channel_type: u8, payload: Value) -> Value {
        self.write(&json!({"id": id, "method": "send", "params": {
            "channelId": to, "channelType": channel_type, "clientMsgNo": id,
            "payload": payload, "header": {"redDot": true}}}));
        let answer = self.next();
        assert_eq!(answer["id"], id, "{answer}");
        answer["result"].clone()
    }
}
