//! Conversation routes (HTTP_API.md §8): the recent-chat list (`/conversation/sync`),
//! recent messages per channel (`/conversation/syncMessages`) and the unread mutations.

use super::messages::message_json;
use super::{admin, bad, ok, parse, storage_error, stored_channel, valid_id, Answer};
use crate::message::ChannelKey;
use crate::shared::SharedRef;
use crate::storage::admin::{AdminWrite, ConversationOp};
use crate::storage::Reader;
use ruyi_proto::person_channel_id;
use ruyi_proto::types::channel_type;
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Deserialize)]
struct ConversationSyncBody {
    #[serde(default)]
    uid: String,
    #[serde(default)]
    version: i64,
    #[serde(default)]
    last_msg_seqs: String,
    #[serde(default)]
    msg_count: i64,
    #[serde(default)]
    only_unread: u8,
    #[serde(default)]
    exclude_channel_types: Vec<u8>,
    #[serde(default)]
    page: usize,
    #[serde(default)]
    page_size: usize,
}

/// Recent messages per conversation at most in one sync (`msg_count` above it is
/// lowered to it; README's API notes).
pub(crate) const MAX_RECENTS: i64 = 1000;

/// Conversations one sync considers at most (WuKongIM `conversation.userMaxCount`): the
/// ones whose channels hold the newest messages.
pub(crate) const CONVERSATION_LIMIT: usize = 1000;

