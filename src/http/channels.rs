//! Channel routes (HTTP_API.md §5): create and update, info, delete, subscribers, and
//! the deny and allow lists. Every write goes to the storage writer as an [`AdminWrite`]
//! and the channel workers' caches are invalidated after it commits.

use super::wire::HttpRequest;
use super::{
    admin, bad, invalidate, ok, parse, query_id_and_type, storage_error, valid_id, Answer,
};
use crate::message::ChannelKey;
use crate::shared::SharedRef;
use crate::storage::admin::{AdminWrite, ChannelFlags, ListKind, ListOp};
use crate::storage::Reader;
use crate::to_loop::ToLoop;
use ruyi_proto::types::{channel_type, reason};
use serde::Deserialize;
use serde_json::{json, Value};

/// A channel's flags as the request gives them: every flag is overwritten, missing = 0
/// (HTTP_API.md §5.1).
pub(crate) fn channel_flags(key: &ChannelKey, b: &ChannelBody) -> AdminWrite {
    AdminWrite::ChannelFlags {
        key: key.clone(),
        flags: ChannelFlags {
            ban: b.ban,
            disband: b.disband,
            send_ban: b.send_ban,
            large: b.large,
            allow_stranger: b.allow_stranger,
        },
    }
}

/// The body of the channel routes (`/channel`, `/channel/info`, subscriber routes).
#[derive(Deserialize)]
pub(crate) struct ChannelBody {
    #[serde(default)]
    pub channel_id: String,
    #[serde(default)]
    pub channel_type: u8,
    #[serde(default)]
    pub ban: u8,
    #[serde(default)]
    pub disband: u8,
    #[serde(default)]
    pub send_ban: u8,
    #[serde(default)]
    pub large: u8,
    #[serde(default)]
    pub allow_stranger: u8,
    #[serde(default)]
    pub reset: u8,
    #[serde(default)]
    pub subscribers: Vec<String>,
    #[serde(default)]
    pub temp_subscriber: u8,
}

pub(crate) fn channel_upsert(shared: &SharedRef, body: &[u8]) -> Result<Answer, Answer> {
    let b: ChannelBody = parse(body)?;
    if !valid_id(&b.channel_id) {
        return Err(bad("channel_id is empty or contains @ # &"));
    }
    if b.channel_type == 0 {
        return Err(bad("channel_type is required"));
    }
    if b.channel_type == channel_type::PERSON && !b.subscribers.is_empty() {
        return Err(bad("person channels have no subscribers"));
    }
    if let Some(s) = b.subscribers.iter().find(|s| !valid_id(s)) {
        return Err(bad(&format!("subscriber {s:?} is empty or contains @ # &")));
    }
    let key = ChannelKey::new(b.channel_id.clone(), b.channel_type);
    let banned = b.ban == 1;
    let mut writes = vec![channel_flags(&key, &b)];
    if !b.subscribers.is_empty() || b.reset == 1 {
        writes.push(AdminWrite::AddSubscribers {
            key: key.clone(),
            reset: b.reset == 1,
            uids: b.subscribers,
        });
    }
    admin(shared, writes)?;
    invalidate(shared, Some(key.clone()));
    end_banned_sessions(shared, &key, banned);
    Ok(ok())
}

/// A ban on a user (their person channel) reaches the sessions they have open: each gets
/// DISCONNECT 19 (Ban) and is closed after the notice. Their SENDs are refused with 19 from
/// the moment the channel workers drop the cached flags (`invalidate`, before this).
pub(crate) fn end_banned_sessions(shared: &SharedRef, key: &ChannelKey, banned: bool) {
    if !banned || key.channel_type != channel_type::PERSON {
        return;
    }
    for d in shared.registry.devices(&key.id) {
        let kick = ToLoop::Kick {
            conn: d.conn,
            notify: true,
            code: reason::BAN,
            reason: "banned".into(),
            after: crate::to_loop::KICK_GRACE,
        };
        let _ = shared.loops().for_conn(d.conn).post(kick);
    }
}

pub(crate) fn subscriber_add(shared: &SharedRef, body: &[u8]) -> Result<Answer, Answer> {
    let mut b: ChannelBody = parse(body)?;
    if b.channel_type == 0 {
        b.channel_type = channel_type::GROUP;
    }
    if !valid_id(&b.channel_id) {
        return Err(bad("channel_id is empty or contains @ # &"));
    }
    if b.channel_type == channel_type::PERSON {
        return Err(bad("person channels have no subscribers"));
    }
    if b.temp_subscriber == 1 {
        return Err(bad("temp_subscriber is no longer supported"));
    }
    b.subscribers.retain(|s| !s.trim().is_empty());
    if b.subscribers.is_empty() {
        return Err(bad("subscribers is required"));
    }
    if let Some(s) = b.subscribers.iter().find(|s| !valid_id(s)) {
        return Err(bad(&format!("subscriber {s:?} contains @ # &")));
    }
    let key = ChannelKey::new(b.channel_id.clone(), b.channel_type);
    admin(
        shared,
        vec![AdminWrite::AddSubscribers {
            key: key.clone(),
            reset: b.reset == 1,
            uids: b.subscribers,
        }],
    )?;
    invalidate(shared, Some(key));
    Ok(ok())
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
    admin(shared, vec![channel_flags(&key, &b)])?;
    invalidate(shared, Some(key.clone()));
    end_banned_sessions(shared, &key, banned);
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
    let (channel_id, ctype) = query_id_and_type(req)?;
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
