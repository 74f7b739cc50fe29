//! A node's side of the message path while another node leads (`storage/postgres/leader.rs`):
//! its clients' SENDs and its loops' lane jobs go to the leader, and what the leader
//! commits comes back to be delivered to this node's connections.
//!
//! # Sends
//! A forwarded send's reply (the SENDACK to write, the HTTP caller to answer) waits here
//! under a token until the leader's outcome comes back. One that cannot be forwarded (no
//! leader known, NATS away, the outbox full) is refused at once with reason 15, and one
//! not answered within [`SEND_TIMEOUT`] is answered 15: the client sends it again, and the
//! leader's dedupe window answers a resend of a message it did store with its id and seq.
//!
//! # Lane jobs
//! Requeues and delivered marks must not be lost (`storage/writer.rs`), and core NATS may
//! lose a publication: each is kept in a spool, numbered, until the leader acknowledges
//! it, and sent again every [`LANE_RESEND`] meanwhile, to whoever leads by then. Both
//! jobs are idempotent at the writer, so a resend after a lost acknowledgement is
//! harmless. The spool holds what this node's sessions held, like the writer's lane.
//!
//! # Deliveries
//! The leader's commit batches arrive on the bus thread, which hands them to the relay's
//! own thread through a bounded queue ([`INBOUND`]); that thread looks this node's
//! connections up and posts to the loops, blocking when a loop is full as the writer does
//! on the leader. A batch number skipped (lost on the bus, or the queue full) means some
//! messages will never be pushed here: every client of this node is closed, without
//! DISCONNECT, so it reconnects and syncs what it missed (CLUSTER.md invariant 4).

use super::bus::Publisher;
use super::wire::{self, CommitBatch, LaneFwd, Outcomes, SendFwd, WireLane};
use crate::channel::SendRequest;
use crate::gateway::ToLoop;
use crate::message::{Committed, Reply, SendOutcome, Target};
use crate::shared::{Shared, SharedRef};
use crate::storage::postgres::leader::Leader;
use crate::storage::writer::{Job, LaneJob};
use ruyi_proto::types::reason;
use ruyi_reactor::ConnId;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A forwarded send not answered within this is answered 15.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// How often an unacknowledged lane job is sent again.
pub const LANE_RESEND: Duration = Duration::from_secs(1);

/// Bus messages waiting for the relay's thread, at most.
pub const INBOUND: usize = 4096;

/// Lane jobs per bus message at most.
const LANE_CHUNK: usize = 256;

/// What the bus thread hands the relay's thread.
#[derive(Debug)]
pub enum Inbound {
    Outcomes(Outcomes),
    Commit(CommitBatch),
    /// `/user/device_quit` on another node: close these devices here.
    Quit(super::presence::Quit),
}

/// The relay (module docs).
#[derive(Debug)]
pub struct Relay {
    me: u16,
    name: String,
    publisher: Publisher,
    leader: Arc<Leader>,
    next: AtomicU64,
    pending: Mutex<HashMap<u64, (Reply, Instant)>>,
    /// HTTP workers waiting for the leader's answer, by token.
    http_waiting: Mutex<HashMap<u64, crossbeam_channel::Sender<(u16, String)>>>,
    /// Lane jobs not yet acknowledged: number → (job, when last sent).
    spool: Mutex<BTreeMap<u64, (WireLane, Option<Instant>)>>,
    inbound: crossbeam_channel::Sender<Inbound>,
    /// Set when the inbound queue refused a batch: the next batch is a gap.
    lost: AtomicBool,
    /// Batches found missing (each closed this node's clients).
    pub gaps: AtomicU64,
    /// Forwarded sends answered 15 for want of an outcome.
    pub timeouts: AtomicU64,
}

impl Relay {
    /// Node `me`'s relay, and the receiving end for [`run`].
    pub fn new(
        me: u16,
        name: &str,
        publisher: Publisher,
        leader: Arc<Leader>,
    ) -> (Relay, crossbeam_channel::Receiver<Inbound>) {
        let (inbound, rx) = crossbeam_channel::bounded(INBOUND);
        let relay = Relay {
            me,
            name: name.to_owned(),
            publisher,
            leader,
            next: AtomicU64::new(1),
            pending: Mutex::default(),
            http_waiting: Mutex::default(),
            spool: Mutex::default(),
            inbound,
            lost: AtomicBool::new(false),
            gaps: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
        };
        (relay, rx)
    }