/// `POST /conversation/sync`: the recent-chat list with the newest messages of each
/// (HTTP_API.md §8.1, PROTOCOL.md §9.6).
///
/// Unread follows §9.6, with one simplification: the user's own latest message (which
/// moves read_to) is looked for among the messages read, the newest `msg_count` (one, once
/// the budget below is spent); an older one is not seen, and unread then counts from
/// read_to (a per-user scan of a channel has no index).
///
/// Memory: the messages read are counted at about their JSON size; once that passes the
/// answer's budget, later conversations read only their newest message and are listed
/// without recents, so a large `msg_count` over many conversations cannot make one
/// request hold whole histories.
pub fn conversation_sync(reader: &Reader, body: &[u8]) -> Result<Answer, Answer> {
    let b: ConversationSyncBody = parse(body)?;
    if b.uid.is_empty() {
        return Err(bad("uid is required"));
    }
    // v2 returns [] for ≤ 0; Ruyi treats it as 1. Capped so one request cannot load whole
    // histories of a thousand conversations into memory.
    let msg_count = b.msg_count.clamp(1, MAX_RECENTS) as usize;
    // "<channel_id>:<channel_type>:<last_seq>|…", channel_id = peer uid for person chats.
    let known: std::collections::HashMap<(String, u8), u32> = b
        .last_msg_seqs
        .split('|')
        .filter_map(|entry| {
            let mut parts = entry.rsplitn(3, ':');
            // 64-bit, clamped to a channel's 32-bit seqs.
            let seq = u32::try_from(parts.next()?.parse::<u64>().ok()?).unwrap_or(u32::MAX);
            let ctype = parts.next()?.parse().ok()?;
            Some(((parts.next()?.to_owned(), ctype), seq))
        })
        .collect();
    let mut list = Vec::new();
    let mut read_bytes = 0;
    for conv in reader
        .conversations(&b.uid, CONVERSATION_LIMIT)
        .map_err(storage_error)?
    {
        let key = &conv.channel;
        if key.id.ends_with("____cmd") {
            continue;
        }
        let shown_id = if key.channel_type == channel_type::PERSON {
            match ruyi_proto::person_peer(&key.id, &b.uid) {
                Some(peer) => peer.to_owned(),
                None => continue,
            }
        } else {
            key.id.clone()
        };
        if shown_id == crate::message::SYSTEM_UID {
            continue;
        }
        let client_seq = known.get(&(shown_id.clone(), key.channel_type)).copied();
        if client_seq.is_none() && b.exclude_channel_types.contains(&key.channel_type) {
            continue;
        }
        let mut start = match client_seq {
            Some(seq) => seq.saturating_add(1),
            None if b.only_unread == 1 || b.version > 0 => conv.read_to.saturating_add(1),
            None => 0,
        };
        if conv.deleted_at > 0 && start <= conv.deleted_at {
            start = conv.deleted_at.saturating_add(1);
        }
        let spent = read_bytes > crate::answer::ANSWER_BUDGET_BYTES;
        let mut recents = reader
            .channel_messages(
                key,
                start.saturating_sub(1),
                u32::MAX,
                if spent { 1 } else { msg_count },
                true,
            )
            .map_err(storage_error)?
            .unwrap_or_default();
        read_bytes += recents.iter().map(json_estimate).sum::<usize>();
        let own_latest = recents
            .iter()
            .filter(|m| m.from_uid == b.uid)
            .map(|m| m.message_seq)
            .max();
        // Only unread: the user's own message read everything up to it (§9.6).
        if let (Some(own), None, true) = (own_latest, client_seq, start > 0) {
            if b.only_unread == 1 || b.version > 0 {
                recents.retain(|m| m.message_seq > own);
            }
        }
        let Some(newest) = recents.last() else {
            continue;
        };
        let last = newest.message_seq;
        let (unread, read_to) = if newest.from_uid == b.uid {
            (0, last)
        } else {
            let read_to = conv.read_to.max(own_latest.unwrap_or(0));
            (last.saturating_sub(read_to), conv.read_to)
        };
        let ts = newest.timestamp;
        list.push((
            ts,
            json!({
                "channel_id": shown_id,
                "channel_type": key.channel_type,
                "unread": unread,
                "timestamp": ts,
                "last_msg_seq": last,
                "last_client_msg_no": newest.client_msg_no,
                "offset_msg_seq": 0,
                "readed_to_msg_seq": read_to,
                "version": i64::from(ts) * 1_000_000_000,
                // Past the budget the conversation is listed without recents: holding its
                // newest message (up to 1 MiB) for each of 1,000 would cost a gigabyte.
                "recents": if spent { Vec::new() } else {
                    recents.iter().rev().map(|m| message_json(m, Some(&b.uid))).collect::<Vec<_>>()
                },
            }),
        ));
    }
    list.sort_by_key(|entry| std::cmp::Reverse(entry.0));
    let mut list: Vec<Value> = list.into_iter().map(|(_, v)| v).collect();
    if b.page >= 1 {
        let size = if b.page_size == 0 {
            100
        } else {
            b.page_size.min(500)
        };
        list = list
            .into_iter()
            .skip((b.page - 1).saturating_mul(size))
            .take(size)
            .collect();
    }
    // Recents beyond the budget are left out (conversations stay listed); the client
    // reads those channels' history with /channel/messagesync.
    let mut used = 0;
    for conversation in &mut list {
        if let Some(recents) = conversation.get_mut("recents") {
            let size = crate::answer::json_len(recents);
            if used + size > crate::answer::ANSWER_BUDGET_BYTES {
                *recents = Value::Array(Vec::new());
            } else {
                used += size;
            }
        }
    }
    Ok((200, Value::Array(list).to_string()))
}

#[derive(Deserialize)]
struct ConversationBody {
    #[serde(default)]
    uid: String,
    #[serde(default)]
    channel_id: String,
    #[serde(default)]
    channel_type: u8,
    #[serde(default)]
    unread: i64,
}

/// `POST /conversations/clearUnread`, `/setUnread`, `/delete` (HTTP_API.md §8.2).
pub fn conversation_change(
    shared: &SharedRef,
    body: &[u8],
    op: ConversationOp,
) -> Result<Answer, Answer> {
    let b: ConversationBody = parse(body)?;
    if b.uid.is_empty() || b.channel_id.is_empty() || b.channel_type == 0 {
        return Err(bad("uid, channel_id and channel_type are required"));
    }
    if !valid_id(&b.uid) || !valid_id(&b.channel_id) {
        return Err(bad(
            "uid and channel_id must not contain @ # & nor be reserved (PROTOCOL.md §8.3)",
        ));
    }
    let key = if b.channel_type == channel_type::PERSON {
        ChannelKey::new(
            person_channel_id(&b.uid, &b.channel_id),
            channel_type::PERSON,
        )
    } else {
        ChannelKey::new(b.channel_id, b.channel_type)
    };
    admin(
        shared,
        vec![AdminWrite::Conversation {
            uid: b.uid,
            key,
            op,
            unread: b.unread,
        }],
    )?;
    Ok(ok())
}

