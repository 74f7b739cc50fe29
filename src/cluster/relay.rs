//! A node's side of the message path while another node leads (`storage/postgres/leader.rs`):
//! its clients' SENDs, its loops' lane jobs and its HTTP API calls go to the leader; what
//! the leader sends back is handled on the relay's thread (`inbound.rs`).
//!
//! # Sends
//! A forwarded send's reply (the SENDACK to write, the HTTP caller to answer) waits here
//! under a token until the leader's outcome comes back (or, without one, until
//! `inbound.rs` looks it up in storage). One that cannot be forwarded (no leader known,
//! NATS away, the outbox full) is refused at once with reason 15. Tokens start from the
//! node's incarnation ([`token_base`]), so a late answer meant for a previous process of
//! this node matches nothing.
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
//! thread through a bounded queue ([`INBOUND`]); a batch the queue refuses is a gap
//! (`inbound.rs`).

use super::bus::Publisher;
use super::wire::{self, CommitBatch, LaneFwd, Outcomes, SendFwd, WireLane};
use crate::channel::SendRequest;
use crate::message::Reply;
use crate::shared::Shared;
use crate::storage::postgres::leader::Leader;
use crate::storage::writer::{Job, LaneJob};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    /// The leader's heartbeat: (leader, incarnation, commit batches published so far).
    Mark(u16, i64, u64),
    /// `/user/device_quit` on another node: close these devices here.
    Quit(super::presence::Quit),
    /// A login on another node: close the devices here it replaces.
    Login(super::presence::Login),
}

/// Lane jobs not yet acknowledged: number → (job, when last sent), and the numbers not
/// sent yet.
#[derive(Debug, Default)]
struct Spool {
    jobs: BTreeMap<u64, (WireLane, Option<Instant>)>,
    fresh: Vec<u64>,
}

/// A forwarded send waiting for its outcome.
#[derive(Debug)]
pub struct Pending {
    pub reply: Reply,
    pub at: Instant,
    /// Where it is stored, by whom, under which number: how to find it in storage when
    /// its outcome does not come (`inbound.rs`).
    pub stored_in: crate::message::ChannelKey,
    pub from_uid: String,
    pub client_msg_no: String,
}

/// The relay (module docs).
#[derive(Debug)]
pub struct Relay {
    me: u16,
    name: String,
    publisher: Publisher,
    leader: Arc<Leader>,
    next: AtomicU64,
    /// The first token of this process ([`token_base`]).
    base: u64,
    pending: Mutex<HashMap<u64, Pending>>,
    /// HTTP workers waiting for the leader's answer, by token.
    http_waiting: Mutex<HashMap<u64, crossbeam_channel::Sender<(u16, String)>>>,
    /// Lane jobs not yet acknowledged.
    spool: Mutex<Spool>,
    inbound: crossbeam_channel::Sender<Inbound>,
    /// Set when the inbound queue refused a batch: the next batch is a gap.
    pub(super) lost: AtomicBool,
    /// Batches found missing (each closed this node's clients).
    pub gaps: AtomicU64,
    /// (leader, incarnation, highest batch handled, gaps seen so far) for the heartbeat
    /// (`pledges.rs`), set together so the leader never sees one without the other.
    pub handled: Mutex<Option<(u16, i64, u64, u64)>>,
    /// Forwarded sends answered 15 for want of an outcome.
    pub timeouts: AtomicU64,
}

