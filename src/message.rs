//! The message types that travel between the pools: what a sender asked for, what storage
//! made of it, and what the pusher delivers.

use bytes::Bytes;
use ruyi_proto::Flags;
use ruyi_reactor::ConnId;
use std::sync::Arc;

/// The system uid: HTTP sends without `from_uid` (PROTOCOL.md §8.3).
pub const SYSTEM_UID: &str = "____system";

/// True for the ids Ruyi keeps for itself (PROTOCOL.md §8.3): anything with `____` in it
/// (the system uid, device and manager ids, the command-channel suffix), the visitor
/// suffix `___vstr`, the temp suffix `@tmp`, and `systemcmdonline`. No user, device login
/// or channel may take one: a uid ending in `____cmd` could otherwise write into another
/// pair's command channel, next to the app server's real commands.
pub fn is_reserved_id(id: &str) -> bool {
    // NUL: valid UTF-8, but no SQL text column takes it (PostgreSQL refuses the whole
    // statement, which would fail everyone's batch), so no id may hold it.
    id.contains('\0')
        || id.contains("____")
        || id.ends_with("___vstr")
        || id.ends_with("@tmp")
        || id == "systemcmdonline"
}

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
        /// When the SEND was decoded (for the SENDACK latency histogram).
        received: std::time::Instant,
    },
    /// An HTTP request: answer on this channel.
    Http(crossbeam_channel::Sender<SendOutcome>),
    /// A send forwarded by another node of the cluster (`cluster/`): answer it over the
    /// bus, where `token` names the waiting reply on node `node`.
    Remote {
        /// The origin node.
        node: u16,
        /// The origin's key for the waiting reply.
        token: u64,
        /// The sending connection on the origin node, left out of its delivery there.
        conn: Option<crate::cluster::wire::WireConn>,
    },
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

/// The loop index of a [`Target`] that stands for another cluster node's devices: the
/// leader plans them (`cluster/devices.rs`), that node delivers; never routed to a loop.
pub const REMOTE_LOOP: usize = u32::MAX as usize;

impl Target {
    /// A target standing for recipient `recipient`'s devices on cluster node `node`.
    pub fn remote(node: u16, recipient: u32) -> Target {
        Target {
            conn: ConnId::new(REMOTE_LOOP, usize::from(node), 0),
            recipient,
        }
    }

    /// The node, for a target made by [`Target::remote`].
    pub fn remote_node(&self) -> Option<u16> {
        (self.conn.loop_index() == REMOTE_LOOP).then(|| self.conn.slot() as u16)
    }
}

/// Per recipient (index into a message's recipient list), whether `targets` holds a
/// connection of theirs: the plan found them online.
pub fn reached(targets: &[Target], recipients: usize) -> Vec<bool> {
    let mut reached = vec![false; recipients];
    for t in targets {
        if let Some(r) = reached.get_mut(t.recipient as usize) {
            *r = true;
        }
    }
    reached
}

/// One recipient's place in their offline queue for one message (HTTP_API.md §7).
///
/// The storage writer gives every queued recipient a per-user seq **when the message
/// commits**, in commit order, so a user's queue follows each channel's seqs:
/// - `stored`: the entry is written in the message's transaction (a SyncOnce message, or
///   no device of the user was online);
/// - not `stored`: the seq is only *reserved* (a device was online and gets a RECV). If
///   that delivery misses (the device goes before it acknowledged), the entry is written
///   at the reserved seq, so it lands where it would have been had the user been offline,
///   however late the miss is noticed. A reserved seq nobody needs stays a gap, which
///   readers of the queue never see.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueSlot {
    /// Per-user seq; 0 = this recipient is not queued for this message (the sender, a
    /// large group, NoPersist).
    pub seq: u32,
    /// See the type docs.
    pub stored: bool,
}

