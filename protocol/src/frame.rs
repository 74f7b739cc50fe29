//! The frame: fixed header byte, remaining length (base-128, at most 4 bytes), body.
//! PING and PONG are the header byte alone (PROTOCOL.md §2).
//!
//! [`peek_frame`] finds the next frame's boundaries without copying; it checks the declared
//! body length against the maximum *before* the body is buffered (STYLE §4), so a client
//! announcing a 100 MiB frame is rejected after at most 5 bytes.

use crate::error::DecodeError;

/// The reference server's maximum body size, 1 MiB (PROTOCOL.md §2.2).
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// Packet types (PROTOCOL.md §4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PacketType {
    /// 1, client → server.
    Connect = 1,
    /// 2, server → client.
    ConnAck = 2,
    /// 3, client → server.
    Send = 3,
    /// 4, server → client.
    SendAck = 4,
    /// 5, server → client.
    Recv = 5,
    /// 6, client → server.
    RecvAck = 6,
    /// 7, client → server; a single byte.
    Ping = 7,
    /// 8, server → client; a single byte.
    Pong = 8,
    /// 9, both ways.
    Disconnect = 9,
    /// 10, client → server.
    Sub = 10,
    /// 11, server → client.
    SubAck = 11,
    /// 12, server → client.
    Event = 12,
}

impl PacketType {
    /// The type in a fixed header byte, or an error for 0 and 13–15.
    pub fn from_header(byte: u8) -> Result<PacketType, DecodeError> {
        Ok(match byte >> 4 {
            1 => PacketType::Connect,
            2 => PacketType::ConnAck,
            3 => PacketType::Send,
            4 => PacketType::SendAck,
            5 => PacketType::Recv,
            6 => PacketType::RecvAck,
            7 => PacketType::Ping,
            8 => PacketType::Pong,
            9 => PacketType::Disconnect,
            10 => PacketType::Sub,
            11 => PacketType::SubAck,
            12 => PacketType::Event,
            other => return Err(DecodeError::UnknownType(other)),
        })
    }

    /// The packet's name, for errors and logs.
    pub const fn name(self) -> &'static str {
        match self {
            PacketType::Connect => "CONNECT",
            PacketType::ConnAck => "CONNACK",
            PacketType::Send => "SEND",
            PacketType::SendAck => "SENDACK",
            PacketType::Recv => "RECV",
            PacketType::RecvAck => "RECVACK",
            PacketType::Ping => "PING",
            PacketType::Pong => "PONG",
            PacketType::Disconnect => "DISCONNECT",
            PacketType::Sub => "SUB",
            PacketType::SubAck => "SUBACK",
            PacketType::Event => "EVENT",
        }
    }
}

/// Where one complete frame lies in a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameInfo {
    /// The fixed header byte (type and flags).
    pub header: u8,
    /// The packet type.
    pub packet_type: PacketType,
    /// Bytes of the fixed header plus the length field.
    pub header_len: usize,
    /// Bytes of the body.
    pub body_len: usize,
}

impl FrameInfo {
    /// Total bytes of the frame.
    pub fn frame_len(&self) -> usize {
        self.header_len + self.body_len
    }
}

/// Looks at the start of `buf` for one whole frame.
///
/// Returns `Ok(None)` when more bytes are needed, `Ok(Some(info))` when a whole frame is
/// present, and an error for an unknown type, a malformed length, or a body longer than
/// `max_body` (reported as soon as the length is known, before the body arrives).
pub fn peek_frame(buf: &[u8], max_body: usize) -> Result<Option<FrameInfo>, DecodeError> {
    let Some(&header) = buf.first() else {
        return Ok(None);
    };
    let packet_type = PacketType::from_header(header)?;
    if matches!(packet_type, PacketType::Ping | PacketType::Pong) {
        return Ok(Some(FrameInfo {
            header,
            packet_type,
            header_len: 1,
            body_len: 0,
        }));
    }
    let Some((body_len, len_bytes)) = decode_length(&buf[1..])? else {
        return Ok(None);
    };
    if body_len > max_body {
        return Err(DecodeError::TooLarge {
            len: body_len,
            max: max_body,
        });
    }
    let info = FrameInfo {
        header,
        packet_type,
        header_len: 1 + len_bytes,
        body_len,
    };
    Ok((buf.len() >= info.frame_len()).then_some(info))
}

