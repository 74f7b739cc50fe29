//! The encryption layer (PROTOCOL.md §7): X25519 key exchange, the AES key and IV derived
//! as 16 ASCII characters each, AES-128-CBC with PKCS#7 over base64 text, and the msgKey
//! integrity tags of SEND and RECV.
//!
//! Each connection keeps one [`SessionCipher`] (32 bytes). Nothing here does I/O except
//! drawing randomness from the OS for a new key pair and salt.

use crate::error::CryptoError;
use aes::cipher::{block_padding::Pkcs7, BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use aws_lc_rs::agreement::{agree, PrivateKey, UnparsedPublicKey, X25519};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use md5::{Digest, Md5};

type Aes128CbcEnc = cbc::Encryptor<aes::Aes128>;
type Aes128CbcDec = cbc::Decryptor<aes::Aes128>;

/// The characters a salt is drawn from (PROTOCOL.md §7.1).
const SALT_ALPHABET: &[u8; 62] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";

/// A connection's AES key and IV: 16 ASCII bytes each.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SessionCipher {
    key: [u8; 16],
    iv: [u8; 16],
}

impl std::fmt::Debug for SessionCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.write_str("SessionCipher(..)")
    }
}

/// The server's half of a key exchange: what goes into CONNACK, and the cipher to keep.
#[derive(Debug, Clone)]
pub struct ServerHandshake {
    /// The server's public key, standard base64 (CONNACK `server_key`).
    pub server_key: String,
    /// The IV as 16 ASCII characters (CONNACK `salt`).
    pub salt: String,
    /// The connection's cipher.
    pub cipher: SessionCipher,
}

/// Fills `buf` from the OS random source.
fn random_bytes(buf: &mut [u8]) -> Result<(), CryptoError> {
    getrandom::getrandom(buf).map_err(|e| CryptoError::Random(e.to_string()))
}

/// A fresh X25519 private key.
///
/// # Errors
/// When the OS has no randomness to give.
pub fn random_secret() -> Result<[u8; 32], CryptoError> {
    let mut secret = [0u8; 32];
    random_bytes(&mut secret)?;
    Ok(secret)
}

/// A fresh 16-character salt from `[0-9a-zA-Z]`.
///
/// # Errors
/// When the OS has no randomness to give.
pub fn random_salt() -> Result<String, CryptoError> {
    let mut raw = [0u8; 16];
    random_bytes(&mut raw)?;
    // 256 % 62 leaves a slight bias toward the first characters; an IV needs uniqueness,
    // not uniformity, and it is sent in the clear anyway.
    Ok(raw
        .iter()
        .map(|b| SALT_ALPHABET[*b as usize % 62] as char)
        .collect())
}

/// The X25519 private key of `secret` (any 32 bytes: clamped as RFC 7748 says).
fn private_key(secret: &[u8; 32]) -> Option<PrivateKey> {
    PrivateKey::from_private_key(&X25519, secret).ok()
}

/// The public key of `secret`, standard base64.
pub fn public_key_b64(secret: [u8; 32]) -> String {
    private_key(&secret)
        .and_then(|k| k.compute_public_key().ok())
        .map_or_else(String::new, |p| BASE64.encode(p.as_ref()))
}

/// The server side of the exchange with a fresh key pair and salt.
///
/// Two X25519 multiplications (the key pair, the shared secret), most of what a login with
/// encryption costs the server: aws-lc-rs's X25519 (s2n-bignum's assembly) does both in
/// about 35 µs on the machine in BENCHMARKS.md, against 66 µs for ring's and 70–82 µs for
/// x25519-dalek's, which this crate used before (`cargo bench -p ruyi-proto --bench codec
/// -- x25519`: the three side by side).
///
/// # Errors
/// [`CryptoError::EmptyClientKey`] or [`CryptoError::BadClientKey`] for a client key that
/// cannot be used, [`CryptoError::Random`] when the OS has no randomness.
pub fn server_handshake(client_key_b64: &str) -> Result<ServerHandshake, CryptoError> {
    server_handshake_with(client_key_b64, random_secret()?, &random_salt()?)
}

