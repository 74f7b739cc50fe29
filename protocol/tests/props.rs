//! Property tests: encode→decode round-trips for every packet at every version 2–5; a
//! valid stream decodes to the same packets whatever the split points; arbitrary bytes
//! never panic the decoder.

#![allow(clippy::unwrap_used)]

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use ruyi_proto::*;

fn text() -> impl Strategy<Value = String> {
    "\\PC{0,12}"
}

fn payload() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..200).prop_map(Bytes::from)
}

fn packet() -> impl Strategy<Value = Packet> {
    prop_oneof![
        (
            any::<u8>(),
            any::<u8>(),
            text(),
            text(),
            text(),
            any::<i64>(),
            text()
        )
            .prop_map(|(v, d, dev, uid, tok, ts, key)| {
                Packet::Connect(ConnectPacket {
                    version: v,
                    device_flag: d,
                    device_id: dev,
                    uid,
                    token: tok,
                    client_timestamp: ts,
                    client_key: key,
                })
            }),
        (
            any::<u8>(),
            any::<i64>(),
            any::<u8>(),
            text(),
            text(),
            any::<u64>()
        )
            .prop_map(|(sv, td, rc, k, s, n)| {
                Packet::Connack(ConnackPacket {
                    server_version: sv,
                    time_diff: td,
                    reason_code: rc,
                    server_key: k,
                    salt: s,
                    node_id: n,
                })
            }),
        (
            0u8..16,
            any::<u8>(),
            any::<u32>(),
            text(),
            text(),
            text(),
            any::<u8>(),
            any::<u32>(),
            text(),
            text(),
            payload()
        )
            .prop_map(|(f, set, cs, cmn, sn, ch, ct, ex, mk, tp, pl)| {
                Packet::Send(SendPacket {
                    flags: Flags(f),
                    setting: Setting(set),
                    client_seq: cs,
                    client_msg_no: cmn,
                    stream_no: sn,
                    channel_id: ch,
                    channel_type: ct,
                    expire: ex,
                    msg_key: mk,
                    topic: tp,
                    payload: pl,
                })
            }),
        (
            0u8..16,
            any::<i64>(),
            any::<u32>(),
            any::<u32>(),
            any::<u8>()
        )
            .prop_map(|(f, id, cs, seq, rc)| {
                Packet::Sendack(SendackPacket {
                    flags: Flags(f),
                    message_id: id,
                    client_seq: cs,
                    message_seq: seq,
                    reason_code: rc,
                })
            }),
        (
            (
                0u8..16,
                any::<u8>(),
                text(),
                text(),
                text(),
                any::<u8>(),
                any::<u32>(),
                text()
            ),
            (
                any::<u8>(),
                text(),
                any::<u64>(),
                any::<i64>(),
                any::<u32>(),
                any::<i32>(),
                text(),
                payload()
            )
        )
            .prop_map(
                |((f, set, mk, from, ch, ct, ex, cmn), (sf, sn, sid, id, seq, ts, tp, pl))| {
                    Packet::Recv(RecvPacket {
                        flags: Flags(f),
                        setting: Setting(set),
                        msg_key: mk,
                        from_uid: from,
                        channel_id: ch,
                        channel_type: ct,
                        expire: ex,
                        client_msg_no: cmn,
                        stream_flag: sf,
                        stream_no: sn,
                        stream_id: sid,
                        message_id: id,
                        message_seq: seq,
                        timestamp: ts,
                        topic: tp,
                        payload: pl,
                    })
                }
            ),
        (0u8..16, any::<i64>(), any::<u32>()).prop_map(|(f, id, seq)| Packet::Recvack(
            RecvackPacket {
                flags: Flags(f),
                message_id: id,
                message_seq: seq
            }
        )),
        Just(Packet::Ping),
        Just(Packet::Pong),
        (any::<u8>(), text()).prop_map(|(rc, r)| Packet::Disconnect(DisconnectPacket {
            reason_code: rc,
            reason: r
        })),
        (
            any::<u8>(),
            text(),
            text(),
            any::<u8>(),
            any::<u8>(),
            text()
        )
            .prop_map(|(s, no, ch, ct, a, p)| {
                Packet::Sub(SubPacket {
                    setting: Setting(s),
                    sub_no: no,
                    channel_id: ch,
                    channel_type: ct,
                    action: a,
                    param: p,
                })
            }),
        (text(), text(), any::<u8>(), any::<u8>(), any::<u8>()).prop_map(|(no, ch, ct, a, rc)| {
            Packet::Suback(SubackPacket {
                sub_no: no,
                channel_id: ch,
                channel_type: ct,
                action: a,
                reason_code: rc,
            })
        }),
        (text(), text(), any::<i64>(), payload()).prop_map(|(id, t, ts, d)| Packet::Event(
            EventPacket {
                id,
                event_type: t,
                timestamp: ts,
                data: d
            }
        )),
    ]
}

