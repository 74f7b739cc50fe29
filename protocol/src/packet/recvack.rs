//! RECVACK (type 6, client → server), PROTOCOL.md §5.6. The JS SDK sends flags 0, so
//! nothing may depend on them (§14 pitfall 7).

use super::{put_frame_header, Flags};
use crate::codec::Reader;
use crate::error::DecodeError;
use crate::frame::PacketType;
use bytes::{BufMut, BytesMut};

const NAME: &str = "RECVACK";

/// A client's acknowledgement of one RECV.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecvackPacket {
    /// Header flags as sent (not trusted).
    pub flags: Flags,
    /// The acknowledged message's id.
    pub message_id: i64,
    /// The acknowledged message's seq.
    pub message_seq: u32,
}

impl RecvackPacket {
    pub(crate) fn decode(flags: Flags, body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body, NAME);
        Ok(RecvackPacket {
            flags,
            message_id: r.i64("message_id")?,
            message_seq: r.u32("message_seq")?,
        })
    }

    /// Appends the frame (14 bytes).
    pub fn encode(&self, buf: &mut BytesMut) {
        put_frame_header(buf, PacketType::RecvAck, self.flags, 12);
        buf.put_i64(self.message_id);
        buf.put_u32(self.message_seq);
    }
}
