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
/// an MD5 and an encode, per receiving connection. Three encrypted variants, same run:
/// - "as before": the path the server took until issue 21 (a RecvPacket with its strings
///   copied per receiver, a String per integer of the sign string, a Vec or String per
///   AES pass, base64 and hex);
/// - "reused buffers": the path now (`seal_recv_into` + `RecvHead`, the loop's scratch);
/// - "floor": the arithmetic alone, AES-CBC over the payload and over a sign string of the
///   same length, and MD5 over a base64 of the same length: what no encoding can avoid.
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
    g.bench_function("encrypted, as before (allocating)", |b| {
        let mut buf = BytesMut::with_capacity(4096);
        b.iter(|| {
            buf.clear();
            let r = black_box(&r).clone(); // the per-receiver RecvPacket
            let wire = cipher.encrypt_b64(&r.payload);
            let key = cipher.recv_msg_key(
                r.message_id,
                r.message_seq,
                &r.client_msg_no,
                r.timestamp,
                &r.from_uid,
                &r.channel_id,
                r.channel_type,
                wire.as_bytes(),
            );
            r.encode_with(5, &key, wire.as_bytes(), &mut buf)
                .expect("encodable");
        })
    });
    g.bench_function("encrypted (seal_recv_into, reused buffers)", |b| {
        let mut buf = BytesMut::with_capacity(4096);
        let mut scratch = SealScratch::default();
        b.iter(|| {
            buf.clear();
            let head = black_box(&r).head();
            let (wire, key) = cipher.seal_recv_into(&head, &r.payload, &mut scratch);
            let key = std::str::from_utf8(&key).expect("hex");
            head.encode(5, key, wire, &mut buf).expect("encodable");
        })
    });
    g.bench_function("floor (AES-CBC twice, MD5)", |b| {
        use aes::cipher::{block_padding::Pkcs7, BlockEncryptMut, KeyIvInit};
        use md5::{Digest, Md5};
        type Enc = cbc::Encryptor<aes::Aes128>;
        let (key, iv) = (*b"0123456789abcdef", *b"abcdefghijklmnop");
        // The sizes the real path works on, taken from one real sealing.
        let mut scratch = SealScratch::default();
        let (wire, _) = cipher.seal_recv_into(&r.head(), &r.payload, &mut scratch);
        let sign_len =
            60 + r.client_msg_no.len() + r.from_uid.len() + r.channel_id.len() + wire.len();
        let sign = vec![b's'; sign_len];
        let md5_input = vec![b'b'; (sign_len / 16 + 1) * 16 * 4 / 3 + 4];
        let mut ct = vec![0u8; sign_len + 16];
        b.iter(|| {
            let a = Enc::new(&key.into(), &iv.into())
                .encrypt_padded_b2b_mut::<Pkcs7>(black_box(&r.payload), &mut ct)
                .map(|c| c.len());
            black_box(a.ok());
            let s = Enc::new(&key.into(), &iv.into())
                .encrypt_padded_b2b_mut::<Pkcs7>(black_box(&sign), &mut ct)
                .map(|c| c.len());
            black_box(s.ok());
            black_box(Md5::digest(black_box(&md5_input)));
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

/// The X25519 implementations side by side (issue 21 item 3): what the server's two
/// multiplications per login cost in each, nothing else. aws-lc-rs is what the protocol
/// crate uses (s2n-bignum's assembly); x25519-dalek is what it used before; ring is in
/// the build through rustls (BoringSSL's fiat-crypto field arithmetic).
fn x25519(c: &mut Criterion) {
    use ring::agreement::{agree_ephemeral, EphemeralPrivateKey, UnparsedPublicKey, X25519};
    let peer_secret = x25519_dalek::StaticSecret::from([9u8; 32]);
    let peer = *x25519_dalek::PublicKey::from(&peer_secret).as_bytes();
    let rng = ring::rand::SystemRandom::new();
    let mut g = c.benchmark_group("x25519");
    g.throughput(Throughput::Elements(1));
    g.bench_function("dalek: key pair + shared secret", |b| {
        b.iter(|| {
            let mut bytes = [0u8; 32];
            getrandom::getrandom(&mut bytes).expect("rng");
            let secret = x25519_dalek::StaticSecret::from(bytes);
            let public = x25519_dalek::PublicKey::from(&secret);
            let shared = secret.diffie_hellman(&x25519_dalek::PublicKey::from(black_box(peer)));
            (public, *shared.as_bytes())
        })
    });
    let aws_rng = aws_lc_rs::rand::SystemRandom::new();
    g.bench_function("aws-lc-rs: key pair + shared secret", |b| {
        use aws_lc_rs::agreement as aws;
        b.iter(|| {
            let secret = aws::EphemeralPrivateKey::generate(&aws::X25519, &aws_rng).expect("rng");
            let public = secret.compute_public_key().expect("public key");
            let shared = aws::agree_ephemeral(
                secret,
                aws::UnparsedPublicKey::new(&aws::X25519, black_box(&peer)),
                aws_lc_rs::error::Unspecified,
                |s| Ok(<[u8; 32]>::try_from(s).expect("32 bytes")),
            )
            .expect("valid key");
            (public.as_ref().len(), shared)
        })
    });
    g.bench_function("ring: key pair + shared secret", |b| {
        b.iter(|| {
            let secret = EphemeralPrivateKey::generate(&X25519, &rng).expect("rng");
            let public = secret.compute_public_key().expect("public key");
            let shared = agree_ephemeral(
                secret,
                &UnparsedPublicKey::new(&X25519, black_box(&peer)),
                |s| <[u8; 32]>::try_from(s).expect("32 bytes"),
            )
            .expect("valid key");
            (public.as_ref().len(), shared)
        })
    });
    g.finish();
}

criterion_group!(benches, codec, fan_out_cost, handshake, x25519);
criterion_main!(benches);
