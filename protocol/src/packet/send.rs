//! SEND (type 3, client → server), PROTOCOL.md §5.3.

use super::{put_frame_header, Flags, Setting};
use crate::codec::{put_str, str_len, EncodeError, Reader};
use crate::error::DecodeError;
use crate::frame::PacketType;
use bytes::{BufMut, Bytes, BytesMut};

const NAME: &str = "SEND";

/// A message from a client.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SendPacket {
    /// Header flags (DUP, SyncOnce, RedDot, NoPersist).
    pub flags: Flags,
    /// The setting byte.
    pub setting: Setting,
    /// The client's counter, echoed in SENDACK.
    pub client_seq: u32,
    /// Client-unique message id.
    pub client_msg_no: String,
    /// Stream number (only when 2 ≤ version < 5 and the Stream bit is set).
    pub stream_no: String,
    /// Target: the peer uid for person chats, else the channel id.
    pub channel_id: String,
    /// Channel type (PROTOCOL.md §4.5).
    pub channel_type: u8,
    /// Seconds until expiry, 0 = never (version ≥ 3).
    pub expire: u32,
    /// Integrity tag (PROTOCOL.md §7.4); empty without encryption.
    pub msg_key: String,
    /// Topic (only with the Topic bit).
    pub topic: String,
    /// The payload as sent: base64 of the AES ciphertext when encrypted.
    pub payload: Bytes,
}

impl SendPacket {
    pub(crate) fn decode(flags: Flags, body: &[u8], version: u8) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body, NAME);
        let setting = Setting(r.u8("setting")?);
        let client_seq = r.u32("client_seq")?;
        let client_msg_no = r.string("client_msg_no")?;
        let stream_no = if setting.stream_fields(version) {
            r.string("stream_no")?
        } else {
            String::new()
        };
        let channel_id = r.string("channel_id")?;
        let channel_type = r.u8("channel_type")?;
        let expire = if version >= 3 { r.u32("expire")? } else { 0 };
        let msg_key = r.string("msg_key")?;
        let topic = if setting.has(Setting::TOPIC) {
            r.string("topic")?
        } else {
            String::new()
        };
        Ok(SendPacket {
            flags,
            setting,
            client_seq,
            client_msg_no,
            stream_no,
            channel_id,
            channel_type,
            expire,
            msg_key,
            topic,
            payload: r.rest(),
        })
    }

    /// Appends the frame for session `version`.
    ///
    /// # Errors
    /// A string longer than 32767 bytes.
    pub fn encode(&self, version: u8, buf: &mut BytesMut) -> Result<(), EncodeError> {
        let stream = self.setting.stream_fields(version);
        let topic = self.setting.has(Setting::TOPIC);
        let mut len = 1 + 4 + str_len(&self.client_msg_no, NAME, "client_msg_no")?;
        if stream {
            len += str_len(&self.stream_no, NAME, "stream_no")?;
        }
        len += str_len(&self.channel_id, NAME, "channel_id")? + 1;
        if version >= 3 {
            len += 4;
        }
        len += str_len(&self.msg_key, NAME, "msg_key")?;
        if topic {
            len += str_len(&self.topic, NAME, "topic")?;
        }
        len += self.payload.len();
        put_frame_header(buf, PacketType::Send, self.flags, len);
        buf.put_u8(self.setting.0);
        buf.put_u32(self.client_seq);
        put_str(buf, &self.client_msg_no);
        if stream {
            put_str(buf, &self.stream_no);
        }
        put_str(buf, &self.channel_id);
        buf.put_u8(self.channel_type);
        if version >= 3 {
            buf.put_u32(self.expire);
        }
        put_str(buf, &self.msg_key);
        if topic {
            put_str(buf, &self.topic);
        }
        buf.put_slice(&self.payload);
        Ok(())
    }
}
