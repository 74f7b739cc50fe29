//! The storage writer: the one thread that writes SQLite.
//!
//! It takes jobs from a bounded channel, as many as are waiting (up to `max_commit_batch`),
//! and applies them in **one transaction** (group commit): messages get their channel seq
//! here, in arrival order, so seqs are dense and ordered per channel; offline-queue entries
//! get per-user seqs in the same transaction, so a crash never leaves a stored message
//! without the queue entries it was promised. Only after `COMMIT` returns are outcomes
//! handed to the pusher (SENDACK, delivery), which runs on this thread.
//!
//! # Commit interval
//! A commit has a fixed cost whatever it holds (with `synchronous = FULL`, an fsync; the
//! WAL's locks and header; about 100 µs of CPU on the machine in BENCHMARKS.md) and a
//! small cost per message. Committing the moment a job arrives made every message pay the
//! fixed cost at moderate load (one commit per message at 5,000 sends/s: 40% of a core for
//! the writer alone). So a commit starts at least `commit_interval` (default 1 ms) after
//! the previous one began: at low load a message waits at most that long, and at high load
//! commits take longer than the interval and the writer never waits.
//!
//! # Invariants
//! - A channel's `last_seq` in the cache equals `MAX(seq)` in the database after every
//!   commit; after a failed commit the caches are dropped and reloaded from the database,
//!   so a failed batch leaves no gap and no duplicate.
//! - Per-user queue seqs never go backwards, even after `syncack` deleted old entries (the
//!   next seq is above both the entries and the cursor).
//!
//! # Dedupe
//! A resend of the same `client_msg_no` by the same sender in the same channel is answered
//! with the original id and seq and not stored again. The window is the last
//! [`DEDUPE_PER_CHANNEL`] messages of each cached channel, reloaded from the database when
//! a channel is first touched after a restart, so a resend after a server restart is caught
//! too.

use crate::mailbox::Mailbox;
use crate::message::{ChannelKey, Committed, Planned, SendOutcome};
use crossbeam_channel::Sender;
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use ruyi_proto::types::{channel_type, reason};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Recent (from_uid, client_msg_no) pairs remembered per channel for dedupe. The SDK
/// resends only what was in flight when its connection dropped, a handful of messages.
pub const DEDUPE_PER_CHANNEL: usize = 128;

/// Polling period for the stop flag while idle.
const IDLE_POLL: Duration = Duration::from_millis(100);

/// Channels and users whose numbers the writer caches before it starts over; a reload is a
/// couple of indexed queries, so this only bounds memory.
const CACHE_LIMIT: usize = 200_000;

/// An administrative write from the HTTP API, run inside the batch's transaction under a
/// savepoint so its failure does not fail the batch.
pub type ExecFn = Box<dyn FnOnce(&Connection) -> rusqlite::Result<()> + Send>;

/// Work for the writer.
pub enum Job {
    /// Store a message, assign its seq, fill offline queues.
    Message(Box<Planned>),
    /// An administrative write; the result goes back on `done`.
    Exec {
        /// The write.
        work: ExecFn,
        /// Where to report (an error as text).
        done: Sender<Result<(), String>>,
        /// A channel whose cached numbers and dedupe window this write makes stale
        /// (channel deletion); dropped from the cache after the write.
        forget: Option<ChannelKey>,
    },
    /// Queue a stored message for a user whose delivery missed (its device went away before
    /// the RECV was written or acknowledged, and no other device is online).
    Requeue {
        /// The user.
        uid: String,
        /// The message (already stored).
        message: Arc<crate::message::Message>,
    },
    /// Raise a user's offline cursor (never lowers it) and trim the queue below it.
    SyncAck {
        /// The user.
        uid: String,
        /// New cursor.
        seq: u32,
        /// Optional completion.
        done: Option<Sender<Result<(), String>>>,
    },
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Job::Message(p) => write!(f, "Job::Message({:?})", p.message.channel),
            Job::Exec { .. } => f.write_str("Job::Exec"),
            Job::SyncAck { uid, seq, .. } => write!(f, "Job::SyncAck({uid}, {seq})"),
            Job::Requeue { uid, message } => {
                write!(f, "Job::Requeue({uid}, {})", message.message_id)
            }
        }
    }
}

