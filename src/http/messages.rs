//! Sending and the offline queue (HTTP_API.md §6.1–6.2, §7): `/message/send`,
//! `/message/sendbatch`, `/message/sync`, `/message/syncack`, and the message JSON every
//! route and webhook shares.

use super::{bad, error_body, ok, parse, storage_answer, valid_id, Answer, BACKEND_TIMEOUT};
use crate::channel::SendRequest;
use crate::message::{ChannelKey, Message, Reply, SYSTEM_UID};
use crate::shared::SharedRef;
use crate::storage::writer::Job;
use crate::storage::Reader;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::Bytes;
use ruyi_proto::types::{channel_type, reason};
use ruyi_proto::{person_channel_id, person_peer, Flags};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

#[derive(Deserialize, Default)]
pub(crate) struct Header {
    #[serde(default)]
    pub no_persist: u8,
    #[serde(default)]
    pub red_dot: u8,
    #[serde(default)]
    pub sync_once: u8,
}

#[derive(Deserialize)]
struct SendBody {
    #[serde(default)]
    header: Header,
    #[serde(default)]
    client_msg_no: String,
    #[serde(default)]
    from_uid: String,
    #[serde(default)]
    channel_id: String,
    #[serde(default)]
    channel_type: u8,
    #[serde(default)]
    expire: u32,
    #[serde(default)]
    payload: String,
    #[serde(default)]
    subscribers: Vec<String>,
}

pub(crate) fn message_send(shared: &SharedRef, body: &[u8]) -> Result<Answer, Answer> {
    let mut b: SendBody = parse(body)?;
    // With a subscriber list the message goes to a Temp channel of exactly those users, as
    // a command message (HTTP_API.md §6.1): persisted under `<hash>____cmd`, or, with
    // no_persist, the shared online-only `systemcmdonline`.
    let explicit = if b.subscribers.is_empty() {
        None
    } else {
        if !b.channel_id.is_empty() {
            return Err(bad("give channel_id or subscribers, not both"));
        }
        if b.header.sync_once != 1 {
            return Err(bad(
                "a send to a subscriber list needs header.sync_once = 1",
            ));
        }
        if let Some(s) = b.subscribers.iter().find(|s| !valid_id(s)) {
            return Err(bad(&format!("subscriber {s:?} is empty or contains @ # &")));
        }
        b.channel_id = if b.header.no_persist == 1 {
            "systemcmdonline".to_owned()
        } else {
            format!("{}____cmd", temp_channel_hash(&b.subscribers.join(",")))
        };
        b.channel_type = channel_type::TEMP;
        // Each user once, first occurrence kept: a duplicate would get every RECV twice.
        let mut seen = std::collections::HashSet::new();
        let unique: Vec<String> = std::mem::take(&mut b.subscribers)
            .into_iter()
            .filter(|u| seen.insert(u.clone()))
            .collect();
        Some(Arc::<[String]>::from(unique))
    };
    if explicit.is_none() && !valid_id(&b.channel_id) {
        return Err(bad(
            "channel_id or subscribers is required; ids must not contain @ # & nor be reserved (PROTOCOL.md §8.3)",
        ));
    }
    if b.channel_type == 0 {
        return Err(bad("channel_type is required"));
    }
    let payload = BASE64
        .decode(b.payload.as_bytes())
        .map_err(|_| bad("payload must be base64"))?;
    if payload.is_empty() {
        return Err(bad("payload is required"));
    }
    if !b.from_uid.is_empty() && !valid_id(&b.from_uid) {
        return Err(bad(
            "from_uid must not contain @ # & nor be reserved (PROTOCOL.md §8.3)",
        ));
    }
    if b.client_msg_no.contains('\0') {
        return Err(bad("client_msg_no must not contain NUL"));
    }
    if [&b.from_uid, &b.channel_id, &b.client_msg_no]
        .iter()
        .any(|s| s.len() > ruyi_proto::MAX_STRING_BYTES)
    {
        return Err(bad(
            "from_uid, channel_id and client_msg_no are at most 32767 bytes",
        ));
    }
    let from_uid = if b.from_uid.is_empty() {
        SYSTEM_UID.to_owned()
    } else {
        b.from_uid
    };
    let flags = header_flags(&b.header);
    let (rx, client_msg_no) = submit(
        shared,
        ApiSend {
            from_uid,
            channel_id: b.channel_id,
            channel_type: b.channel_type,
            flags,
            client_msg_no: b.client_msg_no,
            expire: b.expire,
            payload: Bytes::from(payload),
            recipients: explicit.clone(),
        },
    )?;
    let outcome = rx
        .recv_timeout(BACKEND_TIMEOUT)
        .map_err(|_| (503, error_body(503, "send timed out")))?;
    if outcome.reason != reason::SUCCESS {
        // WuKongIM's answer (HTTP 200 with the reason as status), counted for alerts.
        shared.counters.http_sends_failed.fetch_add(1, Relaxed);
        return Ok((200, json!({"status": outcome.reason}).to_string()));
    }
    if explicit.is_some() {
        return Ok(ok()); // The reference answers subscriber-list sends with the bare status.
    }
    Ok((
        200,
        json!({"status": 200, "data": {
            "message_id": outcome.message_id,
            "message_idstr": outcome.message_id.to_string(),
            "client_msg_no": client_msg_no,
            "message_seq": outcome.message_seq,
        }})
        .to_string(),
    ))
}

