//! User routes (HTTP_API.md §4): tokens, device quit, online status, system uids.

use super::{admin, bad, ok, parse, storage_answer, valid_id, Answer};
use crate::message::{ChannelKey, SYSTEM_UID};
use crate::shared::SharedRef;
use crate::storage::admin::AdminWrite;
use crate::storage::Reader;
use crate::to_loop::ToLoop;
use ruyi_proto::types::{channel_type, reason};
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::Duration;

#[derive(Deserialize)]
struct TokenBody {
    #[serde(default)]
    uid: String,
    #[serde(default)]
    token: String,
    #[serde(default)]
    device_flag: u8,
    #[serde(default)]
    device_level: u8,
}

pub(crate) fn user_token(
    shared: &SharedRef,
    reader: &Reader,
    body: &[u8],
) -> Result<Answer, Answer> {
    let b: TokenBody = parse(body)?;
    if !valid_id(&b.uid) || b.uid == SYSTEM_UID {
        return Err(bad("uid is empty or contains @ # &"));
    }
    if b.token.is_empty() {
        return Err(bad("token is required"));
    }
    if let Ok(Some(me)) = reader.channel(&ChannelKey::new(b.uid.clone(), channel_type::PERSON)) {
        if me.ban {
            return Ok((200, json!({"status": reason::BAN}).to_string()));
        }
        if me.disband {
            return Ok((200, json!({"status": reason::DISBAND}).to_string()));
        }
    }
    // Stored as its keyed hash, never as entered (`tokens.rs`).
    let token = shared.tokens.hash(&b.token);
    admin(
        shared,
        vec![AdminWrite::SetToken {
            uid: b.uid.clone(),
            device_flag: b.device_flag,
            token_hash: token,
            level: b.device_level.min(1),
        }],
    )?;
    if b.device_level == 1 {
        // A new master token kicks the live connections of that device flag (§4.1).
        for d in shared
            .registry
            .devices(&b.uid)
            .into_iter()
            .filter(|d| d.device_flag == b.device_flag)
        {
            let kick = ToLoop::Kick {
                conn: d.conn,
                notify: true,
                code: reason::CONNECT_KICK,
                reason: "token changed".into(),
                after: Duration::from_secs(10),
            };
            let _ = shared.loops().for_conn(d.conn).post(kick);
        }
    }
    Ok(ok())
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
    shared.kick_devices(&b.uid, b.device_flag);
    if let Some(cluster) = shared.cluster.get() {
        cluster.presence.quit(&b.uid, b.device_flag); // and every other node's
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
    let mut online: Vec<(String, u8)> = uids
        .iter()
        .flat_map(|uid| {
            shared
                .registry
                .devices(uid)
                .into_iter()
                .map(move |d| (uid.clone(), d.device_flag))
        })
        .collect();
    if let Some(cluster) = shared.cluster.get() {
        // Every other live node's devices too (`cluster/presence.rs`).
        let others = cluster.members.live().len().saturating_sub(1);
        online.extend(cluster.presence.ask(&uids, others));
    }
    let list: Vec<Value> = online
        .into_iter()
        .map(|(uid, flag)| json!({"uid": uid, "device_flag": flag, "online": 1}))
        .collect();
    Ok((200, Value::Array(list).to_string()))
}

#[derive(Deserialize)]
struct UidsBody {
    #[serde(default)]
    uids: Vec<String>,
}

/// `POST /user/systemuids_add` (`add`) and `/user/systemuids_remove` (HTTP_API.md §4.4):
/// stored first, then the channel workers' copy is reloaded from the store, both under
/// one lock, so concurrent changes reach memory in the order they were stored. (A write
/// answered 503 that commits later is seen at the next change.)
pub fn system_uids_change(
    shared: &SharedRef,
    reader: &Reader,
    body: &[u8],
    add: bool,
) -> Result<Answer, Answer> {
    let b: UidsBody = parse(body)?;
    if b.uids.is_empty() {
        return Err(bad("uids is required"));
    }
    if b.uids.len() > 1000 {
        return Err(bad("at most 1000 uids per request"));
    }
    if let Some(bad_uid) = b.uids.iter().find(|u| !valid_id(u)) {
        return Err(bad(&format!("invalid uid {bad_uid:?}")));
    }
    let _order = shared
        .system_uids
        .changing
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let stored = admin(shared, vec![AdminWrite::SystemUids { uids: b.uids, add }]);
    // Whatever the answer: memory is what the store holds now.
    let now = reader.system_uids().map_err(|e| storage_answer(&e))?;
    shared.system_uids.replace(now);
    stored.map(|()| ok())
}

/// `GET /user/systemuids`: every system uid, sorted (HTTP_API.md §4.4).
pub fn system_uids(reader: &Reader) -> Result<Answer, Answer> {
    let uids = reader.system_uids().map_err(|e| storage_answer(&e))?;
    Ok((200, json!(uids).to_string()))
}