    /// Forwards `request` to the leader; never blocks. `Err` gives the reply back when it
    /// cannot be forwarded (module docs): the caller answers 15.
    pub fn forward_send(&self, request: SendRequest) -> Result<(), Reply> {
        let Some(leader) = self.leader.get().filter(|&l| l != self.me) else {
            return Err(request.reply);
        };
        let token = self.next.fetch_add(1, Relaxed);
        let payload = wire::encode(&SendFwd::new(self.me, token, &request));
        lock(&self.pending).insert(token, (request.reply, Instant::now()));
        if self
            .publisher
            .try_publish(wire::node_subject(&self.name, leader, "send"), payload)
        {
            return Ok(());
        }
        match lock(&self.pending).remove(&token) {
            Some((reply, _)) => Err(reply),
            None => Ok(()), // answered meanwhile (cannot happen before a publish; harmless)
        }
    }

    /// Runs an HTTP API call on the leader and waits for its answer, at most
    /// `http::BACKEND_TIMEOUT` (HTTP workers only: it blocks).
    pub fn forward_http(&self, req: &crate::http::HttpRequest) -> (u16, String) {
        let unavailable = |why: &str| (503, crate::http::error_body(503, why));
        let Some(leader) = self.leader.get().filter(|&l| l != self.me) else {
            return unavailable("the cluster has no leader now");
        };
        let token = self.next.fetch_add(1, Relaxed);
        let (tx, rx) = crossbeam_channel::bounded(1);
        lock(&self.http_waiting).insert(token, tx);
        let fwd = wire::HttpFwd {
            origin: self.me,
            token,
            method: req.method.clone(),
            path: req.path.clone(),
            query: req.query.clone(),
            body: req.body.clone(),
        };
        let sent = self.publisher.try_publish(
            wire::node_subject(&self.name, leader, "http"),
            wire::encode(&fwd),
        );
        let answer = if sent {
            rx.recv_timeout(crate::http::BACKEND_TIMEOUT).ok()
        } else {
            None
        };
        lock(&self.http_waiting).remove(&token);
        answer.unwrap_or_else(|| unavailable("the cluster's leader did not answer"))
    }

    /// From the bus thread: the leader's answer to a forwarded HTTP call.
    pub fn on_http_answer(&self, answer: wire::HttpAnswer) {
        if let Some(tx) = lock(&self.http_waiting).remove(&answer.token) {
            let _ = tx.try_send((answer.status, answer.body));
        }
    }

    /// Spools a lane job for the leader and sends what is due; never blocks.
    pub fn forward_lane(&self, shared: &Shared, job: &LaneJob) {
        let id = self.next.fetch_add(1, Relaxed);
        lock(&self.spool).insert(id, (job.into(), None));
        self.flush_lane(shared);
    }

    /// Sends the spooled lane jobs that are due: to the local writer when this node leads
    /// now, else to the leader.
    fn flush_lane(&self, shared: &Shared) {
        let leader = self.leader.get();
        let mut spool = lock(&self.spool);
        if leader == Some(self.me) {
            for (_, (job, _)) in std::mem::take(&mut *spool) {
                let _ = shared.writer.send_lane(Job::Lane(job.into()));
            }
            return;
        }
        let Some(leader) = leader else { return };
        let now = Instant::now();
        let due: Vec<(u64, WireLane)> = spool
            .iter_mut()
            .filter(|(_, (_, sent))| sent.is_none_or(|at| now - at >= LANE_RESEND))
            .map(|(&id, (job, sent))| {
                *sent = Some(now);
                (id, job.clone())
            })
            .collect();
        drop(spool);
        for chunk in due.chunks(LANE_CHUNK) {
            let fwd = LaneFwd {
                origin: self.me,
                jobs: chunk.to_vec(),
            };
            self.publisher.try_publish(
                wire::node_subject(&self.name, leader, "lane"),
                wire::encode(&fwd),
            );
        }
    }

    /// The leader took these lane jobs.
    pub fn on_lane_ack(&self, ids: &[u64]) {
        let mut spool = lock(&self.spool);
        for id in ids {
            spool.remove(id);
        }
    }

    /// From the bus thread: queue `item` for the relay's thread, never blocking.
    pub fn hand_over(&self, item: Inbound) {
        if let Err(crossbeam_channel::TrySendError::Full(Inbound::Commit(_))) =
            self.inbound.try_send(item)
        {
            self.lost.store(true, Relaxed);
        }
    }

