//! The packets, one file per type (as rumqttd's `protocol/v4/`), and the two entry points:
//! [`decode_packet`] (bytes in, one packet out) and [`Packet::encode`] (packet in, bytes
//! appended to a caller's buffer).
//!
//! Every version-dependent field follows PROTOCOL.md §3: the caller passes the connection's
//! *session version* (`min(client, 5)`), except for CONNECT, whose layout never changes.

mod connack;
mod connect;
mod disconnect;
mod event;
mod recv;
mod recvack;
mod send;
mod sendack;
mod sub;

pub use connack::ConnackPacket;
pub use connect::ConnectPacket;
pub use disconnect::DisconnectPacket;
pub use event::EventPacket;
pub use recv::{RecvHead, RecvPacket};
pub use recvack::RecvackPacket;
pub use send::SendPacket;
pub use sendack::SendackPacket;
pub use sub::{SubPacket, SubackPacket};

use crate::codec::{put_header, EncodeError};
use crate::error::DecodeError;
use crate::frame::{peek_frame, PacketType};
use bytes::{BufMut, BytesMut};

/// The newest protocol version of the reference (v2 line). A session speaks
/// `min(client version, LATEST_VERSION)`.
pub const LATEST_VERSION: u8 = 5;

/// The four flag bits of the fixed header (PROTOCOL.md §2.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Flags(pub u8);

impl Flags {
    /// A retransmission (client resends of SEND).
    pub const DUP: u8 = 0b1000;
    /// A command message, consumed once across a user's devices.
    pub const SYNC_ONCE: u8 = 0b0100;
    /// Count as unread on the receiving client.
    pub const RED_DOT: u8 = 0b0010;
    /// Do not store; online delivery only.
    pub const NO_PERSIST: u8 = 0b0001;

    /// True if every bit of `mask` is set.
    pub const fn has(self, mask: u8) -> bool {
        self.0 & mask == mask
    }
    /// A copy with `mask` set or cleared.
    pub const fn with(self, mask: u8, on: bool) -> Flags {
        if on {
            Flags(self.0 | mask)
        } else {
            Flags(self.0 & !mask)
        }
    }
    /// `DUP` bit.
    pub const fn dup(self) -> bool {
        self.has(Self::DUP)
    }
    /// `SyncOnce` bit.
    pub const fn sync_once(self) -> bool {
        self.has(Self::SYNC_ONCE)
    }
    /// `RedDot` bit.
    pub const fn red_dot(self) -> bool {
        self.has(Self::RED_DOT)
    }
    /// `NoPersist` bit.
    pub const fn no_persist(self) -> bool {
        self.has(Self::NO_PERSIST)
    }
}

/// The setting byte of SEND, RECV and SUB (PROTOCOL.md §4.6).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Setting(pub u8);

impl Setting {
    /// The message wants read receipts (carried through).
    pub const RECEIPT: u8 = 0x80;
    /// Signal-protocol E2E (carried through).
    pub const SIGNAL: u8 = 0x20;
    /// The payload is not AES-encrypted (honoured as WuKongIM v3 does).
    pub const NO_ENCRYPT: u8 = 0x10;
    /// A `topic` string is present.
    pub const TOPIC: u8 = 0x08;
    /// A stream message: stream fields are present when 2 ≤ version < 5.
    pub const STREAM: u8 = 0x02;

    /// True if every bit of `mask` is set.
    pub const fn has(self, mask: u8) -> bool {
        self.0 & mask == mask
    }
    /// Whether the stream fields are on the wire at `version`.
    pub const fn stream_fields(self, version: u8) -> bool {
        self.has(Self::STREAM) && version >= 2 && version < 5
    }
}

/// One decoded packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packet {
    /// CONNECT (type 1).
    Connect(ConnectPacket),
    /// CONNACK (type 2).
    Connack(ConnackPacket),
    /// SEND (type 3).
    Send(SendPacket),
    /// SENDACK (type 4).
    Sendack(SendackPacket),
    /// RECV (type 5).
    Recv(RecvPacket),
    /// RECVACK (type 6).
    Recvack(RecvackPacket),
    /// PING (type 7): the byte `0x70`.
    Ping,
    /// PONG (type 8): the byte `0x80`.
    Pong,
    /// DISCONNECT (type 9).
    Disconnect(DisconnectPacket),
    /// SUB (type 10).
    Sub(SubPacket),
    /// SUBACK (type 11).
    Suback(SubackPacket),
    /// EVENT (type 12).
    Event(EventPacket),
}

