//! The loop's side of HTTP/1.1: framing a request (Content-Length or chunked, `Expect:
//! 100-continue`), the checks that run before a body is waited for (Host, Origin, the
//! manager token), and building responses. Nothing here blocks or touches storage.

use super::{error_body, open_probe};
use crate::shared::SharedRef;
use bytes::{BufMut, Bytes, BytesMut};
use crossbeam_channel::TrySendError;
use ruyi_reactor::{ConnCtx, ConnId};
use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

/// Idle time of a keep-alive HTTP connection.
pub const KEEP_ALIVE: Duration = Duration::from_secs(60);

/// Largest request head (request line and headers) we buffer.
pub const MAX_HEAD_BYTES: usize = 16 << 10;

/// Largest request body.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// Headers parsed per request.
const MAX_HEADERS: usize = 48;

/// Per-connection HTTP state (nothing between requests: the loop pauses reading while a
/// request is being answered).
#[derive(Debug, Default)]
pub struct HttpSession {
    /// When the first byte of the request still incomplete arrived; `None` between
    /// requests. The request must be whole by `started + http_request_timeout`.
    started: Option<Instant>,
    /// `100 Continue` was sent for the request being read (`Expect: 100-continue`).
    continued: bool,
    /// A chunked body decoded so far: each read resumes where the last stopped, so a
    /// body arriving in many small reads is scanned once, not once per read.
    chunks: Chunked,
}

/// Progress through a chunked body: the whole chunks decoded, and the bytes they took.
#[derive(Debug, Default)]
struct Chunked {
    body: Vec<u8>,
    used: usize,
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
    /// Forwarded by another node of the cluster, which waits for the answer under this
    /// (node, token) (`cluster/relay.rs`); `conn` means nothing then.
    pub remote: Option<(u16, u64)>,
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

/// The loop side: frames one request, hands it to the pool, pauses reading.
pub fn on_data(
    shared: &SharedRef,
    conn: &mut ConnCtx<'_>,
    h: &mut HttpSession,
    input: &[u8],
    deadlines: &mut VecDeque<(Instant, ConnId)>,
) -> usize {
    let consumed = parse_request(shared, conn, h, input);
    if consumed > 0 || conn.is_closing() {
        h.started = None;
        h.continued = false;
        h.chunks = Chunked::default();
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
fn parse_request(
    shared: &SharedRef,
    conn: &mut ConnCtx<'_>,
    h: &mut HttpSession,
    input: &[u8],
) -> usize {
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
    let (mut chunked, mut expects_continue) = (false, false);
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
            // Only `chunked`, alone (RFC 9112 §6.1: anything else cannot be framed here).
            if chunked || !h.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                refuse(conn, 501, "only Transfer-Encoding: chunked is supported");
                return input.len();
            }
            chunked = true;
        } else if h.name.eq_ignore_ascii_case("expect") {
            if !h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue") {
                refuse(conn, 417, "only Expect: 100-continue is supported");
                return input.len();
            }
            expects_continue = req.version == Some(1);
        } else if h.name.eq_ignore_ascii_case("connection") {
            let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
            if v.contains("close") {
                keep_alive = false;
            } else if v.contains("keep-alive") {
                keep_alive = true;
            }
        }
    }
    if chunked && content_length.is_some() {
        // Both framings: a proxy in front may use the other one (RFC 9112 §6.3).
        refuse(conn, 400, "both Transfer-Encoding and Content-Length");
        return input.len();
    }
    if chunked && req.version != Some(1) {
        // HTTP/1.0 has no chunked coding: the framing is faulty (RFC 9112 §6.1).
        refuse(conn, 400, "Transfer-Encoding in an HTTP/1.0 request");
        return input.len();
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
    // The console's and the demo's files (`assets.rs`): no secret in them, so no token,
    // and no body either.
    let asset_path = req
        .path
        .map(|p| p.split_once('?').map_or(p, |(path, _)| path));
    if let (Some(method @ ("GET" | "HEAD")), Some(path)) = (req.method, asset_path) {
        if super::assets::is_asset(path) {
            if chunked || content_length.unwrap_or(0) > 0 {
                refuse(conn, 400, "this request takes no body");
                return input.len();
            }
            let text = |name: &str| header(name).and_then(|v| std::str::from_utf8(v).ok());
            let (head, body) = super::assets::respond(
                path,
                method == "HEAD",
                super::assets::accepts_gzip(text("accept-encoding")),
                text("if-none-match"),
                keep_alive,
            );
            conn.queue(head);
            if let Some(body) = body {
                conn.queue(body);
            }
            if keep_alive {
                // A request pipelined behind this one is in the buffer already: have it
                // offered again next turn (no new bytes may come to prompt it).
                conn.pause_reading();
                conn.resume_reading();
            } else {
                conn.close_after_flush();
            }
            return head_len;
        }
    }
    // The manager token (HTTP_API.md §1.2): when configured, every request carries it in a
    // `token` header or gets an empty 401. Compared in constant time.
    // Checked on the head, before any body is waited for: a caller without the token
    // cannot make the server hold a megabyte per connection. Preflights are exempt, and
    // so are the probes (`open_probe`): a load balancer or Prometheus must not hold a
    // credential that can send as anyone.
    let exempt = req.method == Some("OPTIONS")
        || (req.method == Some("GET") && req.path.is_some_and(open_probe));
    // What needs no token takes no body (a few bytes, ignored, at most): else anyone could
    // make the server hold a megabyte.
    if exempt && (chunked || content_length.unwrap_or(0) > 1024) {
        refuse(conn, 400, "this request takes no body");
        return input.len();
    }
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
    // Every method's body is framed by its Content-Length or its chunks, OPTIONS included:
    // a body left unread would be parsed as the next request (a desync behind a proxy).
    let framed = if chunked {
        match dechunk(&input[head_len..], &mut h.chunks) {
            Ok(true) => {
                let done = std::mem::take(&mut h.chunks);
                Some((Bytes::from(done.body), head_len + done.used))
            }
            Ok(false) => None,
            Err(Dechunk::TooLarge) => {
                refuse(conn, 413, "request body too large");
                return input.len();
            }
            Err(Dechunk::Malformed) => {
                refuse(conn, 400, "malformed chunked body");
                return input.len();
            }
        }
    } else {
        let content_length = content_length.unwrap_or(0);
        if content_length > MAX_BODY_BYTES {
            refuse(conn, 413, "request body too large");
            return input.len();
        }
        let total = head_len + content_length;
        (input.len() >= total).then(|| (Bytes::copy_from_slice(&input[head_len..total]), total))
    };
    let Some((body, total)) = framed else {
        // The body is still arriving (the engine keeps the bytes). A client that asked
        // waits for `100 Continue` before sending it: once, after every check above.
        if expects_continue && !h.continued {
            h.continued = true;
            conn.queue_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        return 0;
    };
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
        body,
        keep_alive,
        cors,
        peer: conn.peer_addr().ok().map(|a| a.ip()),
        remote: None,
    };
    match shared.http.try_send(request) {
        Ok(()) => conn.pause_reading(),
        // Refuse and close: buffered pipelined requests would otherwise wait for bytes.
        Err(TrySendError::Full(_)) => refuse(conn, 503, "server busy"),
        Err(TrySendError::Disconnected(_)) => conn.close(),
    }
    total
}

