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
//! # Work that may not be lost
//! Requeues and delivered marks ([`LaneJob`]) come from the loops on the mailbox's
//! unbounded lane, so they are never refused. Each runs under a savepoint: one that fails
//! does not fail the batch; it is kept and tried again with the next batch (at least every
//! [`IDLE_POLL`]), as is every lane job of a batch whose commit failed, for
//! [`LANE_GIVE_UP`] after its first failure, then logged as an error and counted
//! (`lane_dropped`). A batch takes at most half its room in lane jobs, so a burst of them
//! (a mass disconnect) cannot hold up SENDs.
//!
//! If SQLite rolled the whole transaction back under a savepoint (it may, on a full disk
//! or an I/O error), the batch fails at once: later statements would otherwise run
//! outside any transaction.
//!
//! The channel cache, the dedupe window and the offline-queue rules live in `channels.rs`,
//! `queue.rs` and `append.rs`.

use super::admin::AdminWrite;
use super::append::{store_message, Outlet};
use super::channels::{self, Channels};
use super::queue::{QueueShared, Queues};
use super::tx::{Batch, WriteStore};
use super::DbError;
use crate::mailbox::Mailbox;
use crate::message::{Committed, Message, Planned};
use crossbeam_channel::Sender;
use ruyi_proto::types::reason;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Polling period for the stop flag while idle, and for retrying failed lane jobs.
const IDLE_POLL: Duration = Duration::from_millis(100);

/// How long a lane job that keeps failing is retried before it is given up (logged and
/// counted): long enough for an operator to clear a full disk.
pub const LANE_GIVE_UP: Duration = Duration::from_secs(600);

/// Work for the writer.
pub enum Job {
    /// Store a message, assign its seq, fill offline queues.
    Message(Box<Planned>),
    /// Administrative writes (`admin.rs`), applied together under one savepoint, so they
    /// take effect together or not at all; the result goes back on `done`.
    Admin {
        /// The writes, in order.
        writes: Vec<AdminWrite>,
        /// Where to report (an error as text).
        done: Sender<Result<(), String>>,
    },
    /// Work from a loop that may not be lost (module docs).
    Lane(LaneJob),
    /// `/message/syncack`: raise a user's offline cursor (clamped, never lowered).
    SyncAck {
        /// The user.
        uid: String,
        /// New cursor.
        seq: u32,
        /// Where to report.
        done: Sender<Result<(), String>>,
    },
}

/// Offline-queue work from a loop (module docs).
#[derive(Clone, Debug)]
pub enum LaneJob {
    /// A delivery missed: its device went before acknowledging it (closed, replaced by a
    /// new login, out of retries, or the RECV left a full retry list) and no device that
    /// had it is left. Write the user's entry at `reserved` (0: none reserved).
    Requeue {
        /// The user.
        uid: String,
        /// The message (already stored).
        message: Arc<Message>,
        /// The seq reserved at commit (`message::QueueSlot`), or 0.
        reserved: u32,
    },
    /// A RECV that stands for a stored entry was acknowledged: mark it delivered.
    Delivered {
        /// The user.
        uid: String,
        /// The entry.
        seq: u32,
    },
    /// A new cluster leader writes what a predecessor's pledge record `row` still owes
    /// (`cluster/inherit.rs`): each (uid, message) to the end of the user's queue, and the
    /// record deleted in the same savepoint, so it goes only with its requeues.
    Inherit {
        row: i64,
        requeues: Vec<(String, Arc<Message>)>,
    },
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Job::Message(p) => write!(f, "Job::Message({:?})", p.message.channel),
            Job::Admin { writes, .. } => write!(f, "Job::Admin({writes:?})"),
            Job::SyncAck { uid, seq, .. } => write!(f, "Job::SyncAck({uid}, {seq})"),
            Job::Lane(job) => write!(f, "Job::Lane({job:?})"),
        }
    }
}

/// Whether storage commits: read by `/ready` and `/metrics`, written by the writer.
#[derive(Debug, Default)]
pub struct StorageHealth {
    /// The last batch's error, when the last batch failed; `None` after a commit.
    last_error: std::sync::Mutex<Option<String>>,
    /// Batches that failed and were rolled back.
    pub failed_batches: std::sync::atomic::AtomicU64,
    /// Time per batch, `BEGIN` to `COMMIT` returned (or the rollback).
    pub commit_seconds: crate::metrics::Histogram,
}

