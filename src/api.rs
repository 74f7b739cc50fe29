//! More of the HTTP API (HTTP_API.md): device quit, online status, channel info and
//! deletion, subscriber removal, channel history, the max seq, routes, `/varz` and
//! Prometheus `/metrics`. Runs on the HTTP workers, never on a loop.

use crate::gateway::ToLoop;
use crate::http::{
    admin, bad, invalidate, message_json, ok, parse, valid_id, Answer, ChannelBody, HttpRequest,
};
use crate::message::ChannelKey;
use crate::shared::SharedRef;
use crate::storage::admin::AdminWrite;
use crate::storage::admin::{ConversationOp, ListKind, ListOp};
use crate::storage::Reader;
use ruyi_proto::person_channel_id;
use ruyi_proto::types::channel_type;
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::Duration;

fn storage_error(e: crate::storage::DbError) -> Answer {
    crate::http::storage_answer(&e)
}

/// Query-string value of `name` (`+` and `%XX` decoded).
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(
                    std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"),
                    16,
                ) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[derive(Deserialize)]
struct DeviceQuitBody {
    #[serde(default)]
    uid: String,
    #[serde(default)]
    device_flag: i32,
}

/// `POST /user/device_quit`: clears the token of that flag (-1: all three) and kicks its
/// live connections with DISCONNECT(12), closing them 2 s later (HTTP_API.md §4.2).
pub fn device_quit(shared: &SharedRef, body: &[u8]) -> Result<Answer, Answer> {
    let b: DeviceQuitBody = parse(body)?;
    if !valid_id(&b.uid) {
        return Err(bad("uid is empty or contains @ # &"));
    }
    if !(-1..=2).contains(&b.device_flag) {
        return Err(bad("device_flag must be 0, 1, 2 or -1"));
    }
    admin(
        shared,
        vec![AdminWrite::ClearTokens {
            uid: b.uid.clone(),
            device_flag: u8::try_from(b.device_flag).ok(),
        }],
    )?;
    for d in shared.registry.devices(&b.uid) {
        if b.device_flag == -1 || i32::from(d.device_flag) == b.device_flag {
            let kick = ToLoop::Kick {
                conn: d.conn,
                notify: true,
                code: ruyi_proto::types::reason::CONNECT_KICK,
                reason: String::new(),
                after: Duration::from_secs(2),
            };
            let _ = shared.loops().for_conn(d.conn).post(kick);
        }
    }
    Ok(ok())
}

/// `POST /user/onlinestatus`: one entry per live connection of the listed uids
/// (HTTP_API.md §4.3).
pub fn online_status(shared: &SharedRef, body: &[u8]) -> Result<Answer, Answer> {
    let uids: Vec<String> = parse(body)?;
    if uids.is_empty() {
        return Ok(ok());
    }
    let list: Vec<Value> = uids
        .iter()
        .flat_map(|uid| {
            shared
                .registry
                .devices(uid)
                .into_iter()
                .map(move |d| json!({"uid": uid, "device_flag": d.device_flag, "online": 1}))
        })
        .collect();
    Ok((200, Value::Array(list).to_string()))
}

fn channel_ref(body: &[u8], allow_person: bool) -> Result<(ChannelBody, ChannelKey), Answer> {
    let b: ChannelBody = parse(body)?;
    if !valid_id(&b.channel_id) {
        return Err(bad("channel_id is empty or contains @ # &"));
    }
    if b.channel_type == 0 {
        return Err(bad("channel_type is required"));
    }
    if !allow_person && b.channel_type == channel_type::PERSON {
        return Err(bad("not for person channels"));
    }
    let key = ChannelKey::new(b.channel_id.clone(), b.channel_type);
    Ok((b, key))
}

/// `POST /channel/info`: upserts a channel's flags only (HTTP_API.md §5.2).
pub fn channel_info(shared: &SharedRef, body: &[u8]) -> Result<Answer, Answer> {
    let (b, key) = channel_ref(body, true)?;
    let banned = b.ban == 1;
    admin(shared, vec![crate::http::channel_flags(&key, &b)])?;
    invalidate(shared, Some(key.clone()));
    crate::http::end_banned_sessions(shared, &key, banned);
    Ok(ok())
}

