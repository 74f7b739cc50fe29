//! The leader's side of the message path: it takes the SENDs and lane jobs other nodes
//! forward, answers their sends, and tells every node what each commit holds.
//!
//! # Order and loss
//! One [`CommitBatch`] per commit goes to every node on `<c>.deliver`, published from the
//! writer's thread in commit order over this node's one NATS connection, which keeps a
//! publisher's order: each node delivers a channel's messages in seq order. Core NATS may
//! still drop one (a slow subscriber, a reconnect): batches are numbered, and a node that
//! sees a number skipped resyncs its clients (`relay.rs`). Nothing here waits: a full
//! outbox or NATS away drops the publication (counted), which is then such a gap.

use super::bus::Publisher;
use super::relay::lock;
use super::wire::{
    self, CommitBatch, LaneAck, LaneFwd, Outcomes, PledgeRecord, PledgedMessage, SendFwd,
    WireDelivery, WireMessage,
};
use crate::channel::ChannelJob;
use crate::message::{Committed, Reply, SendOutcome};
use crate::shared::Shared;
use crate::storage::tx::PledgeWrite;
use ruyi_proto::types::reason;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// The leader's side (module docs). Every node has one; it acts while the node leads.
#[derive(Debug)]
pub struct Lead {
    me: u16,
    incarnation: i64,
    name: String,
    publisher: Publisher,
    /// Commit batches numbered so far.
    number: AtomicU64,
    /// Forwarded sends refused because the channel worker's queue was full.
    pub busy: AtomicU64,
    /// Outcomes of the commit being pushed, by origin node.
    held: std::sync::Mutex<std::collections::HashMap<u16, Outcomes>>,
    /// Seqs reserved for devices on other nodes, until they handled the batch.
    pub pledges: super::pledges::Pledges,
    /// What each node reported handling of each leader's batches.
    pub reports: super::inherit::Reports,
    /// When to prune this leader's pledge records in PostgreSQL.
    pub records: super::inherit::Records,
}

impl Lead {
    /// The side of node `me` (incarnation `incarnation`) in cluster `name`.
    pub fn new(me: u16, incarnation: i64, name: &str, publisher: Publisher) -> Lead {
        Lead {
            me,
            incarnation,
            name: name.to_owned(),
            publisher,
            number: AtomicU64::new(0),
            busy: AtomicU64::new(0),
            held: std::sync::Mutex::default(),
            pledges: super::pledges::Pledges::default(),
            reports: super::inherit::Reports::default(),
            records: super::inherit::Records::default(),
        }
    }

    /// Answers node `node`'s forwarded send `token`.
    pub fn answer(&self, node: u16, token: u64, outcome: SendOutcome) {
        let out = Outcomes {
            items: vec![(
                token,
                outcome.message_id,
                outcome.message_seq,
                outcome.reason,
            )],
        };
        self.publisher.try_publish(
            wire::node_subject(&self.name, node, "outcome"),
            wire::encode(&out),
        );
    }

    /// Holds node `node`'s outcome for `token` until [`Lead::send_answers`]: one bus
    /// message per node per commit instead of one per send (the writer's thread).
    pub fn answer_later(&self, node: u16, token: u64, outcome: SendOutcome) {
        let item = (
            token,
            outcome.message_id,
            outcome.message_seq,
            outcome.reason,
        );
        lock(&self.held).entry(node).or_default().items.push(item);
    }

    /// Sends the held outcomes, one bus message per node.
    pub fn send_answers(&self) {
        let held = std::mem::take(&mut *lock(&self.held));
        for (node, out) in held {
            self.publisher.try_publish(
                wire::node_subject(&self.name, node, "outcome"),
                wire::encode(&out),
            );
        }
    }

    /// A SEND forwarded to this node: into the channel's worker, as a local one, without
    /// waiting (the bus thread must not block: a full queue answers 15 at once).
    pub fn on_send(&self, shared: &Shared, fwd: SendFwd) {
        let (node, token) = (fwd.origin, fwd.token);
        let reply = Reply::Remote {
            node,
            token,
            conn: fwd.conn,
        };
        let request = fwd.into_request(reply);
        let queue = shared.channel_queue(&request.key);
        if queue.try_send(ChannelJob::Send(Box::new(request))).is_err() {
            self.busy.fetch_add(1, Relaxed);
            let outcome = SendOutcome {
                message_id: 0,
                message_seq: 0,
                reason: reason::SYSTEM_ERROR,
            };
            self.answer(node, token, outcome);
        } else {
            shared.counters.sends_in.fetch_add(1, Relaxed);
        }
    }

