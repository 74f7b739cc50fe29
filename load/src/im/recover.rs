//! After a failover (`--failover`): what a connection that logged in again missed, read
//! back as the server's contract says it must be found, so a loss is still a loss.
//!
//! - **The offline queue** (`/message/sync`, then `/message/syncack`): a message the server
//!   could not deliver to a device (it left, or its node resynced it) must be there. Each
//!   one found that had not arrived is recorded (`Seen::recover`, neither a duplicate nor
//!   a reorder) and counted as recovered from the queue.
//! - **History** (`/channel/messagesync`), only for a connection that lost a server that
//!   is dead by the end: RECVs a node killed with -9 had written and its devices had not
//!   acknowledged have their queue places in its memory, lost with it (RELIABILITY.md, as
//!   on a single node); such messages are counted apart (`history_only`), never as
//!   received. A connection whose server still lives gets nothing from history: what it
//!   missed and is not queued is lost.
//!
//! The queues are read again every half second while anything acknowledged is still
//! missing, for at most [`SETTLE`]: a requeue from another node travels through that
//! node's spool to whoever leads, resent every second. Payloads carry the run's id (from
//! 32 bytes), so a message of an earlier run with the same uids never counts. History is
//! read once per channel and login, page by page.

use super::{http_post, ImArgs, Plan};
use crate::ledger::Seen;
use base64::Engine as _;
use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Messages per history page asked for (the server's cap).
const PAGE: u32 = 10_000;

/// Queue entries per sync asked for (the server's cap).
const SYNC: u32 = 1_000;

/// What [`recover`] found.
#[derive(Debug, Default)]
pub(super) struct Recovered {
    /// Missed live, found in the offline queue.
    pub queued: u64,
    /// Missed live, not queued, found in history: RECVs a killed node took along.
    pub history_only: u64,
}

/// One receiver after the run: (plan index, what it got, the servers it lost).
pub(super) type Received = (usize, HashMap<usize, Seen>, Vec<usize>);

/// Reads back what the receivers in `received` that lost their server missed (module
/// docs). `acked` holds each sender's acknowledged counters; `run` is this run's id, in
/// every payload of 32 bytes or more.
pub(super) fn recover(
    args: &ImArgs,
    plans: &[Plan],
    received: &mut [Received],
    acked: &HashMap<usize, Vec<u64>>,
    run: u64,
) -> io::Result<Recovered> {
    let apis: Vec<SocketAddr> = if args.http_servers.is_empty() {
        vec![args.http]
    } else {
        args.http_servers.clone()
    };
    let dead: Vec<bool> = args
        .servers
        .iter()
        .map(|a| TcpStream::connect_timeout(a, Duration::from_secs(1)).is_err())
        .collect();
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
    let owed_of = |p: &Plan| -> Vec<usize> {
        let person = senders
            .get(&(p.uid.as_str(), 1))
            .map_or(&[][..], Vec::as_slice);
        let group = p.member_of.as_deref();
        let in_group = group
            .and_then(|g| senders.get(&(g, 2)))
            .map_or(&[][..], Vec::as_slice);
        person
            .iter()
            .chain(in_group.iter().filter(|(uid, _)| *uid != p.uid))
            .map(|&(_, index)| index)
            .collect()
    };
    let missing = |owed: &[usize], seen: &HashMap<usize, Seen>| {
        owed.iter().any(|s| {
            acked.get(s).is_some_and(|counters| {
                counters
                    .iter()
                    .any(|&c| !seen.get(s).is_some_and(|x| x.has(c)))
            })
        })
    };
    let mut found = Recovered::default();
    // The queues, read again while something is missing: a requeue from another node goes
    // through that node's spool to whoever leads, resent every second (`cluster/relay.rs`).
    let settle = Instant::now() + SETTLE;
    let mut pending: Vec<usize> = (0..received.len())
        .filter(|&i| !received[i].2.is_empty())
        .collect();
    loop {
        let mut still = Vec::new();
        for i in pending {
            let (global, seen, _) = &mut received[i];
            let Some(p) = plans.get(*global) else {
                continue;
            };
            let owed = owed_of(p);
            for (sender, counter) in queue(&apis, &p.uid, run)? {
                if owed.contains(&sender) && seen.entry(sender).or_default().recover(counter) {
                    found.queued += 1;
                }
            }
            if missing(&owed, seen) {
                still.push(i);
            }
        }
        pending = still;
        if pending.is_empty() || Instant::now() >= settle {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // History, only for what a dead node may have taken along.
    let mut groups: HashMap<&str, Vec<(usize, u64)>> = HashMap::new();
    for i in pending {
        let (global, seen, lost) = &mut received[i];
        let Some(p) = plans.get(*global) else {
            continue;
        };
        if !lost.iter().any(|&s| dead.get(s).copied().unwrap_or(false)) {
            continue;
        }
        let owed = owed_of(p);
        let mut record = |(sender, counter): (usize, u64)| {
            owed.contains(&sender) && seen.entry(sender).or_default().recover(counter)
        };
        for &(from, _) in senders
            .get(&(p.uid.as_str(), 1))
            .map_or(&[][..], Vec::as_slice)
        {
            for m in history(&apis, &p.uid, from, 1, run)? {
                found.history_only += u64::from(record(m));
            }
        }
        if let Some(group) = p.member_of.as_deref() {
            if !groups.contains_key(group) {
                groups.insert(group, history(&apis, &p.uid, group, 2, run)?);
            }
            for &m in groups.get(group).map_or(&[][..], Vec::as_slice) {
                found.history_only += u64::from(record(m));
            }
        }
    }
    Ok(found)
}

/// How long the queues are read again while something is still missing.
const SETTLE: Duration = Duration::from_secs(15);

/// (sender index, counter) of a payload the load tool wrote in run `run`.
fn ours(m: &serde_json::Value, run: u64) -> Option<(usize, u64)> {
    let payload = m["payload"].as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(payload)
        .ok()?;
    let word = |at: usize| -> Option<u64> {
        Some(u64::from_be_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
    };
    if bytes.len() >= 32 && word(24)? != run {
        return None;
    }
    Some((word(8)? as usize, word(16)?))
}

/// The whole of `uid`'s offline queue, acknowledged page by page as a client does.
fn queue(apis: &[SocketAddr], uid: &str, run: u64) -> io::Result<Vec<(usize, u64)>> {
    let mut out = Vec::new();
    for _ in 0..10_000 {
        let body = serde_json::json!({"uid": uid, "message_seq": 0, "limit": SYNC});
        let text = post_any(apis, "/message/sync", &body.to_string())?;
        let page: serde_json::Value = serde_json::from_str(&text).map_err(io::Error::other)?;
        let entries = page.as_array().map_or(&[][..], Vec::as_slice);
        let Some(last) = entries
            .iter()
            .filter_map(|m| m["message_seq"].as_u64())
            .max()
        else {
            break;
        };
        out.extend(entries.iter().filter_map(|m| ours(m, run)));
        let ack = serde_json::json!({"uid": uid, "last_message_seq": last});
        post_any(apis, "/message/syncack", &ack.to_string())?;
    }
    Ok(out)
}

/// Every message of a channel as `login_uid` reads it (payloads of run `run`).
fn history(
    apis: &[SocketAddr],
    login_uid: &str,
    channel_id: &str,
    channel_type: u8,
    run: u64,
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
            out.extend(ours(m, run));
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