/// `POST /channel/delete`: the channel is disbanded (sends fail with 24), its subscribers,
/// conversations and messages are deleted (HTTP_API.md §5.5). The channel row stays with
/// its seq high-water mark (`channels.last_seq`), so old seqs are never reused, even after
/// a restart.
pub fn channel_delete(shared: &SharedRef, body: &[u8]) -> Result<Answer, Answer> {
    let (_, key) = channel_ref(body, false)?;
    admin(shared, vec![AdminWrite::DeleteChannel { key: key.clone() }])?;
    invalidate(shared, Some(key));
    Ok(ok())
}

/// `POST /channel/subscriber_remove`: removes subscribers and their conversations
/// (HTTP_API.md §5.4).
pub fn subscriber_remove(shared: &SharedRef, body: &[u8]) -> Result<Answer, Answer> {
    let (b, key) = channel_ref(body, false)?;
    if b.subscribers.is_empty() {
        return Err(bad("subscribers is required"));
    }
    admin(
        shared,
        vec![AdminWrite::RemoveSubscribers {
            key: key.clone(),
            uids: b.subscribers,
        }],
    )?;
    invalidate(shared, Some(key));
    Ok(ok())
}

#[derive(Deserialize)]
struct MessageSyncBody {
    #[serde(default)]
    login_uid: String,
    #[serde(default)]
    channel_id: String,
    #[serde(default)]
    channel_type: u8,
    #[serde(default)]
    start_message_seq: u32,
    #[serde(default)]
    end_message_seq: u32,
    #[serde(default)]
    limit: u32,
    #[serde(default)]
    pull_mode: u8,
}

/// `POST /channel/messagesync`: channel history by seq range, both directions, ascending
/// (HTTP_API.md §6.3).
pub fn channel_messagesync(reader: &Reader, body: &[u8]) -> Result<Answer, Answer> {
    let b: MessageSyncBody = parse(body)?;
    if b.login_uid.is_empty() {
        return Err(bad("login_uid is required"));
    }
    if b.channel_id.is_empty() || b.channel_type == 0 {
        return Err(bad("channel_id and channel_type are required"));
    }
    let key = if b.channel_type == channel_type::PERSON {
        ChannelKey::new(
            person_channel_id(&b.login_uid, &b.channel_id),
            channel_type::PERSON,
        )
    } else {
        ChannelKey::new(b.channel_id.clone(), b.channel_type)
    };
    let limit = b.limit.min(10_000) as usize;
    let (start, end) = (b.start_message_seq, b.end_message_seq);
    let query = if start == 0 && end == 0 {
        Some((0, u32::MAX, true))
    } else if b.pull_mode == 0 {
        // Down: (end, start], the newest of them; end 0 = no lower bound.
        (end == 0 || end <= start).then_some((end, start, true))
    } else {
        // Up: [start, end); end 0 = no upper bound.
        Some((
            start.saturating_sub(1),
            if end == 0 { u32::MAX } else { end - 1 },
            false,
        ))
    };
    let messages = match query {
        Some((low, high, newest)) if limit > 0 => reader
            .channel_messages(&key, low, high, limit, newest)
            .map_err(storage_error)?,
        _ => Some(Vec::new()),
    };
    let Some(messages) = messages else {
        return Ok((
            200,
            json!({"start_message_seq": 0, "end_message_seq": 0, "more": 0, "messages": []})
                .to_string(),
        ));
    };
    let boundary = if b.pull_mode == 0 {
        messages.first()
    } else {
        messages.last()
    };
    // The read stops early at its byte budget: then there is more whatever the count.
    let read_cut = messages.len() < limit
        && messages.iter().map(|m| m.payload.len()).sum::<usize>()
            >= crate::storage::READ_BUDGET_BYTES;
    let more = read_cut
        || (limit > 0 && messages.len() == limit && boundary.is_none_or(|m| m.message_seq != end));
    let mut list: Vec<Value> = messages
        .iter()
        .map(|m| message_json(m, Some(&b.login_uid)))
        .collect();
    // Large messages: keep those nearest the start point and say there is more.
    let cut = crate::answer::fit(&mut list, b.pull_mode == 1 && (start, end) != (0, 0));
    let more = more || cut;
    Ok((
        200,
        json!({"start_message_seq": start, "end_message_seq": end, "more": u8::from(more), "messages": list}).to_string(),
    ))
}

