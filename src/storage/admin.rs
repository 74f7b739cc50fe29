//! The HTTP API's administrative writes, as values: the routes say *what* changes
//! ([`AdminWrite`]), each store says how (`sqlite/admin.rs`). They run on the
//! storage writer inside its batch transaction, one savepoint per job (`writer.rs`), so
//! a failing one fails alone and a committed one is durable before the route answers.
//!
//! This is the storage seam's write side for everything but messages and offline queues
//! (`append.rs`, `queue.rs`): no route names a table or a statement.

use crate::message::ChannelKey;

/// A channel's flags as `/channel` and `/channel/info` set them (HTTP_API.md §5.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChannelFlags {
    pub ban: u8,
    pub disband: u8,
    pub send_ban: u8,
    pub large: u8,
    pub allow_stranger: u8,
}

/// Which per-channel uid list (HTTP_API.md §5.6–5.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListKind {
    /// `blacklist_*`: these uids may not send.
    Deny,
    /// `whitelist_*`: only these uids may send.
    Allow,
}

impl ListKind {
    /// The table that holds the list.
    pub fn table(self) -> &'static str {
        match self {
            ListKind::Deny => "denylist",
            ListKind::Allow => "allowlist",
        }
    }
}

/// How a list changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListOp {
    /// Add the uids.
    Add,
    /// Replace the list with the uids (empty clears).
    Set,
    /// Remove the uids.
    Remove,
    /// Clear the list.
    RemoveAll,
}

/// How a conversation changes (HTTP_API.md §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConversationOp {
    /// `read_to` = the channel's last seq.
    ClearUnread,
    /// `read_to` = last − unread, only ever forward.
    SetUnread,
    /// `deleted_at` = the channel's last seq.
    Delete,
}

/// One administrative write.
#[derive(Debug, Clone)]
pub enum AdminWrite {
    /// `/user/token`: a device's token (already hashed) and level.
    SetToken {
        uid: String,
        device_flag: u8,
        token_hash: String,
        level: u8,
    },
    /// `/user/device_quit`: clears the tokens of a flag, or of every flag (`None`).
    ClearTokens {
        uid: String,
        device_flag: Option<u8>,
    },
    /// `/channel`, `/channel/info`: every flag overwritten, the channel created if needed.
    ChannelFlags {
        key: ChannelKey,
        flags: ChannelFlags,
    },
    /// `/user/systemuids_add` (`add`) and `_remove`.
    SystemUids { uids: Vec<String>, add: bool },
    /// `/channel`, `/channel/subscriber_add`: new members start with nothing unread.
    AddSubscribers {
        key: ChannelKey,
        reset: bool,
        uids: Vec<String>,
    },
    /// `/channel/subscriber_remove`: the members and their conversations go.
    RemoveSubscribers { key: ChannelKey, uids: Vec<String> },
    /// `/channel/subscriber_remove_all`.
    RemoveAllSubscribers { key: ChannelKey },
    /// `/channel/delete`: disbanded; members, lists, conversations, queue entries and
    /// messages deleted; the seq high-water mark kept, so no seq is ever reused. The row
    /// keeps `disband = 2` ("deleted", which refuses sends as disbanded does): members
    /// added again make it a fresh channel (flags cleared, seqs going on).
    DeleteChannel { key: ChannelKey },
    /// The deny and allow lists.
    List {
        key: ChannelKey,
        kind: ListKind,
        op: ListOp,
        uids: Vec<String>,
    },
    /// `/conversations/*`.
    Conversation {
        uid: String,
        key: ChannelKey,
        op: ConversationOp,
        unread: i64,
    },
}

impl AdminWrite {
    /// The channel whose cached state the writer must drop first, if any.
    pub fn forgets(&self) -> Option<&ChannelKey> {
        match self {
            AdminWrite::DeleteChannel { key } => Some(key),
            _ => None,
        }
    }
}

/// `setUnread`'s new read position: `unread` messages before the channel's `last` seq,
/// all read when `unread` is 0 or less, never before the first message. Only ever moves
/// forward (the store keeps the higher of this and the old one).
pub fn unread_target(last: i64, unread: i64) -> i64 {
    if unread <= 0 {
        last
    } else if unread > last {
        (last - 1).max(0)
    } else {
        last - unread
    }
}