impl StorageHealth {
    /// The error of the last batch, if it failed (the newest commit decides).
    pub fn failing(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set(&self, error: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = error;
    }
}

/// How the writer is tuned (from `Config`).
#[derive(Clone, Copy, Debug)]
pub struct WriterSettings {
    /// Jobs per transaction at most.
    pub max_batch: usize,
    /// A commit starts at least this long after the previous one began (module docs).
    pub commit_interval: Duration,
    /// Offline-queue entries per user at most (`queue.rs`).
    pub max_queue_per_user: u32,
}

/// The writer thread's state.
#[allow(missing_debug_implementations)] // Holds the outlet and the store's connection.
pub struct Writer {
    store: Box<dyn WriteStore>,
    rx: Mailbox<Job>,
    outlet: Box<dyn Outlet>,
    settings: WriterSettings,
    channels: Channels,
    queues: Queues,
    /// Lane jobs that failed, with when they first failed; run first in the next batch.
    retry: Vec<(LaneJob, Instant)>,
    health: Arc<StorageHealth>,
    /// A lost store fails every batch until it is back: one line a second says so.
    failure_log: crate::logging::LogEvery,
    stopping: Arc<std::sync::atomic::AtomicBool>,
}

/// One applied job, waiting for the commit.
enum Applied {
    Message(Committed),
    Done(Sender<Result<(), String>>, Result<(), String>),
}

/// A job the failed batch never reached, kept so it can still be answered.
enum Unapplied {
    Message(crate::message::Reply, i64),
    Done(Sender<Result<(), String>>),
}

impl Writer {
    /// A writer over `store`.
    pub fn new(
        store: Box<dyn WriteStore>,
        rx: Mailbox<Job>,
        outlet: Box<dyn Outlet>,
        settings: WriterSettings,
        queue: Arc<QueueShared>,
        health: Arc<StorageHealth>,
        stopping: Arc<std::sync::atomic::AtomicBool>,
    ) -> Writer {
        Writer {
            store,
            rx,
            outlet,
            settings: WriterSettings {
                max_batch: settings.max_batch.max(1),
                ..settings
            },
            channels: channels::new_cache(),
            queues: Queues::new(settings.max_queue_per_user, queue),
            retry: Vec::new(),
            health,
            failure_log: crate::logging::LogEvery::new(Duration::from_secs(1)),
            stopping,
        }
    }

    /// Runs until the server stops (and the queue is empty) or every sender is dropped.
    pub fn run(mut self) {
        log::info!("storage writer started");
        let mut batch = Vec::with_capacity(self.settings.max_batch);
        // When the last commit began less than `commit_interval` ago, wait out the rest
        // before this one: the commit's fixed cost (the fsync, the WAL locks) is paid at
        // most once per interval and shared by everything that arrived meanwhile.
        let mut last_start = Instant::now();
        loop {
            let first = match self.rx.recv_timeout(IDLE_POLL) {
                Ok(job) => job,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    if !self.retry.is_empty() {
                        self.commit_batch(&mut batch);
                    }
                    if self.stopping.load(std::sync::atomic::Ordering::Acquire) {
                        break;
                    }
                    continue;
                }
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
            };
            batch.push(first);
            let since = last_start.elapsed();
            let max_batch = self.settings.max_batch;
            if since < self.settings.commit_interval && batch.len() + self.rx.len() < max_batch {
                std::thread::sleep(self.settings.commit_interval - since);
            }
            last_start = Instant::now();
            let mut lane_jobs = usize::from(matches!(batch.first(), Some(Job::Lane(_))));
            while batch.len() < max_batch {
                // Half the batch at most for lane jobs (module docs).
                let next = if lane_jobs < max_batch / 2 {
                    self.rx.try_recv()
                } else {
                    self.rx.try_recv_bounded()
                };
                match next {
                    Ok(job) => {
                        lane_jobs += usize::from(matches!(job, Job::Lane(_)));
                        batch.push(job);
                    }
                    Err(_) => break,
                }
            }
            self.commit_batch(&mut batch);
        }
        if !self.retry.is_empty() {
            log::error!(
                "storage writer stopping with {} offline-queue jobs that kept failing",
                self.retry.len()
            );
        }
        log::info!("storage writer stopped");
    }