/// `GET /channel/max_message_seq?channel_id=&channel_type=&login_uid=` (HTTP_API.md §6.4).
pub fn max_message_seq(reader: &Reader, req: &HttpRequest) -> Result<Answer, Answer> {
    let channel_id = query_param(&req.query, "channel_id").unwrap_or_default();
    let ctype: u8 = query_param(&req.query, "channel_type")
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    if channel_id.is_empty() || ctype == 0 {
        return Err(bad("channel_id and channel_type are required"));
    }
    let key = if ctype == channel_type::PERSON && !channel_id.contains('@') {
        let login = query_param(&req.query, "login_uid")
            .filter(|u| !u.is_empty())
            .ok_or_else(|| bad("login_uid is required for person channels"))?;
        ChannelKey::new(person_channel_id(&login, &channel_id), ctype)
    } else {
        ChannelKey::new(channel_id, ctype)
    };
    let seq = reader.last_seq(&key).map_err(storage_error)?;
    Ok((200, json!({"message_seq": seq}).to_string()))
}

/// `GET /route`: where clients should connect (HTTP_API.md §3.4). Single node: this
/// server's listeners.
pub fn route_addrs(shared: &SharedRef, req: &HttpRequest) -> Answer {
    let c = &shared.config;
    if query_param(&req.query, "intranet").as_deref() == Some("1") {
        return (200, json!({"tcp_addr": c.tcp_addr.to_string()}).to_string());
    }
    (200, json!({"tcp_addr": c.tcp_addr.to_string(), "ws_addr": format!("ws://{}", c.ws_addr), "wss_addr": ""}).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_are_decoded() {
        assert_eq!(
            query_param("a=1&uid=u%401+x", "uid").as_deref(),
            Some("u@1 x")
        );
        assert_eq!(query_param("a=1", "uid"), None);
        assert_eq!(query_param("uid=%zz%", "uid").as_deref(), Some("%zz%"));
    }
}

#[derive(Deserialize)]
struct ListBody {
    #[serde(default)]
    channel_id: String,
    #[serde(default)]
    channel_type: u8,
    #[serde(default)]
    uids: Vec<String>,
}

/// `POST /channel/blacklist_*` and `/channel/whitelist_*` (HTTP_API.md §5.6–5.7). Person
/// lists belong to the owner: `channel_id` = owner uid, type 1. Blacklisting removes the
/// listed users' conversation with the channel, unblacklisting brings it back (not for
/// Live channels); whitelisting on a person channel gives the owner a conversation with
/// each listed user.
pub fn list_change(
    shared: &SharedRef,
    body: &[u8],
    kind: ListKind,
    op: ListOp,
) -> Result<Answer, Answer> {
    let b: ListBody = parse(body)?;
    if !valid_id(&b.channel_id) {
        return Err(bad("channel_id is empty or contains @ # &"));
    }
    if b.channel_type == 0 {
        return Err(bad("channel_type is required"));
    }
    if op == ListOp::Add && b.uids.is_empty() {
        return Err(bad("uids is required"));
    }
    if let Some(u) = b.uids.iter().find(|u| !valid_id(u)) {
        return Err(bad(&format!("uid {u:?} is empty or contains @ # &")));
    }
    let key = ChannelKey::new(b.channel_id.clone(), b.channel_type);
    admin(
        shared,
        vec![AdminWrite::List {
            key: key.clone(),
            kind,
            op,
            uids: b.uids,
        }],
    )?;
    invalidate(shared, Some(key));
    Ok(ok())
}

/// `GET /channel/whitelist?channel_id=&channel_type=`: the list as member objects.
pub fn whitelist(reader: &Reader, req: &HttpRequest) -> Result<Answer, Answer> {
    let channel_id = query_param(&req.query, "channel_id").unwrap_or_default();
    let ctype: u8 = query_param(&req.query, "channel_type")
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    if channel_id.is_empty() || ctype == 0 {
        return Err(bad("channel_id and channel_type are required"));
    }
    let info = reader
        .channel(&ChannelKey::new(channel_id, ctype))
        .map_err(storage_error)?;
    let list: Vec<Value> = info
        .map(|i| i.allowlist)
        .unwrap_or_default()
        .iter()
        .map(|uid| json!({"uid": uid, "id": uid}))
        .collect();
    Ok((200, Value::Array(list).to_string()))
}

#[derive(Deserialize)]
struct SendBatchBody {
    #[serde(default)]
    header: crate::http::Header,
    #[serde(default)]
    from_uid: String,
    #[serde(default)]
    subscribers: Vec<String>,
    #[serde(default)]
    payload: String,
}

/// `POST /message/sendbatch`: one person message from `from_uid` to each subscriber, each
/// with its own client_msg_no (HTTP_API.md §6.2). Answers after every commit.
pub fn send_batch(shared: &SharedRef, body: &[u8]) -> Result<Answer, Answer> {
    use base64::Engine as _;
    let b: SendBatchBody = parse(body)?;
    if !valid_id(&b.from_uid) {
        return Err(bad(
            "from_uid is required and must not contain @ # & nor be reserved (PROTOCOL.md §8.3)",
        ));
    }
    if b.subscribers.is_empty() {
        return Err(bad("subscribers is required"));
    }
    let payload = base64::engine::general_purpose::STANDARD
        .decode(b.payload.as_bytes())
        .map_err(|_| bad("payload must be base64"))?;
    if payload.is_empty() {
        return Err(bad("payload is required"));
    }
    let payload = bytes::Bytes::from(payload);
    let flags = crate::http::header_flags(&b.header);
    let mut pending = Vec::with_capacity(b.subscribers.len());
    let (mut fail_uids, mut reasons) = (Vec::new(), Vec::new());
    for uid in &b.subscribers {
        if !valid_id(uid) || uid.len() > ruyi_proto::MAX_STRING_BYTES {
            fail_uids.push(uid.clone());
            reasons.push(ruyi_proto::types::reason::CHANNEL_ID_ERROR);
            continue;
        }
        let send = crate::http::ApiSend {
            from_uid: b.from_uid.clone(),
            channel_id: uid.clone(),
            channel_type: channel_type::PERSON,
            flags,
            client_msg_no: String::new(),
            expire: 0,
            payload: payload.clone(),
            recipients: None,
        };
        pending.push((uid.clone(), crate::http::submit(shared, send)?.0));
    }
    // One deadline for the whole batch, so a storage stall costs one timeout, not one
    // per recipient.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    for (uid, rx) in pending {
        let reason = rx
            .recv_deadline(deadline)
            .map_or(ruyi_proto::types::reason::SYSTEM_ERROR, |o| o.reason);
        if reason != ruyi_proto::types::reason::SUCCESS {
            fail_uids.push(uid);
            reasons.push(reason);
        }
    }
    Ok((
        200,
        json!({"fail_uids": fail_uids, "reason": reasons}).to_string(),
    ))
}

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

