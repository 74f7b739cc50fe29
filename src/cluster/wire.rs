//! What crosses the bus between nodes, and its subjects. Encoded with postcard (serde, a
//! compact binary form); a node drops what does not decode, and counts it.
//!
//! # Subjects (`<c>` is `--cluster-name`)
//! - `<c>.hb`: heartbeats (`members.rs`, JSON).
//! - `<c>.node.<N>.send`: SENDs forwarded to the leader `N` ([`SendFwd`]).
//! - `<c>.node.<N>.outcome`: the outcomes of node `N`'s forwarded SENDs ([`Outcomes`]).
//! - `<c>.deliver`: every commit's messages, from the leader to all nodes
//!   ([`CommitBatch`]), numbered so a node sees a gap.
//! - `<c>.node.<N>.lane`: requeues and delivered marks for the leader `N` ([`LaneFwd`]);
//!   `<c>.node.<M>.laneack` acknowledges them to node `M` ([`LaneAck`]).
//! - `<c>.node.<N>.handled`: the batches a node handled, for the leader `N`'s pledges
//!   ([`Handled`]).
//! - `<c>.node.<N>.http`: an HTTP API call forwarded to the leader `N` ([`HttpFwd`]);
//!   `<c>.node.<M>.httpanswer` answers it on node `M` ([`HttpAnswer`]).

use crate::message::{ChannelKey, Message, QueueSlot};
use crate::storage::writer::LaneJob;
use bytes::Bytes;
use ruyi_proto::Flags;
use ruyi_reactor::ConnId;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Encodes `value` for the bus.
pub fn encode<T: Serialize>(value: &T) -> Bytes {
    postcard::to_stdvec(value).map_or_else(|_| Bytes::new(), Bytes::from)
}

/// Decodes a bus payload; `None` for anything that does not decode.
pub fn decode<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Option<T> {
    postcard::from_bytes(payload).ok()
}

/// A connection's id across the bus: (loop, slot, generation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireConn(pub u32, pub u32, pub u32);

impl From<ConnId> for WireConn {
    fn from(c: ConnId) -> Self {
        WireConn(c.loop_index() as u32, c.slot() as u32, c.generation())
    }
}

impl From<WireConn> for ConnId {
    fn from(c: WireConn) -> Self {
        ConnId::new(c.0 as usize, c.1 as usize, c.2)
    }
}

/// A channel key across the bus.
pub type WireKey = (String, u8);

fn key_of(k: &ChannelKey) -> WireKey {
    (k.id.clone(), k.channel_type)
}

fn key_from(k: WireKey) -> ChannelKey {
    ChannelKey::new(k.0, k.1)
}

/// A stored message across the bus.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WireMessage {
    pub message_id: i64,
    pub message_seq: u32,
    pub client_msg_no: String,
    pub from_uid: String,
    pub channel: WireKey,
    pub addressed_to: String,
    pub timestamp: i32,
    pub setting: u8,
    pub flags: u8,
    pub expire: u32,
    pub topic: String,
    pub payload: Bytes,
}

impl From<&Message> for WireMessage {
    fn from(m: &Message) -> Self {
        WireMessage {
            message_id: m.message_id,
            message_seq: m.message_seq,
            client_msg_no: m.client_msg_no.clone(),
            from_uid: m.from_uid.clone(),
            channel: key_of(&m.channel),
            addressed_to: m.addressed_to.clone(),
            timestamp: m.timestamp,
            setting: m.setting,
            flags: m.flags.0,
            expire: m.expire,
            topic: m.topic.clone(),
            payload: m.payload.clone(),
        }
    }
}

impl From<WireMessage> for Message {
    fn from(m: WireMessage) -> Self {
        Message {
            message_id: m.message_id,
            message_seq: m.message_seq,
            client_msg_no: m.client_msg_no,
            from_uid: m.from_uid,
            channel: key_from(m.channel),
            addressed_to: m.addressed_to,
            timestamp: m.timestamp,
            setting: m.setting,
            flags: Flags(m.flags),
            expire: m.expire,
            topic: m.topic,
            payload: m.payload,
        }
    }
}