/// A message that passed the permission checks, with its fan-out plan, on its way to
/// storage. The channel worker looked the recipients up (after ticking the registry's push
/// clock); the writer gives queue slots at commit, and the pusher looks up again, after the
/// commit, the recipients that had no device (`pusher.rs`), so a device that logs in
/// between plan and commit is not missed.
#[derive(Debug)]
pub struct Planned {
    /// The message; `message_seq` is assigned by the storage writer.
    pub message: Message,
    /// Connections that get a RECV (the sending connection excluded).
    pub targets: Vec<Target>,
    /// The registry's push clock, ticked before `targets` were looked up.
    pub push_no: u64,
    /// Every recipient uid (shared with the channel cache, not copied per message).
    pub recipients: Arc<[String]>,
    /// The offline policy covers this channel (a person chat, or a group of at most
    /// `offline_queue_max_group`): a recipient with no device online gets a queue entry,
    /// and a delivery that misses is queued.
    pub queued: bool,
    /// A command from the app server (an HTTP send with `sync_once`): queued for every
    /// recipient whatever their state or the group's size (HTTP_API.md §7 (a)). A client's
    /// SEND with the SyncOnce flag only marks its RECVs (PROTOCOL.md §8.4) and is queued by
    /// the offline rules like any message: a client must not write a row per member of a
    /// 50,000-member group.
    pub command: bool,
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
    pub targets: Vec<Target>,
    /// Every recipient uid.
    pub recipients: Arc<[String]>,
    /// Per recipient (same index), their queue slot; empty when nobody is queued.
    pub slots: Vec<QueueSlot>,
    /// The registry's push clock for this message (`registry` module invariants).
    pub push_no: u64,
    /// A cluster follower pushes a batch only to devices that logged in with an epoch up
    /// to this (`cluster/devices.rs`); a device above it was not pushed, so it holds
    /// nothing for another device that goes. `i64::MAX` everywhere else.
    pub login_epoch: i64,
    /// See [`Planned::queued`].
    pub queued: bool,
    /// See [`Planned::webhook_offline`].
    pub webhook_offline: Vec<String>,
    /// Who waits.
    pub reply: Reply,
    /// The outcome to report.
    pub outcome: SendOutcome,
    /// True when this was a resend answered from the dedupe window, or a failed send
    /// (nothing to deliver).
    pub duplicate: bool,
}

impl Committed {
    /// The answer to a send that was not stored: nothing to deliver.
    pub fn failed(reply: Reply, message_id: i64, reason: u8) -> Committed {
        Committed {
            message: Arc::new(Message::placeholder(message_id)),
            targets: Vec::new(),
            recipients: Arc::from(Vec::new()),
            slots: Vec::new(),
            push_no: 0,
            login_epoch: i64::MAX,
            queued: false,
            webhook_offline: Vec::new(),
            reply,
            outcome: SendOutcome {
                message_id,
                message_seq: 0,
                reason,
            },
            duplicate: true,
        }
    }
}

/// What a loop needs to deliver one message to some of its connections.
#[derive(Debug)]
pub struct Delivery {
    /// The message.
    pub message: Arc<Message>,
    /// Every recipient uid, indexed by [`Target::recipient`].
    pub recipients: Arc<[String]>,
    /// See [`Committed::slots`].
    pub slots: Vec<QueueSlot>,
    /// See [`Committed::push_no`].
    pub push_no: u64,
    /// See [`Committed::login_epoch`].
    pub login_epoch: i64,
    /// See [`Planned::queued`].
    pub queued: bool,
}

/// Small receivers a KiB of payload weighs as. Encrypting and base64-encoding a RECV's
/// payload costs per receiver in proportion to its size (about 2.5 ms for 700 KB here,
/// against ~3.5 µs for a small encrypted RECV): deliberately counted high, so that one
/// large message to a few connections is cut into pieces a turn can finish quickly (one
/// uid's 16 connections getting 700 KB four times a second cost healthy users 127x p99
/// when a whole delivery counted as 16 × 43 units; RELIABILITY.md).
const RECEIVERS_PER_KIB: usize = 16;

/// Receivers of a small message that weigh as much as one frame in a loop's turn budget.
/// A frame from another thread is copied into one connection's queue; a receiver of a
/// delivery costs about as much (a shared frame queued, or one small encryption), but a
/// turn that handles only ~1,000 of them ends before it has queued more than a few
/// messages per connection, and every turn writes each busy connection: measured with one
/// group of 1,000 (BENCHMARKS.md), a weight of one per receiver halved deliveries/s.
const RECEIVERS_PER_UNIT: usize = 16;

/// The work of delivering one message of `payload_len` bytes to `targets` receivers, in
/// the units of a loop's per-turn budget (`max_commands_per_turn`, where a frame is 1).
pub fn deliver_weight(targets: usize, payload_len: usize) -> usize {
    (targets.max(1) * receiver_weight(payload_len)).div_ceil(RECEIVERS_PER_UNIT)
}

/// What one receiver of a `payload_len`-byte message weighs, in small receivers.
pub fn receiver_weight(payload_len: usize) -> usize {
    1 + payload_len / 1024 * RECEIVERS_PER_KIB
}

impl Delivery {
    /// The queue slot of recipient `index` (the default, "not queued", when none).
    pub fn slot(&self, index: u32) -> QueueSlot {
        self.slots.get(index as usize).copied().unwrap_or_default()
    }
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
