//! CONNACK (type 2, server → client), PROTOCOL.md §5.2 and the rules of §3.1:
//! `HasServerVersion` and the `ServerVersion` byte when the session version is above 3,
//! `NodeId` when it is 4 or more.

use super::{put_frame_header, Flags};
use crate::codec::{put_str, str_len, EncodeError, Reader};
use crate::error::DecodeError;
use crate::frame::PacketType;
use bytes::{BufMut, BytesMut};

const NAME: &str = "CONNACK";

/// Header bit 0 of a CONNACK: the body starts with the server version byte.
const HAS_SERVER_VERSION: u8 = 0x01;

/// The answer to CONNECT.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnackPacket {
    /// The version the server settled on; on the wire only when the session version > 3.
    pub server_version: u8,
    /// `server_now_ms − client_timestamp`.
    pub time_diff: i64,
    /// 1 = success (PROTOCOL.md §4.2).
    pub reason_code: u8,
    /// The server's X25519 public key, standard base64 (empty without encryption).
    pub server_key: String,
    /// The AES IV, 16 ASCII characters (empty without encryption).
    pub salt: String,
    /// The node id (present when the session version ≥ 4).
    pub node_id: u64,
}

impl ConnackPacket {
    /// Decodes with the version the *client* sent in its CONNECT.
    pub(crate) fn decode(flags: Flags, body: &[u8], version: u8) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body, NAME);
        let server_version = if flags.has(HAS_SERVER_VERSION) {
            r.u8("server_version")?
        } else {
            0
        };
        Ok(ConnackPacket {
            server_version,
            time_diff: r.i64("time_diff")?,
            reason_code: r.u8("reason_code")?,
            server_key: r.string("server_key")?,
            salt: r.string("salt")?,
            node_id: if version >= 4 { r.u64("node_id")? } else { 0 },
        })
    }

    /// Appends the frame for session `version`.
    ///
    /// # Errors
    /// A string longer than 32767 bytes.
    pub fn encode(&self, version: u8, buf: &mut BytesMut) -> Result<(), EncodeError> {
        let has_version = version > 3;
        let len = usize::from(has_version)
            + 8
            + 1
            + str_len(&self.server_key, NAME, "server_key")?
            + str_len(&self.salt, NAME, "salt")?
            + if version >= 4 { 8 } else { 0 };
        let flags = Flags(if has_version { HAS_SERVER_VERSION } else { 0 });
        put_frame_header(buf, PacketType::ConnAck, flags, len);
        if has_version {
            buf.put_u8(self.server_version);
        }
        buf.put_i64(self.time_diff);
        buf.put_u8(self.reason_code);
        put_str(buf, &self.server_key);
        put_str(buf, &self.salt);
        if version >= 4 {
            buf.put_u64(self.node_id);
        }
        Ok(())
    }
}
