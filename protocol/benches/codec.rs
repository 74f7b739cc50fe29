//! Codec throughput and the per-recipient cost of encryption; these numbers size the
//! fan-out path (BENCHMARKS.md).
//!
//! ```text
//! cargo bench -p ruyi-proto --bench codec
//! ```

use bytes::{Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ruyi_proto::crypto::{public_key_b64, server_handshake};
use ruyi_proto::*;

/// A typical chat message: 100 bytes of JSON payload.
fn payload() -> Bytes {
    let mut p = br#"{"type":1,"content":"#.to_vec();
    p.resize(99, b'x');
    p.push(b'}');
    Bytes::from(p)
}

fn send(i: u32) -> Packet {
    Packet::Send(SendPacket {
        flags: Flags(Flags::RED_DOT),
        client_seq: i,
        client_msg_no: format!("{i:032x}"),
        channel_id: "group-0001".into(),
        channel_type: 2,
        payload: payload(),
        ..Default::default()
    })
}

fn recv(i: u32) -> RecvPacket {
    RecvPacket {
        flags: Flags(Flags::RED_DOT),
        from_uid: "user-000001".into(),
        channel_id: "group-0001".into(),
        channel_type: 2,
        client_msg_no: format!("{i:032x}"),
        message_id: 1_800_000_000_000_000_000 + i64::from(i),
        message_seq: i,
        timestamp: 1_700_000_000,
        payload: payload(),
        ..Default::default()
    }
}

const FRAMES: u32 = 1000;

fn stream(packets: impl Iterator<Item = Packet>) -> Bytes {
    let mut buf = BytesMut::new();
    for p in packets {
        p.encode(5, &mut buf).expect("encodable");
    }
    buf.freeze()
}

fn decode_all(stream: &[u8]) -> usize {
    let mut rest = stream;
    let mut n = 0;
    while let Ok(Some((p, used))) = decode_packet(rest, 5, MAX_BODY_BYTES) {
        black_box(p);
        rest = &rest[used..];
        n += 1;
    }
    n
}

fn codec(c: &mut Criterion) {
    let sends = stream((0..FRAMES).map(send));
    let recvs = stream((0..FRAMES).map(|i| Packet::Recv(recv(i))));
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(u64::from(FRAMES)));
    g.bench_function("decode 1000 SEND", |b| {
        b.iter(|| decode_all(black_box(&sends)))
    });
    g.bench_function("decode 1000 RECV", |b| {
        b.iter(|| decode_all(black_box(&recvs)))
    });
    let packets: Vec<RecvPacket> = (0..FRAMES).map(recv).collect();
    g.bench_function("encode 1000 RECV", |b| {
        b.iter_batched_ref(
            || BytesMut::with_capacity(recvs.len()),
            |buf| {
                for p in &packets {
                    p.encode(5, buf).expect("encodable");
                }
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// One RECV for one connection: the unencrypted frame is encoded once and shared, the
/// encrypted one costs an AES pass over the payload, another over the msgKey sign string,
/// an MD5 and an encode, per receiving connection.
fn fan_out_cost(c: &mut Criterion) {
    let r = recv(7);
    let cipher = SessionCipher::from_parts(*b"0123456789abcdef", *b"abcdefghijklmnop");
    let mut g = c.benchmark_group("recv per connection");
    g.throughput(Throughput::Elements(1));
    g.bench_function("unencrypted (encode)", |b| {
        let mut buf = BytesMut::with_capacity(4096);
        b.iter(|| {
            buf.clear();
            black_box(&r).encode(5, &mut buf).expect("encodable");
        })
    });
    g.bench_function("encrypted (AES + msgKey + encode)", |b| {
        let mut buf = BytesMut::with_capacity(4096);
        b.iter(|| {
            buf.clear();
            let r = black_box(&r);
            let (wire, key) = cipher.seal_recv(r, &r.payload);
            r.encode_with(5, &key, wire.as_bytes(), &mut buf)
                .expect("encodable");
        })
    });
    g.finish();
}

/// What a login with encryption costs the server in crypto: a fresh X25519 key pair (one
/// fixed-base multiplication), the shared secret (one variable-base multiplication), an MD5
/// and a salt; this bounds logins per second per core (BENCHMARKS.md, issue 6).
fn handshake(c: &mut Criterion) {
    let client_key = public_key_b64([9u8; 32]);
    let mut g = c.benchmark_group("login");
    g.throughput(Throughput::Elements(1));
    g.bench_function("server_handshake (X25519 key pair + shared secret)", |b| {
        b.iter(|| server_handshake(black_box(&client_key)).expect("valid key"))
    });
    g.bench_function("shared secret only (SessionCipher::derive)", |b| {
        b.iter(|| {
            SessionCipher::derive([7u8; 32], black_box(&client_key), "abcdefghijklmnop")
                .expect("valid key")
        })
    });
    g.finish();
}

criterion_group!(benches, codec, fan_out_cost, handshake);
criterion_main!(benches);