/// The frame flags an API send asks for; `red_dot` defaults to 0 (HTTP_API.md §6.1).
pub(crate) fn header_flags(h: &Header) -> Flags {
    Flags(0)
        .with(Flags::NO_PERSIST, h.no_persist == 1)
        .with(Flags::RED_DOT, h.red_dot == 1)
        .with(Flags::SYNC_ONCE, h.sync_once == 1)
}

/// The numeric id of a Temp channel for a subscriber list: FNV-1a 32 of the comma-joined
/// uids, so the same list always maps to the same command channel.
fn temp_channel_hash(joined: &str) -> u32 {
    joined.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// A send made through the API, already validated.
pub(crate) struct ApiSend {
    /// Sender (the system uid when the caller gave none).
    pub from_uid: String,
    /// Target as addressed: group id, or the recipient uid for person chats.
    pub channel_id: String,
    /// Channel type.
    pub channel_type: u8,
    /// Header flags.
    pub flags: Flags,
    /// The caller's message number; generated when empty.
    pub client_msg_no: String,
    /// Seconds until expiry.
    pub expire: u32,
    /// Plain payload.
    pub payload: Bytes,
    /// Explicit recipients (a Temp channel), instead of the channel's subscribers.
    pub recipients: Option<Arc<[String]>>,
}

/// Hands an API send to its channel worker, the same path as a client SEND (permission
/// checks skipped for the system device). Returns where the outcome will arrive, after the
/// storage commit, and the client_msg_no used.
pub(crate) fn submit(
    shared: &SharedRef,
    send: ApiSend,
) -> Result<
    (
        crossbeam_channel::Receiver<crate::message::SendOutcome>,
        String,
    ),
    Answer,
> {
    let key = if send.channel_type == channel_type::PERSON {
        ChannelKey::new(
            person_channel_id(&send.from_uid, &send.channel_id),
            channel_type::PERSON,
        )
    } else {
        ChannelKey::new(send.channel_id.clone(), send.channel_type)
    };
    // A command message to a channel is stored in its own channel `X____cmd`, with its own
    // seqs, outside X's history and conversations (PROTOCOL.md §8.4); X still decides who
    // may receive it. Temp channels (subscriber lists) are command channels already.
    let store_as = (send.flags.sync_once() && send.channel_type != channel_type::TEMP)
        .then(|| ChannelKey::new(format!("{}____cmd", key.id), key.channel_type));
    let client_msg_no = if send.client_msg_no.is_empty() {
        generated_client_msg_no(shared)
    } else {
        send.client_msg_no
    };
    let (tx, rx) = crossbeam_channel::bounded(1);
    let request = SendRequest {
        from_uid: send.from_uid,
        from_conn: None,
        key: key.clone(),
        addressed_to: send.channel_id,
        client_msg_no: client_msg_no.clone(),
        flags: send.flags,
        setting: 0,
        expire: send.expire,
        topic: String::new(),
        payload: send.payload,
        system: true,
        recipients: send.recipients,
        store_as,
        reply: Reply::Http(tx),
    };
    shared.submit_send(request).map_err(|e| match e {
        crate::shared::Submit::Unroutable => (
            503,
            error_body(503, "the cluster's leader cannot be reached now"),
        ),
        _ => (503, error_body(503, "server stopping")),
    })?;
    Ok((rx, client_msg_no))
}

/// The message object of HTTP_API.md §2, with the v3 person `channel_id` rule when the
/// caller is known.
pub fn message_json(m: &Message, caller: Option<&str>) -> Value {
    let channel_id = if m.channel.channel_type == channel_type::PERSON {
        let peer_of = caller.unwrap_or(&m.from_uid);
        // Command messages of a person chat live under `a@b____cmd`.
        let combined = m
            .channel
            .id
            .strip_suffix("____cmd")
            .unwrap_or(&m.channel.id);
        person_peer(combined, peer_of)
            .unwrap_or(&m.addressed_to)
            .to_owned()
    } else {
        m.addressed_to.clone()
    };
    let mut v = json!({
        "header": {
            "no_persist": u8::from(m.flags.no_persist()),
            "red_dot": u8::from(m.flags.red_dot()),
            "sync_once": u8::from(m.flags.sync_once()),
        },
        "setting": m.setting,
        "message_id": m.message_id,
        "message_idstr": m.message_id.to_string(),
        "client_msg_no": m.client_msg_no,
        "message_seq": m.message_seq,
        "from_uid": if m.from_uid == SYSTEM_UID { "" } else { &m.from_uid },
        "channel_id": channel_id,
        "channel_type": m.channel.channel_type,
        "expire": m.expire,
        "timestamp": m.timestamp,
        "payload": BASE64.encode(&m.payload),
    });
    if !m.topic.is_empty() {
        v["topic"] = json!(m.topic);
    }
    v
}

#[derive(Deserialize)]
struct SyncBody {
    #[serde(default)]
    uid: String,
    #[serde(default)]
    message_seq: i64,
    #[serde(default)]
    limit: i64,
}

/// Offline-queue sync (HTTP_API.md §7): entries above `min(message_seq, cursor)` (or the
/// cursor when `message_seq` is 0), oldest first; `message_seq` in each object is the
/// per-user seq, `channel_message_seq` the channel's. The read goes through the queue's
/// exposure record (`storage/exposure.rs`), so a missed delivery is never written behind
/// what it returns.
pub(crate) fn message_sync(
    shared: &SharedRef,
    reader: &Reader,
    body: &[u8],
) -> Result<Answer, Answer> {
    let b: SyncBody = parse(body)?;
    if b.uid.is_empty() {
        return Err(bad("uid is required"));
    }
    if b.limit < 0 || b.message_seq < 0 {
        return Err(bad("limit and message_seq must not be negative"));
    }
    let limit = if b.limit == 0 { 200 } else { b.limit.min(1000) } as usize;
    let storage = |e: crate::storage::DbError| storage_answer(&e);
    let requested = u32::try_from(b.message_seq).unwrap_or(u32::MAX);
    let entries = shared
        .queue
        .exposure
        .expose(&b.uid, || {
            let cursor = reader.offline_cursor(&b.uid)?;
            let after = if requested > 0 {
                requested.min(cursor)
            } else {
                cursor
            };
            let entries = reader.offline_after(&b.uid, after, limit)?;
            let highest = entries.last().map_or(0, |e| e.user_seq);
            Ok((entries, highest))
        })
        .map_err(|_| (503, error_body(503, "storage busy")))?
        .map_err(storage)?;
    let mut list: Vec<Value> = entries
        .iter()
        .map(|e| {
            let mut v = message_json(&e.message, Some(&b.uid));
            v["channel_message_seq"] = json!(e.message.message_seq);
            v["message_seq"] = json!(e.user_seq);
            v
        })
        .collect();
    // Large messages: the oldest that fit; the client syncacks them and syncs on.
    crate::answer::fit(&mut list, true);
    Ok((200, Value::Array(list).to_string()))
}

#[derive(Deserialize)]
struct SyncAckBody {
    #[serde(default)]
    uid: String,
    #[serde(default)]
    last_message_seq: i64,
}

pub(crate) fn message_syncack(shared: &SharedRef, body: &[u8]) -> Result<Answer, Answer> {
    let b: SyncAckBody = parse(body)?;
    if b.uid.is_empty() {
        return Err(bad("uid is required"));
    }
    let seq = u32::try_from(b.last_message_seq)
        .ok()
        .filter(|&s| s > 0)
        .ok_or_else(|| bad("last_message_seq must be > 0"))?;
    let (done, wait) = crossbeam_channel::bounded(1);
    shared
        .writer
        .send(Job::SyncAck {
            uid: b.uid,
            seq,
            done,
        })
        .map_err(|_| (503, error_body(503, "storage stopped")))?;
    match wait.recv_timeout(BACKEND_TIMEOUT) {
        Ok(Ok(())) => Ok(ok()),
        Ok(Err(e)) => Err((500, error_body(500, &format!("storage: {e}")))),
        Err(_) => Err((503, error_body(503, "storage busy"))),
    }
}

#[derive(Deserialize)]
struct SendBatchBody {
    #[serde(default)]
    header: Header,
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
    let flags = header_flags(&b.header);
    let mut pending = Vec::with_capacity(b.subscribers.len());
    let (mut fail_uids, mut reasons) = (Vec::new(), Vec::new());
    for uid in &b.subscribers {
        if !valid_id(uid) || uid.len() > ruyi_proto::MAX_STRING_BYTES {
            fail_uids.push(uid.clone());
            reasons.push(ruyi_proto::types::reason::CHANNEL_ID_ERROR);
            continue;
        }
        let send = ApiSend {
            from_uid: b.from_uid.clone(),
            channel_id: uid.clone(),
            channel_type: channel_type::PERSON,
            flags,
            client_msg_no: String::new(),
            expire: 0,
            payload: payload.clone(),
            recipients: None,
        };
        pending.push((uid.clone(), submit(shared, send)?.0));
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

/// WuKongIM's `client_msg_no` for a send that has none (HTTP_API.md §6.1): a random
/// (version 4) UUID's 32 hex digits, then `0`. Without OS randomness, a message id in the
/// same shape (unique as well, only predictable).
fn generated_client_msg_no(shared: &SharedRef) -> String {
    match ruyi_proto::crypto::random_secret() {
        Ok(random) => {
            let mut uuid = [0u8; 16];
            uuid.copy_from_slice(&random[..16]);
            uuid[6] = (uuid[6] & 0x0f) | 0x40; // version 4
            uuid[8] = (uuid[8] & 0x3f) | 0x80; // RFC 4122 variant
            let mut text: String = uuid.iter().map(|b| format!("{b:02x}")).collect();
            text.push('0');
            text
        }
        Err(_) => format!("{:032x}0", shared.ids.next()),
    }
}
