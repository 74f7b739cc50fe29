//! `--jsonrpc`: the load tool as an EasySDK client (PROTOCOL.md §10.4) instead of a binary
//! one. The workers keep speaking in packets; this module writes the packets a client
//! sends as JSON-RPC requests and reads the server's answers and notifications back into
//! the packets a binary client would have got, so the run, its accounting and its ledger
//! are the same for both dialects. Payloads (binary: send time, sender, counter) travel as
//! base64 strings.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::Bytes;
use ruyi_proto::{
    ConnackPacket, DisconnectPacket, Flags, Packet, RecvPacket, SendackPacket, Setting,
};
use serde_json::{json, Value};
use std::io;

/// The id of the `connect` request; SENDs use their client_seq, pings this one.
const CONNECT_ID: &str = "c";
const PING_ID: &str = "p";

/// The JSON-RPC request for `packet`.
pub fn request(packet: &Packet) -> io::Result<String> {
    let v = match packet {
        Packet::Connect(c) => json!({"id": CONNECT_ID, "method": "connect", "params": {
            "uid": c.uid, "token": c.token, "deviceId": c.device_id,
            "deviceFlag": c.device_flag, "clientTimestamp": c.client_timestamp}}),
        Packet::Send(s) => json!({"id": s.client_seq.to_string(), "method": "send", "params": {
            "channelId": s.channel_id, "channelType": s.channel_type,
            "clientMsgNo": s.client_msg_no, "payload": BASE64.encode(&s.payload),
            "header": {"redDot": s.flags.red_dot(), "noPersist": s.flags.no_persist()}}}),
        Packet::Recvack(r) => json!({"method": "recvack", "params": {
            "messageId": r.message_id.to_string(), "messageSeq": r.message_seq}}),
        Packet::Ping => json!({"id": PING_ID, "method": "ping"}),
        other => {
            return Err(io::Error::other(format!(
                "no JSON-RPC request for {:?}",
                other.packet_type()
            )))
        }
    };
    Ok(v.to_string())
}

/// The next answer or notification at the start of `input`, as a packet, and the bytes it
/// took; `None` while incomplete. Notifications a binary client has no packet for are
/// skipped.
pub fn next_packet(input: &[u8]) -> io::Result<Option<(Packet, usize)>> {
    let mut at = 0;
    loop {
        let mut values = serde_json::Deserializer::from_slice(&input[at..]).into_iter::<Value>();
        let v = match values.next() {
            None => return Ok(None),
            Some(Err(e)) if e.is_eof() => return Ok(None),
            Some(Err(e)) => return Err(io::Error::other(format!("server sent bad JSON: {e}"))),
            Some(Ok(v)) => v,
        };
        at += values.byte_offset();
        if let Some(packet) = packet_of(&v)? {
            return Ok(Some((packet, at)));
        }
    }
}

fn packet_of(v: &Value) -> io::Result<Option<Packet>> {
    let int = |v: &Value| v.as_i64().unwrap_or_default();
    if let Some(method) = v["method"].as_str() {
        let p = &v["params"];
        return Ok(match method {
            "recv" => Some(Packet::Recv(RecvPacket {
                flags: Flags(0).with(Flags::RED_DOT, p["header"]["redDot"] == true),
                setting: Setting(0),
                msg_key: String::new(),
                from_uid: p["fromUid"].as_str().unwrap_or_default().into(),
                channel_id: p["channelId"].as_str().unwrap_or_default().into(),
                channel_type: u8::try_from(int(&p["channelType"])).unwrap_or_default(),
                expire: 0,
                client_msg_no: p["clientMsgNo"].as_str().unwrap_or_default().into(),
                stream_flag: 0,
                stream_no: String::new(),
                stream_id: 0,
                message_id: p["messageId"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_default(),
                message_seq: u32::try_from(int(&p["messageSeq"])).unwrap_or_default(),
                timestamp: i32::try_from(int(&p["timestamp"])).unwrap_or_default(),
                topic: String::new(),
                payload: match &p["payload"] {
                    Value::String(b64) => {
                        Bytes::from(BASE64.decode(b64).map_err(io::Error::other)?)
                    }
                    other => Bytes::from(other.to_string()),
                },
            })),
            "disconnect" => Some(Packet::Disconnect(DisconnectPacket {
                reason_code: u8::try_from(int(&p["reasonCode"])).unwrap_or_default(),
                reason: p["reason"].as_str().unwrap_or_default().into(),
            })),
            _ => None,
        });
    }
    let id = v["id"].as_str().unwrap_or_default();
    let code = |r: &Value| u8::try_from(int(r)).unwrap_or(u8::MAX);
    let reason_code = match (&v["result"]["reasonCode"], &v["error"]["code"]) {
        (r, _) if r.is_number() => code(r),
        (_, e) if e.is_number() => code(e),
        _ => 1, // ping's null result
    };
    Ok(Some(match id {
        CONNECT_ID => Packet::Connack(ConnackPacket {
            server_version: 5,
            reason_code,
            ..ConnackPacket::default()
        }),
        PING_ID => Packet::Pong,
        seq => Packet::Sendack(SendackPacket {
            flags: Flags(0),
            message_id: v["result"]["messageId"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or_default(),
            client_seq: seq
                .parse()
                .map_err(|_| io::Error::other(format!("an answer to no request: {v}")))?,
            message_seq: u32::try_from(int(&v["result"]["messageSeq"])).unwrap_or_default(),
            reason_code,
        }),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ruyi_proto::SendPacket;

    #[test]
    fn a_send_and_its_answer_and_a_recv_round_trip_as_packets() {
        let send = Packet::Send(SendPacket {
            client_seq: 7,
            channel_id: "g".into(),
            channel_type: 2,
            payload: Bytes::from_static(b"\x00\x01"),
            ..SendPacket::default()
        });
        let text = request(&send).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            (v["id"].as_str(), v["params"]["payload"].as_str()),
            (Some("7"), Some("AAE="))
        );
        let answers = br#"{"id":"7","result":{"reasonCode":1,"messageId":"42","messageSeq":3}}{"method":"event","params":{}}{"method":"recv","params":{"messageId":"9","messageSeq":2,"payload":"AAE=","header":{}}}"#;
        let Some((Packet::Sendack(ack), used)) = next_packet(answers).unwrap() else {
            panic!()
        };
        assert_eq!(
            (ack.client_seq, ack.message_id, ack.message_seq),
            (7, 42, 3)
        );
        let Some((Packet::Recv(r), _)) = next_packet(&answers[used..]).unwrap() else {
            panic!()
        };
        assert_eq!((r.message_id, &r.payload[..]), (9, b"\x00\x01".as_slice()));
        assert!(next_packet(br#"{"id":"c","res"#).unwrap().is_none());
    }
}
