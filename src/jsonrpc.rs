//! The JSON-RPC dialect of the client protocol (PROTOCOL.md §10.4, EASYSDK.md): what the
//! WuKongIM "EasySDK" clients send over a WebSocket instead of binary frames. Sans-io: this
//! module turns a byte stream into [`Request`]s carrying the binary protocol's own packets,
//! and packets back into JSON text; `gateway/jsonrpc.rs` runs them through the one session
//! model every client shares.
//!
//! Choices where the spec leaves one (written down in PROTOCOL.md §10.4's terms):
//! - A `payload` string is base64 of the bytes; an object, array or other JSON value is
//!   those bytes as JSON text. A `recv` payload is written as a JSON value when the stored
//!   bytes parse as JSON, else as a base64 string (`Config::jsonrpc_base64_payloads`
//!   writes base64 always, as WuKongIM v2 and v3 do).
//! - A refused `connect` is an `error` object whose `code` is the reason code; a refused
//!   `send` is a `result` with its `reasonCode`, as the EasySDK expects.
//! - `recv` always carries `header` (`{}` when no flag is set): the EasySDK requires it.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::Bytes;
use ruyi_proto::{
    ConnackPacket, ConnectPacket, Flags, RecvHead, SendPacket, SendackPacket, Setting,
    LATEST_VERSION,
};
use serde_json::{json, Map, Value};

/// A JSON-RPC error code for a request that is not valid JSON-RPC.
pub const INVALID_REQUEST: i64 = -32600;
/// ... for a method this server does not have.
pub const METHOD_NOT_FOUND: i64 = -32601;
/// ... for parameters that do not fit the method.
pub const INVALID_PARAMS: i64 = -32602;

/// One message from a JSON-RPC client.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// `connect`: the login, as a binary CONNECT (no client key: JSON-RPC is unencrypted).
    Connect { id: String, connect: ConnectPacket },
    /// `send`: as a binary SEND; the caller sets `client_seq` to find `id` again.
    Send { id: String, send: SendPacket },
    /// `recvack`.
    Recvack { message_id: i64 },
    /// `ping` (a request with `id`, or a notification without).
    Ping { id: Option<String> },
    /// A request this server cannot serve: answered with this error when it has an id.
    Refused {
        id: Option<String>,
        code: i64,
        message: String,
    },
}

/// What the start of a client's byte stream holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Not a whole JSON value yet.
    Partial,
    /// One message, taking `used` bytes of the stream (whitespace around it included).
    Message { request: Request, used: usize },
    /// Not JSON: the connection cannot go on.
    Broken(String),
}

/// Finds where the first JSON object (or array) of a stream ends, keeping its place
/// between reads: bytes that trickle in are each looked at once, and the parser runs once
/// per whole value (parsing the buffer again on every read would make a value sent a byte
/// at a time cost its length squared).
#[derive(Debug, Default, Clone)]
pub struct Scanner {
    at: usize,
    depth: u32,
    in_string: bool,
    escaped: bool,
}

/// What [`Scanner::scan`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Scan {
    /// No whole value yet; `blank` when everything so far is whitespace between values.
    Partial { blank: bool },
    /// The first value ends before this offset.
    End(usize),
    /// Not an object or array, or nested past the parser's limit.
    Broken,
}

/// Nesting the parser accepts (serde_json's recursion limit).
const MAX_DEPTH: u32 = 128;

impl Scanner {
    /// Scans `input` (the same stream as the last call, grown, or the rest after the last
    /// value found) from where the last call stopped.
    pub fn scan(&mut self, input: &[u8]) -> Scan {
        while let Some(&b) = input.get(self.at) {
            self.at += 1;
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_string = false;
                }
                continue;
            }
            match b {
                b'"' if self.depth > 0 => self.in_string = true,
                b'{' | b'[' => {
                    self.depth += 1;
                    if self.depth > MAX_DEPTH {
                        return Scan::Broken;
                    }
                }
                b'}' | b']' if self.depth > 0 => {
                    self.depth -= 1;
                    if self.depth == 0 {
                        let end = self.at;
                        *self = Scanner::default();
                        return Scan::End(end);
                    }
                }
                b if self.depth == 0 && !b.is_ascii_whitespace() => return Scan::Broken,
                _ => {}
            }
        }
        Scan::Partial {
            blank: self.depth == 0,
        }
    }
}

