//! Channel history (HTTP_API.md §6.3–6.7): by seq range, by key, one message, the newest
//! message and the highest seq.

use super::messages::message_json;
use super::wire::HttpRequest;
use super::{bad, parse, query_id_and_type, query_param, storage_error, stored_channel, Answer};
use crate::message::ChannelKey;
use crate::storage::Reader;
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Deserialize)]
struct MessageSyncBody {
    #[serde(default)]
    login_uid: String,
    #[serde(default)]
    channel_id: String,
    #[serde(default)]
    channel_type: u8,
    // 64-bit, as WuKongIM's API has them; a channel's seqs are 32-bit (the wire
    // protocol's), so larger values are clamped to the highest.
    #[serde(default)]
    start_message_seq: u64,
    #[serde(default)]
    end_message_seq: u64,
    #[serde(default)]
    limit: u64,
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
    let key = stored_channel(&b.channel_id, b.channel_type, Some(&b.login_uid))?;
    let limit = b.limit.min(10_000) as usize;
    let clamp = |seq: u64| u32::try_from(seq).unwrap_or(u32::MAX);
    let (start, end) = (clamp(b.start_message_seq), clamp(b.end_message_seq));
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
        json!({"start_message_seq": b.start_message_seq, "end_message_seq": b.end_message_seq, "more": u8::from(more), "messages": list}).to_string(),
    ))
}

/// The channel a query names (`channel_id`, `channel_type`, and `login_uid` for a person
/// chat addressed by the peer's uid); a combined person id names the same channel in
/// either order.
fn query_channel(req: &HttpRequest) -> Result<ChannelKey, Answer> {
    let (id, ctype) = query_id_and_type(req)?;
    stored_channel(&id, ctype, query_param(&req.query, "login_uid").as_deref())
}

/// `GET /channel/max_message_seq?channel_id=&channel_type=&login_uid=` (HTTP_API.md §6.4):
/// 0 for a channel never used.
pub fn max_message_seq(reader: &Reader, req: &HttpRequest) -> Result<Answer, Answer> {
    let key = query_channel(req)?;
    let seq = reader.last_seq(&key).map_err(storage_error)?;
    Ok((200, json!({"message_seq": seq}).to_string()))
}

/// `GET /channel/last_message?login_uid=&channel_id=&channel_type=` (HTTP_API.md §6.7): the
/// newest message, or `{"status":404}` (as `/message` answers) when there is none.
pub fn last_message(reader: &Reader, req: &HttpRequest) -> Result<Answer, Answer> {
    let key = query_channel(req)?;
    let newest = reader
        .channel_messages(&key, 0, u32::MAX, 1, true)
        .map_err(storage_error)?
        .unwrap_or_default();
    let login = query_param(&req.query, "login_uid").filter(|u| !u.is_empty());
    Ok(match newest.last() {
        Some(m) => (200, message_json(m, login.as_deref()).to_string()),
        None => (200, json!({"status": 404}).to_string()),
    })
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
    message_seqs: Vec<u64>,
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
    stored_channel(&b.channel_id, b.channel_type, Some(&b.login_uid))
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
    // A seq past 32 bits names no message (a channel's seqs are 32-bit).
    for seq in b.message_seqs.iter().filter_map(|&s| u32::try_from(s).ok()) {
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
