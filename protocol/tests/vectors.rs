//! Golden vectors: the worked bytes of PROTOCOL.md §11 and the appendix of JSSDK.md, made
//! with the official JS SDK's own encoder and crypto. Each must encode and decode exactly.

#![allow(clippy::unwrap_used)]

use bytes::{Bytes, BytesMut};
use ruyi_proto::crypto::{public_key_b64, server_handshake_with, SessionCipher};
use ruyi_proto::*;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn encode(p: &Packet, version: u8) -> Vec<u8> {
    let mut buf = BytesMut::new();
    p.encode(version, &mut buf).unwrap();
    buf.to_vec()
}

fn decode(bytes: &[u8], version: u8) -> Packet {
    let (p, used) = decode_packet(bytes, version, MAX_BODY_BYTES)
        .unwrap()
        .unwrap();
    assert_eq!(used, bytes.len(), "one frame, wholly consumed");
    p
}

/// Encodes to `wire` and decodes back to the same packet.
fn pin(p: Packet, version: u8, wire: &str) {
    let wire = hex(wire);
    assert_eq!(encode(&p, version), wire, "encode {:?}", p.packet_type());
    assert_eq!(decode(&wire, version), p, "decode {:?}", p.packet_type());
}

// ---- PROTOCOL.md §11 (session version 5, encryption off) ----

#[test]
fn spec_worked_bytes_v5() {
    pin(
        Packet::Connect(ConnectPacket {
            version: 5,
            device_flag: 1,
            device_id: "d1".into(),
            uid: "u1".into(),
            token: "t1".into(),
            client_timestamp: 1_700_000_000_000,
            client_key: String::new(),
        }),
        5,
        "10 18 05 01 00 02 64 31 00 02 75 31 00 02 74 31 00 00 01 8b cf e5 68 00 00 00",
    );
    pin(
        Packet::Connack(ConnackPacket {
            server_version: 5,
            time_diff: -15,
            reason_code: 1,
            server_key: "K".into(),
            salt: "S".into(),
            node_id: 1001,
        }),
        5,
        "21 18 05 ff ff ff ff ff ff ff f1 01 00 01 4b 00 01 53 00 00 00 00 00 00 03 e9",
    );
    pin(
        Packet::Send(SendPacket {
            flags: Flags(Flags::RED_DOT),
            client_seq: 1,
            client_msg_no: "m1".into(),
            channel_id: "u2".into(),
            channel_type: 1,
            payload: Bytes::from_static(b"hi"),
            ..Default::default()
        }),
        5,
        "32 16 00 00 00 00 01 00 02 6d 31 00 02 75 32 01 00 00 00 00 00 00 68 69",
    );
    pin(
        Packet::Sendack(SendackPacket {
            flags: Flags(Flags::RED_DOT),
            message_id: 123_456_789,
            client_seq: 1,
            message_seq: 7,
            reason_code: 1,
        }),
        5,
        "42 11 00 00 00 00 07 5b cd 15 00 00 00 01 00 00 00 07 01",
    );
    pin(
        Packet::Recv(RecvPacket {
            flags: Flags(Flags::RED_DOT),
            from_uid: "u1".into(),
            channel_id: "u1".into(),
            channel_type: 1,
            client_msg_no: "m1".into(),
            message_id: 123_456_789,
            message_seq: 7,
            timestamp: 1_700_000_000,
            payload: Bytes::from_static(b"hi"),
            ..Default::default()
        }),
        5,
        "52 26 00 00 00 00 02 75 31 00 02 75 31 01 00 00 00 00 00 02 6d 31 00 00 00 00 07 5b cd 15
         00 00 00 07 65 53 f1 00 68 69",
    );
    pin(
        Packet::Recvack(RecvackPacket {
            flags: Flags(0),
            message_id: 123_456_789,
            message_seq: 7,
        }),
        5,
        "60 0c 00 00 00 00 07 5b cd 15 00 00 00 07",
    );
    pin(
        Packet::Disconnect(DisconnectPacket {
            reason_code: 12,
            reason: "login in other device".into(),
        }),
        5,
        "90 18 0c 00 15 6c 6f 67 69 6e 20 69 6e 20 6f 74 68 65 72 20 64 65 76 69 63 65",
    );
    pin(Packet::Ping, 5, "70");
    pin(Packet::Pong, 5, "80");
}

// ---- JSSDK.md appendix (protocol version 2, the JS SDK's own bytes) ----

const CLIENT_SEED: &[u8; 32] = b"0123456789abcdef0123456789abcdef";
const SERVER_SEED: &[u8; 32] = b"fedcba9876543210fedcba9876543210";
const SALT: &str = "abcdefghijklmnop";
const CLIENT_MSG_NO: &str = "c0ffee00c0ffee00c0ffee00c0ffee003";
const SEND_WIRE_PAYLOAD: &str = "UIqHDIBSziEkIMxBPT/Yqe8UuWVSj3K8rYy4djxvJDnAWcZaKxTZCKtF7SYXRW+C";

fn sdk_cipher() -> SessionCipher {
    server_handshake_with(&public_key_b64(*CLIENT_SEED), *SERVER_SEED, SALT)
        .unwrap()
        .cipher
}

