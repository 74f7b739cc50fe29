//! # ruyi-proto: the WuKongIM binary protocol, sans-io
//!
//! Bytes in, packets out; packets in, bytes out. No I/O, no threads, no dependency on the
//! engine. The wire format is `../shared/spec/PROTOCOL.md`; what the official JS SDK really
//! sends is `../shared/spec/JSSDK.md`, whose vectors are pinned in this crate's tests.
//!
//! - [`frame`]: the fixed header and remaining length, with the size limit checked before a
//!   body is buffered ([`frame::peek_frame`]).
//! - [`decode_packet`] / [`Packet::encode`]: every packet of versions 2–5; each session
//!   speaks `min(client version, 5)`.
//! - [`crypto`]: key exchange, AES, msgKeys, held per connection in a [`SessionCipher`].
//! - [`person_channel_id`]: the combined id of person chats.
//!
//! ```
//! use ruyi_proto::{decode_packet, Packet, MAX_BODY_BYTES};
//! let (packet, used) = decode_packet(&[0x70], 5, MAX_BODY_BYTES).unwrap().unwrap();
//! assert_eq!((packet, used), (Packet::Ping, 1));
//! ```

mod channel;
mod codec;
pub mod crypto;
mod error;
pub mod frame;
mod packet;
pub mod types;

pub use channel::{person_channel_id, person_peer};
pub use codec::{EncodeError, MAX_STRING_BYTES};
pub use crypto::{SealScratch, SessionCipher};
pub use error::{CryptoError, DecodeError};
pub use frame::MAX_BODY_BYTES;
pub use packet::{
    decode_packet, ConnackPacket, ConnectPacket, DisconnectPacket, EventPacket, Flags, Packet,
    RecvHead, RecvPacket, RecvackPacket, SendPacket, SendackPacket, Setting, SubPacket,
    SubackPacket, LATEST_VERSION, PING, PONG,
};