/// The server side of the exchange with a given private key and salt (tests, vectors).
///
/// # Errors
/// As [`server_handshake`].
pub fn server_handshake_with(
    client_key_b64: &str,
    secret: [u8; 32],
    salt: &str,
) -> Result<ServerHandshake, CryptoError> {
    let peer = peer_key(client_key_b64)?;
    let key = private_key(&secret).ok_or(CryptoError::BadClientKey)?;
    let public = key
        .compute_public_key()
        .map_err(|_| CryptoError::BadClientKey)?;
    Ok(ServerHandshake {
        server_key: BASE64.encode(public.as_ref()),
        salt: salt.to_owned(),
        cipher: SessionCipher::agree(&key, &peer, salt)?,
    })
}

/// A peer's public key: standard base64, of which the first 32 bytes are used.
fn peer_key(b64: &str) -> Result<[u8; 32], CryptoError> {
    if b64.is_empty() {
        return Err(CryptoError::EmptyClientKey);
    }
    let peer = BASE64.decode(b64).map_err(|_| CryptoError::BadClientKey)?;
    peer.get(..32)
        .and_then(|b| b.try_into().ok())
        .ok_or(CryptoError::BadClientKey)
}

impl SessionCipher {
    /// Derives the cipher from our private key, the peer's public key (standard base64,
    /// first 32 bytes used) and the salt (first 16 characters used), as both sides do.
    ///
    /// # Errors
    /// [`CryptoError::EmptyClientKey`], or [`CryptoError::BadClientKey`] when the key is not
    /// base64 of at least 32 bytes or the salt is shorter than 16 bytes.
    pub fn derive(
        our_secret: [u8; 32],
        peer_key_b64: &str,
        salt: &str,
    ) -> Result<SessionCipher, CryptoError> {
        let peer = peer_key(peer_key_b64)?;
        let key = private_key(&our_secret).ok_or(CryptoError::BadClientKey)?;
        SessionCipher::agree(&key, &peer, salt)
    }

    /// The cipher from our key and the peer's. A peer key of low order (the shared secret
    /// all zeros, which anyone could compute) is refused as a bad key.
    fn agree(key: &PrivateKey, peer: &[u8; 32], salt: &str) -> Result<SessionCipher, CryptoError> {
        let shared: [u8; 32] = agree(
            key,
            UnparsedPublicKey::new(&X25519, peer),
            CryptoError::BadClientKey,
            |s| s.try_into().map_err(|_| CryptoError::BadClientKey),
        )?;
        SessionCipher::from_shared(&shared, salt)
    }

    /// The cipher from the X25519 shared secret: the key is the first 16 hex digits of
    /// MD5(base64(secret)), the IV the salt's first 16 bytes.
    fn from_shared(shared: &[u8; 32], salt: &str) -> Result<SessionCipher, CryptoError> {
        let digest = Md5::digest(BASE64.encode(shared).as_bytes());
        let hex = hex_lower(&digest);
        let mut key = [0u8; 16];
        key.copy_from_slice(&hex.as_bytes()[..16]);
        let iv: [u8; 16] = salt
            .as_bytes()
            .get(..16)
            .and_then(|b| b.try_into().ok())
            .ok_or(CryptoError::BadClientKey)?;
        Ok(SessionCipher { key, iv })
    }

    /// Builds a cipher from a known key and IV (16 ASCII bytes each).
    pub fn from_parts(key: [u8; 16], iv: [u8; 16]) -> SessionCipher {
        SessionCipher { key, iv }
    }

    /// The AES key as its 16 ASCII characters (for tests against the spec's vectors).
    pub fn key(&self) -> &[u8; 16] {
        &self.key
    }

    /// `base64(AES-128-CBC-PKCS7(plain))`, the wire form of an encrypted payload.
    pub fn encrypt_b64(&self, plain: &[u8]) -> String {
        let ct = Aes128CbcEnc::new(&self.key.into(), &self.iv.into())
            .encrypt_padded_vec_mut::<Pkcs7>(plain);
        BASE64.encode(ct)
    }

    /// The inverse of [`SessionCipher::encrypt_b64`].
    ///
    /// # Errors
    /// [`CryptoError::BadBase64`] or [`CryptoError::BadCiphertext`].
    pub fn decrypt_b64(&self, b64: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let ct = BASE64.decode(b64).map_err(|_| CryptoError::BadBase64)?;
        Aes128CbcDec::new(&self.key.into(), &self.iv.into())
            .decrypt_padded_vec_mut::<Pkcs7>(&ct)
            .map_err(|_| CryptoError::BadCiphertext)
    }