    /// Lane jobs forwarded to this node: into the writer's lane (never refused), then
    /// acknowledged, so the origin stops resending them. Taken means as safe as this
    /// node's own lane jobs: the lane is in memory until its batch commits.
    pub fn on_lane(&self, shared: &Shared, fwd: LaneFwd) {
        let mut ids = Vec::with_capacity(fwd.jobs.len());
        for (id, mut job) in fwd.jobs {
            if matches!(job, wire::WireLane::Inherit { .. }) {
                // Only the leader that read a record runs it: from the bus it could delete
                // any record. Acknowledged, so the sender stops resending it.
                log::warn!(
                    "cluster: node {} forwarded an inherit job; ignored",
                    fwd.origin
                );
                ids.push(id);
                continue;
            }
            // A seq reserved by an earlier leader is safe only against what that leader
            // showed clients (`storage/exposure.rs`), which this one does not know: such a
            // miss goes to the end of the user's queue, as a late one does.
            if let wire::WireLane::Requeue {
                message, reserved, ..
            } = &mut job
            {
                if !shared.ids.made_here(message.message_id) {
                    *reserved = 0;
                }
            }
            let job = crate::storage::writer::Job::Lane(job.into());
            if shared.writer.send_lane(job).is_err() {
                return; // stopping: the origin resends to the next leader
            }
            ids.push(id);
        }
        self.publisher.try_publish(
            wire::node_subject(&self.name, fwd.origin, "laneack"),
            wire::encode(&LaneAck { ids }),
        );
    }

    /// An HTTP API call forwarded to this node: to the HTTP workers without waiting (a
    /// full queue answers 503 at once); the worker answers with [`Lead::answer_http`].
    pub fn on_http(&self, shared: &Shared, fwd: wire::HttpFwd) {
        let (node, token) = (fwd.origin, fwd.token);
        let request = crate::http::HttpRequest {
            conn: ruyi_reactor::ConnId::new(0, 0, 0),
            method: fwd.method,
            path: fwd.path,
            query: fwd.query,
            body: fwd.body,
            keep_alive: true,
            cors: None,
            peer: None,
            remote: Some((node, token)),
        };
        if shared.http.try_send(request).is_err() {
            let body = crate::http::error_body(503, "the leader is busy");
            self.answer_http(node, token, 503, body);
        }
    }

    /// Answers node `node`'s forwarded HTTP call `token`. An answer too large for one bus
    /// message becomes a 503 that says so, at once (the caller would otherwise wait for
    /// an answer that can never arrive).
    pub fn answer_http(&self, node: u16, token: u64, status: u16, body: String) {
        let (status, body) = if body.len() > wire::MAX_HTTP_BYTES {
            let why = format!(
                "the answer ({} bytes) is too large to cross the cluster's bus; ask the \
                 leader, node {}, directly",
                body.len(),
                self.me
            );
            (503, crate::http::error_body(503, &why))
        } else {
            (status, body)
        };
        let answer = wire::HttpAnswer {
            token,
            status,
            body,
        };
        self.publisher.try_publish(
            wire::node_subject(&self.name, node, "httpanswer"),
            wire::encode(&answer),
        );
    }

    /// One commit's delivery batches and, per batch, the seqs they reserve for devices on
    /// other nodes (`pledges.rs`). Built on the writer's thread before the commit's
    /// `COMMIT`, so its pledge record goes in the same transaction ([`Lead::pledge_write`]).
    pub fn build(&self, committed: &[&Committed], login_epoch: i64) -> Prepared {
        let mut prepared = Prepared {
            login_epoch,
            ..Prepared::default()
        };
        let (mut batch, mut pledged, mut bytes) = (Vec::new(), Vec::new(), 0);
        for c in committed {
            if c.duplicate || c.outcome.reason != reason::SUCCESS {
                continue;
            }
            for d in records(c) {
                let size = d.size();
                if !batch.is_empty() && bytes + size > BATCH_BYTES {
                    let full = (std::mem::take(&mut batch), std::mem::take(&mut pledged));
                    prepared.batches.push(full);
                    bytes = 0;
                }
                for &(i, node) in &d.expect {
                    let (seq, stored) = d.slots[i as usize];
                    if d.queued && seq > 0 && !stored {
                        let uid = d.recipients[i as usize].clone();
                        pledged.push((node, (uid, Arc::clone(&c.message), seq)));
                    }
                }
                bytes += size;
                batch.push(d);
            }
        }
        if !batch.is_empty() {
            prepared.batches.push((batch, pledged));
        }
        prepared
    }

    /// What the commit of `prepared` must write besides its messages: the record of its
    /// pledges, numbered as [`Lead::publish`] will number its batches (the writer's thread
    /// alone publishes, right after the `COMMIT`), and every few seconds the pruning of
    /// old records (`pledges.rs`, "Durable").
    pub fn pledge_write(
        &self,
        prepared: &Prepared,
        incarnation_of: &dyn Fn(u16) -> i64,
    ) -> Option<PledgeWrite> {
        let first = self.number.load(Relaxed) + 1;
        let mut record = PledgeRecord {
            leader: self.me,
            incarnation: self.incarnation,
            items: Vec::new(),
        };
        for (k, (_, pledged)) in prepared.batches.iter().enumerate() {
            let batch = first + k as u64;
            let mut at: std::collections::HashMap<(u16, i64), usize> = Default::default();
            for (node, (uid, message, _)) in pledged {
                let i = *at.entry((*node, message.message_id)).or_insert_with(|| {
                    record.items.push(PledgedMessage {
                        batch,
                        node: *node,
                        node_incarnation: incarnation_of(*node),
                        channel: (message.channel.id.clone(), message.channel.channel_type),
                        seq: message.message_seq,
                        message_id: message.message_id,
                        uids: Vec::new(),
                    });
                    record.items.len() - 1
                });
                record.items[i].uids.push(uid.clone());
            }
        }
        let last = first + prepared.batches.len().saturating_sub(1) as u64;
        let record = (!record.items.is_empty()).then(|| (wire::encode(&record).to_vec(), last));
        // Records whose pledges this leader still holds stay (`inherit.rs`).
        let prune_below = self
            .records
            .due()
            .then(|| self.pledges.keep_from().unwrap_or(first));
        (record.is_some() || prune_below.is_some()).then_some(PledgeWrite {
            node: i64::from(self.me),
            incarnation: self.incarnation,
            record,
            prune_below,
            forget: None,
        })
    }