/// Recent messages per conversation at most in one sync.
const MAX_RECENTS: i64 = 100;

/// Conversations a user may hold at most in one sync (WuKongIM `conversation.userMaxCount`).
const CONVERSATION_LIMIT: usize = 1000;

/// `POST /conversation/sync`: the recent-chat list with the newest messages of each
/// (HTTP_API.md §8.1, PROTOCOL.md §9.6).
///
/// Unread follows §9.6, with one simplification: the user's own latest message is looked
/// for among the returned recents only (a full per-user scan of a channel has no index).
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
            let seq = parts.next()?.parse().ok()?;
            let ctype = parts.next()?.parse().ok()?;
            Some(((parts.next()?.to_owned(), ctype), seq))
        })
        .collect();
    let mut list = Vec::new();
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
        let recents = reader
            .channel_messages(key, start.saturating_sub(1), u32::MAX, msg_count, true)
            .map_err(storage_error)?
            .unwrap_or_default();
        let Some(newest) = recents.last() else {
            continue;
        };
        let last = newest.message_seq;
        let own_latest = recents
            .iter()
            .filter(|m| m.from_uid == b.uid)
            .map(|m| m.message_seq)
            .max();
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
                "recents": recents.iter().rev().map(|m| message_json(m, Some(&b.uid))).collect::<Vec<_>>(),
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

/// `POST /channel/subscriber_remove_all` (HTTP_API.md §5.4).
pub fn subscriber_remove_all(shared: &SharedRef, body: &[u8]) -> Result<Answer, Answer> {
    let (_, key) = channel_ref(body, false)?;
    admin(
        shared,
        vec![AdminWrite::RemoveAllSubscribers { key: key.clone() }],
    )?;
    invalidate(shared, Some(key));
    Ok(ok())
}