    /// `hex(MD5(base64(AES(sign))))`: the msgKey over a sign string.
    pub fn msg_key(&self, sign: &[u8]) -> String {
        hex_lower(&Md5::digest(self.encrypt_b64(sign).as_bytes()))
    }

    /// The msgKey a client puts on a SEND (PROTOCOL.md §7.4). `payload` is exactly as sent.
    pub fn send_msg_key(
        &self,
        client_seq: u32,
        client_msg_no: &str,
        channel_id: &str,
        channel_type: u8,
        payload: &[u8],
    ) -> String {
        let mut sign =
            Vec::with_capacity(32 + client_msg_no.len() + channel_id.len() + payload.len());
        sign.extend_from_slice(client_seq.to_string().as_bytes());
        sign.extend_from_slice(client_msg_no.as_bytes());
        sign.extend_from_slice(channel_id.as_bytes());
        sign.extend_from_slice(channel_type.to_string().as_bytes());
        sign.extend_from_slice(payload);
        self.msg_key(&sign)
    }

    /// The msgKey the server puts on a RECV (PROTOCOL.md §7.5), over the values exactly as
    /// written into this RECV (rewritten channel id, possibly empty from_uid, this
    /// connection's ciphertext).
    #[allow(clippy::too_many_arguments)] // One argument per signed field, in spec order.
    pub fn recv_msg_key(
        &self,
        message_id: i64,
        message_seq: u32,
        client_msg_no: &str,
        timestamp: i32,
        from_uid: &str,
        channel_id: &str,
        channel_type: u8,
        payload: &[u8],
    ) -> String {
        let mut sign = Vec::with_capacity(
            64 + client_msg_no.len() + from_uid.len() + channel_id.len() + payload.len(),
        );
        for part in [
            message_id.to_string().as_bytes(),
            message_seq.to_string().as_bytes(),
            client_msg_no.as_bytes(),
            timestamp.to_string().as_bytes(),
            from_uid.as_bytes(),
            channel_id.as_bytes(),
            channel_type.to_string().as_bytes(),
            payload,
        ] {
            sign.extend_from_slice(part);
        }
        self.msg_key(&sign)
    }

    /// Encrypts `plain` for one RECV and computes the msgKey over that RECV's fields and the
    /// new ciphertext. Returns `(payload, msg_key)` to pass to
    /// [`crate::RecvPacket::encode_with`]. Allocates; the delivery path uses
    /// [`SessionCipher::seal_recv_into`].
    pub fn seal_recv(&self, recv: &crate::RecvPacket, plain: &[u8]) -> (String, String) {
        let mut scratch = SealScratch::default();
        let (wire, key) = self.seal_recv_into(&recv.head(), plain, &mut scratch);
        (
            String::from_utf8_lossy(wire).into_owned(),
            String::from_utf8_lossy(&key).into_owned(),
        )
    }

