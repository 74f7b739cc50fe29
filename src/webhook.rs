//! Webhooks (HTTP_API.md §9): `user.onlinestatus`, `msg.offline` and `msg.notify`, POSTed to
//! `<url>?event=<name>` by their own threads, so a slow, failing or dead endpoint never
//! slows message delivery or SENDACKs.
//!
//! # Queues and policy
//! Producers (loop threads for online status, the pusher for messages) only `try_send`
//! into queues bounded both in events ([`QUEUE`]) and in bytes ([`QUEUE_BYTES`], each
//! event charged its estimated size: a message event carries its payload as base64, up to
//! ~1.4 MB, so a count alone let one queue pin ~20 GB). When a queue is full the event is
//! **dropped, counted and logged** (rate-limited). Delivery, per the reference:
//! - `user.onlinestatus`: everything pending goes in one POST (a JSON array of strings);
//!   a failed batch is retried every second, at most [`RETRIES`] times, then dropped.
//! - `msg.notify`: up to [`NOTIFY_BATCH`] messages per POST, sent when that many wait or
//!   every [`NOTIFY_INTERVAL`]; a failed batch is retried (each message at most
//!   [`RETRIES`] times) after a one-second pause.
//! - `msg.offline`: one POST per message, no retry, on its own thread so a slow answer
//!   does not hold up the other events.
//!
//! Success is HTTP 200 exactly; redirects are not followed (a hostile endpoint could bounce
//! the server's requests to an internal host). Timeouts: connect 5 s, read 10 s, whole
//! request 30 s. `http://` and `https://` endpoints; https uses rustls with the Mozilla
//! roots (webpki-roots) plus, when `webhook_ca_file` is set, the certificates in that PEM
//! file (an internal CA).

