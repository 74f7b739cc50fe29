//! SENDACK (type 4, server → client), PROTOCOL.md §5.4. The same layout in versions 2–5.

use super::{put_frame_header, Flags};
use crate::codec::Reader;
use crate::error::DecodeError;
use crate::frame::PacketType;
use bytes::{BufMut, BytesMut};

const NAME: &str = "SENDACK";

/// The server's answer to one SEND.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SendackPacket {
    /// The SEND's flag bits, copied as the reference does (clients ignore them).
    pub flags: Flags,
    /// Server-assigned message id (set even on failure).
    pub message_id: i64,
    /// Copied from the SEND.
    pub client_seq: u32,
    /// The channel's sequence number; 0 when not stored or on failure.
    pub message_seq: u32,
    /// 1 = success.
    pub reason_code: u8,
}

/// Body bytes of a SENDACK: id, client seq, message seq, reason.
const BODY_LEN: usize = 8 + 4 + 4 + 1;

impl SendackPacket {
    pub(crate) fn decode(flags: Flags, body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body, NAME);
        Ok(SendackPacket {
            flags,
            message_id: r.i64("message_id")?,
            client_seq: r.u32("client_seq")?,
            message_seq: r.u32("message_seq")?,
            reason_code: r.u8("reason_code")?,
        })
    }

    /// Appends the frame (19 bytes).
    pub fn encode(&self, buf: &mut BytesMut) {
        put_frame_header(buf, PacketType::SendAck, self.flags, BODY_LEN);
        buf.put_i64(self.message_id);
        buf.put_u32(self.client_seq);
        buf.put_u32(self.message_seq);
        buf.put_u8(self.reason_code);
    }
}
