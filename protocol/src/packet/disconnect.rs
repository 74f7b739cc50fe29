//! DISCONNECT (type 9), PROTOCOL.md §5.8. The server sends it when it kicks a connection.

use super::{put_frame_header, Flags};
use crate::codec::{put_str, str_len, EncodeError, Reader};
use crate::error::DecodeError;
use crate::frame::PacketType;
use bytes::{BufMut, BytesMut};

const NAME: &str = "DISCONNECT";

/// A disconnect notice.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DisconnectPacket {
    /// Why (12 = ConnectKick).
    pub reason_code: u8,
    /// Free text, may be empty.
    pub reason: String,
}

impl DisconnectPacket {
    pub(crate) fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body, NAME);
        Ok(DisconnectPacket {
            reason_code: r.u8("reason_code")?,
            reason: r.string("reason")?,
        })
    }

    /// Appends the frame.
    ///
    /// # Errors
    /// A reason longer than 32767 bytes.
    pub fn encode(&self, buf: &mut BytesMut) -> Result<(), EncodeError> {
        let len = 1 + str_len(&self.reason, NAME, "reason")?;
        put_frame_header(buf, PacketType::Disconnect, Flags(0), len);
        buf.put_u8(self.reason_code);
        put_str(buf, &self.reason);
        Ok(())
    }
}
