//! After a failover (`--failover`): what a connection may have missed while it had no
//! server, read back from its channels' history, as the SDKs do after a reconnect
//! (`/channel/messagesync`).
//!
//! A node killed with -9 takes along the RECVs its devices had not acknowledged (their
//! queue entries lived in its memory: RELIABILITY.md), and a cluster node that lost commit
//! batches closes its clients so they resync. History holds every stored message, so after
//! the drain each receiver that logged in again reads the history of the channels it is
//! owed messages in, and each message it had not received is recorded as recovered
//! (`Seen::recover`): neither a duplicate nor a reorder. A receiver that never lost its
//! server reads nothing: what it misses is lost. History is read once per channel and
//! login, page by page from seq 1 (runs with failovers are meant to be moderate).

use super::{http_post, ImArgs, Plan};
use crate::ledger::Seen;
use base64::Engine as _;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;

/// Messages per history page asked for (the server's cap).
const PAGE: u32 = 10_000;

/// What the receivers in `received` that logged in again recovered from history (module
/// docs): the number of messages recorded.
pub(super) fn recover(
    args: &ImArgs,
    plans: &[Plan],
    received: &mut [(usize, HashMap<usize, Seen>, bool)],
) -> io::Result<u64> {
    let apis: Vec<SocketAddr> = if args.http_servers.is_empty() {
        vec![args.http]
    } else {
        args.http_servers.clone()
    };
    // Who sends where: (target, channel type) → the senders' (uid, index).
    let mut senders: HashMap<(&str, u8), Vec<(&str, usize)>> = HashMap::new();
    for p in plans {
        if let (Some((target, ctype)), Some(index)) = (&p.target, p.sender_index) {
            senders
                .entry((target.as_str(), *ctype))
                .or_default()
                .push((p.uid.as_str(), index));
        }
    }
    let mut groups: HashMap<&str, Vec<(usize, u64)>> = HashMap::new();
    let mut recovered = 0;
    for (global, seen, reconnected) in received.iter_mut() {
        let Some(p) = plans.get(*global).filter(|_| *reconnected) else {
            continue;
        };
        // Person: one channel per sender writing to this uid, named by the sender.
        for &(from, index) in senders
            .get(&(p.uid.as_str(), 1))
            .map_or(&[][..], Vec::as_slice)
        {
            for (sender, counter) in history(&apis, &p.uid, from, 1)? {
                if sender == index && seen.entry(sender).or_default().recover(counter) {
                    recovered += 1;
                }
            }
        }
        // Group: the group's history, read once, less this member's own messages.
        if let Some(group) = p.member_of.as_deref() {
            let owed: Vec<usize> = senders
                .get(&(group, 2))
                .map_or(&[][..], Vec::as_slice)
                .iter()
                .filter(|(uid, _)| *uid != p.uid)
                .map(|&(_, index)| index)
                .collect();
            if !groups.contains_key(group) {
                groups.insert(group, history(&apis, &p.uid, group, 2)?);
            }
            for &(sender, counter) in groups.get(group).map_or(&[][..], Vec::as_slice) {
                if owed.contains(&sender) && seen.entry(sender).or_default().recover(counter) {
                    recovered += 1;
                }
            }
        }
    }
    Ok(recovered)
}

/// Every message of a channel as `login_uid` reads it: (sender index, counter) of each
/// payload the load tool wrote.
fn history(
    apis: &[SocketAddr],
    login_uid: &str,
    channel_id: &str,
    channel_type: u8,
) -> io::Result<Vec<(usize, u64)>> {
    let mut out = Vec::new();
    let mut start = 1u64;
    loop {
        let body = serde_json::json!({
            "login_uid": login_uid,
            "channel_id": channel_id,
            "channel_type": channel_type,
            "start_message_seq": start,
            "end_message_seq": 0,
            "limit": PAGE,
            "pull_mode": 1,
        });
        let text = post_any(apis, "/channel/messagesync", &body.to_string())?;
        let page: serde_json::Value = serde_json::from_str(&text).map_err(io::Error::other)?;
        let messages = page["messages"].as_array().map_or(&[][..], Vec::as_slice);
        for m in messages {
            let payload = m["payload"].as_str().unwrap_or_default();
            let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(payload) else {
                continue;
            };
            if bytes.len() >= 24 {
                let word = |at: usize| {
                    u64::from_be_bytes(bytes[at..at + 8].try_into().unwrap_or_default())
                };
                out.push((word(8) as usize, word(16)));
            }
            start = start.max(m["message_seq"].as_u64().unwrap_or(0) + 1);
        }
        if page["more"].as_u64() != Some(1) || messages.is_empty() {
            return Ok(out);
        }
    }
}

/// POSTs to the first of `apis` that answers 200 (a dead node's API does not).
fn post_any(apis: &[SocketAddr], path: &str, body: &str) -> io::Result<String> {
    let mut last = io::Error::other("no HTTP API address");
    for &api in apis {
        match http_post(api, path, body) {
            Ok(text) => return Ok(text),
            Err(e) => last = e,
        }
    }
    Err(last)
}
