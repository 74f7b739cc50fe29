//! RECV (type 5, server → client), PROTOCOL.md §5.5.
//!
//! The fan-out path encodes one RECV per receiving connection when encryption is on (each
//! connection has its own key), so [`RecvPacket::encode_with`] takes the per-connection
//! `msg_key` and `payload` separately and the rest of the packet is shared.

use super::{put_frame_header, Flags, Setting};
use crate::codec::{put_str, str_len, EncodeError, Reader};
use crate::error::DecodeError;
use crate::frame::PacketType;
use bytes::{BufMut, Bytes, BytesMut};

const NAME: &str = "RECV";

/// A message delivered to a client.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecvPacket {
    /// NoPersist and SyncOnce from the SEND; RedDot unless this copy goes to the sender's
    /// own other devices; DUP always 0.
    pub flags: Flags,
    /// The SEND's setting byte.
    pub setting: Setting,
    /// Integrity tag computed for the receiving connection (PROTOCOL.md §7.5).
    pub msg_key: String,
    /// The sender; empty for the system uid.
    pub from_uid: String,
    /// The channel as this receiver sees it (person chats rewritten, §8.2).
    pub channel_id: String,
    /// The channel type.
    pub channel_type: u8,
    /// Seconds until expiry (version ≥ 3).
    pub expire: u32,
    /// The client's message number.
    pub client_msg_no: String,
    /// Stream flag (2 ≤ version < 5 with the Stream bit).
    pub stream_flag: u8,
    /// Stream number (same condition).
    pub stream_no: String,
    /// Stream id (same condition).
    pub stream_id: u64,
    /// The message id.
    pub message_id: i64,
    /// The channel sequence number (the per-user queue seq for SyncOnce messages).
    pub message_seq: u32,
    /// Unix seconds.
    pub timestamp: i32,
    /// Topic (with the Topic bit).
    pub topic: String,
    /// The payload, encrypted for the receiving connection when encryption is on.
    pub payload: Bytes,
}

impl RecvPacket {
    pub(crate) fn decode(flags: Flags, body: &[u8], version: u8) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body, NAME);
        let setting = Setting(r.u8("setting")?);
        let msg_key = r.string("msg_key")?;
        let from_uid = r.string("from_uid")?;
        let channel_id = r.string("channel_id")?;
        let channel_type = r.u8("channel_type")?;
        let expire = if version >= 3 { r.u32("expire")? } else { 0 };
        let client_msg_no = r.string("client_msg_no")?;
        let (stream_flag, stream_no, stream_id) = if setting.stream_fields(version) {
            (
                r.u8("stream_flag")?,
                r.string("stream_no")?,
                r.u64("stream_id")?,
            )
        } else {
            (0, String::new(), 0)
        };
        let message_id = r.i64("message_id")?;
        let message_seq = r.u32("message_seq")?;
        let timestamp = r.i32("timestamp")?;
        let topic = if setting.has(Setting::TOPIC) {
            r.string("topic")?
        } else {
            String::new()
        };
        Ok(RecvPacket {
            flags,
            setting,
            msg_key,
            from_uid,
            channel_id,
            channel_type,
            expire,
            client_msg_no,
            stream_flag,
            stream_no,
            stream_id,
            message_id,
            message_seq,
            timestamp,
            topic,
            payload: r.rest(),
        })
    }

    /// Appends the frame for session `version` with this packet's own `msg_key` and
    /// `payload`.
    ///
    /// # Errors
    /// A string longer than 32767 bytes.
    pub fn encode(&self, version: u8, buf: &mut BytesMut) -> Result<(), EncodeError> {
        self.encode_with(version, &self.msg_key, &self.payload, buf)
    }

    /// Appends the frame with `msg_key` and `payload` in place of the packet's own: the
    /// per-connection parts of an encrypted delivery.
    ///
    /// # Errors
    /// A string longer than 32767 bytes; nothing is appended then.
    pub fn encode_with(
        &self,
        version: u8,
        msg_key: &str,
        payload: &[u8],
        buf: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        self.head().encode(version, msg_key, payload, buf)
    }

    /// Everything but `msg_key` and `payload`, borrowed.
    pub fn head(&self) -> RecvHead<'_> {
        RecvHead {
            flags: self.flags,
            setting: self.setting,
            from_uid: &self.from_uid,
            channel_id: &self.channel_id,
            channel_type: self.channel_type,
            expire: self.expire,
            client_msg_no: &self.client_msg_no,
            stream_flag: self.stream_flag,
            stream_no: &self.stream_no,
            stream_id: self.stream_id,
            message_id: self.message_id,
            message_seq: self.message_seq,
            timestamp: self.timestamp,
            topic: &self.topic,
        }
    }
}

/// A RECV's fields but the per-connection two (`msg_key`, `payload`), borrowed: what a
/// delivery shares between its receivers, so encoding one connection's copy copies no
/// string ([`RecvPacket`] for the fields' meaning).
#[derive(Clone, Copy, Debug)]
#[allow(missing_docs)] // The fields are RecvPacket's, documented there.
pub struct RecvHead<'a> {
    pub flags: Flags,
    pub setting: Setting,
    pub from_uid: &'a str,
    pub channel_id: &'a str,
    pub channel_type: u8,
    pub expire: u32,
    pub client_msg_no: &'a str,
    pub stream_flag: u8,
    pub stream_no: &'a str,
    pub stream_id: u64,
    pub message_id: i64,
    pub message_seq: u32,
    pub timestamp: i32,
    pub topic: &'a str,
}

impl RecvHead<'_> {
    /// Appends the frame for session `version` with this connection's `msg_key` and
    /// `payload`.
    ///
    /// # Errors
    /// A string longer than 32767 bytes; nothing is appended then.
    pub fn encode(
        &self,
        version: u8,
        msg_key: &str,
        payload: &[u8],
        buf: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        let stream = self.setting.stream_fields(version);
        let topic = self.setting.has(Setting::TOPIC);
        let mut len = 1
            + str_len(msg_key, NAME, "msg_key")?
            + str_len(self.from_uid, NAME, "from_uid")?
            + str_len(self.channel_id, NAME, "channel_id")?
            + 1
            + str_len(self.client_msg_no, NAME, "client_msg_no")?
            + 8
            + 4
            + 4
            + payload.len();
        if version >= 3 {
            len += 4;
        }
        if stream {
            len += 1 + str_len(self.stream_no, NAME, "stream_no")? + 8;
        }
        if topic {
            len += str_len(self.topic, NAME, "topic")?;
        }
        put_frame_header(buf, PacketType::Recv, self.flags, len);
        buf.put_u8(self.setting.0);
        put_str(buf, msg_key);
        put_str(buf, self.from_uid);
        put_str(buf, self.channel_id);
        buf.put_u8(self.channel_type);
        if version >= 3 {
            buf.put_u32(self.expire);
        }
        put_str(buf, self.client_msg_no);
        if stream {
            buf.put_u8(self.stream_flag);
            put_str(buf, self.stream_no);
            buf.put_u64(self.stream_id);
        }
        buf.put_i64(self.message_id);
        buf.put_u32(self.message_seq);
        buf.put_i32(self.timestamp);
        if topic {
            put_str(buf, self.topic);
        }
        buf.put_slice(payload);
        Ok(())
    }
}
