//! The HTTP API on the engine (HTTP_API.md): HTTP/1.1 with keep-alive, parsed with
//! `httparse` on the loop, answered by HTTP worker threads (anything that touches storage
//! runs there, never on a loop), with the response sent back through the loop's inbox.
//!
//! One request at a time per connection: the loop pauses reading after a complete request
//! and resumes when the response is queued, so pipelined requests are answered in order.
//! This routes: `/health`, `/user/token`, `/channel`, `/channel/subscriber_add`,
//! `/message/send`, `/message/sync`, `/message/syncack`, each also under `/v1`.

use crate::channel::{ChannelJob, SendRequest};
use crate::gateway::ToLoop;
use crate::message::{ChannelKey, Message, Reply, SYSTEM_UID};
use crate::shared::SharedRef;
use crate::storage::admin::{AdminWrite, ChannelFlags};
use crate::storage::admin::{ConversationOp, ListKind, ListOp};
use crate::storage::writer::Job;
use crate::storage::Reader;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::{BufMut, Bytes, BytesMut};
use crossbeam_channel::{Receiver, RecvTimeoutError, TrySendError};
use ruyi_proto::types::{channel_type, reason};
use ruyi_proto::{person_channel_id, person_peer, Flags};
use ruyi_reactor::{ConnCtx, ConnId};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Idle time of a keep-alive HTTP connection.
pub const KEEP_ALIVE: Duration = Duration::from_secs(60);
/// Largest request head (request line and headers) we buffer.
pub const MAX_HEAD_BYTES: usize = 16 << 10;
/// Largest request body.
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// Headers parsed per request.
const MAX_HEADERS: usize = 48;
/// How long a worker waits for storage or the channel pool before answering 503.
const BACKEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Polling period for the stop flag while idle.
const IDLE_POLL: Duration = Duration::from_millis(100);

/// Per-connection HTTP state (nothing between requests: the loop pauses reading while a
/// request is being answered).
#[derive(Debug, Default)]
pub struct HttpSession {
    /// When the first byte of the request still incomplete arrived; `None` between
    /// requests. The request must be whole by `started + http_request_timeout`.
    started: Option<Instant>,
}

/// A parsed request on its way to a worker.
#[derive(Debug)]
pub struct HttpRequest {
    /// The connection to answer.
    pub conn: ConnId,
    /// `GET`, `POST`, ...
    pub method: String,
    /// Path without the query string.
    pub path: String,
    /// The query string (without `?`).
    pub query: String,
    /// The body.
    pub body: Bytes,
    /// Whether to keep the connection open after the response.
    pub keep_alive: bool,
    /// The origin to name in `Access-Control-Allow-Origin`, when it is an allowed one
    /// (`origin.rs`).
    pub cors: Option<String>,
    /// The caller's address, for the access log.
    pub peer: Option<std::net::IpAddr>,
}

/// Builds a complete response with a JSON body.
pub fn response(status: u16, body: &str, keep_alive: bool) -> Bytes {
    response_typed(status, "application/json", body, keep_alive)
}

/// Builds a complete response with a body of `content_type`.
pub fn response_typed(status: u16, content_type: &str, body: &str, keep_alive: bool) -> Bytes {
    response_full(status, content_type, body, keep_alive, None)
}

/// [`response_typed`], with CORS headers for `cors` (an allowed origin: `origin.rs`).
pub fn response_full(
    status: u16,
    content_type: &str,
    body: &str,
    keep_alive: bool,
    cors: Option<&str>,
) -> Bytes {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    };
    let mut out = BytesMut::with_capacity(160 + body.len());
    let cors = cors.map_or(String::new(), |origin| {
        format!("Access-Control-Allow-Origin: {origin}\r\nVary: Origin\r\n")
    });
    out.put_slice(
        format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{cors}Connection: {}\r\n\r\n",
            body.len(),
            if keep_alive { "keep-alive" } else { "close" }
        )
        .as_bytes(),
    );
    out.put_slice(body.as_bytes());
    out.freeze()
}

pub(crate) fn error_body(status: u16, msg: &str) -> String {
    json!({"msg": msg, "status": status}).to_string()
}

/// The loop side: frames one request, hands it to the pool, pauses reading.
pub fn on_data(
    shared: &SharedRef,
    conn: &mut ConnCtx<'_>,
    h: &mut HttpSession,
    input: &[u8],
    deadlines: &mut VecDeque<(Instant, ConnId)>,
) -> usize {
    let consumed = parse_request(shared, conn, input);
    if consumed > 0 || conn.is_closing() {
        h.started = None;
        return consumed;
    }
    // Incomplete: the engine keeps the bytes. The idle timeout restarts with every byte, so
    // on its own it would let a client trickle a header forever (slowloris); the request
    // gets one deadline from its first byte instead, enforced by `expire`.
    if h.started.is_none() {
        let now = conn.now();
        h.started = Some(now);
        deadlines.push_back((now + shared.config.http_request_timeout, conn.id()));
    }
    0
}

