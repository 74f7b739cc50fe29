//! The HTTP API on the engine (HTTP_API.md): HTTP/1.1 with keep-alive, parsed with
//! `httparse` on the loop, answered by HTTP worker threads (anything that touches storage
//! runs there, never on a loop), with the response sent back through the loop's inbox.
//!
//! One request at a time per connection: the loop pauses reading after a complete request
//! and resumes when the response is queued, so pipelined requests are answered in order.
//!
//! # The room
//! - `wire.rs`: the loop's side: parsing requests, building responses, timeouts.
//! - this file: the workers (`run`), the answers every route shares, the access log.
//! - `routes.rs`: every route and its handler.
//! - `users.rs`, `channels.rs`, `messages.rs`, `history.rs`, `conversations.rs`,
//!   `node.rs`: the handlers, by what they touch.
//!
//! Handlers use this file and `wire.rs`; nothing here uses a handler except the route
//! table (one-way doors).

mod assets;
mod channels;
mod console;
mod conversations;
mod history;
mod messages;
mod node;
mod routes;
mod users;
mod wire;

pub use messages::message_json;
pub use wire::{
    expire, on_data, response, response_full, response_typed, HttpRequest, HttpSession, KEEP_ALIVE,
    MAX_BODY_BYTES, MAX_HEAD_BYTES,
};

use crate::channel::ChannelJob;
use crate::message::ChannelKey;
use crate::shared::SharedRef;
use crate::storage::admin::AdminWrite;
use crate::storage::writer::Job;
use crate::storage::Reader;
use crate::to_loop::ToLoop;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use routes::ROUTES;
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// How long a worker waits for storage or the channel pool before answering 503.
pub(crate) const BACKEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Polling period for the stop flag while idle.
const IDLE_POLL: Duration = Duration::from_millis(100);

pub(crate) fn error_body(status: u16, msg: &str) -> String {
    json!({"msg": msg, "status": status}).to_string()
}

/// Runs one HTTP worker until the server stops.
pub fn run(shared: SharedRef, rx: Receiver<HttpRequest>, reader: Reader) {
    loop {
        let req = match rx.recv_timeout(IDLE_POLL) {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) if !shared.is_stopping() => continue,
            Err(_) => return,
        };
        let started = Instant::now();
        let (status, body) = match shared.cluster.get() {
            // On a cluster node that does not lead, the leader answers (module docs).
            Some(cluster) if req.remote.is_none() && !cluster.leads() && !local(&req.path) => {
                cluster.relay.forward_http(&req)
            }
            _ => route(&shared, &reader, &req),
        };
        let took = started.elapsed();
        shared.latency.http.observe(took);
        audit(&req, status, took);
        if let (Some((node, token)), Some(cluster)) = (req.remote, shared.cluster.get()) {
            cluster.lead.answer_http(node, token, status, body);
            continue;
        }
        let msg = ToLoop::Http {
            conn: req.conn,
            response: {
                let content_type = if req.path.ends_with("/metrics") && status == 200 {
                    "text/plain; version=0.0.4" // Prometheus' text exposition format.
                } else {
                    "application/json"
                };
                response_full(
                    status,
                    content_type,
                    &body,
                    req.keep_alive,
                    req.cors.as_deref(),
                )
            },
            close: !req.keep_alive,
        };
        let _ = shared.loops().for_conn(req.conn).post(msg);
    }
}

/// Routes a cluster node answers itself: what describes this node, and where clients go.
/// Every other call goes to the leader, whose writer alone commits (`cluster/`).
/// `/user/onlinestatus` asks the other nodes itself (`cluster/presence.rs`).
const LOCAL_ROUTES: [&str; 11] = [
    "/health",
    "/healthz",
    "/ready",
    "/metrics",
    "/varz",
    "/connz",
    "/route",
    "/route/batch",
    "/cluster/nodes",
    "/console/api/channel",
    "/user/onlinestatus",
];