impl Relay {
    /// Node `me`'s relay, and the receiving end for [`run`].
    pub fn new(
        me: u16,
        incarnation: i64,
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
            next: AtomicU64::new(token_base(incarnation)),
            base: token_base(incarnation),
            pending: Mutex::default(),
            http_waiting: Mutex::default(),
            spool: Mutex::default(),
            inbound,
            lost: AtomicBool::new(false),
            gaps: AtomicU64::new(0),
            handled: Mutex::default(),
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
        let pending = Pending {
            reply: request.reply,
            at: Instant::now(),
            stored_in: request.store_as.unwrap_or(request.key),
            from_uid: request.from_uid,
            client_msg_no: request.client_msg_no,
        };
        lock(&self.pending).insert(token, pending);
        if self
            .publisher
            .try_publish(wire::node_subject(&self.name, leader, "send"), payload)
        {
            return Ok(());
        }
        match lock(&self.pending).remove(&token) {
            Some(p) => Err(p.reply),
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
        if req.body.len() > wire::MAX_HTTP_BYTES {
            let why = format!(
                "a body over {} bytes cannot cross the cluster's bus; send it to the leader, \
                 node {leader}",
                wire::MAX_HTTP_BYTES
            );
            return (413, crate::http::error_body(413, &why));
        }
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

    /// Spools a lane job for the leader; never blocks. The relay's thread sends it within
    /// a few milliseconds, with the others spooled meanwhile (one bus message for many).
    pub fn forward_lane(&self, job: &LaneJob) {
        let id = self.next.fetch_add(1, Relaxed);
        let mut spool = lock(&self.spool);
        spool.jobs.insert(id, (job.into(), None));
        spool.fresh.push(id);
    }

    /// True when spooled lane jobs wait for their first sending.
    pub fn lane_waiting(&self) -> bool {
        !lock(&self.spool).fresh.is_empty()
    }

    /// Sends the spooled lane jobs not sent yet, and with `resend` those unacknowledged
    /// for [`LANE_RESEND`]: to the local writer when this node leads now, else to the
    /// leader.
    pub(super) fn flush_lane(&self, shared: &Shared, resend: bool) {
        let leader = self.leader.get();
        let mut spool = lock(&self.spool);
        if leader == Some(self.me) {
            spool.fresh.clear();
            for (_, (job, _)) in std::mem::take(&mut spool.jobs) {
                let _ = shared.writer.send_lane(Job::Lane(job.into()));
            }
            return;
        }
        let Some(leader) = leader else { return };
        let now = Instant::now();
        let Spool { jobs, fresh } = &mut *spool;
        let mut due: Vec<(u64, WireLane)> = Vec::new();
        for id in fresh.drain(..) {
            if let Some((job, sent)) = jobs.get_mut(&id) {
                *sent = Some(now);
                due.push((id, job.clone()));
            }
        }
        if resend {
            for (&id, (job, sent)) in jobs.iter_mut() {
                if sent.is_some_and(|at| now - at >= LANE_RESEND) {
                    *sent = Some(now);
                    due.push((id, job.clone()));
                }
            }
        }
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

    /// Tells the leader named in `seen` which of its batches this node handled, and the
    /// gaps seen so far (`pledges.rs`).
    pub fn tell_handled(&self, seen: (u16, i64, u64, u64)) {
        let handled = wire::Handled {
            node: self.me,
            seen,
        };
        self.publisher.try_publish(
            wire::node_subject(&self.name, seen.0, "handled"),
            wire::encode(&handled),
        );
    }

    /// The leader took these lane jobs.
    pub fn on_lane_ack(&self, ids: &[u64]) {
        let mut spool = lock(&self.spool);
        for id in ids {
            spool.jobs.remove(id);
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

    /// Takes the forwarded send `token` waiting for its outcome.
    pub fn take_pending(&self, token: u64) -> Option<Pending> {
        lock(&self.pending).remove(&token)
    }

    /// Takes the forwarded sends waiting for longer than `wait`.
    pub fn take_expired(&self, wait: Duration) -> Vec<Pending> {
        let mut pending = lock(&self.pending);
        let old: Vec<u64> = pending
            .iter()
            .filter(|(_, p)| p.at.elapsed() >= wait)
            .map(|(&t, _)| t)
            .collect();
        old.iter().filter_map(|t| pending.remove(t)).collect()
    }

    /// This node's id.
    pub fn me(&self) -> u16 {
        self.me
    }

    /// True when `token` was issued by this process (not a previous one of this node).
    pub fn issued_here(&self, token: u64) -> bool {
        issued_by(token, self.base)
    }

    /// Lane jobs waiting for the leader's acknowledgement.
    pub fn spooled(&self) -> usize {
        lock(&self.spool).jobs.len()
    }
}

/// The first token of a process: its node's incarnation in the high half, so an answer
/// meant for this node's previous process (restarted since) matches nothing here.
pub fn token_base(incarnation: i64) -> u64 {
    ((incarnation as u64 & 0xffff_ffff) << 32) | 1
}

/// True when `token` was issued by the process whose first token is `base`.
pub fn issued_by(token: u64, base: u64) -> bool {
    token >> 32 == base >> 32
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
