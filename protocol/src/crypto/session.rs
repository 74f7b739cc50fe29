//! A connection's AES key and IV, and what is sealed and opened with them: payloads as
//! base64 of AES-128-CBC with PKCS#7, and the msgKey integrity tags of SEND and RECV
//! (PROTOCOL.md §7.3–§7.5).

use super::{constant_time_eq, hex32, hex_lower, peer_key, private_key, BASE64};
use crate::error::CryptoError;
use aes::cipher::{
    block_padding::Pkcs7, BlockDecryptMut, BlockEncryptMut, InnerIvInit, KeyInit, KeyIvInit,
};
use aws_lc_rs::agreement::{agree, PrivateKey, UnparsedPublicKey, X25519};
use base64::Engine as _;
use md5::{Digest, Md5};

// The encrypt-only and decrypt-only ciphers: each key schedule is half of `aes::Aes128`'s.
type Aes128CbcEnc = cbc::Encryptor<aes::Aes128Enc>;
type Aes128CbcDec = cbc::Decryptor<aes::Aes128Dec>;

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
    pub(super) fn agree(
        key: &PrivateKey,
        peer: &[u8; 32],
        salt: &str,
    ) -> Result<SessionCipher, CryptoError> {
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
        // One key schedule serves both CBC passes, the payload's and the sign string's.
        let (wire, buffers) = scratch.split();
        let aes = aes::Aes128Enc::new(&self.key.into());
        self.encrypt_b64_into(&aes, plain, buffers.ct, wire);
        let key = self.recv_key_into(&aes, head, wire, buffers);
        (&wire[..], key)
    }

    /// The client's side of [`SessionCipher::seal_recv_into`], as the SDKs do before they
    /// RECVACK and with no allocation once `scratch` has grown: checks the msgKey over
    /// `head`'s fields and `payload` (the base64 ciphertext as received) against `msg_key`,
    /// then decrypts. The plain payload borrows `scratch` until its next use.
    ///
    /// # Errors
    /// [`CryptoError::MsgKeyMismatch`], [`CryptoError::BadBase64`] or
    /// [`CryptoError::BadCiphertext`].
    pub fn open_recv_into<'s>(
        &self,
        head: &crate::RecvHead<'_>,
        payload: &[u8],
        msg_key: &[u8],
        scratch: &'s mut SealScratch,
    ) -> Result<&'s [u8], CryptoError> {
        let (wire, buffers) = scratch.split();
        let aes = aes::Aes128Enc::new(&self.key.into());
        let expected = self.recv_key_into(&aes, head, payload, buffers);
        if !constant_time_eq(&expected, msg_key) {
            return Err(CryptoError::MsgKeyMismatch);
        }
        // The plain payload is decrypted in place in `wire`, free here.
        let ct = wire;
        ct.resize(base64::decoded_len_estimate(payload.len()), 0);
        let n = BASE64
            .decode_slice(payload, ct)
            .map_err(|_| CryptoError::BadBase64)?;
        Aes128CbcDec::new(&self.key.into(), &self.iv.into())
            .decrypt_padded_mut::<Pkcs7>(&mut ct[..n])
            .map_err(|_| CryptoError::BadCiphertext)
    }

    /// The RECV msgKey, `hex(MD5(base64(AES(sign))))`, over `head`'s fields and `wire`
    /// (the payload as it goes on the wire), with `aes` as this cipher's key schedule.
    fn recv_key_into(
        &self,
        aes: &aes::Aes128Enc,
        head: &crate::RecvHead<'_>,
        wire: &[u8],
        buffers: SignBuffers<'_>,
    ) -> [u8; 32] {
        let SignBuffers { ct, sign, sign_b64 } = buffers;
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
        self.encrypt_b64_into(aes, sign, ct, sign_b64);
        hex32(&Md5::digest(&sign_b64[..]).into())
    }

    /// `base64(AES-128-CBC-PKCS7(plain))` into `out`, with `ct` as the ciphertext's room.
    fn encrypt_b64_into(
        &self,
        aes: &aes::Aes128Enc,
        plain: &[u8],
        ct: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) {
        let padded = (plain.len() / 16 + 1) * 16;
        ct.resize(padded, 0);
        // Neither can fail: `ct` holds the padded length exactly, and a message is far
        // below any length whose base64 overflows. An empty payload under a valid msgKey
        // must never go out instead, so a broken invariant stops here.
        let sealed = Aes128CbcEnc::inner_iv_init(aes.clone(), &self.iv.into())
            .encrypt_padded_b2b_mut::<Pkcs7>(plain, ct)
            .expect("the buffer holds the PKCS#7-padded length");
        let len = base64::encoded_len(sealed.len(), true).expect("a message's base64 length");
        out.resize(len, 0);
        let n = BASE64
            .encode_slice(sealed, out)
            .expect("the buffer holds the base64 length");
        out.truncate(n);
    }

    /// Checks a RECV's msgKey and decrypts its payload; allocates (the load client uses
    /// [`SessionCipher::open_recv_into`]).
    ///
    /// # Errors
    /// As [`SessionCipher::open_recv_into`].
    pub fn open_recv(&self, recv: &crate::RecvPacket) -> Result<Vec<u8>, CryptoError> {
        let mut scratch = SealScratch::default();
        self.open_recv_into(
            &recv.head(),
            &recv.payload,
            recv.msg_key.as_bytes(),
            &mut scratch,
        )
        .map(<[u8]>::to_vec)
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

/// The buffers of a [`SealScratch`] a msgKey is computed in: all but the payload's.
struct SignBuffers<'a> {
    ct: &'a mut Vec<u8>,
    sign: &'a mut Vec<u8>,
    sign_b64: &'a mut Vec<u8>,
}

impl SealScratch {
    /// The payload's buffer, and the others as a msgKey's.
    fn split(&mut self) -> (&mut Vec<u8>, SignBuffers<'_>) {
        let SealScratch {
            ct,
            wire,
            sign,
            sign_b64,
        } = self;
        (wire, SignBuffers { ct, sign, sign_b64 })
    }

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