    fn commit_batch(&mut self, batch: &mut Vec<Job>) {
        let jobs = batch.len();
        let mut applied = Vec::with_capacity(jobs);
        let mut unapplied = Vec::new();
        let mut lane_done = Vec::new();
        let mut out = Vec::with_capacity(jobs);
        let started = Instant::now();
        let result = self.apply(batch, &mut applied, &mut unapplied, &mut lane_done);
        self.health.commit_seconds.observe(started.elapsed());
        // Committed or rolled back: reads of the users it wrote behind may go on.
        self.queues.shared.exposure.settle();
        self.health
            .set(result.as_ref().err().map(ToString::to_string));
        if result.is_err() {
            self.health.failed_batches.fetch_add(1, Relaxed);
        }
        match result {
            Ok(()) => {
                self.queues.publish_counts();
                for a in applied {
                    match a {
                        Applied::Message(c) => out.push(c),
                        Applied::Done(done, r) => {
                            let _ = done.send(r);
                        }
                    }
                }
            }
            Err(e) => {
                self.queues.forget_counts();
                self.outlet.abandon();
                if let Some(held) = self.failure_log.allow() {
                    log::error!(
                        "storage {}: a batch of {jobs} jobs failed and was rolled back: {e} \
                         ({held} more failed batches not logged)",
                        self.store.name()
                    );
                }
                // Channel seqs handed out in this batch were never stored: forget them and
                // reload from the database, so a channel's seqs neither gap nor repeat.
                // Users' queue seqs stay issued (`queue.rs` invariants): a gap, harmless.
                self.channels.clear();
                // Lane work is tried again; everyone else gets an answer: SENDACK 15
                // (SystemError) for messages, an error for API writes. Nothing was stored.
                for (job, first_failed) in lane_done {
                    self.keep_for_retry(job, first_failed);
                }
                for a in applied {
                    match a {
                        Applied::Message(c) => out.push(Committed::failed(
                            c.reply,
                            c.outcome.message_id,
                            reason::SYSTEM_ERROR,
                        )),
                        Applied::Done(done, _) => {
                            let _ = done.send(Err(e.to_string()));
                        }
                    }
                }
                for job in unapplied {
                    match job {
                        Unapplied::Message(reply, id) => {
                            out.push(Committed::failed(reply, id, reason::SYSTEM_ERROR))
                        }
                        Unapplied::Done(done) => {
                            let _ = done.send(Err(e.to_string()));
                        }
                    }
                }
            }
        }
        if !out.is_empty() {
            self.outlet.push(out);
        }
        batch.clear();
    }

    fn keep_for_retry(&mut self, job: LaneJob, first_failed: Instant) {
        if first_failed.elapsed() >= LANE_GIVE_UP {
            self.queues.shared.stats.lane_dropped.fetch_add(1, Relaxed);
            log::error!("storage: gave up on {job:?} after {LANE_GIVE_UP:?} of failures");
        } else {
            self.retry.push((job, first_failed));
        }
    }