/// Reads the next JSON value off `input` (one per WebSocket message, or several back to
/// back: both are accepted). Give it what a [`Scanner`] found whole.
pub fn next(input: &[u8]) -> Next {
    let mut values = serde_json::Deserializer::from_slice(input).into_iter::<Value>();
    match values.next() {
        None => Next::Partial,
        Some(Err(e)) if e.is_eof() => Next::Partial,
        Some(Err(e)) => Next::Broken(format!("not JSON: {e}")),
        Some(Ok(value)) => {
            let mut used = values.byte_offset();
            while input.get(used).is_some_and(u8::is_ascii_whitespace) {
                used += 1;
            }
            Next::Message {
                request: request(value, &input[..used]),
                used,
            }
        }
    }
}

/// True when a stream that starts with `first` (its first byte that is not whitespace)
/// speaks JSON-RPC: a binary client's first frame is a CONNECT, whose first byte is 0x10.
pub fn starts(first: u8) -> bool {
    first == b'{'
}

/// The `send` payload exactly as the client wrote it, when it is not a string.
#[derive(serde::Deserialize)]
struct RawSend<'a> {
    #[serde(borrow)]
    params: RawParams<'a>,
}

#[derive(serde::Deserialize)]
struct RawParams<'a> {
    #[serde(borrow)]
    payload: Option<&'a serde_json::value::RawValue>,
}

fn request(value: Value, raw: &[u8]) -> Request {
    let Value::Object(mut obj) = value else {
        return refused(None, INVALID_REQUEST, "a request is a JSON object");
    };
    let id = match obj.remove("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(_) => return refused(None, INVALID_REQUEST, "id must be a string"),
    };
    if id.as_ref().is_some_and(|id| id.len() > MAX_ID_BYTES) {
        return refused(None, INVALID_REQUEST, "id is too long");
    }
    if obj
        .get("jsonrpc")
        .is_some_and(|v| v.as_str() != Some("2.0"))
    {
        return refused(id, INVALID_REQUEST, "jsonrpc must be \"2.0\"");
    }
    let Some(Value::String(method)) = obj.remove("method") else {
        return refused(id, INVALID_REQUEST, "method must be a string");
    };
    let params = match obj.remove("params") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(p)) => p,
        Some(_) => return refused(id, INVALID_PARAMS, "params must be an object"),
    };
    let p = Params(&params);
    match (method.as_str(), id) {
        ("ping", id) => Request::Ping { id },
        ("recvack", _) => match p.message_id() {
            Some(message_id) => Request::Recvack { message_id },
            None => refused(None, INVALID_PARAMS, "recvack needs a messageId"),
        },
        ("connect", Some(id)) => match connect(&p) {
            Ok(connect) => Request::Connect { id, connect },
            Err(why) => refused(Some(id), INVALID_PARAMS, why),
        },
        ("send", Some(id)) => match send(&p, raw) {
            Ok(send) => Request::Send { id, send },
            Err(why) => refused(Some(id), INVALID_PARAMS, why),
        },
        ("connect" | "send", None) => refused(None, INVALID_REQUEST, "a request needs an id"),
        ("subscribe" | "unsubscribe", id) => {
            refused(id, METHOD_NOT_FOUND, "subscriptions are not supported")
        }
        (_, id) => refused(id, METHOD_NOT_FOUND, "no such method"),
    }
}

/// A request id's bytes at most: it is kept until the answer and echoed in it.
pub const MAX_ID_BYTES: usize = 256;

fn refused(id: Option<String>, code: i64, message: &str) -> Request {
    Request::Refused {
        id,
        code,
        message: message.to_owned(),
    }
}

/// Typed reads of a `params` object.
struct Params<'a>(&'a Map<String, Value>);

