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
use super::wire::{self, CommitBatch, LaneAck, LaneFwd, Outcomes, SendFwd, WireDelivery};
use crate::channel::ChannelJob;
use crate::message::{Committed, Reply, SendOutcome};
use crate::shared::Shared;
use ruyi_proto::types::reason;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

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
        for (id, job) in fwd.jobs {
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

    /// Answers node `node`'s forwarded HTTP call `token`.
    pub fn answer_http(&self, node: u16, token: u64, status: u16, body: String) {
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

    /// Tells every node what one commit holds (module docs). Called by the pusher on the
    /// writer's thread, before it routes the commit locally.
    pub fn publish_commit(&self, committed: &[Committed]) {
        let messages: Vec<WireDelivery> = committed
            .iter()
            .filter(|c| !c.duplicate && c.outcome.reason == reason::SUCCESS)
            .map(|c| WireDelivery {
                message: (&*c.message).into(),
                recipients: c.recipients.to_vec(),
                slots: c.slots.iter().map(|s| (s.seq, s.stored)).collect(),
                queued: c.queued,
                origin: match &c.reply {
                    Reply::Remote {
                        node,
                        conn: Some(conn),
                        ..
                    } => Some((*node, *conn)),
                    _ => None,
                },
            })
            .collect();
        if messages.is_empty() {
            return;
        }
        let batch = CommitBatch {
            leader: self.me,
            incarnation: self.incarnation,
            number: self.number.fetch_add(1, Relaxed) + 1,
            messages,
        };
        self.publisher
            .try_publish(wire::deliver_subject(&self.name), wire::encode(&batch));
    }
}
