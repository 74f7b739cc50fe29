//! Errors of the codec and the crypto. Incomplete input is not an error: decoders return
//! `Ok(None)` when they need more bytes.

/// A frame that cannot be decoded. The connection that sent it should be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The fixed header names packet type 0 or 13–15.
    #[error("unknown packet type {0}")]
    UnknownType(u8),
    /// The remaining length exceeds the configured maximum (checked before buffering).
    #[error("frame body of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Declared body length.
        len: usize,
        /// Configured maximum.
        max: usize,
    },
    /// The remaining-length field is malformed (a continuation bit on the 4th byte).
    #[error("malformed remaining length")]
    BadLength,
    /// The body ended before a required field.
    #[error("{packet} body ends inside field {field}")]
    Truncated {
        /// Packet name.
        packet: &'static str,
        /// Field name.
        field: &'static str,
    },
    /// A string is not valid UTF-8 (official SDKs throw on such strings, so we never
    /// accept one to pass on).
    #[error("{packet} field {field} is not valid UTF-8")]
    InvalidUtf8 {
        /// Packet name.
        packet: &'static str,
        /// Field name.
        field: &'static str,
    },
    /// A string length has the top bit set (the reference decoder reads it as negative).
    #[error("{packet} field {field} declares a string longer than 32767 bytes")]
    StringTooLong {
        /// Packet name.
        packet: &'static str,
        /// Field name.
        field: &'static str,
    },
}

/// Failure of the encryption layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// The client's public key is empty.
    #[error("client key is empty")]
    EmptyClientKey,
    /// The client's public key is not base64 of at least 32 bytes.
    #[error("client key is not base64 of a 32-byte X25519 public key")]
    BadClientKey,
    /// A payload is not valid base64.
    #[error("payload is not valid base64")]
    BadBase64,
    /// AES decryption failed (wrong length or padding).
    #[error("payload does not decrypt (length or padding)")]
    BadCiphertext,
    /// The msgKey does not match the packet.
    #[error("msgKey mismatch")]
    MsgKeyMismatch,
    /// The OS random source failed.
    #[error("no randomness available: {0}")]
    Random(String),
}