#[derive(Deserialize)]
struct RecentChannel {
    #[serde(default)]
    channel_id: String,
    #[serde(default)]
    channel_type: u8,
    #[serde(default)]
    last_msg_seq: u64,
}

#[derive(Deserialize)]
struct SyncMessagesBody {
    #[serde(default)]
    uid: String,
    #[serde(default)]
    channels: Vec<RecentChannel>,
    #[serde(default)]
    msg_count: i64,
    #[serde(default)]
    order_by_last: u8,
}

/// About what `m` costs in an answer's JSON: its payload in base64 and the other fields.
fn json_estimate(m: &crate::message::Message) -> usize {
    m.payload.len() * 4 / 3 + 300 + m.client_msg_no.len() + m.from_uid.len() + m.channel.id.len()
}

/// Channels one `/conversation/syncMessages` may name at most.
const SYNC_MESSAGES_CHANNELS: usize = 1000;

/// `POST /conversation/syncMessages` (HTTP_API.md §8.3): for each channel named, the newest
/// `msg_count` (default 15, at most [`MAX_RECENTS`]) messages after its `last_msg_seq`.
/// Choices where the spec is silent: `channel_id` is the storage id (`a@b`, either
/// order) or, for a person chat, the peer's uid; the messages come newest first with
/// `order_by_last` = 1, oldest first otherwise; `user_last_msg_seq` is the seq of the
/// newest of them `uid` sent (0 if none). The answer stays within its budget (about
/// 2 MiB of JSON): past it, later channels come without messages; a channel named twice is
/// read once.
pub fn sync_messages(reader: &Reader, body: &[u8]) -> Result<Answer, Answer> {
    let b: SyncMessagesBody = parse(body)?;
    if b.uid.is_empty() {
        return Err(bad("uid is required"));
    }
    if b.channels.len() > SYNC_MESSAGES_CHANNELS {
        return Err(bad("at most 1000 channels per request"));
    }
    let msg_count = if b.msg_count <= 0 {
        15
    } else {
        b.msg_count.min(MAX_RECENTS) as usize
    };
    let (mut out, mut read_bytes) = (Vec::new(), 0);
    let mut seen = std::collections::HashSet::new();
    for c in &b.channels {
        if c.channel_id.is_empty() || c.channel_type == 0 {
            return Err(bad("each channel needs channel_id and channel_type"));
        }
        let key = stored_channel(&c.channel_id, c.channel_type, Some(&b.uid))?;
        let after = u32::try_from(c.last_msg_seq).unwrap_or(u32::MAX);
        // A channel named twice is read once; past the budget, channels are answered
        // without messages (the client asks again from where it got to).
        let mut messages =
            if !seen.insert(key.clone()) || read_bytes > crate::answer::ANSWER_BUDGET_BYTES {
                Vec::new()
            } else {
                reader
                    .channel_messages(&key, after, u32::MAX, msg_count, true)
                    .map_err(storage_error)?
                    .unwrap_or_default()
            };
        // Within the budget: the newest of them that fit (at least one), since the newest
        // are what a client shows; the oldest go.
        let mut kept = 0;
        for m in messages.iter().rev() {
            let size = json_estimate(m);
            if kept > 0 && read_bytes + size > crate::answer::ANSWER_BUDGET_BYTES {
                break;
            }
            read_bytes += size;
            kept += 1;
        }
        messages.drain(..messages.len() - kept);
        let own = messages
            .iter()
            .filter(|m| m.from_uid == b.uid)
            .map(|m| m.message_seq)
            .max()
            .unwrap_or(0);
        if b.order_by_last == 1 {
            messages.reverse();
        }
        out.push(json!({
            "channel_id": c.channel_id,
            "channel_type": c.channel_type,
            "messages": messages.iter().map(|m| message_json(m, Some(&b.uid))).collect::<Vec<_>>(),
            "user_last_msg_seq": own,
        }));
    }
    Ok((200, Value::Array(out).to_string()))
}
