//! The encryption layer (PROTOCOL.md §7): X25519 key exchange, the AES key and IV derived
//! as 16 ASCII characters each, AES-128-CBC with PKCS#7 over base64 text, and the msgKey
//! integrity tags of SEND and RECV.
//!
//! Each connection keeps one [`SessionCipher`] (32 bytes). Nothing here does I/O except
//! drawing randomness from the OS for a new key pair and salt.

use crate::error::CryptoError;
use aws_lc_rs::agreement::{PrivateKey, X25519};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

mod session;
#[cfg(test)]
mod tests;

pub use session::{SealScratch, SessionCipher};

/// The characters a salt is drawn from (PROTOCOL.md §7.1).
const SALT_ALPHABET: &[u8; 62] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";

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