/// Answers 408 and closes `conn` if the request it is reading began `timeout` or longer
/// ago (called by the loop for each due entry of the deadline queue `on_data` fills).
/// True if it did.
pub fn expire(conn: &mut ConnCtx<'_>, h: &HttpSession, timeout: Duration) -> bool {
    let expired = h
        .started
        .is_some_and(|s| conn.now().saturating_duration_since(s) >= timeout);
    if expired {
        refuse(conn, 408, "request not completed in time");
    }
    expired
}

/// Parses and dispatches one request from `input`: the bytes consumed, or 0 while the
/// request is incomplete.
fn parse_request(shared: &SharedRef, conn: &mut ConnCtx<'_>, input: &[u8]) -> usize {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(input) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if input.len() > MAX_HEAD_BYTES {
                refuse(conn, 431, "request head too large");
                return input.len();
            }
            return 0;
        }
        Err(e) => {
            refuse(conn, 400, &format!("malformed request: {e}"));
            return input.len();
        }
    };
    let mut content_length: Option<usize> = None;
    let mut keep_alive = req.version == Some(1);
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let value = std::str::from_utf8(h.value).ok().map(str::trim);
            let parsed = value
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<usize>().ok());
            match (parsed, content_length) {
                (Some(n), None) => content_length = Some(n),
                (Some(n), Some(m)) if n == m => {}
                _ => {
                    // Unparsable or conflicting lengths are a smuggling vector (RFC 9112).
                    refuse(conn, 400, "bad Content-Length");
                    return input.len();
                }
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            refuse(
                conn,
                411,
                "chunked request bodies are not supported; send Content-Length",
            );
            return input.len();
        } else if h.name.eq_ignore_ascii_case("connection") {
            let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
            if v.contains("close") {
                keep_alive = false;
            } else if v.contains("keep-alive") {
                keep_alive = true;
            }
        }
    }
    // Bare LF line endings: another parser in front (a proxy) may frame this request
    // differently, so refuse it rather than guess (RFC 9112 §2.2).
    if input[..head_len]
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || input[i - 1] != b'\r'))
    {
        refuse(conn, 400, "bare LF line endings are not accepted; use CRLF");
        return input.len();
    }
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    // Two Host or Origin headers: a proxy in front may read the other one (RFC 9112 §3.2).
    let twice = |name: &str| {
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .count()
            > 1
    };
    if twice("host") || twice("origin") {
        refuse(conn, 400, "more than one Host or Origin header");
        return input.len();
    }
    // Browsers: Host and Origin decide before anything runs (origin.rs).
    let config = &shared.config;
    let cors = match crate::origin::check(
        header("host"),
        header("origin"),
        config.http_addr.ip().is_loopback(),
        &config.cors_origins,
        &config.allowed_hosts,
    ) {
        crate::origin::Verdict::Allow(cors) => cors,
        crate::origin::Verdict::Refuse(why) => {
            refuse(conn, 403, why);
            return input.len();
        }
    };
    // The manager token (HTTP_API.md §1.2): when configured, every request carries it in a
    // `token` header or gets an empty 401. Compared in constant time.
    // Checked on the head, before any body is waited for: a caller without the token
    // cannot make the server hold a megabyte per connection. Preflights are exempt, and
    // so are the probes (`open_probe`): a load balancer or Prometheus must not hold a
    // credential that can send as anyone.
    let exempt = req.method == Some("OPTIONS")
        || (req.method == Some("GET") && req.path.is_some_and(open_probe));
    if let (Some(expected), false) = (&shared.config.manager_token, exempt) {
        let given = req
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("token"))
            .map(|h| h.value);
        if !given
            .is_some_and(|g| ruyi_proto::crypto::constant_time_eq(g, expected.expose().as_bytes()))
        {
            // Counted, and named at most once per 10 s: token guessing must show.
            let refused = shared.counters.http_unauthorized.fetch_add(1, Relaxed) + 1;
            if let Some(held) = shared.http_auth_warnings.allow() {
                let from = conn
                    .peer_addr()
                    .map_or_else(|_| "?".into(), |a| a.ip().to_string());
                log::warn!(
                    target: "ruyi::audit",
                    "HTTP request without the manager token from {from}: 401 ({held} more not logged since the last line; {refused} in all)"
                );
            }
            conn.queue(response_typed(401, "application/json", "", false));
            conn.close();
            return input.len();
        }
    }
    // Every method's body is framed by its Content-Length, OPTIONS included: a body left
    // unread would be parsed as the next request (a desync behind a proxy).
    let content_length = content_length.unwrap_or(0);
    if content_length > MAX_BODY_BYTES {
        refuse(conn, 413, "request body too large");
        return input.len();
    }
    let total = head_len + content_length;
    if input.len() < total {
        return 0; // The engine keeps the bytes; the body is still arriving.
    }
    // Preflights come without the manager token (browsers never send custom headers on
    // them), so the token check skipped them; they get CORS headers only for allowed
    // origins.
    if req.method == Some("OPTIONS") {
        let allow = match &cors {
            Some(origin) => format!(
                "Access-Control-Allow-Origin: {origin}\r\nVary: Origin\r\nAccess-Control-Allow-Methods: GET, POST, OPTIONS\r\nAccess-Control-Allow-Headers: content-type, token\r\nAccess-Control-Max-Age: 86400\r\n"
            ),
            None => "Allow: GET, POST, OPTIONS\r\n".to_owned(),
        };
        conn.queue_slice(
            format!("HTTP/1.1 204 No Content\r\n{allow}Content-Length: 0\r\n\r\n").as_bytes(),
        );
        if !keep_alive {
            conn.close();
        }
        return total;
    }
    let target = req.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let request = HttpRequest {
        conn: conn.id(),
        method: req.method.unwrap_or("GET").to_owned(),
        path: path.to_owned(),
        query: query.to_owned(),
        body: Bytes::copy_from_slice(&input[head_len..total]),
        keep_alive,
        cors,
        peer: conn.peer_addr().ok().map(|a| a.ip()),
    };
    match shared.http.try_send(request) {
        Ok(()) => conn.pause_reading(),
        // Refuse and close: buffered pipelined requests would otherwise wait for bytes.
        Err(TrySendError::Full(_)) => refuse(conn, 503, "server busy"),
        Err(TrySendError::Disconnected(_)) => conn.close(),
    }
    total
}