fn local(path: &str) -> bool {
    LOCAL_ROUTES.contains(&path.strip_prefix("/v1").unwrap_or(path))
}

/// Routes logged at debug rather than info in the access log: probes and scrapes, and the
/// message paths an app server calls at its users' rate.
const QUIET_ROUTES: [&str; 11] = [
    "/health",
    "/healthz",
    "/ready",
    "/metrics",
    "/varz",
    "/route",
    "/message/send",
    "/message/sendbatch",
    "/message/sync",
    "/message/syncack",
    "/channel/messagesync",
];

/// One line per request on target `ruyi::audit`: method, path (no query string), caller
/// address, status, time. Never a body or a header, so never a token. Admin routes log
/// at info and the routes in [`QUIET_ROUTES`] at debug (`RUST_LOG=info,ruyi::audit=debug`
/// logs every request).
fn audit(req: &HttpRequest, status: u16, took: Duration) {
    let route = req.path.strip_prefix("/v1").unwrap_or(&req.path);
    let level = if QUIET_ROUTES.contains(&route) || req.method == "GET" {
        log::Level::Debug
    } else {
        log::Level::Info
    };
    if log::log_enabled!(target: "ruyi::audit", level) {
        let peer = req.peer.map_or_else(|| "?".to_owned(), |p| p.to_string());
        log::log!(
            target: "ruyi::audit",
            level,
            "{} {} from {peer}: {status} in {:.1} ms",
            req.method,
            // Paths are client input: quoted, so a crafted one cannot forge a log line.
            format!("{:?}", req.path).trim_matches('"'),
            took.as_secs_f64() * 1e3
        );
    }
}

/// An HTTP status and a JSON body.
pub type Answer = (u16, String);

/// A store error as the HTTP API answers it: 503 when the store cannot be reached (try
/// again), 500 when it refused.
/// A storage failure as the API answers it: 503 when trying again may work, else 500,
/// with the error's first line (the details, a database's DETAIL and HINT, go to the log).
pub(crate) fn storage_answer(e: &crate::storage::DbError) -> Answer {
    let status = if e.is_unavailable() { 503 } else { 500 };
    let text = e.to_string();
    let first = text.lines().next().unwrap_or_default();
    if status == 500 {
        log::warn!("storage error answered 500: {text}");
    }
    (status, error_body(status, &format!("storage: {first}")))
}

pub(crate) fn ok() -> Answer {
    (200, json!({"status": 200}).to_string())
}

pub(crate) fn bad(msg: &str) -> Answer {
    (400, error_body(400, msg))
}

/// A request body as `T`. Like WuKongIM's Go decoder, a member whose value is JSON `null`
/// takes its zero value (app servers whose serializers write nulls, Jackson's or Python's
/// `None`, rely on it): null members are dropped before decoding, so the field's
/// `#[serde(default)]` applies. Unknown members are ignored.
pub(crate) fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, Answer> {
    let invalid = |e: serde_json::Error| bad(&format!("invalid JSON body: {e}"));
    let mut value: Value = serde_json::from_slice(body).map_err(invalid)?;
    drop_null_members(&mut value);
    T::deserialize(value).map_err(invalid)
}

fn drop_null_members(value: &mut Value) {
    match value {
        Value::Object(members) => {
            members.retain(|_, v| !v.is_null());
            members.values_mut().for_each(drop_null_members);
        }
        Value::Array(items) => items.iter_mut().for_each(drop_null_members),
        _ => {}
    }
}

/// A route handler: the shared state, this worker's read connection, the request.
pub type Handler = fn(&SharedRef, &Reader, &HttpRequest) -> Result<Answer, Answer>;

/// The routes served without the manager token: liveness, readiness and metrics (counters
/// and gauges, no ids or secrets). `/varz` stays behind the token: it shows settings.
pub(crate) fn open_probe(target: &str) -> bool {
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    let path = path.strip_prefix("/v1").unwrap_or(path);
    matches!(path, "/health" | "/healthz" | "/ready" | "/metrics")
}

