//! The message types that travel between the pools: what a sender asked for, what storage
//! made of it, and what the pusher delivers.

use bytes::Bytes;
use ruyi_proto::Flags;
use ruyi_reactor::ConnId;
use std::collections::HashMap;
use std::sync::Arc;

/// The system uid: HTTP sends without `from_uid` (PROTOCOL.md §8.3).
pub const SYSTEM_UID: &str = "____system";

/// A channel as storage keys it: the combined `a@b` id for person chats.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelKey {
    /// Storage id.
    pub id: String,
    /// Channel type.
    pub channel_type: u8,
}

impl ChannelKey {
    /// A key from its parts.
    pub fn new(id: impl Into<String>, channel_type: u8) -> Self {
        ChannelKey {
            id: id.into(),
            channel_type,
        }
    }

    /// A stable hash for sharding (FNV-1a over id and type), so one channel always lands on
    /// the same worker.
    pub fn shard(&self, shards: usize) -> usize {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self
            .id
            .as_bytes()
            .iter()
            .chain(std::iter::once(&self.channel_type))
        {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        (mix64(h) % shards.max(1) as u64) as usize
    }
}

/// The murmur3 finalizer: spreads every input bit over the low bits too. FNV-1a alone
/// leaves the low bit equal to the parity of the input bytes' low bits, which sends most
/// channels to one of two shards.
pub fn mix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// A stored (or, with NoPersist, only delivered) message.
#[derive(Clone, Debug)]
pub struct Message {
    /// Snowflake id.
    pub message_id: i64,
    /// Channel sequence number; 0 for NoPersist.
    pub message_seq: u32,
    /// The sender's message number.
    pub client_msg_no: String,
    /// The sender (`____system` for HTTP sends without one).
    pub from_uid: String,
    /// Where it is stored.
    pub channel: ChannelKey,
    /// The channel id as the sender addressed it (the peer uid for person chats).
    pub addressed_to: String,
    /// Unix seconds when stored.
    pub timestamp: i32,
    /// The setting byte.
    pub setting: u8,
    /// NoPersist, SyncOnce and RedDot bits (DUP never stored).
    pub flags: Flags,
    /// Seconds until expiry.
    pub expire: u32,
    /// Topic.
    pub topic: String,
    /// The plain payload.
    pub payload: Bytes,
}

impl Message {
    /// An empty message carrying only an id: the shape of a failed send's outcome, which
    /// is answered but never delivered.
    pub fn placeholder(message_id: i64) -> Message {
        Message {
            message_id,
            message_seq: 0,
            client_msg_no: String::new(),
            from_uid: String::new(),
            channel: ChannelKey::new("", 0),
            addressed_to: String::new(),
            timestamp: 0,
            setting: 0,
            flags: Flags(0),
            expire: 0,
            topic: String::new(),
            payload: Bytes::new(),
        }
    }
}

/// Who is waiting for the outcome of a send.
#[derive(Debug)]
pub enum Reply {
    /// A client connection: answer with SENDACK.
    Conn {
        /// The sending connection.
        conn: ConnId,
        /// Echoed in the SENDACK.
        client_seq: u32,
        /// The SEND's header flags, echoed in the SENDACK.
        flags: Flags,
    },
    /// An HTTP request: answer on this channel.
    Http(crossbeam_channel::Sender<SendOutcome>),
    /// Nobody (internal sends).
    None,
}

/// The result of one send, for SENDACK or the HTTP answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SendOutcome {
    /// Snowflake id (also on failure, as the reference does).
    pub message_id: i64,
    /// Channel seq; 0 when not stored or on failure.
    pub message_seq: u32,
    /// 1 = success (PROTOCOL.md §4.2).
    pub reason: u8,
}

/// One connection to deliver to, and which recipient (an index into the message's
/// recipient list) it belongs to, so a delivery that misses can be queued for that user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    /// The connection.
    pub conn: ConnId,
    /// Index into `recipients`.
    pub recipient: u32,
}

/// A message that passed the permission checks, with its fan-out plan, on its way to
/// storage.
#[derive(Debug)]
pub struct Planned {
    /// The message; `message_seq` is assigned by the storage writer.
    pub message: Message,
    /// Connections that get a RECV (the sending connection excluded).
    pub online: Vec<Target>,
    /// Every recipient uid (shared with the channel cache, not copied per message).
    pub recipients: Arc<[String]>,
    /// Recipients that get an offline-queue entry.
    pub offline_uids: Vec<String>,
    /// Queue a recipient whose delivery misses (its device went away before the RECV was
    /// written or acknowledged): the offline policy said "queue when offline".
    pub queue_when_missed: bool,
    /// Recipients for the `msg.offline` webhook: no master-level device online (filled only
    /// when webhooks are configured).
    pub webhook_offline: Vec<String>,
    /// Who waits for the outcome.
    pub reply: Reply,
}

/// A committed message on its way to the pusher.
#[derive(Debug)]
pub struct Committed {
    /// The stored message, shared by every delivery.
    pub message: Arc<Message>,
    /// Connections that get a RECV.
    pub online: Vec<Target>,
    /// Every recipient uid.
    pub recipients: Arc<[String]>,
    /// See [`Planned::queue_when_missed`].
    pub queue_when_missed: bool,
    /// See [`Planned::webhook_offline`].
    pub webhook_offline: Vec<String>,
    /// Per-user queue seqs for SyncOnce messages: their online RECVs carry them.
    pub user_seqs: HashMap<String, u32>,
    /// Who waits.
    pub reply: Reply,
    /// The outcome to report.
    pub outcome: SendOutcome,
    /// True when this was a resend answered from the dedupe window (nothing to deliver).
    pub duplicate: bool,
}

/// What a loop needs to deliver one message to some of its connections.
#[derive(Debug)]
pub struct Delivery {
    /// The message.
    pub message: Arc<Message>,
    /// Per-user seqs for SyncOnce messages (RECV `message_seq` for that user).
    pub user_seqs: HashMap<String, u32>,
    /// Every recipient uid, indexed by [`Target::recipient`].
    pub recipients: Arc<[String]>,
    /// See [`Planned::queue_when_missed`].
    pub queue_when_missed: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn similar_ids_spread_over_two_shards() {
        let on_first = (0..1000)
            .filter(|i| ChannelKey::new(format!("load-b{i}@load-a{i}"), 1).shard(2) == 0)
            .count();
        assert!(
            (400..=600).contains(&on_first),
            "{on_first} of 1000 on shard 0"
        );
    }

    #[test]
    fn shards_are_stable_and_in_range() {
        let k = ChannelKey::new("g1", 2);
        assert_eq!(k.shard(4), ChannelKey::new("g1", 2).shard(4));
        assert!(k.shard(4) < 4);
        assert_eq!(k.shard(1), 0);
    }
}