fn refuse(conn: &mut ConnCtx<'_>, status: u16, msg: &str) {
    conn.queue(response(status, &error_body(status, msg), false));
    conn.close_after_flush();
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
        let (status, body) = route(&shared, &reader, &req);
        let took = started.elapsed();
        shared.latency.http.observe(took);
        audit(&req, status, took);
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

pub(crate) fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, Answer> {
    serde_json::from_slice(body).map_err(|e| bad(&format!("invalid JSON body: {e}")))
}

/// A route handler: the shared state, this worker's read connection, the request.
pub type Handler = fn(&SharedRef, &Reader, &HttpRequest) -> Result<Answer, Answer>;

/// The routes served without the manager token: liveness, readiness and metrics (counters
/// and gauges, no ids or secrets). `/varz` stays behind the token: it shows settings.
fn open_probe(target: &str) -> bool {
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    let path = path.strip_prefix("/v1").unwrap_or(path);
    matches!(path, "/health" | "/healthz" | "/ready" | "/metrics")
}

/// `GET /ready`: 200 while the server can take messages; 503 with the reasons while it is
/// stopping or storage's last commit failed (a full disk, an I/O error), so a load
/// balancer sends clients elsewhere. `/health` only says the process answers.
fn ready(shared: &SharedRef) -> Answer {
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

/// Every route, at its WuKongIM path; each is also served under `/v1` (HTTP_API.md §1.1).
const ROUTES: &[(&str, &str, Handler)] = &[
    ("GET", "/health", |_, _, _| {
        Ok((200, json!({"status": "ok"}).to_string()))
    }),
    ("GET", "/ready", |s, _, _| Ok(ready(s))),
    ("GET", "/healthz", |_, _, _| {
        Ok((200, json!({"status": "ok"}).to_string()))
    }),
    ("GET", "/varz", |s, _, _| {
        Ok(crate::metrics::export::varz(s))
    }),
    ("GET", "/metrics", |s, _, _| {
        Ok(crate::metrics::export::metrics(s))
    }),
    ("GET", "/route", |s, _, r| Ok(crate::api::route_addrs(s, r))),
    ("POST", "/user/token", |s, rd, r| user_token(s, rd, &r.body)),
    ("POST", "/user/device_quit", |s, _, r| {
        crate::api::device_quit(s, &r.body)
    }),
    ("POST", "/user/onlinestatus", |s, _, r| {
        crate::api::online_status(s, &r.body)
    }),
    ("POST", "/channel", |s, _, r| channel_upsert(s, &r.body)),
    ("POST", "/channel/info", |s, _, r| {
        crate::api::channel_info(s, &r.body)
    }),
    ("POST", "/channel/delete", |s, _, r| {
        crate::api::channel_delete(s, &r.body)
    }),
    ("POST", "/channel/subscriber_add", |s, _, r| {
        subscriber_add(s, &r.body)
    }),
    ("POST", "/channel/subscriber_remove", |s, _, r| {
        crate::api::subscriber_remove(s, &r.body)
    }),
    ("POST", "/channel/messagesync", |_, rd, r| {
        crate::api::channel_messagesync(rd, &r.body)
    }),
    ("GET", "/channel/max_message_seq", |_, rd, r| {
        crate::api::max_message_seq(rd, r)
    }),
    ("POST", "/message/send", |s, _, r| message_send(s, &r.body)),
    ("POST", "/message/sendbatch", |s, _, r| {
        crate::api::send_batch(s, &r.body)
    }),
    ("POST", "/channel/blacklist_add", |s, _, r| {
        list(s, r, ListKind::Deny, ListOp::Add)
    }),
    ("POST", "/channel/blacklist_set", |s, _, r| {
        list(s, r, ListKind::Deny, ListOp::Set)
    }),
    ("POST", "/channel/blacklist_remove", |s, _, r| {
        list(s, r, ListKind::Deny, ListOp::Remove)
    }),
    ("POST", "/channel/blacklist_remove_all", |s, _, r| {
        list(s, r, ListKind::Deny, ListOp::RemoveAll)
    }),
    ("POST", "/channel/whitelist_add", |s, _, r| {
        list(s, r, ListKind::Allow, ListOp::Add)
    }),
    ("POST", "/channel/whitelist_set", |s, _, r| {
        list(s, r, ListKind::Allow, ListOp::Set)
    }),
    ("POST", "/channel/whitelist_remove", |s, _, r| {
        list(s, r, ListKind::Allow, ListOp::Remove)
    }),
    ("POST", "/channel/whitelist_remove_all", |s, _, r| {
        list(s, r, ListKind::Allow, ListOp::RemoveAll)
    }),
    ("GET", "/channel/whitelist", |_, rd, r| {
        crate::api::whitelist(rd, r)
    }),
    ("POST", "/channel/subscriber_remove_all", |s, _, r| {
        crate::api::subscriber_remove_all(s, &r.body)
    }),
    ("POST", "/messages", |_, rd, r| {
        crate::api::messages(rd, &r.body)
    }),
    ("POST", "/message", |_, rd, r| {
        crate::api::message(rd, &r.body)
    }),
    ("POST", "/route/batch", |s, _, r| {
        crate::api::route_batch(s, &r.body)
    }),
    ("POST", "/conversation/sync", |_, rd, r| {
        crate::api::conversation_sync(rd, &r.body)
    }),
    ("POST", "/conversations/clearUnread", |s, _, r| {
        conv(s, r, ConversationOp::ClearUnread)
    }),
    ("POST", "/conversations/setUnread", |s, _, r| {
        conv(s, r, ConversationOp::SetUnread)
    }),
    ("POST", "/conversations/delete", |s, _, r| {
        conv(s, r, ConversationOp::Delete)
    }),
    ("POST", "/message/sync", |s, rd, r| {
        message_sync(s, rd, &r.body)
    }),
    ("POST", "/message/syncack", |s, _, r| {
        message_syncack(s, &r.body)
    }),
];

fn list(
    shared: &SharedRef,
    req: &HttpRequest,
    kind: ListKind,
    op: ListOp,
) -> Result<Answer, Answer> {
    crate::api::list_change(shared, &req.body, kind, op)
}

fn conv(shared: &SharedRef, req: &HttpRequest, op: ConversationOp) -> Result<Answer, Answer> {
    crate::api::conversation_change(shared, &req.body, op)
}

fn route(shared: &SharedRef, reader: &Reader, req: &HttpRequest) -> Answer {
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

fn user_token(shared: &SharedRef, reader: &Reader, body: &[u8]) -> Result<Answer, Answer> {
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

fn channel_upsert(shared: &SharedRef, body: &[u8]) -> Result<Answer, Answer> {
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
            after: crate::gateway::KICK_GRACE,
        };
        let _ = shared.loops().for_conn(d.conn).post(kick);
    }
}

fn subscriber_add(shared: &SharedRef, body: &[u8]) -> Result<Answer, Answer> {
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

fn message_send(shared: &SharedRef, body: &[u8]) -> Result<Answer, Answer> {
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
        format!("{:x}0", shared.ids.next())
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
    shared
        .channel_queue(&key)
        .send(ChannelJob::Send(Box::new(request)))
        .map_err(|_| (503, error_body(503, "server stopping")))?;
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
fn message_sync(shared: &SharedRef, reader: &Reader, body: &[u8]) -> Result<Answer, Answer> {
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

fn message_syncack(shared: &SharedRef, body: &[u8]) -> Result<Answer, Answer> {
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