    /// The server's per-connection work in a delivery, with no allocation once `scratch`
    /// has grown to the largest message: `base64(AES-128-CBC(plain))` as the payload, and
    /// the msgKey over `head`'s fields and that payload (PROTOCOL.md §7.5), as lowercase
    /// hex. The payload borrows `scratch` until its next use.
    pub fn seal_recv_into<'s>(
        &self,
        head: &crate::RecvHead<'_>,
        plain: &[u8],
        scratch: &'s mut SealScratch,
    ) -> (&'s [u8], [u8; 32]) {
        let SealScratch {
            ct,
            wire,
            sign,
            sign_b64,
        } = scratch;
        self.encrypt_b64_into(plain, ct, wire);
        // The sign string, in spec order, integers in decimal.
        let mut int = itoa::Buffer::new();
        sign.clear();
        sign.extend_from_slice(int.format(head.message_id).as_bytes());
        sign.extend_from_slice(int.format(head.message_seq).as_bytes());
        sign.extend_from_slice(head.client_msg_no.as_bytes());
        sign.extend_from_slice(int.format(head.timestamp).as_bytes());
        sign.extend_from_slice(head.from_uid.as_bytes());
        sign.extend_from_slice(head.channel_id.as_bytes());
        sign.extend_from_slice(int.format(head.channel_type).as_bytes());
        sign.extend_from_slice(wire);
        // msgKey = hex(MD5(base64(AES(sign)))); `ct` is free again.
        self.encrypt_b64_into(sign, ct, sign_b64);
        let key = hex32(&Md5::digest(&sign_b64[..]).into());
        (&wire[..], key)
    }

    /// `base64(AES-128-CBC-PKCS7(plain))` into `out`, with `ct` as the ciphertext's room.
    fn encrypt_b64_into(&self, plain: &[u8], ct: &mut Vec<u8>, out: &mut Vec<u8>) {
        let padded = (plain.len() / 16 + 1) * 16;
        ct.resize(padded, 0);
        // Neither can fail: `ct` holds the padded length exactly, and a message is far
        // below any length whose base64 overflows. An empty payload under a valid msgKey
        // must never go out instead, so a broken invariant stops here.
        let sealed = Aes128CbcEnc::new(&self.key.into(), &self.iv.into())
            .encrypt_padded_b2b_mut::<Pkcs7>(plain, ct)
            .expect("the buffer holds the PKCS#7-padded length");
        let len = base64::encoded_len(sealed.len(), true).expect("a message's base64 length");
        out.resize(len, 0);
        let n = BASE64
            .encode_slice(sealed, out)
            .expect("the buffer holds the base64 length");
        out.truncate(n);
    }

    /// The RECV msgKey over `recv`'s fields with `payload` as the ciphertext.
    fn recv_msg_key_of(&self, recv: &crate::RecvPacket, payload: &[u8]) -> String {
        self.recv_msg_key(
            recv.message_id,
            recv.message_seq,
            &recv.client_msg_no,
            recv.timestamp,
            &recv.from_uid,
            &recv.channel_id,
            recv.channel_type,
            payload,
        )
    }

    /// The client's side of [`SessionCipher::seal_recv`]: checks a RECV's msgKey and
    /// decrypts its payload, as the SDKs do before they RECVACK.
    ///
    /// # Errors
    /// [`CryptoError::MsgKeyMismatch`], [`CryptoError::BadBase64`] or
    /// [`CryptoError::BadCiphertext`].
    pub fn open_recv(&self, recv: &crate::RecvPacket) -> Result<Vec<u8>, CryptoError> {
        let expected = self.recv_msg_key_of(recv, &recv.payload);
        if !constant_time_eq(expected.as_bytes(), recv.msg_key.as_bytes()) {
            return Err(CryptoError::MsgKeyMismatch);
        }
        self.decrypt_b64(&recv.payload)
    }

    /// Checks a SEND's msgKey and decrypts its payload: the server's step 3 of the SEND
    /// pipeline (PROTOCOL.md §9.1). Returns the plain payload.
    ///
    /// # Errors
    /// [`CryptoError::MsgKeyMismatch`], [`CryptoError::BadBase64`] or
    /// [`CryptoError::BadCiphertext`]; all map to SENDACK reason 9.
    pub fn open_send(&self, send: &crate::SendPacket) -> Result<Vec<u8>, CryptoError> {
        let expected = self.send_msg_key(
            send.client_seq,
            &send.client_msg_no,
            &send.channel_id,
            send.channel_type,
            &send.payload,
        );
        if !constant_time_eq(expected.as_bytes(), send.msg_key.as_bytes()) {
            return Err(CryptoError::MsgKeyMismatch);
        }
        self.decrypt_b64(&send.payload)
    }
}

/// Reusable buffers for [`SessionCipher::seal_recv_into`]: one per thread that seals
/// RECVs (each event loop keeps one). They grow to about six times the largest payload
/// sealed; [`SealScratch::trim`] gives back what a rare large message left.
#[derive(Debug, Default)]
pub struct SealScratch {
    /// A ciphertext before its base64.
    ct: Vec<u8>,
    /// The payload as it goes on the wire.
    wire: Vec<u8>,
    /// The msgKey's sign string, and its base64 ciphertext.
    sign: Vec<u8>,
    sign_b64: Vec<u8>,
}

impl SealScratch {
    /// What the buffers keep between deliveries at most.
    pub const KEEP_BYTES: usize = 64 << 10;