struct ChannelState {
    row: i64,
    last_seq: u32,
    /// Dedupe window: [`dedupe_key`] → (message id, seq).
    recent: HashMap<u64, (i64, u32)>,
    order: VecDeque<u64>,
}

/// A 64-bit FNV-1a hash of (from_uid, client_msg_no), so the dedupe window stores and looks
/// up a number instead of allocating two strings per message. Two different pairs share a
/// key with probability about 2^-57 within a 128-entry window.
fn dedupe_key(from: &str, client_msg_no: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in from
        .bytes()
        .chain(std::iter::once(0xFF))
        .chain(client_msg_no.bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl ChannelState {
    fn remember(&mut self, from: &str, client_msg_no: &str, id: i64, seq: u32) {
        if client_msg_no.is_empty() {
            return;
        }
        let key = dedupe_key(from, client_msg_no);
        if self.recent.insert(key, (id, seq)).is_none() {
            self.order.push_back(key);
            if self.order.len() > DEDUPE_PER_CHANNEL {
                if let Some(old) = self.order.pop_front() {
                    self.recent.remove(&old);
                }
            }
        }
    }

    fn recall(&self, from: &str, client_msg_no: &str) -> Option<(i64, u32)> {
        if client_msg_no.is_empty() {
            return None;
        }
        self.recent.get(&dedupe_key(from, client_msg_no)).copied()
    }
}

/// What the writer hands one commit's messages to, in commit order, once `COMMIT`
/// returned (the server's [`crate::pusher::Pusher`]).
pub type PusherTx = Box<dyn FnMut(Vec<Committed>) + Send>;

/// The writer thread's state.
#[allow(missing_debug_implementations)] // Holds a closure and a SQLite connection.
pub struct Writer {
    conn: Connection,
    rx: Mailbox<Job>,
    push: PusherTx,
    max_batch: usize,
    commit_interval: Duration,
    channels: HashMap<ChannelKey, ChannelState>,
    user_seqs: HashMap<String, u32>,
    stopping: Arc<std::sync::atomic::AtomicBool>,
}

/// One applied job, waiting for the commit.
enum Applied {
    Message(Committed),
    Done(Option<Sender<Result<(), String>>>, Result<(), String>),
}

impl Writer {
    /// A writer over `conn` (opened with `storage::open_writer`).
    pub fn new(
        conn: Connection,
        rx: Mailbox<Job>,
        push: PusherTx,
        max_batch: usize,
        commit_interval: Duration,
        stopping: Arc<std::sync::atomic::AtomicBool>,
    ) -> Writer {
        Writer {
            conn,
            rx,
            push,
            max_batch: max_batch.max(1),
            commit_interval,
            channels: HashMap::new(),
            user_seqs: HashMap::new(),
            stopping,
        }
    }

    /// Runs until the server stops (and the queue is empty) or every sender is dropped.
    pub fn run(mut self) {
        log::info!("storage writer started");
        let mut batch = Vec::with_capacity(self.max_batch);
        // When the last commit began less than `commit_interval` ago, wait out the rest
        // before this one: the commit's fixed cost (the fsync, the WAL locks) is paid at
        // most once per interval and shared by everything that arrived meanwhile.
        let mut last_start = Instant::now();
        loop {
            let first = match self.rx.recv_timeout(IDLE_POLL) {
                Ok(job) => job,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    if self.stopping.load(std::sync::atomic::Ordering::Acquire) {
                        break;
                    }
                    continue;
                }
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
            };
            batch.push(first);
            let since = last_start.elapsed();
            if since < self.commit_interval && batch.len() + self.rx.len() < self.max_batch {
                std::thread::sleep(self.commit_interval - since);
            }
            last_start = Instant::now();
            while batch.len() < self.max_batch {
                match self.rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            self.commit_batch(&mut batch);
            if self.channels.len() > CACHE_LIMIT {
                self.channels.clear(); // Reloaded per channel on next use.
            }
            if self.user_seqs.len() > CACHE_LIMIT {
                self.user_seqs.clear();
            }
        }
        log::info!("storage writer stopped");
    }

    fn commit_batch(&mut self, batch: &mut Vec<Job>) {
        let jobs = batch.len();
        let mut applied = Vec::with_capacity(jobs);
        let mut unapplied = Vec::new();
        let mut out = Vec::with_capacity(jobs);
        match self.apply(batch, &mut applied, &mut unapplied) {
            Ok(()) => {
                for a in applied {
                    match a {
                        Applied::Message(c) => out.push(c),
                        Applied::Done(Some(done), r) => {
                            let _ = done.send(r);
                        }
                        Applied::Done(None, _) => {}
                    }
                }
            }
            Err(e) => {
                log::error!("storage: a batch of {jobs} jobs failed and was rolled back: {e}");
                // Seqs handed out in this batch were never stored: forget every cached
                // number and reload from the database, so nothing gaps or repeats.
                self.channels.clear();
                self.user_seqs.clear();
                // Everyone in the batch gets an answer: SENDACK 15 (SystemError) for
                // messages, an error for API writes. Nothing was stored.
                let failed = |reply, message_id| Committed {
                    message: Arc::new(crate::message::Message::placeholder(message_id)),
                    online: Vec::new(),
                    recipients: Arc::from(Vec::new()),
                    queue_when_missed: false,
                    webhook_offline: Vec::new(),
                    user_seqs: HashMap::new(),
                    reply,
                    outcome: SendOutcome {
                        message_id,
                        message_seq: 0,
                        reason: reason::SYSTEM_ERROR,
                    },
                    duplicate: true, // nothing to deliver
                };
                for a in applied {
                    match a {
                        Applied::Message(c) => out.push(failed(c.reply, c.outcome.message_id)),
                        Applied::Done(Some(done), _) => {
                            let _ = done.send(Err(e.to_string()));
                        }
                        Applied::Done(None, _) => {}
                    }
                }
                for job in unapplied {
                    match job {
                        Unapplied::Message(reply, id) => out.push(failed(reply, id)),
                        Unapplied::Done(Some(done)) => {
                            let _ = done.send(Err(e.to_string()));
                        }
                        Unapplied::Done(None) => {}
                    }
                }
            }
        }
        if !out.is_empty() {
            (self.push)(out);
        }
        batch.clear();
    }

    /// Applies every job in one transaction and commits it. On error, every job not in
    /// `applied` is in `unapplied`, so the caller can answer all of them.
    fn apply(
        &mut self,
        batch: &mut Vec<Job>,
        applied: &mut Vec<Applied>,
        unapplied: &mut Vec<Unapplied>,
    ) -> rusqlite::Result<()> {
        let mut jobs = batch.drain(..);
        let result = (|| {
            let mut tx = self.conn.transaction()?;
            for job in jobs.by_ref() {
                match job {
                    Job::Message(mut planned) => {
                        let reply =
                            std::mem::replace(&mut planned.reply, crate::message::Reply::None);
                        let message_id = planned.message.message_id;
                        match store_message(&tx, &mut self.channels, &mut self.user_seqs, *planned)
                        {
                            Ok(mut committed) => {
                                committed.reply = reply;
                                applied.push(Applied::Message(committed));
                            }
                            Err(e) => {
                                unapplied.push(Unapplied::Message(reply, message_id));
                                return Err(e);
                            }
                        }
                    }
                    Job::Exec { work, done, forget } => {
                        if let Some(key) = forget {
                            self.channels.remove(&key);
                        }
                        let sp = tx.savepoint_with_name("exec")?;
                        let result = match work(&sp) {
                            Ok(()) => sp.commit().map_err(|e| e.to_string()),
                            Err(e) => Err(e.to_string()), // dropping `sp` rolls it back
                        };
                        applied.push(Applied::Done(Some(done), result));
                    }
                    Job::Requeue { uid, message } => {
                        if let Err(e) =
                            requeue(&tx, &mut self.channels, &mut self.user_seqs, &uid, &message)
                        {
                            unapplied.push(Unapplied::Done(None));
                            return Err(e);
                        }
                    }
                    Job::SyncAck { uid, seq, done } => {
                        if let Err(e) = sync_ack(&tx, &uid, seq) {
                            unapplied.push(Unapplied::Done(done));
                            return Err(e);
                        }
                        // The next queue seq must stay above the cursor (module invariant).
                        if let Some(cached) = self.user_seqs.get_mut(&uid) {
                            *cached = (*cached).max(seq);
                        }
                        applied.push(Applied::Done(done, Ok(())));
                    }
                }
            }
            tx.commit()
        })();
        if result.is_err() {
            for job in jobs {
                unapplied.push(match job {
                    Job::Message(p) => Unapplied::Message(p.reply, p.message.message_id),
                    Job::Exec { done, .. } => Unapplied::Done(Some(done)),
                    Job::SyncAck { done, .. } => Unapplied::Done(done),
                    Job::Requeue { .. } => Unapplied::Done(None),
                });
            }
        }
        result
    }
}

/// A job the failed batch never reached, kept so it can still be answered.
enum Unapplied {
    Message(crate::message::Reply, i64),
    Done(Option<Sender<Result<(), String>>>),
}

fn now_secs() -> i32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i32)
}

