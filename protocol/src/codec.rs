//! Field-level reading and writing shared by every packet (PROTOCOL.md §1).
//!
//! [`Reader`] walks one frame body and turns a short body into a typed
//! [`DecodeError::Truncated`] naming the packet and field; nothing here can panic on
//! network input. Writers append to a caller's `BytesMut` with no intermediate allocation.

use crate::error::DecodeError;
use bytes::{BufMut, Bytes, BytesMut};

/// Longest string either side may send: the Go decoder reads the length as `i16`.
pub const MAX_STRING_BYTES: usize = 32_767;

/// A cursor over one frame body.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    packet: &'static str,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8], packet: &'static str) -> Self {
        Reader {
            buf,
            pos: 0,
            packet,
        }
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).filter(|&end| end <= self.buf.len());
        let Some(end) = end else {
            return Err(DecodeError::Truncated {
                packet: self.packet,
                field,
            });
        };
        let bytes = &self.buf[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    pub fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    pub fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    pub fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array(field)?))
    }

    pub fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    pub fn i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array(field)?))
    }

    /// A `u16`-length-prefixed UTF-8 string.
    pub fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let len = u16::from_be_bytes(self.array(field)?) as usize;
        if len > MAX_STRING_BYTES {
            return Err(DecodeError::StringTooLong {
                packet: self.packet,
                field,
            });
        }
        let bytes = self.take(len, field)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| DecodeError::InvalidUtf8 {
                packet: self.packet,
                field,
            })
    }

    /// Every byte left: the payload, which is always the last field.
    pub fn rest(&mut self) -> Bytes {
        let rest = Bytes::copy_from_slice(&self.buf[self.pos..]);
        self.pos = self.buf.len();
        rest
    }
}

/// An encoder was given a string the wire format cannot carry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{packet} field {field} is {len} bytes; the protocol allows at most 32767")]
pub struct EncodeError {
    /// Packet name.
    pub packet: &'static str,
    /// Field name.
    pub field: &'static str,
    /// The string's length.
    pub len: usize,
}

/// The wire size of a string field, or an error when it is too long to encode.
pub(crate) fn str_len(
    s: &str,
    packet: &'static str,
    field: &'static str,
) -> Result<usize, EncodeError> {
    if s.len() > MAX_STRING_BYTES {
        return Err(EncodeError {
            packet,
            field,
            len: s.len(),
        });
    }
    Ok(2 + s.len())
}

/// Appends a string field. The caller has checked the length with [`str_len`].
pub(crate) fn put_str(buf: &mut BytesMut, s: &str) {
    debug_assert!(s.len() <= MAX_STRING_BYTES);
    buf.put_u16(s.len() as u16);
    buf.put_slice(s.as_bytes());
}

/// Appends the fixed header byte and remaining length, reserving room for the body.
pub(crate) fn put_header(buf: &mut BytesMut, header: u8, body_len: usize) {
    buf.reserve(1 + crate::frame::length_len(body_len) + body_len);
    buf.put_u8(header);
    crate::frame::put_length(buf, body_len);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_fields_name_the_packet_and_field() {
        let mut r = Reader::new(&[0, 5, b'a'], "SEND");
        assert_eq!(
            r.string("client_msg_no"),
            Err(DecodeError::Truncated {
                packet: "SEND",
                field: "client_msg_no"
            })
        );
    }

    #[test]
    fn negative_string_lengths_are_refused() {
        let mut r = Reader::new(&[0x80, 0x00], "CONNECT");
        assert!(matches!(
            r.string("uid"),
            Err(DecodeError::StringTooLong { .. })
        ));
    }

    #[test]
    fn invalid_utf8_is_refused() {
        let mut r = Reader::new(&[0, 2, 0xC3, 0x28], "CONNECT");
        assert!(matches!(
            r.string("uid"),
            Err(DecodeError::InvalidUtf8 { .. })
        ));
    }

    #[test]
    fn long_strings_cannot_be_encoded() {
        let long = "x".repeat(MAX_STRING_BYTES + 1);
        assert!(str_len(&long, "RECV", "payload").is_err());
        assert_eq!(str_len("ab", "RECV", "x"), Ok(4));
    }
}