/// The packet as it looks after a trip through `version`: fields that version does not
/// carry come back as their defaults.
fn normalize(mut p: Packet, version: u8) -> Packet {
    match &mut p {
        Packet::Connack(c) => {
            if version <= 3 {
                c.server_version = 0;
            }
            if version < 4 {
                c.node_id = 0;
            }
        }
        Packet::Send(s) => {
            if !s.setting.stream_fields(version) {
                s.stream_no.clear();
            }
            if version < 3 {
                s.expire = 0;
            }
            if !s.setting.has(Setting::TOPIC) {
                s.topic.clear();
            }
        }
        Packet::Recv(r) => {
            if !r.setting.stream_fields(version) {
                (r.stream_flag, r.stream_id) = (0, 0);
                r.stream_no.clear();
            }
            if version < 3 {
                r.expire = 0;
            }
            if !r.setting.has(Setting::TOPIC) {
                r.topic.clear();
            }
        }
        _ => {}
    }
    p
}

fn encode_all(packets: &[Packet], version: u8) -> Vec<u8> {
    let mut buf = BytesMut::new();
    for p in packets {
        p.encode(version, &mut buf).unwrap();
    }
    buf.to_vec()
}

/// Decodes a stream fed in pieces ending at `cuts`, the way a socket delivers it.
fn decode_in_pieces(stream: &[u8], cuts: &[usize], version: u8) -> Vec<Packet> {
    let mut out = Vec::new();
    let mut pending: Vec<u8> = Vec::new();
    let mut fed = 0;
    for &cut in cuts.iter().chain(std::iter::once(&stream.len())) {
        let cut = cut.clamp(fed, stream.len());
        pending.extend_from_slice(&stream[fed..cut]);
        fed = cut;
        while let Some((p, used)) = decode_packet(&pending, version, MAX_BODY_BYTES).unwrap() {
            out.push(p);
            pending.drain(..used);
        }
    }
    assert!(pending.is_empty(), "bytes left over");
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_packet_round_trips_at_every_version(p in packet(), version in 2u8..=5) {
        let wire = encode_all(std::slice::from_ref(&p), version);
        let (decoded, used) = decode_packet(&wire, version, MAX_BODY_BYTES).unwrap().unwrap();
        prop_assert_eq!(used, wire.len());
        prop_assert_eq!(decoded, normalize(p, version));
    }

    #[test]
    fn split_points_do_not_change_the_packets(
        packets in proptest::collection::vec(packet(), 1..8),
        version in 2u8..=5,
        mut cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        let stream = encode_all(&packets, version);
        let mut cuts: Vec<usize> = cuts.drain(..).map(|i| i.index(stream.len() + 1)).collect();
        cuts.sort_unstable();
        let expected: Vec<Packet> = packets.into_iter().map(|p| normalize(p, version)).collect();
        prop_assert_eq!(decode_in_pieces(&stream, &cuts, version), expected);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300), version in 0u8..=8) {
        let mut rest = &bytes[..];
        // Decode until an error or a need for more bytes, as a server would.
        while let Ok(Some((_, used))) = decode_packet(rest, version, 256) {
            prop_assert!(used > 0 && used <= rest.len());
            rest = &rest[used..];
        }
    }
}

#[test]
fn every_split_of_one_stream_gives_the_same_packets() {
    // The exhaustive version of the split property for one fixed mixed stream: every single
    // cut point (NATS' FuzzParser splits in two; we try them all).
    let packets = vec![
        Packet::Ping,
        Packet::Send(SendPacket {
            client_seq: 9,
            client_msg_no: "n".into(),
            channel_id: "g1".into(),
            channel_type: 2,
            payload: Bytes::from(vec![1u8; 300]),
            ..Default::default()
        }),
        Packet::Recvack(RecvackPacket {
            flags: Flags(0),
            message_id: 5,
            message_seq: 6,
        }),
        Packet::Ping,
    ];
    let stream = encode_all(&packets, 4);
    for cut in 0..=stream.len() {
        assert_eq!(
            decode_in_pieces(&stream, &[cut], 4),
            packets,
            "cut at {cut}"
        );
    }
}