/// `GET /ready`: 200 while the server can take messages; 503 with the reasons while it is
/// stopping or storage's last commit failed (a full disk, an I/O error), so a load
/// balancer sends clients elsewhere. `/health` only says the process answers.
pub(crate) fn ready(shared: &SharedRef) -> Answer {
    let mut reasons = Vec::new();
    if shared.is_stopping() || shared.draining.load(std::sync::atomic::Ordering::Acquire) {
        reasons.push("stopping".to_owned());
    }
    if let Some(error) = shared.storage_health.failing() {
        reasons.push(format!("storage: {error}"));
    }
    if reasons.is_empty() {
        (200, json!({"status": "ok"}).to_string())
    } else {
        (503, json!({"status": 503, "reasons": reasons}).to_string())
    }
}

pub(crate) fn route(shared: &SharedRef, reader: &Reader, req: &HttpRequest) -> Answer {
    let path = req.path.strip_prefix("/v1").unwrap_or(&req.path);
    let mut path_known = false;
    for &(method, route_path, handler) in ROUTES {
        if route_path == path {
            path_known = true;
            if method == req.method {
                return handler(shared, reader, req).unwrap_or_else(|e| e);
            }
        }
    }
    if path_known {
        (405, error_body(405, "method not allowed"))
    } else {
        (404, error_body(404, "no such route"))
    }
}

/// `channel_id` and `channel_type` from a query string, both required.
pub(crate) fn query_id_and_type(req: &HttpRequest) -> Result<(String, u8), Answer> {
    let channel_id = query_param(&req.query, "channel_id").unwrap_or_default();
    let ctype: u8 = query_param(&req.query, "channel_type")
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    if channel_id.is_empty() || ctype == 0 {
        return Err(bad("channel_id and channel_type are required"));
    }
    Ok((channel_id, ctype))
}

/// The stored channel a caller names. A person chat is named by its combined id (`a@b`,
/// either order: the same channel) or by the peer's uid, with `login` the caller's
/// (required then).
pub(crate) fn stored_channel(
    id: &str,
    ctype: u8,
    login: Option<&str>,
) -> Result<ChannelKey, Answer> {
    if ctype != ruyi_proto::types::channel_type::PERSON {
        return Ok(ChannelKey::new(id, ctype));
    }
    let id = match (id.split_once('@'), login.filter(|l| !l.is_empty())) {
        (Some((a, b)), _) => ruyi_proto::person_channel_id(a, b),
        (None, Some(login)) => ruyi_proto::person_channel_id(login, id),
        (None, None) => return Err(bad("login_uid is required for person channels")),
    };
    Ok(ChannelKey::new(id, ctype))
}

/// Ids must not contain the characters WuKongIM reserves (HTTP_API.md §1.4).
/// A uid or channel id a caller may name: not empty, none of `@ # &` (they build combined
/// and special ids), not reserved ([`crate::message::is_reserved_id`]).
pub(crate) fn valid_id(id: &str) -> bool {
    !id.is_empty() && !id.contains(['@', '#', '&']) && !crate::message::is_reserved_id(id)
}

/// Runs administrative writes on the storage writer, together, and waits for their commit.
pub(crate) fn admin(shared: &SharedRef, writes: Vec<AdminWrite>) -> Result<(), Answer> {
    let (done, wait) = crossbeam_channel::bounded(1);
    shared
        .writer
        .send(Job::Admin { writes, done })
        .map_err(|_| (503, error_body(503, "storage stopped")))?;
    match wait.recv_timeout(BACKEND_TIMEOUT) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err((500, error_body(500, &format!("storage: {e}")))),
        Err(_) => Err((503, error_body(503, "storage busy"))),
    }
}

pub(crate) fn invalidate(shared: &SharedRef, key: Option<ChannelKey>) {
    for q in &shared.channels {
        let _ = q.send(ChannelJob::Invalidate(key.clone()));
    }
}

pub(crate) fn storage_error(e: crate::storage::DbError) -> Answer {
    storage_answer(&e)
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