/// The one-byte PING frame.
pub const PING: [u8; 1] = [0x70];
/// The one-byte PONG frame. Never send anything else as PONG (JSSDK.md §0 rule 3).
pub const PONG: [u8; 1] = [0x80];

/// Decodes the first packet in `buf`.
///
/// Returns `Ok(None)` when `buf` does not hold a whole frame yet (not an error), or the
/// packet and the number of bytes it used. A body longer than `max_body` is refused as soon
/// as its length is readable. Trailing bytes after a packet's last field are ignored, as the
/// reference does, except where the last field is the payload.
///
/// # Errors
/// A [`DecodeError`] for anything malformed; the connection should be closed.
pub fn decode_packet(
    buf: &[u8],
    version: u8,
    max_body: usize,
) -> Result<Option<(Packet, usize)>, DecodeError> {
    let Some(info) = peek_frame(buf, max_body)? else {
        return Ok(None);
    };
    let body = &buf[info.header_len..info.frame_len()];
    let flags = Flags(info.header & 0x0F);
    let packet = match info.packet_type {
        PacketType::Connect => Packet::Connect(ConnectPacket::decode(body)?),
        PacketType::ConnAck => Packet::Connack(ConnackPacket::decode(flags, body, version)?),
        PacketType::Send => Packet::Send(SendPacket::decode(flags, body, version)?),
        PacketType::SendAck => Packet::Sendack(SendackPacket::decode(flags, body)?),
        PacketType::Recv => Packet::Recv(RecvPacket::decode(flags, body, version)?),
        PacketType::RecvAck => Packet::Recvack(RecvackPacket::decode(flags, body)?),
        PacketType::Ping => Packet::Ping,
        PacketType::Pong => Packet::Pong,
        PacketType::Disconnect => Packet::Disconnect(DisconnectPacket::decode(body)?),
        PacketType::Sub => Packet::Sub(SubPacket::decode(body)?),
        PacketType::SubAck => Packet::Suback(SubackPacket::decode(body)?),
        PacketType::Event => Packet::Event(EventPacket::decode(body)?),
    };
    Ok(Some((packet, info.frame_len())))
}

impl Packet {
    /// Appends this packet's frame to `buf`, laid out for session `version`.
    ///
    /// # Errors
    /// [`EncodeError`] when a string field is longer than the protocol allows; nothing is
    /// appended then.
    pub fn encode(&self, version: u8, buf: &mut BytesMut) -> Result<(), EncodeError> {
        match self {
            Packet::Connect(p) => p.encode(buf),
            Packet::Connack(p) => p.encode(version, buf),
            Packet::Send(p) => p.encode(version, buf),
            Packet::Sendack(p) => {
                p.encode(buf);
                Ok(())
            }
            Packet::Recv(p) => p.encode(version, buf),
            Packet::Recvack(p) => {
                p.encode(buf);
                Ok(())
            }
            Packet::Ping => {
                buf.put_slice(&PING);
                Ok(())
            }
            Packet::Pong => {
                buf.put_slice(&PONG);
                Ok(())
            }
            Packet::Disconnect(p) => p.encode(buf),
            Packet::Sub(p) => p.encode(buf),
            Packet::Suback(p) => p.encode(buf),
            Packet::Event(p) => p.encode(buf),
        }
    }

    /// The packet's type.
    pub fn packet_type(&self) -> PacketType {
        match self {
            Packet::Connect(_) => PacketType::Connect,
            Packet::Connack(_) => PacketType::ConnAck,
            Packet::Send(_) => PacketType::Send,
            Packet::Sendack(_) => PacketType::SendAck,
            Packet::Recv(_) => PacketType::Recv,
            Packet::Recvack(_) => PacketType::RecvAck,
            Packet::Ping => PacketType::Ping,
            Packet::Pong => PacketType::Pong,
            Packet::Disconnect(_) => PacketType::Disconnect,
            Packet::Sub(_) => PacketType::Sub,
            Packet::Suback(_) => PacketType::SubAck,
            Packet::Event(_) => PacketType::Event,
        }
    }
}

/// Writes a header for `packet_type` with `flags` and the body length.
pub(crate) fn put_frame_header(
    buf: &mut BytesMut,
    packet_type: PacketType,
    flags: Flags,
    body_len: usize,
) {
    put_header(buf, ((packet_type as u8) << 4) | (flags.0 & 0x0F), body_len);
}