/// A SEND (or an HTTP send) forwarded to the leader: `channel::SendRequest` without its
/// reply, which stays on the origin node under `token`.
#[derive(Debug, Serialize, Deserialize)]
pub struct SendFwd {
    pub origin: u16,
    pub token: u64,
    /// The sending connection on the origin (none for HTTP sends).
    pub conn: Option<WireConn>,
    pub from_uid: String,
    pub key: WireKey,
    pub addressed_to: String,
    pub client_msg_no: String,
    pub flags: u8,
    pub setting: u8,
    pub expire: u32,
    pub topic: String,
    pub payload: Bytes,
    pub system: bool,
    pub recipients: Option<Vec<String>>,
    pub store_as: Option<WireKey>,
}

impl SendFwd {
    /// The forwardable part of `r`.
    pub fn new(origin: u16, token: u64, r: &crate::channel::SendRequest) -> SendFwd {
        SendFwd {
            origin,
            token,
            conn: r.from_conn.map(WireConn::from),
            from_uid: r.from_uid.clone(),
            key: key_of(&r.key),
            addressed_to: r.addressed_to.clone(),
            client_msg_no: r.client_msg_no.clone(),
            flags: r.flags.0,
            setting: r.setting,
            expire: r.expire,
            topic: r.topic.clone(),
            payload: r.payload.clone(),
            system: r.system,
            recipients: r.recipients.as_ref().map(|r| r.to_vec()),
            store_as: r.store_as.as_ref().map(key_of),
        }
    }

    /// The request the leader's channel worker takes; `reply` answers the origin.
    pub fn into_request(self, reply: crate::message::Reply) -> crate::channel::SendRequest {
        crate::channel::SendRequest {
            from_uid: self.from_uid,
            // The sending connection is on the origin node, which leaves it out of its
            // own delivery (`forward.rs`).
            from_conn: None,
            key: key_from(self.key),
            addressed_to: self.addressed_to,
            client_msg_no: self.client_msg_no,
            flags: Flags(self.flags),
            setting: self.setting,
            expire: self.expire,
            topic: self.topic,
            payload: self.payload,
            system: self.system,
            recipients: self.recipients.map(Into::into),
            store_as: self.store_as.map(key_from),
            reply,
        }
    }
}

/// Outcomes for one node's forwarded sends: (token, message id, seq, reason).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Outcomes {
    pub items: Vec<(u64, i64, u32, u8)>,
}

/// One committed message for every node to deliver to its own connections.
#[derive(Debug, Serialize, Deserialize)]
pub struct WireDelivery {
    pub message: WireMessage,
    /// Every recipient, as the leader planned (indexes match `slots`).
    pub recipients: Vec<String>,
    /// Per recipient: (queue seq, stored).
    pub slots: Vec<(u32, bool)>,
    pub queued: bool,
    /// The sending connection, left out of its node's delivery: (node, the forwarded
    /// send's token, which names the node's incarnation, connection).
    pub origin: Option<(u16, u64, WireConn)>,
    /// The message went without its payload (too large for one bus message): the node
    /// reads it from storage by channel and seq.
    pub by_reference: bool,
    /// (recipient index, node): the nodes the leader counted on for each recipient's
    /// devices (`devices.rs`). A named node with no device for the recipient queues it.
    pub expect: Vec<(u32, u16)>,
}

/// One commit's messages, from the leader, numbered per leader incarnation.
#[derive(Debug, Serialize, Deserialize)]
pub struct CommitBatch {
    pub leader: u16,
    pub incarnation: i64,
    /// 1, 2, 3… per incarnation: a node that sees a number skipped lost a batch.
    pub number: u64,
    /// The newest login epoch the leader had seen before the commit: a device that logged
    /// in with a later one is not pushed this batch (`devices.rs`).
    pub login_epoch: i64,
    pub messages: Vec<WireDelivery>,
}

impl WireDelivery {
    /// About its encoded size: enough to keep a bus message under its bound.
    pub fn size(&self) -> usize {
        let m = &self.message;
        let strings = m.client_msg_no.len()
            + m.from_uid.len()
            + m.channel.0.len()
            + m.addressed_to.len()
            + m.topic.len();
        let recipients: usize = self.recipients.iter().map(|u| u.len() + 8).sum();
        m.payload.len() + strings + recipients + 128
    }

    /// The slots as the loops read them.
    pub fn queue_slots(&self) -> Vec<QueueSlot> {
        self.slots
            .iter()
            .map(|&(seq, stored)| QueueSlot { seq, stored })
            .collect()
    }
}

/// The queue seqs one commit reserved for devices on other nodes, kept in PostgreSQL in
/// that commit's own transaction (`pledges.rs`, durable pledges): when the leader dies,
/// its successor writes those no node reported handled. Encoded like a bus message.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct PledgeRecord {
    pub leader: u16,
    pub incarnation: i64,
    pub items: Vec<PledgedMessage>,
}