impl Params<'_> {
    /// A string parameter, as long as the binary protocol can carry (every client must be
    /// able to receive what is stored).
    fn str(&self, key: &str) -> Result<String, &'static str> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(String::new()),
            Some(Value::String(s)) if s.len() > ruyi_proto::MAX_STRING_BYTES => {
                Err("a string parameter is too long")
            }
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err("a string parameter is not a string"),
        }
    }

    fn int(&self, key: &str) -> Result<i64, &'static str> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(0),
            Some(v) => v.as_i64().ok_or("a number parameter is not an integer"),
        }
    }

    fn small(&self, key: &str) -> Result<u8, &'static str> {
        u8::try_from(self.int(key)?).map_err(|_| "a parameter is out of range")
    }

    fn flag(&self, object: &str, key: &str) -> bool {
        self.0
            .get(object)
            .and_then(|o| o.get(key))
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }

    /// A message id: a decimal string (as ids are sent), or a number.
    fn message_id(&self) -> Option<i64> {
        match self.0.get("messageId")? {
            Value::String(s) => s.parse().ok(),
            v => v.as_i64(),
        }
    }
}

fn connect(p: &Params<'_>) -> Result<ConnectPacket, &'static str> {
    Ok(ConnectPacket {
        version: LATEST_VERSION,
        device_flag: p.small("deviceFlag")?,
        device_id: p.str("deviceId")?,
        uid: p.str("uid")?,
        token: p.str("token")?,
        client_timestamp: p.int("clientTimestamp")?,
        // No encryption in this dialect: a client key is ignored.
        client_key: String::new(),
    })
}

fn send(p: &Params<'_>, raw: &[u8]) -> Result<SendPacket, &'static str> {
    let payload = match p.0.get("payload") {
        None | Some(Value::Null) => return Err("send needs a payload"),
        Some(Value::String(b64)) => BASE64
            .decode(b64)
            .map_err(|_| "a string payload must be base64")?,
        // The bytes of the JSON value as the client wrote them (a re-encoding would
        // reorder an object's keys).
        Some(v) => match serde_json::from_slice::<RawSend<'_>>(raw) {
            Ok(RawSend {
                params: RawParams { payload: Some(p) },
            }) => p.get().as_bytes().to_vec(),
            _ => v.to_string().into_bytes(),
        },
    };
    let mut flags = Flags::default();
    for (key, bit) in [
        ("noPersist", Flags::NO_PERSIST),
        ("redDot", Flags::RED_DOT),
        ("syncOnce", Flags::SYNC_ONCE),
    ] {
        flags = flags.with(bit, p.flag("header", key));
    }
    let topic = p.str("topic")?;
    let mut setting = 0;
    for (key, bit) in [
        ("receipt", Setting::RECEIPT),
        ("signal", Setting::SIGNAL),
        ("stream", Setting::STREAM),
    ] {
        if p.flag("setting", key) {
            setting |= bit;
        }
    }
    if !topic.is_empty() {
        setting |= Setting::TOPIC;
    }
    // Without one, none (as a binary SEND without one): the request id is no dedupe key
    // (PROTOCOL.md §9.3), since clients number their requests again on each connection.
    let client_msg_no = p.str("clientMsgNo")?;
    Ok(SendPacket {
        flags,
        setting: Setting(setting),
        client_seq: 0,
        client_msg_no,
        stream_no: String::new(),
        channel_id: p.str("channelId")?,
        channel_type: p.small("channelType")?,
        expire: u32::try_from(p.int("expire")?).map_err(|_| "expire is out of range")?,
        msg_key: String::new(),
        topic,
        payload: Bytes::from(payload),
    })
}

/// The answer to `connect`: a result on success, an error whose code is the reason code
/// otherwise (EASYSDK.md: an error answer to `connect` is final).
pub fn connect_answer(id: &str, ack: &ConnackPacket) -> String {
    if ack.reason_code == ruyi_proto::types::reason::SUCCESS {
        json!({"id": id, "result": {
            "reasonCode": ack.reason_code,
            "serverVersion": ack.server_version,
            "nodeId": ack.node_id,
            "timeDiff": ack.time_diff,
        }})
        .to_string()
    } else {
        error(Some(id), i64::from(ack.reason_code), "login refused")
    }
}

/// The answer to `send`: always a result, with the SENDACK's reason code.
pub fn send_answer(id: &str, ack: &SendackPacket) -> String {
    json!({"id": id, "result": {
        "reasonCode": ack.reason_code,
        "messageId": ack.message_id.to_string(),
        "messageSeq": ack.message_seq,
    }})
    .to_string()
}

/// The answer to a `ping` request (`result` must be present, EASYSDK.md).
pub fn pong(id: &str) -> String {
    json!({"id": id, "result": null}).to_string()
}

/// An error answer.
pub fn error(id: Option<&str>, code: i64, message: &str) -> String {
    json!({"id": id, "error": {"code": code, "message": message}}).to_string()
}

/// The `disconnect` notification (a kick, a ban).
pub fn disconnect(reason_code: u8, reason: &str) -> String {
    json!({"method": "disconnect", "params": {"reasonCode": reason_code, "reason": reason}})
        .to_string()
}

/// The `recv` notification for one receiver.
pub fn recv(head: &RecvHead<'_>, payload: &[u8], base64_always: bool) -> String {
    let mut header = Map::new();
    for (key, on) in [
        ("noPersist", head.flags.no_persist()),
        ("redDot", head.flags.red_dot()),
        ("syncOnce", head.flags.sync_once()),
    ] {
        if on {
            header.insert(key.into(), Value::Bool(true));
        }
    }
    let mut params = json!({
        "messageId": head.message_id.to_string(),
        "messageSeq": head.message_seq,
        "timestamp": head.timestamp,
        "channelId": head.channel_id,
        "channelType": head.channel_type,
        "fromUid": head.from_uid,
        "clientMsgNo": head.client_msg_no,
        "header": header,
    });
    let setting = head.setting;
    if setting.0 != 0 {
        params["setting"] = json!({
            "receipt": setting.has(Setting::RECEIPT),
            "signal": setting.has(Setting::SIGNAL),
            "stream": setting.has(Setting::STREAM),
            "topic": setting.has(Setting::TOPIC),
        });
    }
    if head.expire != 0 {
        params["expire"] = json!(head.expire);
    }
    if !head.topic.is_empty() {
        params["topic"] = json!(head.topic);
    }
    // The payload goes in as the stored text itself when it is JSON (a re-encoding would
    // reorder keys and round numbers), as base64 otherwise. A JSON string is base64 too:
    // the EasySDK reads a string payload as base64 or JSON text, not as itself.
    let raw = serde_json::from_slice::<&serde_json::value::RawValue>(payload)
        .ok()
        .map(|r| r.get())
        .filter(|r| !base64_always && !r.starts_with('"'));
    let mut text = json!({"method": "recv", "params": params}).to_string();
    // `{"method":"recv","params":{...}}`: the payload joins the params before their `}`.
    text.truncate(text.len() - 2);
    text.push_str(",\"payload\":");
    match raw {
        Some(raw) => text.push_str(raw),
        None => {
            text.push('"');
            text.push_str(&BASE64.encode(payload));
            text.push('"');
        }
    }
    text.push_str("}}");
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Request {
        match next(text.as_bytes()) {
            Next::Message { request, used } => {
                assert_eq!(used, text.len());
                request
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_easysdk_frames_read_as_the_binary_packets() {
        let Request::Connect { id, connect } = one(
            r#"{"id":"c1","method":"connect","params":{"uid":"ann","token":"t","deviceId":"d","deviceFlag":2,"clientTimestamp":1700000000000}}"#,
        ) else {
            panic!()
        };
        assert_eq!(id, "c1");
        assert_eq!((connect.uid.as_str(), connect.device_flag), ("ann", 2));
        assert!(connect.client_key.is_empty());
        let Request::Send { send, .. } = one(
            r#"{"id":"s1","method":"send","params":{"channelId":"bo","channelType":1,"clientMsgNo":"m1","payload":"eyJhIjoxfQ==","header":{"redDot":true}}}"#,
        ) else {
            panic!()
        };
        assert_eq!(&send.payload[..], br#"{"a":1}"#);
        assert!(send.flags.red_dot() && !send.flags.no_persist());
        let Request::Send { send, .. } = one(
            r#"{"jsonrpc":"2.0","id":"s2","method":"send","params":{"channelId":"g","channelType":2,"payload":{"type":1,"content":"hi"}}}"#,
        ) else {
            panic!()
        };
        assert_eq!(&send.payload[..], br#"{"type":1,"content":"hi"}"#);
        assert_eq!(send.client_msg_no, "", "no clientMsgNo, no dedupe key");
        assert_eq!(
            one(r#"{"method":"recvack","params":{"messageId":"123","messageSeq":4}}"#),
            Request::Recvack { message_id: 123 }
        );
        assert_eq!(
            one(r#"{"id":"p","method":"ping","params":{}}"#),
            Request::Ping {
                id: Some("p".into())
            }
        );
    }

    #[test]
    fn streams_split_and_joined_are_read_one_value_at_a_time() {
        let two = r#"{"method":"ping"} {"id":"x","method":"ping"}"#;
        let Next::Message { used, .. } = next(two.as_bytes()) else {
            panic!()
        };
        assert!(matches!(
            next(&two.as_bytes()[used..]),
            Next::Message { used: u, .. } if used + u == two.len()
        ));
        assert_eq!(next(br#"{"id":"x","meth"#), Next::Partial);
        assert!(matches!(next(b"}{"), Next::Broken(_)));
        assert!(starts(b'{') && !starts(0x10));
    }

    #[test]
    fn bad_requests_are_refused_with_their_id() {
        for (text, code) in [
            (r#"{"id":"1","method":"nope"}"#, METHOD_NOT_FOUND),
            (
                r#"{"id":"1","method":"subscribe","params":{}}"#,
                METHOD_NOT_FOUND,
            ),
            (
                r#"{"id":"1","method":"send","params":{"channelId":"a"}}"#,
                INVALID_PARAMS,
            ),
            (
                r#"{"id":"1","method":"send","params":{"payload":"%%"}}"#,
                INVALID_PARAMS,
            ),
            (
                r#"{"id":"1","method":"connect","params":{"deviceFlag":999}}"#,
                INVALID_PARAMS,
            ),
            (
                r#"{"id":"1","jsonrpc":"1.0","method":"ping"}"#,
                INVALID_REQUEST,
            ),
            (r#"{"id":"1","method":"ping","params":[1]}"#, INVALID_PARAMS),
        ] {
            match one(text) {
                Request::Refused { id, code: c, .. } => {
                    assert_eq!((id.as_deref(), c), (Some("1"), code), "{text}")
                }
                other => panic!("{text}: {other:?}"),
            }
        }
        assert!(matches!(one("[1,2]"), Request::Refused { id: None, .. }));
    }

    #[test]
    fn answers_have_exactly_one_of_result_and_error_and_recv_always_a_header() {
        let pong: Value = serde_json::from_str(&pong("p")).unwrap();
        assert!(pong.get("result").is_some_and(Value::is_null) && pong.get("error").is_none());
        let refused = ConnackPacket {
            reason_code: 2,
            ..ConnackPacket::default()
        };
        let e: Value = serde_json::from_str(&connect_answer("c", &refused)).unwrap();
        assert_eq!(
            (e["error"]["code"].as_i64(), e.get("result")),
            (Some(2), None)
        );
        let head = RecvHead {
            flags: Flags(0),
            setting: Setting(0),
            from_uid: "ann",
            channel_id: "ann",
            channel_type: 1,
            expire: 0,
            client_msg_no: "m1",
            stream_flag: 0,
            stream_no: "",
            stream_id: 0,
            message_id: 42,
            message_seq: 7,
            timestamp: 1_700_000_000,
            topic: "",
        };
        let r: Value = serde_json::from_str(&recv(&head, br#"{"a":1}"#, false)).unwrap();
        assert_eq!(r["params"]["header"], json!({}));
        assert_eq!(r["params"]["payload"], json!({"a": 1}));
        assert_eq!(r["params"]["messageId"], "42");
        let r: Value = serde_json::from_str(&recv(&head, b"\xff", false)).unwrap();
        assert_eq!(r["params"]["payload"], "/w==");
        let r: Value = serde_json::from_str(&recv(&head, b"{}", true)).unwrap();
        assert_eq!(r["params"]["payload"], "e30=");
    }
}