#[test]
fn jssdk_keys_and_msg_keys() {
    assert_eq!(
        public_key_b64(*CLIENT_SEED),
        "hlF7wMOf6Ha3ZGy1407gPa9xzLrWdFDBapcK2MvAPn4="
    );
    let hs = server_handshake_with(&public_key_b64(*CLIENT_SEED), *SERVER_SEED, SALT).unwrap();
    assert_eq!(
        hs.server_key,
        "2/ygd0TRqiC1sebr6VaMzxUwnqJ9Zmo98HwJpoCThRI="
    );
    assert_eq!(hs.cipher.key(), b"d3514bfacef9c97a");
    let c = hs.cipher;
    assert_eq!(
        c.encrypt_b64(r#"{"content":"hi 你好","type":1}"#.as_bytes()),
        SEND_WIRE_PAYLOAD
    );
    assert_eq!(
        c.send_msg_key(1, CLIENT_MSG_NO, "bob", 1, SEND_WIRE_PAYLOAD.as_bytes()),
        "1fe0c4919c302759501d54ba5d5e0c58"
    );
    assert_eq!(
        c.recv_msg_key(
            1_234_567_890_123_456_789,
            7,
            CLIENT_MSG_NO,
            1_700_000_000,
            "alice",
            "alice",
            1,
            SEND_WIRE_PAYLOAD.as_bytes()
        ),
        "e4103c94318eb03467dc593fc17c3d40"
    );
}

#[test]
fn jssdk_packets_v2() {
    pin(
        Packet::Connect(ConnectPacket {
            version: 2,
            device_flag: 1,
            device_id: "0123456789abcdef0123456789abcdefW".into(),
            uid: "alice".into(),
            token: "tok".into(),
            client_timestamp: 1_700_000_000_000,
            client_key: "hlF7wMOf6Ha3ZGy1407gPa9xzLrWdFDBapcK2MvAPn4=".into(),
        }),
        2,
        "1067020100213031323334353637383961626364656630313233343536373839616263646566570005616c6963650003746f6b0000018bcfe56800002c686c4637774d4f66364861335a47793134303767506139787a4c7257644644426170634b324d7641506e343d",
    );
    pin(
        Packet::Connack(ConnackPacket {
            server_version: 0,
            time_diff: 0,
            reason_code: 1,
            server_key: "2/ygd0TRqiC1sebr6VaMzxUwnqJ9Zmo98HwJpoCThRI=".into(),
            salt: SALT.into(),
            node_id: 0,
        }),
        2,
        "2049000000000000000001002c322f79676430545271694331736562723656614d7a7855776e714a395a6d6f393848774a706f43546852493d00106162636465666768696a6b6c6d6e6f70",
    );
    pin(
        Packet::Send(SendPacket {
            flags: Flags(Flags::RED_DOT),
            client_seq: 1,
            client_msg_no: CLIENT_MSG_NO.into(),
            channel_id: "bob".into(),
            channel_type: 1,
            msg_key: "1fe0c4919c302759501d54ba5d5e0c58".into(),
            payload: Bytes::from_static(SEND_WIRE_PAYLOAD.as_bytes()),
            ..Default::default()
        }),
        2,
        "329001000000000100216330666665653030633066666565303063306666656530306330666665653030330003626f62010020316665306334393139633330323735393530316435346261356435653063353855497148444942537a69456b494d784250542f5971653855755756536a334b3872597934646a78764a446e4157635a614b78545a434b74463753595852572b43",
    );
    pin(
        Packet::Sendack(SendackPacket {
            flags: Flags(0),
            message_id: 1_234_567_890_123_456_789,
            client_seq: 1,
            message_seq: 7,
            reason_code: 1,
        }),
        2,
        "4011112210f47de98115000000010000000701",
    );
    pin(
        Packet::Recv(RecvPacket {
            flags: Flags(Flags::RED_DOT),
            msg_key: "e4103c94318eb03467dc593fc17c3d40".into(),
            from_uid: "alice".into(),
            channel_id: "alice".into(),
            channel_type: 1,
            client_msg_no: CLIENT_MSG_NO.into(),
            message_id: 1_234_567_890_123_456_789,
            message_seq: 7,
            timestamp: 1_700_000_000,
            payload: Bytes::from_static(SEND_WIRE_PAYLOAD.as_bytes()),
            ..Default::default()
        }),
        2,
        "52a50100002065343130336339343331386562303334363764633539336663313763336434300005616c6963650005616c696365010021633066666565303063306666656530306330666665653030633066666565303033112210f47de98115000000076553f10055497148444942537a69456b494d784250542f5971653855755756536a334b3872597934646a78764a446e4157635a614b78545a434b74463753595852572b43",
    );
    pin(
        Packet::Recvack(RecvackPacket {
            flags: Flags(Flags::RED_DOT),
            message_id: 1_234_567_890_123_456_789,
            message_seq: 7,
        }),
        2,
        "620c112210f47de9811500000007",
    );
}

#[test]
fn the_server_opens_the_sdks_send() {
    let wire = hex("329001000000000100216330666665653030633066666565303063306666656530306330666665653030330003626f62010020316665306334393139633330323735393530316435346261356435653063353855497148444942537a69456b494d784250542f5971653855755756536a334b3872597934646a78764a446e4157635a614b78545a434b74463753595852572b43");
    let Packet::Send(send) = decode(&wire, 2) else {
        panic!("not a SEND")
    };
    let plain = sdk_cipher().open_send(&send).unwrap();
    assert_eq!(plain, r#"{"content":"hi 你好","type":1}"#.as_bytes());
    let mut tampered = send.clone();
    tampered.channel_id = "eve".into();
    assert_eq!(
        sdk_cipher().open_send(&tampered),
        Err(CryptoError::MsgKeyMismatch)
    );
}
