//! EVENT (type 12, server → client), PROTOCOL.md §5.11. Only for clients that asked for
//! message events: the JS SDK throws on type 12.

use super::{put_frame_header, Flags};
use crate::codec::{put_str, str_len, EncodeError, Reader};
use crate::error::DecodeError;
use crate::frame::PacketType;
use bytes::{BufMut, Bytes, BytesMut};

const NAME: &str = "EVENT";

/// A message event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventPacket {
    /// Event id (may be empty).
    pub id: String,
    /// Event type name.
    pub event_type: String,
    /// Producer timestamp.
    pub timestamp: i64,
    /// JSON data.
    pub data: Bytes,
}

impl EventPacket {
    pub(crate) fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body, NAME);
        Ok(EventPacket {
            id: r.string("id")?,
            event_type: r.string("type")?,
            timestamp: r.i64("timestamp")?,
            data: r.rest(),
        })
    }

    /// Appends the frame.
    ///
    /// # Errors
    /// A string longer than 32767 bytes.
    pub fn encode(&self, buf: &mut BytesMut) -> Result<(), EncodeError> {
        let len = str_len(&self.id, NAME, "id")?
            + str_len(&self.event_type, NAME, "type")?
            + 8
            + self.data.len();
        put_frame_header(buf, PacketType::Event, Flags(0), len);
        put_str(buf, &self.id);
        put_str(buf, &self.event_type);
        buf.put_i64(self.timestamp);
        buf.put_slice(&self.data);
        Ok(())
    }
}