    /// Applies every job in one transaction and commits it. On error, every job not in
    /// `applied` is in `unapplied`, and every lane job tried is in `lane_done` (so the
    /// caller can answer or retry all of them). Lane jobs that failed on their own are
    /// already kept for retry.
    fn apply(
        &mut self,
        batch: &mut Vec<Job>,
        applied: &mut Vec<Applied>,
        unapplied: &mut Vec<Unapplied>,
        lane_done: &mut Vec<(LaneJob, Instant)>,
    ) -> Result<(), DbError> {
        let retries = std::mem::take(&mut self.retry);
        let mut retries = retries.into_iter();
        let mut failed_lane = Vec::new();
        let mut jobs = batch.drain(..);
        let (channels, queues, outlet) = (&mut self.channels, &mut self.queues, &mut self.outlet);
        let result = self.store.batch(&mut |b: &mut dyn Batch| {
            // Earlier failures first: they are older than anything in the batch.
            for (job, first_failed) in retries.by_ref() {
                match run_lane(b, channels, queues, &job) {
                    Ok(()) => lane_done.push((job, first_failed)),
                    Err(e) => {
                        log::warn!("storage: {job:?} failed again: {e}");
                        failed_lane.push((job, first_failed));
                        rolled_back(b, e)?;
                    }
                }
            }
            for job in jobs.by_ref() {
                match job {
                    Job::Message(mut planned) => {
                        let reply =
                            std::mem::replace(&mut planned.reply, crate::message::Reply::None);
                        let message_id = planned.message.message_id;
                        match store_message(b.tx(), channels, queues, *planned) {
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
                    Job::Admin { writes, done } => {
                        // Cached numbers and dedupe windows this write makes stale
                        // (channel deletion) go first; a failed write only reloads them.
                        for key in writes.iter().filter_map(AdminWrite::forgets) {
                            channels.remove(key);
                        }
                        let result =
                            b.savepoint(&mut |tx| writes.iter().try_for_each(|w| tx.admin(w)));
                        settle(b, done, result, applied)?;
                    }
                    Job::Lane(job) => match run_lane(b, channels, queues, &job) {
                        Ok(()) => lane_done.push((job, Instant::now())),
                        Err(e) => {
                            log::warn!("storage: {job:?} failed: {e}; will retry");
                            failed_lane.push((job, Instant::now()));
                            rolled_back(b, e)?;
                        }
                    },
                    Job::SyncAck { uid, seq, done } => {
                        let result = b.savepoint(&mut |tx| queues.sync_ack(tx, &uid, seq));
                        settle(b, done, result, applied)?;
                    }
                }
            }
            let messages: Vec<&Committed> = applied
                .iter()
                .filter_map(|a| match a {
                    Applied::Message(c) => Some(c),
                    Applied::Done(..) => None,
                })
                .collect();
            match outlet.before_commit(&messages) {
                Some(write) => b.tx().cluster_pledges(&write),
                None => Ok(()),
            }
        });
        for (job, first_failed) in failed_lane {
            self.keep_for_retry(job, first_failed);
        }
        if result.is_err() {
            // Retries the batch never reached are kept too.
            for (job, first_failed) in retries {
                lane_done.push((job, first_failed));
            }
            for job in jobs {
                match job {
                    Job::Message(p) => {
                        unapplied.push(Unapplied::Message(p.reply, p.message.message_id))
                    }
                    Job::Admin { done, .. } | Job::SyncAck { done, .. } => {
                        unapplied.push(Unapplied::Done(done))
                    }
                    Job::Lane(job) => lane_done.push((job, Instant::now())),
                }
            }
        }
        result
    }
}

/// Records a savepointed job's outcome for its caller; fails the batch when the store
/// rolled the whole transaction back (`rolled_back`).
fn settle(
    b: &dyn Batch,
    done: Sender<Result<(), String>>,
    result: Result<(), DbError>,
    applied: &mut Vec<Applied>,
) -> Result<(), DbError> {
    match result {
        Ok(()) => {
            applied.push(Applied::Done(done, Ok(())));
            Ok(())
        }
        Err(e) => {
            applied.push(Applied::Done(done, Err(e.to_string())));
            rolled_back(b, e)
        }
    }
}

/// After a savepoint failed with `e`: fine if only the savepoint was rolled back, but if
/// the store rolled back the whole transaction (module docs) the batch must fail with `e`.
fn rolled_back(b: &dyn Batch, e: DbError) -> Result<(), DbError> {
    if b.broken() {
        Err(e)
    } else {
        Ok(())
    }
}

/// Runs one lane job under a savepoint, so its failure leaves the batch intact.
fn run_lane(
    b: &mut dyn Batch,
    channels: &mut Channels,
    queues: &mut Queues,
    job: &LaneJob,
) -> Result<(), DbError> {
    b.savepoint(&mut |tx| match job {
        LaneJob::Requeue {
            uid,
            message,
            reserved,
        } => {
            let row = channels::state(tx, channels, &message.channel)?.row;
            let keep = message.channel.id.ends_with("____cmd");
            queues.requeue(tx, uid, (row, message.message_seq), *reserved, keep)
        }
        LaneJob::Delivered { uid, seq } => queues.mark_delivered(tx, uid, *seq),
        LaneJob::Inherit { row, requeues } => {
            for (uid, message) in requeues {
                let channel = channels::state(tx, channels, &message.channel)?.row;
                let keep = message.channel.id.ends_with("____cmd");
                queues.requeue(tx, uid, (channel, message.message_seq), 0, keep)?;
            }
            let forget = super::tx::PledgeWrite {
                forget: Some(*row),
                ..Default::default()
            };
            tx.cluster_pledges(&forget)
        }
    })
}