fn channel_state<'a>(
    tx: &Transaction<'_>,
    cache: &'a mut HashMap<ChannelKey, ChannelState>,
    key: &ChannelKey,
) -> rusqlite::Result<&'a mut ChannelState> {
    if !cache.contains_key(key) {
        tx.prepare_cached(
            "INSERT OR IGNORE INTO channels (channel_id, channel_type) VALUES (?1, ?2)",
        )?
        .execute(params![key.id, key.channel_type])?;
        let row: i64 = tx
            .prepare_cached("SELECT id FROM channels WHERE channel_id = ?1 AND channel_type = ?2")?
            .query_row(params![key.id, key.channel_type], |r| r.get(0))?;
        // A deleted channel's messages are gone but its seq is not reused: channels.last_seq
        // keeps the high-water mark (see `api::channel_delete`).
        let last_seq: u32 = tx
            .prepare_cached(
                "SELECT MAX((SELECT COALESCE(MAX(seq), 0) FROM messages WHERE channel = ?1),
                            (SELECT last_seq FROM channels WHERE id = ?1))",
            )?
            .query_row([row], |r| r.get(0))?;
        let mut state = ChannelState {
            row,
            last_seq,
            recent: HashMap::new(),
            order: VecDeque::new(),
        };
        let mut stmt = tx.prepare_cached(
            "SELECT from_uid, client_msg_no, message_id, seq FROM messages
             WHERE channel = ?1 AND seq > ?2 ORDER BY seq",
        )?;
        let recent = stmt.query_map(
            params![row, last_seq.saturating_sub(DEDUPE_PER_CHANNEL as u32)],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get(2)?,
                    r.get(3)?,
                ))
            },
        )?;
        for entry in recent {
            let (from, cmn, id, seq) = entry?;
            state.remember(&from, &cmn, id, seq);
        }
        cache.insert(key.clone(), state);
    }
    Ok(cache.get_mut(key).expect("inserted above"))
}