/// Decodes a remaining length: `(value, bytes used)`, or `None` if the field is not
/// complete yet. The field is at most 4 bytes; a 4th byte with the continuation bit is an
/// error (the reference stops there and misreads the rest, we refuse).
pub fn decode_length(buf: &[u8]) -> Result<Option<(usize, usize)>, DecodeError> {
    let mut value = 0usize;
    for (i, &b) in buf.iter().take(4).enumerate() {
        value |= usize::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
        if i == 3 {
            return Err(DecodeError::BadLength);
        }
    }
    Ok(None)
}

/// Bytes the remaining length `n` takes on the wire (always at least 1: unlike the Go
/// encoder we write `00` for an empty body, PROTOCOL.md §2.2).
pub fn length_len(n: usize) -> usize {
    match n {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Appends the remaining length `n` (n < 2^28).
pub fn put_length(buf: &mut bytes::BytesMut, mut n: usize) {
    debug_assert!(n < 1 << 28, "remaining length beyond 4 bytes");
    loop {
        let mut digit = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            digit |= 0x80;
        }
        bytes::BufMut::put_u8(buf, digit);
        if n == 0 {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_table_of_the_spec() {
        let table: [(usize, &[u8]); 7] = [
            (1, &[0x01]),
            (127, &[0x7F]),
            (128, &[0x80, 0x01]),
            (16_383, &[0xFF, 0x7F]),
            (16_384, &[0x80, 0x80, 0x01]),
            (1_048_576, &[0x80, 0x80, 0x40]),
            (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
        ];
        for (n, bytes) in table {
            let mut buf = bytes::BytesMut::new();
            put_length(&mut buf, n);
            assert_eq!(&buf[..], bytes, "encode {n}");
            assert_eq!(length_len(n), bytes.len());
            assert_eq!(
                decode_length(bytes).unwrap(),
                Some((n, bytes.len())),
                "decode {n}"
            );
        }
    }

    #[test]
    fn a_fifth_length_byte_is_refused() {
        assert_eq!(
            decode_length(&[0x80, 0x80, 0x80, 0x80, 0x01]),
            Err(DecodeError::BadLength)
        );
    }

    #[test]
    fn oversized_frames_are_refused_from_the_header_alone() {
        // SEND claiming 100 MiB: 0x32, then 104857600 in base-128.
        let mut buf = bytes::BytesMut::new();
        bytes::BufMut::put_u8(&mut buf, 0x32);
        put_length(&mut buf, 100 << 20);
        assert!(matches!(
            peek_frame(&buf, MAX_BODY_BYTES),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    #[test]
    fn partial_frames_need_more_bytes() {
        assert_eq!(peek_frame(&[], MAX_BODY_BYTES), Ok(None));
        assert_eq!(peek_frame(&[0x32], MAX_BODY_BYTES), Ok(None));
        assert_eq!(peek_frame(&[0x32, 0x80], MAX_BODY_BYTES), Ok(None));
        assert_eq!(peek_frame(&[0x32, 0x03, 0, 0], MAX_BODY_BYTES), Ok(None));
        assert!(peek_frame(&[0x32, 0x03, 0, 0, 0], MAX_BODY_BYTES)
            .unwrap()
            .is_some());
    }

    #[test]
    fn ping_and_pong_are_one_byte() {
        let info = peek_frame(&[0x70, 0x70], MAX_BODY_BYTES).unwrap().unwrap();
        assert_eq!((info.packet_type, info.frame_len()), (PacketType::Ping, 1));
    }

    #[test]
    fn unknown_types_are_refused() {
        for t in [0u8, 13, 14, 15] {
            assert_eq!(
                peek_frame(&[t << 4, 0], MAX_BODY_BYTES),
                Err(DecodeError::UnknownType(t))
            );
        }
    }
}
