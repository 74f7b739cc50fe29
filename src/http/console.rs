//! The API the console adds to WuKongIM's: `GET /connz` (HTTP_API.md §3.3, rows from
//! every loop, `connz.rs`) and `GET /console/api/channel` (a channel's flags, lists and
//! last seq, which WuKongIM's API can change but not read). Both take the manager token
//! like every API route.

use super::wire::HttpRequest;
use super::{bad, query_id_and_type, query_param, storage_answer, Answer};
use crate::connz::{self, ConnRow};
use crate::shared::SharedRef;
use crate::storage::Reader;
use crate::to_loop::ToLoop;
use ruyi_reactor::ConnId;
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long `/connz` waits for the loops to describe their connections.
const CONNZ_WAIT: Duration = Duration::from_secs(2);

/// The right to walk the loops for `/connz` (`Shared::connz_running`), given back on drop.
struct ConnzTurn<'a>(&'a AtomicBool);

impl<'a> ConnzTurn<'a> {
    fn take(running: &'a AtomicBool) -> Option<ConnzTurn<'a>> {
        (!running.swap(true, Ordering::AcqRel)).then_some(ConnzTurn(running))
    }
}

impl Drop for ConnzTurn<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// `GET /connz?offset=&limit=&sort=&uid=`. One at a time (503 while another runs); the
/// loops are asked without waiting (503 when one's inbox is full).
pub fn connz(shared: &SharedRef, req: &HttpRequest) -> Result<Answer, Answer> {
    let number = |name: &str, default: usize| -> Result<usize, Answer> {
        query_param(&req.query, name).map_or(Ok(default), |v| {
            v.parse()
                .map_err(|_| bad(&format!("{name} must be a whole number")))
        })
    };
    let offset = number("offset", 0)?;
    let limit = number("limit", 100)?;
    let sort = query_param(&req.query, "sort").unwrap_or_else(|| "id".into());
    if !connz::SORTS.contains(&sort.as_str()) {
        return Err(bad(&format!(
            "sort must be one of {}",
            connz::SORTS.join(", ")
        )));
    }
    let uid = query_param(&req.query, "uid").filter(|u| !u.is_empty());
    // One walk over the loops at a time, server-wide: a client calling /connz in a loop
    // holds one HTTP worker and one slice of each loop's turns, not all of them.
    let Some(_turn) = ConnzTurn::take(&shared.connz_running) else {
        return Err((503, super::error_body(503, "a /connz is already running")));
    };
    // A user's connections come from the registry: the loops describe only those.
    let only: Option<Vec<ConnId>> = uid.as_ref().map(|uid| {
        let mut conns = Vec::new();
        shared.registry.conns_of(uid, &mut conns);
        conns
    });
    let loops = shared.loops().loops();
    let (tx, rx) = crossbeam_channel::bounded(loops.len());
    let mut asked = 0;
    for handle in loops {
        let only = match &only {
            Some(all) => {
                let mine: Vec<ConnId> = all
                    .iter()
                    .copied()
                    .filter(|c| c.loop_index() == handle.index())
                    .collect();
                if mine.is_empty() {
                    continue;
                }
                Some(mine)
            }
            None => None,
        };
        // Not waiting for room: a loop that busy answers 503 sooner than late.
        match handle.try_post(ToLoop::Connz {
            reply: tx.clone(),
            only,
        }) {
            Ok(()) => asked += 1,
            Err(_) => return Err((503, super::error_body(503, "a loop is too busy to answer"))),
        }
    }
    drop(tx);
    let deadline = Instant::now() + CONNZ_WAIT;
    let mut rows: Vec<ConnRow> = Vec::new();
    for _ in 0..asked {
        match rx.recv_deadline(deadline) {
            Ok(part) => rows.extend(part),
            Err(_) => return Err((503, super::error_body(503, "a loop did not answer in time"))),
        }
    }
    let v = connz::page(rows, uid.as_deref(), &sort, offset, limit);
    Ok((200, v.to_string()))
}

/// `GET /console/api/channel?channel_id=&channel_type=`: what the channel holds now. A
/// person channel here is a user's own (`channel_id` = the uid): its ban flags and its
/// blacklist.
pub fn channel(reader: &Reader, req: &HttpRequest) -> Result<Answer, Answer> {
    let (id, ctype) = query_id_and_type(req)?;
    let key = crate::message::ChannelKey::new(id, ctype);
    let info = reader.channel(&key).map_err(|e| storage_answer(&e))?;
    let last_seq = reader.last_seq(&key).map_err(|e| storage_answer(&e))?;
    let v = match info {
        Some(c) => json!({
            "exists": true,
            "ban": c.ban,
            "disband": c.disband,
            "send_ban": c.send_ban,
            "subscribers": c.subscribers.as_ref(),
            "denylist": c.denylist,
            "allowlist": c.allowlist,
            "last_seq": last_seq,
        }),
        None => json!({
            "exists": false, "subscribers": [], "denylist": [], "allowlist": [], "last_seq": last_seq,
        }),
    };
    Ok((200, v.to_string()))
}