#[derive(Deserialize)]
struct MessagesBody {
    #[serde(default)]
    login_uid: String,
    #[serde(default)]
    channel_id: String,
    #[serde(default)]
    channel_type: u8,
    #[serde(default)]
    message_seqs: Vec<u32>,
    #[serde(default)]
    message_ids: Vec<i64>,
    #[serde(default)]
    client_msg_nos: Vec<String>,
    #[serde(default)]
    message_id: i64,
    #[serde(default)]
    client_msg_no: String,
}

fn messages_key(b: &MessagesBody) -> Result<ChannelKey, Answer> {
    if b.channel_id.is_empty() || b.channel_type == 0 {
        return Err(bad("channel_id and channel_type are required"));
    }
    if b.channel_type == channel_type::PERSON {
        if b.login_uid.is_empty() {
            return Err(bad("login_uid is required for person channels"));
        }
        return Ok(ChannelKey::new(
            person_channel_id(&b.login_uid, &b.channel_id),
            channel_type::PERSON,
        ));
    }
    Ok(ChannelKey::new(b.channel_id.clone(), b.channel_type))
}

/// `POST /messages`: messages by seq, then id, then client_msg_no, in the order asked;
/// keys with no match are skipped (HTTP_API.md §6.5).
pub fn messages(reader: &Reader, body: &[u8]) -> Result<Answer, Answer> {
    use crate::storage::MessageKey;
    let b: MessagesBody = parse(body)?;
    let key = messages_key(&b)?;
    let asked = b.message_seqs.len() + b.message_ids.len() + b.client_msg_nos.len();
    if asked > 1000 {
        return Err(bad("at most 1000 keys per request"));
    }
    let mut found = Vec::new();
    for &seq in &b.message_seqs {
        let page = reader
            .channel_messages(&key, seq.saturating_sub(1), seq, 1, false)
            .map_err(storage_error)?;
        found.extend(page.unwrap_or_default());
    }
    for &id in &b.message_ids {
        found.extend(
            reader
                .channel_message_by(&key, MessageKey::Id(id))
                .map_err(storage_error)?,
        );
    }
    for no in &b.client_msg_nos {
        found.extend(
            reader
                .channel_message_by(&key, MessageKey::ClientMsgNo(no))
                .map_err(storage_error)?,
        );
    }
    let caller = (!b.login_uid.is_empty()).then_some(b.login_uid.as_str());
    let mut list: Vec<Value> = found.iter().map(|m| message_json(m, caller)).collect();
    let more = crate::answer::fit(&mut list, true);
    Ok((
        200,
        json!({"start_message_seq": 0, "end_message_seq": 0, "more": u8::from(more), "messages": list})
            .to_string(),
    ))
}

/// `POST /message`: one message by id or client_msg_no, or `{"status":404}`
/// (HTTP_API.md §6.6).
pub fn message(reader: &Reader, body: &[u8]) -> Result<Answer, Answer> {
    use crate::storage::MessageKey;
    let b: MessagesBody = parse(body)?;
    let key = messages_key(&b)?;
    let by = if b.message_id != 0 {
        MessageKey::Id(b.message_id)
    } else if !b.client_msg_no.is_empty() {
        MessageKey::ClientMsgNo(&b.client_msg_no)
    } else {
        return Err(bad("message_id or client_msg_no is required"));
    };
    match reader.channel_message_by(&key, by).map_err(storage_error)? {
        Some(m) => Ok((
            200,
            message_json(
                &m,
                (!b.login_uid.is_empty()).then_some(b.login_uid.as_str()),
            )
            .to_string(),
        )),
        None => Ok((200, json!({"status": 404}).to_string())),
    }
}

/// `POST /route/batch`: single node, so one entry with every uid (HTTP_API.md §3.4).
pub fn route_batch(shared: &SharedRef, body: &[u8]) -> Result<Answer, Answer> {
    let uids: Vec<String> = parse(body)?;
    let c = &shared.config;
    Ok((
        200,
        json!([{"uids": uids, "tcp_addr": c.tcp_addr.to_string(), "ws_addr": format!("ws://{}", c.ws_addr), "wss_addr": ""}])
            .to_string(),
    ))
}