    /// Lane jobs waiting for the leader's acknowledgement.
    pub fn spooled(&self) -> usize {
        lock(&self.spool).len()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn failed() -> SendOutcome {
    SendOutcome {
        message_id: 0,
        message_seq: 0,
        reason: reason::SYSTEM_ERROR,
    }
}

/// The relay's thread: outcomes, deliveries, timeouts, lane resends, until the server
/// stops.
pub fn run(shared: SharedRef, rx: crossbeam_channel::Receiver<Inbound>) {
    let Some(cluster) = shared.cluster.get() else {
        return;
    };
    let relay = &cluster.relay;
    let mut pusher = crate::pusher::Pusher::relaying(Arc::clone(&shared));
    // (leader, incarnation, number) of the last commit batch seen.
    let mut last: Option<(u16, i64, u64)> = None;
    let mut next_sweep = Instant::now();
    while !shared.is_stopping() {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(Inbound::Outcomes(out)) => {
                for (token, message_id, message_seq, code) in out.items {
                    let Some((reply, _)) = lock(&relay.pending).remove(&token) else {
                        continue; // timed out already
                    };
                    let outcome = SendOutcome {
                        message_id,
                        message_seq,
                        reason: code,
                    };
                    shared.reply(reply, outcome);
                }
            }
            Ok(Inbound::Commit(batch)) => {
                let gap = relay.lost.swap(false, Relaxed)
                    || last.is_some_and(|(l, i, n)| {
                        l == batch.leader && i == batch.incarnation && batch.number != n + 1
                    });
                last = Some((batch.leader, batch.incarnation, batch.number));
                if gap {
                    resync(&shared, relay);
                }
                deliver(&shared, relay.me, batch, &mut pusher);
            }
            Ok(Inbound::Quit(quit)) => shared.kick_devices(&quit.uid, quit.device_flag),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
        }
        if Instant::now() >= next_sweep {
            next_sweep = Instant::now() + Duration::from_millis(100);
            let expired: Vec<Reply> = {
                let mut pending = lock(&relay.pending);
                let old: Vec<u64> = pending
                    .iter()
                    .filter(|(_, (_, at))| at.elapsed() >= SEND_TIMEOUT)
                    .map(|(&t, _)| t)
                    .collect();
                old.iter()
                    .filter_map(|t| pending.remove(t))
                    .map(|(r, _)| r)
                    .collect()
            };
            for reply in expired {
                relay.timeouts.fetch_add(1, Relaxed);
                shared.reply(reply, failed());
            }
            relay.flush_lane(&shared);
        }
    }
}

/// A batch was lost: close every client here so each reconnects and syncs (module docs).
fn resync(shared: &SharedRef, relay: &Relay) {
    relay.gaps.fetch_add(1, Relaxed);
    let conns = shared.registry.all_conns();
    log::warn!(
        "cluster: a commit batch from the leader was lost; closing {} client connections so \
         they resync",
        conns.len()
    );
    for conn in conns {
        let _ = shared.loops().for_conn(conn).post(ToLoop::Kick {
            conn,
            notify: false,
            code: reason::SYSTEM_ERROR,
            reason: String::new(),
            after: Duration::ZERO,
        });
    }
}

/// Delivers a commit batch to this node's connections.
fn deliver(shared: &SharedRef, me: u16, batch: CommitBatch, pusher: &mut crate::pusher::Pusher) {
    let mut committed = Vec::with_capacity(batch.messages.len());
    let mut conns: Vec<ConnId> = Vec::new();
    for d in batch.messages {
        let slots = d.queue_slots();
        let sender = d.origin.filter(|(n, _)| *n == me).map(|(_, c)| c.into());
        // Tick before the lookup (registry invariants), as the leader's worker does.
        let push_no = shared.registry.clock.tick();
        let recipients: Arc<[String]> = d.recipients.into();
        let mut targets = Vec::new();
        for (index, uid) in recipients.iter().enumerate() {
            conns.clear();
            shared.registry.conns_of(uid, &mut conns);
            targets.extend(
                conns
                    .iter()
                    .filter(|&&c| Some(c) != sender)
                    .map(|&conn| Target {
                        conn,
                        recipient: index as u32,
                    }),
            );
        }
        if targets.is_empty() {
            continue;
        }
        let message: crate::message::Message = d.message.into();
        let outcome = SendOutcome {
            message_id: message.message_id,
            message_seq: message.message_seq,
            reason: reason::SUCCESS,
        };
        committed.push(Committed {
            message: Arc::new(message),
            targets,
            recipients,
            slots,
            push_no,
            queued: d.queued,
            webhook_offline: Vec::new(),
            reply: Reply::None,
            outcome,
            duplicate: false,
        });
    }
    if !committed.is_empty() {
        use crate::storage::append::Outlet;
        pusher.push(committed);
    }
}