enum Dechunk {
    Malformed,
    TooLarge,
}

/// Chunked input (sizes, extensions, data, trailers) a request may take at most: the
/// body's limit and 32 KiB of framing, inside the engine's input cap (1 MiB + 64 KiB, with
/// the head), so a body too finely chunked gets 413 rather than a silent close.
const MAX_CHUNKED_INPUT: usize = MAX_BODY_BYTES + (32 << 10);

/// A chunk-size line or a trailer line at most (extensions included).
const MAX_CHUNK_LINE: usize = 1024;

/// The next line of `input` from `at`, strictly: ended by CRLF, no other control byte but
/// HTAB in it (a bare LF is where another parser in front may cut the line elsewhere: a
/// request smuggled past it). `Ok(None)` while it is incomplete.
fn strict_line(input: &[u8], at: usize) -> Result<Option<&[u8]>, Dechunk> {
    let rest = &input[at..input.len().min(at + MAX_CHUNK_LINE + 2)];
    let end = rest
        .iter()
        .position(|&b| b == b'\r' || b == b'\n' || (b < 0x20 && b != b'\t') || b == 0x7f);
    match end {
        None if rest.len() > MAX_CHUNK_LINE => Err(Dechunk::Malformed),
        None => Ok(None),
        Some(end) if rest[end] != b'\r' => Err(Dechunk::Malformed),
        Some(end) if end + 1 == rest.len() => Ok(None), // the LF is still to come
        Some(end) if rest[end + 1] == b'\n' => Ok(Some(&rest[..end])),
        Some(_) => Err(Dechunk::Malformed),
    }
}

