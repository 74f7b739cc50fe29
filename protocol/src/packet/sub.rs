//! SUB (type 10, client → server) and SUBACK (type 11, server → client),
//! PROTOCOL.md §5.9–5.10.

use super::{put_frame_header, Flags, Setting};
use crate::codec::{put_str, str_len, EncodeError, Reader};
use crate::error::DecodeError;
use crate::frame::PacketType;
use bytes::{BufMut, BytesMut};

/// A subscribe or unsubscribe request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubPacket {
    /// The setting byte.
    pub setting: Setting,
    /// The client's request id.
    pub sub_no: String,
    /// The channel.
    pub channel_id: String,
    /// The channel type.
    pub channel_type: u8,
    /// 0 subscribe, 1 unsubscribe.
    pub action: u8,
    /// Free parameter (JSON or empty).
    pub param: String,
}

impl SubPacket {
    pub(crate) fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body, "SUB");
        Ok(SubPacket {
            setting: Setting(r.u8("setting")?),
            sub_no: r.string("sub_no")?,
            channel_id: r.string("channel_id")?,
            channel_type: r.u8("channel_type")?,
            action: r.u8("action")?,
            param: r.string("param")?,
        })
    }

    /// Appends the frame.
    ///
    /// # Errors
    /// A string longer than 32767 bytes.
    pub fn encode(&self, buf: &mut BytesMut) -> Result<(), EncodeError> {
        let len = 1
            + str_len(&self.sub_no, "SUB", "sub_no")?
            + str_len(&self.channel_id, "SUB", "channel_id")?
            + 2
            + str_len(&self.param, "SUB", "param")?;
        put_frame_header(buf, PacketType::Sub, Flags(0), len);
        buf.put_u8(self.setting.0);
        put_str(buf, &self.sub_no);
        put_str(buf, &self.channel_id);
        buf.put_u8(self.channel_type);
        buf.put_u8(self.action);
        put_str(buf, &self.param);
        Ok(())
    }
}

/// The answer to a SUB.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubackPacket {
    /// Echo of the request id.
    pub sub_no: String,
    /// Echo of the channel.
    pub channel_id: String,
    /// Echo of the channel type.
    pub channel_type: u8,
    /// Echo of the action.
    pub action: u8,
    /// 1 = done, 23 = channel type not supported.
    pub reason_code: u8,
}

impl SubackPacket {
    pub(crate) fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body, "SUBACK");
        Ok(SubackPacket {
            sub_no: r.string("sub_no")?,
            channel_id: r.string("channel_id")?,
            channel_type: r.u8("channel_type")?,
            action: r.u8("action")?,
            reason_code: r.u8("reason_code")?,
        })
    }

    /// Appends the frame.
    ///
    /// # Errors
    /// A string longer than 32767 bytes.
    pub fn encode(&self, buf: &mut BytesMut) -> Result<(), EncodeError> {
        let len = str_len(&self.sub_no, "SUBACK", "sub_no")?
            + str_len(&self.channel_id, "SUBACK", "channel_id")?
            + 3;
        put_frame_header(buf, PacketType::SubAck, Flags(0), len);
        put_str(buf, &self.sub_no);
        put_str(buf, &self.channel_id);
        buf.put_u8(self.channel_type);
        buf.put_u8(self.action);
        buf.put_u8(self.reason_code);
        Ok(())
    }
}