    /// Publishes the batches of a committed [`Lead::build`], in order.
    pub fn publish(&self, shared: &Shared, prepared: Prepared) {
        let login_epoch = prepared.login_epoch;
        for (messages, pledged) in prepared.batches {
            self.publish_batch(shared, messages, pledged, login_epoch);
        }
    }

    fn publish_batch(
        &self,
        shared: &Shared,
        messages: Vec<WireDelivery>,
        pledged: Pledged,
        login_epoch: i64,
    ) {
        let number = self.number.fetch_add(1, Relaxed) + 1;
        let batch = CommitBatch {
            leader: self.me,
            incarnation: self.incarnation,
            number,
            login_epoch,
            messages,
        };
        let sent = if crate::fault::batch_muted(number) {
            true // lost on the bus, and nobody can tell (the failpoint's purpose)
        } else {
            self.publisher
                .try_publish(wire::deliver_subject(&self.name), wire::encode(&batch))
        };
        let mut by_node: std::collections::HashMap<u16, Vec<super::pledges::Pledge>> =
            Default::default();
        for (node, pledge) in pledged {
            by_node.entry(node).or_default().push(pledge);
        }
        for (node, pledges) in by_node {
            if sent {
                self.pledges.hold(shared, node, number, pledges);
            } else {
                // Refused (the outbox full, NATS away): no node will handle this batch.
                self.pledges.write_now(shared, Some(number), pledges);
            }
        }
    }

    /// The commit batches published so far (heartbeats carry it: `relay.rs`).
    pub fn batches(&self) -> u64 {
        crate::fault::batches_counted(self.number.load(Relaxed))
    }
}

/// One commit's delivery batches, built before its `COMMIT` ([`Lead::build`]): each
/// batch's deliveries, and the seqs they reserve, by node.
#[derive(Debug, Default)]
pub struct Prepared {
    batches: Vec<(Vec<WireDelivery>, Pledged)>,
    /// See [`CommitBatch::login_epoch`].
    login_epoch: i64,
}

/// The seqs one batch reserves, with the node each is for.
type Pledged = Vec<(u16, super::pledges::Pledge)>;

/// Bytes of deliveries per bus message at most: well under NATS' default `max_payload`
/// (1 MiB), so no publication is ever refused for its size.
pub const BATCH_BYTES: usize = 256 << 10;

/// A payload above this goes by reference (the nodes read it from storage).
const INLINE_PAYLOAD: usize = 64 << 10;

/// One committed message as delivery records: its recipients cut in pieces that each fit
/// in [`BATCH_BYTES`] (a group of 100,000 members is ~1.3 MB of uids), and a large payload
/// sent by reference. Each recipient's delivery is independent, so pieces change nothing.
fn records(c: &Committed) -> Vec<WireDelivery> {
    let by_reference = c.message.payload.len() > INLINE_PAYLOAD;
    let mut message = WireMessage::from(&*c.message);
    if by_reference {
        message.payload = bytes::Bytes::new();
    }
    let origin = match &c.reply {
        Reply::Remote {
            node,
            token,
            conn: Some(conn),
        } => Some((*node, *token, *conn)),
        _ => None,
    };
    // What a record holds besides its recipients: the payload and the message's strings.
    let room = BATCH_BYTES - INLINE_PAYLOAD - 4096;
    let weight = |uid: &String| uid.len() + 8;
    let mut out = Vec::new();
    let mut start = 0;
    while start < c.recipients.len() {
        let (mut end, mut used) = (start, 0);
        while end < c.recipients.len()
            && (end == start || used + weight(&c.recipients[end]) <= room)
        {
            used += weight(&c.recipients[end]);
            end += 1;
        }
        let expect = c
            .targets
            .iter()
            .filter_map(|t| Some((t.recipient as usize, t.remote_node()?)))
            .filter(|(i, _)| (start..end).contains(i))
            .map(|(i, node)| ((i - start) as u32, node))
            .collect();
        out.push(WireDelivery {
            expect,
            message: message.clone(),
            recipients: c.recipients[start..end].to_vec(),
            slots: (start..end)
                .map(|i| c.slots.get(i).map_or((0, false), |s| (s.seq, s.stored)))
                .collect(),
            queued: c.queued,
            origin,
            by_reference,
        });
        start = end;
    }
    out
}