/// One message's reserved seqs for one node, in one batch.
#[derive(Debug, Serialize, Deserialize)]
pub struct PledgedMessage {
    /// The commit batch that carried the message to `node`.
    pub batch: u64,
    pub node: u16,
    /// The node's incarnation the leader counted on: another one's reports say nothing of
    /// these devices.
    pub node_incarnation: i64,
    /// Where the message is stored, to read it back: channel and seq, and its id to check.
    pub channel: WireKey,
    pub seq: u32,
    pub message_id: i64,
    /// The recipients the leader counted on `node` for.
    pub uids: Vec<String>,
}

impl PledgedMessage {
    /// The stored message's channel.
    pub fn channel(&self) -> ChannelKey {
        key_from(self.channel.clone())
    }
}

/// A lane job across the bus.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum WireLane {
    Requeue {
        uid: String,
        message: WireMessage,
        reserved: u32,
    },
    Delivered {
        uid: String,
        seq: u32,
    },
    /// Only ever run by the leader that made it; here so every lane job can cross.
    Inherit {
        row: i64,
        requeues: Vec<(String, WireMessage)>,
    },
}

impl From<&LaneJob> for WireLane {
    fn from(job: &LaneJob) -> Self {
        match job {
            LaneJob::Requeue {
                uid,
                message,
                reserved,
            } => WireLane::Requeue {
                uid: uid.clone(),
                message: WireMessage::from(&**message),
                reserved: *reserved,
            },
            LaneJob::Delivered { uid, seq } => WireLane::Delivered {
                uid: uid.clone(),
                seq: *seq,
            },
            LaneJob::Inherit { row, requeues } => WireLane::Inherit {
                row: *row,
                requeues: requeues
                    .iter()
                    .map(|(uid, m)| (uid.clone(), WireMessage::from(&**m)))
                    .collect(),
            },
        }
    }
}

impl From<WireLane> for LaneJob {
    fn from(job: WireLane) -> Self {
        match job {
            WireLane::Requeue {
                uid,
                message,
                reserved,
            } => LaneJob::Requeue {
                uid,
                message: Arc::new(message.into()),
                reserved,
            },
            WireLane::Delivered { uid, seq } => LaneJob::Delivered { uid, seq },
            WireLane::Inherit { row, requeues } => LaneJob::Inherit {
                row,
                requeues: requeues
                    .into_iter()
                    .map(|(uid, m)| (uid, Arc::new(m.into())))
                    .collect(),
            },
        }
    }
}

/// Lane jobs for the leader, each with the origin's number for the acknowledgement.
#[derive(Debug, Serialize, Deserialize)]
pub struct LaneFwd {
    pub origin: u16,
    pub jobs: Vec<(u64, WireLane)>,
}

/// The numbers of the lane jobs the leader took.
#[derive(Debug, Serialize, Deserialize)]
pub struct LaneAck {
    pub ids: Vec<u64>,
}

/// An HTTP API call, already admitted by the origin (its manager token and address
/// rules), for the leader to run.
#[derive(Debug, Serialize, Deserialize)]
pub struct HttpFwd {
    pub origin: u16,
    pub token: u64,
    pub method: String,
    pub path: String,
    pub query: String,
    pub body: Bytes,
}

/// An HTTP body (either way) crosses the bus up to this size: one bus message stays
/// under NATS' default `max_payload` (1 MiB).
pub const MAX_HTTP_BYTES: usize = 768 << 10;

/// The leader's answer to an [`HttpFwd`].
#[derive(Debug, Serialize, Deserialize)]
pub struct HttpAnswer {
    pub token: u64,
    pub status: u16,
    pub body: String,
}

/// A node's report of the batches it handled: (leader, incarnation, highest handled,
/// gaps seen so far), as in its heartbeat, but sent within 50 ms.
#[derive(Debug, Serialize, Deserialize)]
pub struct Handled {
    pub node: u16,
    pub seen: (u16, i64, u64, u64),
}

/// `<c>.node.<n>.<what>`.
pub fn node_subject(cluster: &str, node: u16, what: &str) -> String {
    format!("{cluster}.node.{node}.{what}")
}

/// `<c>.deliver`.
pub fn deliver_subject(cluster: &str) -> String {
    format!("{cluster}.deliver")
}
