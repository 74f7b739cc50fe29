//! The storage seam's write side: what the storage writer does inside its open batch
//! transaction, as primitive operations a backend provides. The rules built on them
//! (the channel seq and dedupe window in `channels.rs`, appending a message in
//! `append.rs`, the offline queue in `queue.rs`) are written once, against this trait, so
//! every backend keeps the same semantics (issue 16).
//!
//! Every method runs inside the writer's transaction (or one of its savepoints) and
//! changes nothing outside it: a rolled-back batch leaves no trace.

use super::admin::AdminWrite;
use super::DbError;
use crate::message::{ChannelKey, Message};

/// What the operations return.
pub type Result<T> = std::result::Result<T, DbError>;

/// One recent message of a channel, for the dedupe window: (from_uid, client_msg_no,
/// message_id, seq).
pub type RecentMessage = (String, String, i64, u32);

/// The writer's primitive operations (module docs). Seqs are `u32` as on the wire.
pub trait WriteTx {
    /// The channel's row id, the row created (every flag 0) when missing.
    fn ensure_channel(&self, key: &ChannelKey) -> Result<i64>;
    /// The highest seq the channel ever used: its newest message's, or the high-water
    /// mark a deletion left, whichever is higher.
    fn channel_high_water(&self, row: i64) -> Result<u32>;
    /// The channel's messages with seq above `after`, oldest first.
    fn recent_messages(&self, row: i64, after: u32) -> Result<Vec<RecentMessage>>;
    /// Stores `message` (its `message_seq` is set) in channel `row`.
    fn insert_message(&self, row: i64, message: &Message) -> Result<()>;
    /// Gives `uid` a conversation with channel `row` unless it has one.
    fn ensure_conversation(&self, uid: &str, row: i64, now_secs: i64) -> Result<()>;

    /// The highest seq of `uid`'s queue entries (0 when none).
    fn offline_max_seq(&self, uid: &str) -> Result<u32>;
    /// `uid`'s cursor (0 when never acknowledged).
    fn offline_cursor(&self, uid: &str) -> Result<u32>;
    /// Writes entry `seq` of `uid`'s queue: message (`channel`, `channel_seq`).
    fn offline_insert(
        &self,
        uid: &str,
        seq: u32,
        channel: i64,
        channel_seq: u32,
        keep: bool,
    ) -> Result<()>;
    /// Deletes `uid`'s oldest trimmable (`keep` = false) entries beyond the newest `bound`
    /// of them; returns how many went.
    fn offline_trim(&self, uid: &str, bound: u32) -> Result<usize>;
    /// Whether `uid`'s queue holds message (`channel`, `channel_seq`).
    fn offline_holds(&self, uid: &str, channel: i64, channel_seq: u32) -> Result<bool>;
    /// Whether `uid`'s queue has an entry at `seq`.
    fn offline_seq_taken(&self, uid: &str, seq: u32) -> Result<bool>;
    /// Marks entry `seq` delivered; returns whether there was one.
    fn offline_mark_delivered(&self, uid: &str, seq: u32) -> Result<bool>;
    /// Raises the cursor to `seq` (never lowers it) and deletes the entries it covers.
    fn offline_raise_cursor(&self, uid: &str, seq: u32) -> Result<()>;
    /// Up to `limit` entries of `uid` above `after`, oldest first: (seq, delivered).
    fn offline_walk(&self, uid: &str, after: u32, limit: usize) -> Result<Vec<(u32, bool)>>;

    /// An administrative write (`admin.rs`).
    fn admin(&self, write: &AdminWrite) -> Result<()>;

    /// The cluster leader's durable pledges (`cluster/pledges.rs`). Only a store a
    /// cluster runs on keeps them; the others refuse.
    fn cluster_pledges(&self, _write: &PledgeWrite) -> Result<()> {
        Err(DbError::Unavailable(
            "this store keeps no cluster pledges (a cluster needs PostgreSQL)".into(),
        ))
    }
}

/// What a cluster leader's commit adds to its transaction (`cluster/pledges.rs`): the
/// record of the queue seqs it reserved for devices on other nodes, kept until they are
/// surely handled, so a successor can write them if this leader dies.
#[derive(Debug, Default)]
pub struct PledgeWrite {
    /// The leader's node id and incarnation, which own the record.
    pub node: i64,
    pub incarnation: i64,
    /// The encoded record and the highest batch number it names, when the commit reserved
    /// any such seq.
    pub record: Option<(Vec<u8>, u64)>,
    /// Delete this leader's records older than [`PLEDGE_KEEP_SECS`] whose batches are all
    /// below this one: the oldest batch with pledges still unresolved in its memory.
    pub prune_below: Option<u64>,
    /// Delete this record (inherited and written: `cluster/inherit.rs`).
    pub forget: Option<i64>,
}

/// How long a leader keeps its pledge records at least: a margin for the requeues of
/// pledges it wrote itself (when a node died or lost a batch) to commit first.
pub const PLEDGE_KEEP_SECS: f64 = 15.0;

/// The writer's open batch transaction (`writer.rs`).
pub trait Batch {
    /// The transaction's operations.
    fn tx(&self) -> &dyn WriteTx;
    /// Runs `f` under a savepoint: its changes stay when it succeeds and vanish when it
    /// fails, and the batch goes on either way unless [`Batch::broken`].
    fn savepoint(&mut self, f: &mut dyn FnMut(&dyn WriteTx) -> Result<()>) -> Result<()>;
    /// Whether the whole transaction is gone (SQLite rolls everything back on some errors,
    /// a full disk among them): the batch must then fail.
    fn broken(&self) -> bool;
}

/// The writer's connection to its store.
pub trait WriteStore: Send {
    /// Runs `f` in one transaction and commits it; rolls back when `f` or the commit
    /// fails. Only after this returns `Ok` is anything durable (SENDACK after commit).
    fn batch(&mut self, f: &mut dyn FnMut(&mut dyn Batch) -> Result<()>) -> Result<()>;
    /// The store as logs name it (a file, or a server and database, never a password).
    fn name(&self) -> String;
    /// From now on, commit only while this server holds node `node_id`'s lease at
    /// `incarnation` (`postgres/lease.rs`). A store without leases ignores it.
    fn fence(&mut self, _node_id: i64, _incarnation: i64) {}
    /// From now on, commit only while this node also holds the cluster's lead
    /// (`postgres/leader.rs`), under the lease given to [`WriteStore::fence`].
    fn lead(&mut self) {}
}