use crate::logging::LogEvery;
use serde_json::Value;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Attempts per webhook batch or message before it is dropped (WuKongIM's
/// `msgNotifyEventRetryMaxCount`).
pub const RETRIES: u32 = 5;
/// Messages per `msg.notify` POST (`msgNotifyEventCountPerPush`).
pub const NOTIFY_BATCH: usize = 100;
/// How long `msg.notify` waits to fill a batch (`msgNotifyEventPushInterval`).
pub const NOTIFY_INTERVAL: Duration = Duration::from_millis(500);
/// Events waiting per queue before new ones are dropped. At a few hundred bytes each this
/// bounds the memory a dead endpoint can pin to a few MiB per queue.
pub const QUEUE: usize = 16 << 10;
/// Estimated bytes that events waiting in one queue may hold: with a dead endpoint, at
/// most this much per queue (three queues) is pinned.
pub const QUEUE_BYTES: usize = 32 << 20;

/// Bytes of `msg.notify` messages kept for retry at most.
const RETRY_BYTES: usize = 32 << 20;

/// Threads posting `msg.offline` (one request per message each).
const OFFLINE_THREADS: usize = 8;

/// `msg.notify` messages kept for retry at most (the reference keeps 5 × 100).
const RETRY_BUFFER: usize = RETRIES as usize * NOTIFY_BATCH;

/// Counters for metrics.
#[derive(Debug, Default)]
pub struct WebhookStats {
    /// POSTs answered 200.
    pub delivered: AtomicU64,
    /// POSTs that failed (status, timeout, connection).
    pub failures: AtomicU64,
    /// Events dropped: queue full, or out of retries.
    pub dropped: AtomicU64,
    /// Time per POST, to its response or failure.
    pub post_seconds: crate::metrics::Histogram,
}

/// One event queue, bounded in events and in bytes: the producers' end.
#[derive(Debug, Clone)]
struct Outbox<T> {
    tx: crossbeam_channel::Sender<(T, usize)>,
    bytes: Arc<AtomicUsize>,
}

/// The consumer's end of an [`Outbox`]: what it takes is no longer charged.
#[derive(Debug, Clone)]
struct Inbox<T> {
    rx: crossbeam_channel::Receiver<(T, usize)>,
    bytes: Arc<AtomicUsize>,
}

fn outbox<T>() -> (Outbox<T>, Inbox<T>) {
    let (tx, rx) = crossbeam_channel::bounded(QUEUE);
    let bytes = Arc::new(AtomicUsize::new(0));
    (
        Outbox {
            tx,
            bytes: Arc::clone(&bytes),
        },
        Inbox { rx, bytes },
    )
}

impl<T> Outbox<T> {
    /// Queues `event` charged `size` bytes; false when the queue is full either way.
    fn try_send(&self, event: T, size: usize) -> bool {
        self.try_send_within(event, size, 1)
    }

    /// [`Self::try_send`] into `1 / share` of the queue: what may be dropped first keeps
    /// the rest free for what matters more.
    fn try_send_within(&self, event: T, size: usize, share: usize) -> bool {
        if self.tx.len() >= QUEUE / share {
            return false;
        }
        let before = self.bytes.fetch_add(size, Relaxed);
        if before + size > QUEUE_BYTES / share || self.tx.try_send((event, size)).is_err() {
            self.bytes.fetch_sub(size, Relaxed);
            return false;
        }
        true
    }
}

impl<T> Inbox<T> {
    fn taken(&self, (event, size): (T, usize)) -> (T, usize) {
        self.bytes.fetch_sub(size, Relaxed);
        (event, size)
    }

    fn recv_timeout(&self, timeout: Duration) -> Option<(T, usize)> {
        self.rx.recv_timeout(timeout).ok().map(|e| self.taken(e))
    }

    fn recv_deadline(&self, deadline: Instant) -> Option<(T, usize)> {
        self.rx.recv_deadline(deadline).ok().map(|e| self.taken(e))
    }

    fn try_recv(&self) -> Option<(T, usize)> {
        self.rx.try_recv().ok().map(|e| self.taken(e))
    }
}

/// The estimated size of a message event: its JSON without the payload, plus the payload
/// as base64 (`message_len` is the plain payload's length).
pub fn message_event_bytes(message_len: usize) -> usize {
    512 + message_len.div_ceil(3) * 4
}

/// The producers' side. Cloneable; every method is non-blocking.
#[derive(Debug, Clone)]
pub struct Webhooks {
    online: Outbox<String>,
    notify: Outbox<Value>,
    offline: Outbox<Value>,
    /// Counters.
    pub stats: Arc<WebhookStats>,
    drop_warnings: Arc<LogEvery>,
}

impl Webhooks {
    /// Starts the delivery threads for `url`; they stop when `stop` is set.
    ///
    /// # Errors
    /// When a thread cannot be spawned.
    pub fn start(
        url: String,
        ca_file: Option<&std::path::Path>,
        stop: Arc<AtomicBool>,
    ) -> std::io::Result<(Webhooks, Vec<std::thread::JoinHandle<()>>)> {
        let tls = crate::tls::client_config(ca_file)?;
        let (online_tx, online_rx) = outbox();
        let (notify_tx, notify_rx) = outbox();
        let (offline_tx, offline_rx) = outbox();
        let stats = Arc::new(WebhookStats::default());
        let agent = ureq::AgentBuilder::new()
            // A hostile endpoint must not bounce the server's requests elsewhere (an
            // internal host): a redirect is an answer other than 200, so a failure.
            .redirects(0)
            .tls_config(tls)
            .timeout_connect(Duration::from_secs(5))
            .timeout_read(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .build();
        let post = Poster {
            agent,
            url: Arc::new(url),
            stats: Arc::clone(&stats),
            failure_warnings: Arc::new(LogEvery::new(Duration::from_secs(10))),
        };
        let mut threads = Vec::new();
        let (p, s) = (post.clone(), Arc::clone(&stop));
        threads.push(spawn("ruyi-webhook-status", move || {
            run_online(&p, &online_rx, &s)
        })?);
        let (p, s) = (post.clone(), Arc::clone(&stop));
        threads.push(spawn("ruyi-webhook-notify", move || {
            run_notify(&p, &notify_rx, &s)
        })?);
        // msg.offline is one POST per message: a few threads share its queue so one slow
        // answer does not hold up the rest (WuKongIM uses a goroutine pool).
        for i in 0..OFFLINE_THREADS {
            let (p, s, rx) = (post.clone(), Arc::clone(&stop), offline_rx.clone());
            threads.push(spawn(&format!("ruyi-webhook-offline-{i}"), move || {
                run_offline(&p, &rx, &s)
            })?);
        }
        let hooks = Webhooks {
            online: online_tx,
            notify: notify_tx,
            offline: offline_tx,
            stats,
            drop_warnings: Arc::new(LogEvery::new(Duration::from_secs(10))),
        };
        Ok((hooks, threads))
    }

    fn dropped(&self, what: &str) {
        self.stats.dropped.fetch_add(1, Relaxed);
        // Warn at most every 10 s: a warning per dropped event would flood the log.
        if self.drop_warnings.allow().is_some() {
            log::warn!(
                "webhook {what} queue full: dropping events ({} dropped so far)",
                self.stats.dropped.load(Relaxed)
            );
        }
    }

    /// Events waiting to be posted, and their estimated bytes.
    pub fn queued(&self) -> (usize, usize) {
        let (o, n, f) = (&self.online, &self.notify, &self.offline);
        (
            o.tx.len() + n.tx.len() + f.tx.len(),
            o.bytes.load(Relaxed) + n.bytes.load(Relaxed) + f.bytes.load(Relaxed),
        )
    }

    /// Queues a `user.onlinestatus` entry: `uid-flag-online-connid-flagconns-uidconns`.
    pub fn online_status(&self, entry: String) {
        let size = 64 + entry.len();
        if !self.online.try_send(entry, size) {
            self.dropped("user.onlinestatus");
        }
    }

    /// Queues a `msg.notify` message object of about `size` bytes
    /// ([`message_event_bytes`]).
    pub fn notify(&self, message: Value, size: usize) {
        if !self.notify.try_send(message, size) {
            self.dropped("msg.notify");
        }
    }

    /// Queues a `msg.offline` object (message fields plus `to_uids`) of about `size` bytes.
    /// A NoPersist message's (`transient`: typing indicators and the like, which can come
    /// in floods) only while the queue is less than half full, so a flood of them never
    /// crowds out a stored message's push.
    pub fn offline(&self, message: Value, size: usize, transient: bool) {
        let share = if transient { 2 } else { 1 };
        if !self.offline.try_send_within(message, size, share) {
            self.dropped("msg.offline");
        }
    }
}

fn spawn(
    name: &str,
    f: impl FnOnce() + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name(name.into()).spawn(f)
}

#[derive(Clone)]
struct Poster {
    agent: ureq::Agent,
    url: Arc<String>,
    stats: Arc<WebhookStats>,
    failure_warnings: Arc<LogEvery>,
}

impl Poster {
    /// POSTs `body` for `event`; true on HTTP 200.
    fn post(&self, event: &str, body: &str) -> bool {
        let sep = if self.url.contains('?') { '&' } else { '?' };
        let url = format!("{}{sep}event={event}", self.url);
        let started = Instant::now();
        let failure = match self
            .agent
            .post(&url)
            .set("Content-Type", "application/json")
            .send_string(body)
        {
            // Read the body to its end: ureq returns the connection to its pool only then.
            Ok(resp) => {
                let status = resp.status();
                let _ = std::io::copy(&mut resp.into_reader(), &mut std::io::sink());
                (status != 200).then(|| format!("answered HTTP {status}"))
            }
            Err(ureq::Error::Status(status, resp)) => {
                let _ = std::io::copy(&mut resp.into_reader(), &mut std::io::sink());
                Some(format!("answered HTTP {status}"))
            }
            // The kind only: the full error quotes the URL, which may carry a secret in
            // its query string.
            Err(ureq::Error::Transport(t)) => Some(t.kind().to_string()),
        };
        self.stats.post_seconds.observe(started.elapsed());
        let ok = failure.is_none();
        if let Some(cause) = failure {
            match self.failure_warnings.allow() {
                Some(held) => log::warn!(
                    "webhook {event} failed: {cause} ({held} more failures in the last 10 s not logged; {} in all)",
                    self.stats.failures.load(Relaxed) + 1
                ),
                None => log::debug!("webhook {event} failed: {cause}"),
            }
        }
        let counter = if ok {
            &self.stats.delivered
        } else {
            &self.stats.failures
        };
        counter.fetch_add(1, Relaxed);
        ok
    }
}

/// Polling period for the stop flag.
const IDLE_POLL: Duration = Duration::from_millis(100);

fn run_online(p: &Poster, rx: &Inbox<String>, stop: &AtomicBool) {
    while !stop.load(Relaxed) {
        let Some((first, _)) = rx.recv_timeout(IDLE_POLL) else {
            continue;
        };
        let mut batch = vec![first];
        // Bounded by the queue: this takes at most what it holds now.
        while let Some((entry, _)) = rx.try_recv() {
            batch.push(entry);
        }
        let body = Value::from(
            batch
                .iter()
                .map(|s| Value::from(s.as_str()))
                .collect::<Vec<_>>(),
        )
        .to_string();
        let mut attempts = 0;
        while !p.post("user.onlinestatus", &body) {
            attempts += 1;
            if attempts >= RETRIES || stop.load(Relaxed) {
                p.stats.dropped.fetch_add(batch.len() as u64, Relaxed);
                log::warn!(
                    "webhook user.onlinestatus: dropped a batch of {} after {attempts} failures",
                    batch.len()
                );
                break;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

fn run_notify(p: &Poster, rx: &Inbox<Value>, stop: &AtomicBool) {
    // Messages waiting to go, with their failure counts and sizes; failed ones go back to
    // the front.
    let mut pending: std::collections::VecDeque<(Value, u32, usize)> =
        std::collections::VecDeque::new();
    while !stop.load(Relaxed) {
        let deadline = Instant::now() + NOTIFY_INTERVAL;
        while pending.len() < NOTIFY_BATCH {
            match rx.recv_deadline(deadline) {
                Some((m, size)) => pending.push_back((m, 0, size)),
                None => break,
            }
        }
        if pending.is_empty() {
            continue;
        }
        let n = pending.len().min(NOTIFY_BATCH);
        let body = Value::from(
            pending
                .iter()
                .take(n)
                .map(|(m, _, _)| m.clone())
                .collect::<Vec<_>>(),
        )
        .to_string();
        if p.post("msg.notify", &body) {
            pending.drain(..n);
            continue;
        }
        let mut kept = std::collections::VecDeque::new();
        for (m, failures, size) in pending.drain(..n) {
            if failures + 1 < RETRIES {
                kept.push_back((m, failures + 1, size));
            } else {
                p.stats.dropped.fetch_add(1, Relaxed);
            }
        }
        kept.extend(pending.drain(..));
        let mut bytes: usize = kept.iter().map(|(_, _, size)| size).sum();
        while kept.len() > RETRY_BUFFER || bytes > RETRY_BYTES {
            let Some((_, _, size)) = kept.pop_back() else {
                break;
            };
            bytes -= size;
            p.stats.dropped.fetch_add(1, Relaxed);
        }
        pending = kept;
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn run_offline(p: &Poster, rx: &Inbox<Value>, stop: &AtomicBool) {
    while !stop.load(Relaxed) {
        let Some((m, _)) = rx.recv_timeout(IDLE_POLL) else {
            continue;
        };
        // Fire and forget, as the reference does: the app server retries APNs/FCM itself.
        p.post("msg.offline", &m.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_refuses_past_its_bytes_and_frees_what_is_taken() {
        let (tx, rx) = outbox::<u32>();
        let big = message_event_bytes(1 << 20); // a 1 MiB payload, as base64
        let fit = QUEUE_BYTES / big;
        for i in 0..fit {
            assert!(tx.try_send(i as u32, big), "event {i} of {fit} refused");
        }
        assert!(!tx.try_send(99, big), "past the byte bound");
        assert!(tx.try_send(100, 16), "small events still fit");
        assert!(rx.try_recv().is_some());
        assert!(tx.try_send(101, big), "taking one frees its bytes");
    }
}
