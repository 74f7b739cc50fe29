//! CONNECT (type 1, client → server). The same layout in every version (PROTOCOL.md §5.1).

use super::{put_frame_header, Flags};
use crate::codec::{put_str, str_len, EncodeError, Reader};
use crate::error::DecodeError;
use crate::frame::PacketType;
use bytes::{BufMut, BytesMut};

const NAME: &str = "CONNECT";

/// The login packet.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ConnectPacket {
    /// The client's protocol version (the JS SDK sends 2, current SDK sources 5).
    pub version: u8,
    /// 0 APP, 1 WEB, 2 PC (PROTOCOL.md §4.3).
    pub device_flag: u8,
    /// Device-unique id.
    pub device_id: String,
    /// The user.
    pub uid: String,
    /// The token registered with `POST /user/token`.
    pub token: String,
    /// Client clock, milliseconds.
    pub client_timestamp: i64,
    /// The client's X25519 public key, standard base64 (may be empty without encryption).
    pub client_key: String,
}

/// Written by hand so the token never reaches a log line through `{:?}`.
impl std::fmt::Debug for ConnectPacket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectPacket")
            .field("version", &self.version)
            .field("device_flag", &self.device_flag)
            .field("device_id", &self.device_id)
            .field("uid", &self.uid)
            .field("token", &"<redacted>")
            .field("client_timestamp", &self.client_timestamp)
            .field("client_key", &self.client_key)
            .finish()
    }
}

impl ConnectPacket {
    pub(crate) fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body, NAME);
        Ok(ConnectPacket {
            version: r.u8("version")?,
            device_flag: r.u8("device_flag")?,
            device_id: r.string("device_id")?,
            uid: r.string("uid")?,
            token: r.string("token")?,
            client_timestamp: r.i64("client_timestamp")?,
            client_key: r.string("client_key")?,
        })
    }

    /// Appends the frame (CONNECT has no flags and no version-dependent fields).
    ///
    /// # Errors
    /// A string longer than 32767 bytes.
    pub fn encode(&self, buf: &mut BytesMut) -> Result<(), EncodeError> {
        let len = 2
            + str_len(&self.device_id, NAME, "device_id")?
            + str_len(&self.uid, NAME, "uid")?
            + str_len(&self.token, NAME, "token")?
            + 8
            + str_len(&self.client_key, NAME, "client_key")?;
        put_frame_header(buf, PacketType::Connect, Flags(0), len);
        buf.put_u8(self.version);
        buf.put_u8(self.device_flag);
        put_str(buf, &self.device_id);
        put_str(buf, &self.uid);
        put_str(buf, &self.token);
        buf.put_i64(self.client_timestamp);
        put_str(buf, &self.client_key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_the_token() {
        let c = ConnectPacket {
            uid: "alice".into(),
            token: "tok-8f3a".into(),
            ..ConnectPacket::default()
        };
        let shown = format!("{c:?}");
        assert!(
            shown.contains("alice") && !shown.contains("tok-8f3a"),
            "{shown}"
        );
    }
}