/// Decodes a chunked body (RFC 9112 §7.1) at the start of `input`, from where `progress`
/// stopped: true once it is whole (`progress` then holds the body and the bytes it took,
/// trailers read and dropped), false while it is incomplete. Strict where parsers
/// disagree: a size is 1–16 hex digits, lines end in CRLF only and hold no control bytes,
/// each line is at most [`MAX_CHUNK_LINE`]; all of it at most [`MAX_CHUNKED_INPUT`]. Each
/// read looks only at what arrived since the last whole line.
fn dechunk(input: &[u8], progress: &mut Chunked) -> Result<bool, Dechunk> {
    loop {
        let at = progress.used;
        if at > MAX_CHUNKED_INPUT {
            return Err(Dechunk::TooLarge);
        }
        let Some(line) = strict_line(input, at)? else {
            return Ok(false);
        };
        let digits = line.split(|&b| b == b';').next().unwrap_or_default();
        if digits.is_empty() || digits.len() > 16 || !digits.iter().all(u8::is_ascii_hexdigit) {
            return Err(Dechunk::Malformed);
        }
        let size = std::str::from_utf8(digits)
            .ok()
            .and_then(|d| usize::from_str_radix(d, 16).ok())
            .ok_or(Dechunk::TooLarge)?;
        let data = at + line.len() + 2;
        if size == 0 {
            // Trailer fields, each a strict line, then an empty line.
            let mut next = data;
            loop {
                if next > MAX_CHUNKED_INPUT {
                    return Err(Dechunk::TooLarge);
                }
                let Some(trailer) = strict_line(input, next)? else {
                    return Ok(false);
                };
                next += trailer.len() + 2;
                if trailer.is_empty() {
                    progress.used = next;
                    return Ok(true);
                }
            }
        }
        if progress.body.len() + size > MAX_BODY_BYTES || data + size > MAX_CHUNKED_INPUT {
            return Err(Dechunk::TooLarge);
        }
        if input.len() < data + size + 2 {
            return Ok(false);
        }
        if &input[data + size..data + size + 2] != b"\r\n" {
            return Err(Dechunk::Malformed);
        }
        progress.body.extend_from_slice(&input[data..data + size]);
        progress.used = data + size + 2;
    }
}

fn refuse(conn: &mut ConnCtx<'_>, status: u16, msg: &str) {
    conn.queue(response(status, &error_body(status, msg), false));
    conn.close_after_flush();
}

#[cfg(test)]
mod tests {
    use super::{dechunk, Chunked, Dechunk, MAX_BODY_BYTES};

    fn run(input: &[u8]) -> Result<bool, Dechunk> {
        dechunk(input, &mut Chunked::default())
    }

    #[test]
    fn chunked_bodies_decode_across_reads() {
        let whole = b"5;name=v\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        let mut progress = Chunked::default();
        for cut in [3, 12, 20, 30] {
            assert!(matches!(dechunk(&whole[..cut], &mut progress), Ok(false)));
        }
        assert!(matches!(dechunk(whole, &mut progress), Ok(true)));
        assert_eq!(progress.body, b"hello world");
        assert_eq!(&whole[progress.used..], b"NEXT", "pipelined bytes are left");
    }

    #[test]
    fn chunk_framing_parsers_disagree_on_is_refused() {
        for bad in [
            &b"1;\nX\r\nA\r\n0\r\n\r\n"[..], // a bare LF in a size line
            b"\r\n\r\n",                     // an empty size
            b";x\r\n\r\n",                   // an extension without a size
            b"0\r\nX: a\nb\r\n\r\n",         // a bare LF in a trailer
            b"1\r\nAB\r\n",                  // data longer than its size
            b"1 \r\nA\r\n0\r\n\r\n",         // whitespace after the size
            b"00000000000000001\r\nA\r\n",   // more than 16 digits
        ] {
            assert!(
                matches!(run(bad), Err(Dechunk::Malformed)),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn a_long_line_or_too_much_framing_is_refused_at_once() {
        // An extension that never ends: refused once it passes a line's bound, not
        // rescanned on every read until the input cap.
        let mut long = b"1;".to_vec();
        long.extend_from_slice(&[b'a'; 70_000]);
        assert!(run(&long).is_err());
        // A body under the limit, chunked so finely its framing passes the allowance.
        let mut fine = Vec::new();
        for _ in 0..(1_000_000 / 64) {
            fine.extend_from_slice(b"40\r\n");
            fine.extend_from_slice(&[b'x'; 64]);
            fine.extend_from_slice(b"\r\n");
        }
        assert!(matches!(run(&fine), Err(Dechunk::TooLarge)));
        let big = format!("{:x}\r\n", MAX_BODY_BYTES + 1);
        assert!(matches!(run(big.as_bytes()), Err(Dechunk::TooLarge)));
    }
}