    /// Shrinks any buffer above [`SealScratch::KEEP_BYTES`] back to it: a loop that sealed
    /// one megabyte message does not hold six megabytes for ever.
    pub fn trim(&mut self) {
        for buf in [
            &mut self.ct,
            &mut self.wire,
            &mut self.sign,
            &mut self.sign_b64,
        ] {
            if buf.capacity() > Self::KEEP_BYTES {
                buf.clear();
                buf.shrink_to(Self::KEEP_BYTES);
            }
        }
    }
}

/// Lowercase hex of an MD5 digest, on the stack.
fn hex32(digest: &[u8; 16]) -> [u8; 32] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 32];
    for (i, b) in digest.iter().enumerate() {
        out[2 * i] = HEX[(b >> 4) as usize];
        out[2 * i + 1] = HEX[(b & 15) as usize];
    }
    out
}

/// Lowercase hex of `bytes`.
fn hex_lower(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s
}

/// Compares without an early exit, so the time taken does not tell how much matched.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq_secret(first: u8) -> [u8; 32] {
        std::array::from_fn(|i| first + i as u8)
    }

    /// PROTOCOL.md §7.7.
    #[test]
    fn protocol_spec_vector() {
        let client = seq_secret(0x01);
        let server = seq_secret(0x21);
        assert_eq!(
            public_key_b64(client),
            "B6N8vBQgk8i3VdwbEOhstCY3StFqqFPtC9/AsrhtHHw="
        );
        let hs =
            server_handshake_with(&public_key_b64(client), server, "abcdefghijklmnop").unwrap();
        assert_eq!(
            hs.server_key,
            "WGmv9FBUlzLLqu1eXfmzCm2jHLDldCutWtShp2jxpns="
        );
        assert_eq!(hs.cipher.key(), b"8e65549ac3e59ba4");
        let c = hs.cipher;
        let wire = c.encrypt_b64(br#"{"type":1,"content":"hello"}"#);
        assert_eq!(wire, "osCCSwLzwq49FmcOr6wm5Eq4gRt1+XlTSgMpSihyz+E=");
        assert_eq!(
            c.send_msg_key(1, "m1", "u2", 1, wire.as_bytes()),
            "b525c8119e390dcd2ac25dc926576999"
        );
        assert_eq!(
            c.recv_msg_key(
                123_456_789,
                7,
                "m1",
                1_700_000_000,
                "u1",
                "u1",
                1,
                wire.as_bytes()
            ),
            "e052cd992b342b8a75e54c3f53f561cc"
        );
        // The client derives the same cipher from its side.
        let client_side = SessionCipher::derive(client, &hs.server_key, &hs.salt).unwrap();
        assert_eq!(client_side, c);
    }

    #[test]
    fn decrypt_inverts_encrypt_and_rejects_garbage() {
        let c = SessionCipher::from_parts(*b"0123456789abcdef", *b"abcdefghijklmnop");
        for plain in [&b""[..], b"x", b"exactly sixteen!", &[7u8; 1000]] {
            assert_eq!(
                c.decrypt_b64(c.encrypt_b64(plain).as_bytes()).unwrap(),
                plain
            );
        }
        assert_eq!(c.decrypt_b64(b"not base64!"), Err(CryptoError::BadBase64));
        assert_eq!(c.decrypt_b64(b"AAAA"), Err(CryptoError::BadCiphertext));
    }

    #[test]
    fn a_sealed_recv_opens_and_a_tampered_one_does_not() {
        let c = SessionCipher::from_parts(*b"0123456789abcdef", *b"abcdefghijklmnop");
        let mut recv = crate::RecvPacket {
            from_uid: "u1".into(),
            channel_id: "u1".into(),
            channel_type: 1,
            message_id: 42,
            message_seq: 7,
            ..Default::default()
        };
        let (wire, key) = c.seal_recv(&recv, b"plain");
        recv.payload = bytes::Bytes::from(wire.into_bytes());
        recv.msg_key = key;
        assert_eq!(c.open_recv(&recv).unwrap(), b"plain");
        recv.channel_id = "u2".into();
        assert_eq!(c.open_recv(&recv), Err(CryptoError::MsgKeyMismatch));
    }

    #[test]
    fn bad_client_keys_are_refused() {
        let s = seq_secret(1);
        assert_eq!(
            server_handshake_with("", s, "abcdefghijklmnop").unwrap_err(),
            CryptoError::EmptyClientKey
        );
        assert_eq!(
            server_handshake_with("***", s, "abcdefghijklmnop").unwrap_err(),
            CryptoError::BadClientKey
        );
        assert_eq!(
            server_handshake_with("AAAA", s, "abcdefghijklmnop").unwrap_err(),
            CryptoError::BadClientKey
        );
        // The fresh-key path refuses the same keys.
        for (key, err) in [
            ("", CryptoError::EmptyClientKey),
            ("***", CryptoError::BadClientKey),
            ("AAAA", CryptoError::BadClientKey),
        ] {
            assert_eq!(server_handshake(key).unwrap_err(), err, "{key:?}");
        }
    }

    #[test]
    fn client_keys_of_low_order_are_refused() {
        // Points whose shared secret is all zeros whatever the server's key (RFC 7748
        // §6.1): anyone could compute the session key.
        let order8: [u8; 32] = [
            0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f,
            0xc4, 0x6a, 0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16,
            0x5f, 0x49, 0xb8, 0x00,
        ];
        let mut one = [0u8; 32];
        one[0] = 1;
        for low in [[0u8; 32], one, order8] {
            assert_eq!(
                server_handshake(&BASE64.encode(low)).unwrap_err(),
                CryptoError::BadClientKey,
                "{low:?}"
            );
        }
    }

    #[test]
    fn a_fresh_server_handshake_agrees_with_the_client_side() {
        let mut server_keys = std::collections::HashSet::new();
        for first in [1u8, 50, 200] {
            let client = seq_secret(first);
            let hs = server_handshake(&public_key_b64(client)).unwrap();
            assert_eq!(hs.salt.len(), 16);
            assert_eq!(BASE64.decode(&hs.server_key).unwrap().len(), 32);
            // What an SDK does with the CONNACK: the same cipher on its side.
            let client_side = SessionCipher::derive(client, &hs.server_key, &hs.salt).unwrap();
            assert_eq!(client_side, hs.cipher);
            server_keys.insert(hs.server_key);
        }
        assert_eq!(server_keys.len(), 3, "a fresh key pair per handshake");
    }

    #[test]
    fn sealing_in_reused_buffers_matches_the_spec_path_whatever_came_before() {
        let cipher = SessionCipher::from_parts(*b"0123456789abcdef", *b"abcdefghijklmnop");
        let mut scratch = SealScratch::default();
        // Sizes up and down, so stale bytes of a longer earlier call would show.
        for (i, len) in [300usize, 0, 15, 16, 17, 100, 1, 4000, 33]
            .into_iter()
            .enumerate()
        {
            let recv = crate::RecvPacket {
                from_uid: format!("u{i}"),
                channel_id: if i % 2 == 0 {
                    "g".into()
                } else {
                    "a-much-longer-channel".into()
                },
                channel_type: [2, 255, 1][i % 3],
                client_msg_no: format!("{i:032x}"),
                message_id: if i == 3 { i64::MIN } else { -5 + i as i64 },
                message_seq: u32::MAX - i as u32,
                timestamp: i32::MIN + i as i32,
                ..Default::default()
            };
            let plain = vec![b'a' + i as u8; len];
            let wire = cipher.encrypt_b64(&plain);
            let key = cipher.recv_msg_key_of(&recv, wire.as_bytes());
            let (sealed, sealed_key) = cipher.seal_recv_into(&recv.head(), &plain, &mut scratch);
            assert_eq!(sealed, wire.as_bytes(), "payload, case {i}");
            assert_eq!(&sealed_key[..], key.as_bytes(), "msgKey, case {i}");
        }
        scratch.trim();
        let (sealed, _) = cipher.seal_recv_into(
            &crate::RecvPacket::default().head(),
            b"after a trim",
            &mut scratch,
        );
        assert_eq!(sealed, cipher.encrypt_b64(b"after a trim").as_bytes());
    }

    #[test]
    fn salts_are_sixteen_alphanumerics() {
        let salt = random_salt().unwrap();
        assert_eq!(salt.len(), 16);
        assert!(salt.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(salt, random_salt().unwrap());
    }
}