fn next_user_seq(
    tx: &Transaction<'_>,
    cache: &mut HashMap<String, u32>,
    uid: &str,
) -> rusqlite::Result<u32> {
    let last = match cache.get(uid) {
        Some(&s) => s,
        None => {
            let max_entry: u32 = tx
                .prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM offline WHERE uid = ?1")?
                .query_row([uid], |r| r.get(0))?;
            let cursor: u32 = tx
                .prepare_cached("SELECT cursor FROM offline_cursor WHERE uid = ?1")?
                .query_row([uid], |r| r.get(0))
                .optional()?
                .unwrap_or(0);
            max_entry.max(cursor)
        }
    };
    let next = last + 1;
    cache.insert(uid.to_owned(), next);
    Ok(next)
}

fn store_message(
    tx: &Transaction<'_>,
    channels: &mut HashMap<ChannelKey, ChannelState>,
    user_seqs: &mut HashMap<String, u32>,
    planned: Planned,
) -> rusqlite::Result<Committed> {
    let Planned {
        mut message,
        online,
        recipients,
        offline_uids,
        queue_when_missed,
        webhook_offline,
        reply,
    } = planned;
    if message.flags.no_persist() {
        // Never stored, no seq; delivered online only (PROTOCOL.md §2.1).
        let outcome = SendOutcome {
            message_id: message.message_id,
            message_seq: 0,
            reason: reason::SUCCESS,
        };
        return Ok(Committed {
            message: Arc::new(message),
            online,
            recipients,
            queue_when_missed: false,
            webhook_offline,
            user_seqs: HashMap::new(),
            reply,
            outcome,
            duplicate: false,
        });
    }
    let state = channel_state(tx, channels, &message.channel)?;
    if let Some((id, seq)) = state.recall(&message.from_uid, &message.client_msg_no) {
        return Ok(Committed {
            message: Arc::new(message),
            online: Vec::new(),
            recipients,
            queue_when_missed: false,
            webhook_offline: Vec::new(),
            user_seqs: HashMap::new(),
            reply,
            outcome: SendOutcome {
                message_id: id,
                message_seq: seq,
                reason: reason::SUCCESS,
            },
            duplicate: true,
        });
    }
    let seq = state.last_seq + 1;
    let row = state.row;
    message.message_seq = seq;
    message.timestamp = now_secs();
    tx.prepare_cached(
        "INSERT INTO messages (channel, seq, message_id, client_msg_no, from_uid, addressed_to, timestamp,
                               setting, flags, expire, topic, payload)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?
    .execute(params![
        row,
        seq,
        message.message_id,
        message.client_msg_no,
        message.from_uid,
        message.addressed_to,
        message.timestamp,
        message.setting,
        message.flags.0 & !ruyi_proto::Flags::DUP,
        message.expire,
        message.topic,
        &message.payload[..],
    ])?;
    state.last_seq = seq;
    state.remember(
        &message.from_uid,
        &message.client_msg_no,
        message.message_id,
        seq,
    );

    // Offline-queue entries, in the message's transaction (HTTP_API.md §7).
    let mut assigned = HashMap::new();
    for uid in &offline_uids {
        let user_seq = next_user_seq(tx, user_seqs, uid)?;
        tx.prepare_cached(
            "INSERT INTO offline (uid, seq, channel, channel_seq) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![uid, user_seq, row, seq])?;
        assigned.insert(uid.clone(), user_seq);
    }
    // Online RECVs of SyncOnce messages carry the per-user seq (v1 semantics), so RECVACK
    // and syncack speak of the same numbers; other RECVs carry the channel seq.
    let user_seqs = if message.flags.sync_once() {
        assigned
    } else {
        HashMap::new()
    };
    // Person chats get a conversation for both sides with their first message (PROTOCOL.md
    // §9.6); groups get theirs when subscribers are added.
    if message.channel.channel_type == channel_type::PERSON
        && seq == 1
        && !message.channel.id.ends_with("____cmd")
    {
        if let Some((a, b)) = message.channel.id.split_once('@') {
            let now = now_secs();
            for uid in [a, b] {
                tx.prepare_cached(
                    "INSERT OR IGNORE INTO conversations (uid, channel, read_to, deleted_at, updated_at)
                     VALUES (?1, ?2, 0, 0, ?3)",
                )?
                .execute(params![uid, row, now])?;
            }
        }
    }
    let message_id = message.message_id;
    Ok(Committed {
        message: Arc::new(message),
        online,
        recipients,
        queue_when_missed,
        webhook_offline,
        user_seqs,
        reply,
        outcome: SendOutcome {
            message_id,
            message_seq: seq,
            reason: reason::SUCCESS,
        },
        duplicate: false,
    })
}

/// Appends an already stored message to `uid`'s offline queue unless it is there already.
fn requeue(
    tx: &Transaction<'_>,
    channels: &mut HashMap<ChannelKey, ChannelState>,
    user_seqs: &mut HashMap<String, u32>,
    uid: &str,
    message: &crate::message::Message,
) -> rusqlite::Result<()> {
    let row = channel_state(tx, channels, &message.channel)?.row;
    let queued: bool = tx
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM offline WHERE uid = ?1 AND channel = ?2 AND channel_seq = ?3)")?
        .query_row(params![uid, row, message.message_seq], |r| r.get(0))?;
    if queued {
        return Ok(());
    }
    let user_seq = next_user_seq(tx, user_seqs, uid)?;
    tx.prepare_cached(
        "INSERT INTO offline (uid, seq, channel, channel_seq) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![uid, user_seq, row, message.message_seq])?;
    Ok(())
}

fn sync_ack(tx: &Transaction<'_>, uid: &str, seq: u32) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO offline_cursor (uid, cursor) VALUES (?1, ?2)
         ON CONFLICT (uid) DO UPDATE SET cursor = MAX(cursor, excluded.cursor)",
    )?
    .execute(params![uid, seq])?;
    tx.prepare_cached(
        "DELETE FROM offline WHERE uid = ?1 AND seq <= (SELECT cursor FROM offline_cursor WHERE uid = ?1)",
    )?
    .execute([uid])?;
    Ok(())
}
