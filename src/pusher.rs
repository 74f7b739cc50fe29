//! The pusher: after a commit, the SENDACKs (or HTTP answers) and the RECVs.
//!
//! It runs on the storage writer's thread, right after `COMMIT` returns, and does no I/O of
//! its own: it sorts each committed message's online connections by loop and hands every
//! loop **one** batch per commit (`LoopHandle::post_batch`), holding, in commit order, the
//! SENDACKs for its senders and one `Deliver` per message with that loop's receivers. The
//! loops encode (and encrypt) the RECVs themselves, since each connection's key lives
//! there. So a commit of a hundred messages costs each loop one inbox slot and at most one
//! wake-up, and no thread sits between storage and the loops (it used to be a thread of
//! its own: one more hand-off per message, which cost more CPU than the routing it did).
//!
//! Order: commands for one loop keep commit order, which is seq order within a channel.
//!
//! Re-check: the channel worker planned each message against the registry before storage
//! committed it. A recipient who had no device then, and so got a stored queue entry, may
//! have logged in since, and its first sync may have run before the commit: it is looked
//! up again here, after the commit, and any device it has now gets the RECV too (its
//! acknowledgement marks the entry delivered, so sync does not offer it again).
//!
//! Bound: a `Deliver` holds at most [`TARGETS_PER_DELIVER`] receivers (fewer for large
//! payloads: `message::deliver_weight`) and a batch at most [`POST_CHUNK`] commands, so a loop's
//! inbox holds at most its capacity times that many, and the writer blocks when it is full;
//! the loop counts each command's weight against its per-turn budget.

use crate::message::{Committed, Delivery, Target};
use crate::shared::SharedRef;
use crate::storage::append::Outlet;
use crate::storage::writer::LaneJob;
use crate::to_loop::ToLoop;
use ruyi_proto::types::reason;
use ruyi_reactor::ConnId;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

/// Commands per `post_batch` at most.
pub const POST_CHUNK: usize = 128;

/// Weight per `post_batch` at most: the loops' per-turn budget (`max_commands_per_turn`,
/// 1,024 by default), which a loop can only apply between batches.
pub const BATCH_WEIGHT: usize = 1024;

/// Receivers per `Deliver` at most: one group message to thousands of connections on one
/// loop is cut in pieces, so the loop can look at its sockets between them.
pub const TARGETS_PER_DELIVER: usize = 256;

/// `msg.notify` for every stored message, `msg.offline` for every sent one (NoPersist
/// included) when some recipients have no master device online (HTTP_API.md §9.3–9.4). Non-blocking: full webhook queues drop.
fn send_webhooks(hooks: &crate::webhook::Webhooks, c: &Committed, stored: bool, node_id: u16) {
    let m = &c.message;
    let size = crate::webhook::message_event_bytes(m.payload.len());
    if stored {
        hooks.notify(crate::http::message_json(m, None), size);
    }
    if !c.webhook_offline.is_empty() {
        let mut v = crate::http::message_json(m, None);
        v["channel_id"] = serde_json::json!(m.addressed_to);
        v["from_uid"] = serde_json::json!(m.from_uid);
        v["to_uids"] = serde_json::json!(c.webhook_offline);
        v["source_id"] = serde_json::json!(node_id);
        v["timestamp"] = serde_json::json!(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()));
        let uids: usize = c.webhook_offline.iter().map(|u| u.len() + 3).sum();
        hooks.offline(v, size + uids, !stored);
    }
}

/// Routes committed messages to the loops; owned by the writer thread.
#[allow(missing_debug_implementations)] // Scratch buffers only.
pub struct Pusher {
    shared: SharedRef,
    /// Delivering commits another node (the cluster's leader) made and reported: its
    /// webhooks and counters were the leader's business (`cluster/relay.rs`).
    relaying: bool,
    /// Per loop: the commands of the commit being routed.
    commands: Vec<Vec<ToLoop>>,
    /// Per loop: one message's receivers, reused.
    targets: Vec<Vec<Target>>,
    /// A cluster leader's delivery batches of the commit in progress, built before its
    /// `COMMIT` (`Outlet::before_commit`).
    prepared: Option<crate::cluster::lead::Prepared>,
}

impl Pusher {
    /// A pusher for the loops in `shared` (set before the writer starts).
    pub fn new(shared: SharedRef) -> Pusher {
        let loops = shared.loops().loops().len();
        Pusher {
            shared,
            relaying: false,
            commands: (0..loops).map(|_| Vec::new()).collect(),
            targets: vec![Vec::new(); loops],
            prepared: None,
        }
    }

    /// A pusher for the commits of the cluster's leader, on another node.
    pub fn relaying(shared: SharedRef) -> Pusher {
        Pusher {
            relaying: true,
            ..Pusher::new(shared)
        }
    }

    /// Answers and delivers one commit's messages, in commit order.
    fn push_commit(&mut self, committed: Vec<Committed>) {
        // The leader tells every node first: their deliveries and its own then start
        // together.
        // Built before the COMMIT (`Outlet::before_commit`, called for every commit); none
        // on a relaying pusher or a single node.
        if let (Some(cluster), Some(prepared)) = (self.shared.cluster.get(), self.prepared.take()) {
            cluster.lead.publish(&self.shared, prepared);
        }
        for c in committed {
            self.route(c);
        }
        if let Some(cluster) = self.shared.cluster.get() {
            cluster.lead.send_answers();
        }
        let loops = self.shared.loops().loops();
        for (handle, commands) in loops.iter().zip(self.commands.iter_mut()) {
            // Blocks while that loop's inbox is full: backpressure from the loops to
            // storage, on the writer thread, never on a loop. A batch is handled in one
            // turn, so it holds at most one turn's budget of weight.
            let mut queued = std::mem::take(commands).into_iter().peekable();
            while queued.peek().is_some() {
                let (mut batch, mut weight) = (Vec::new(), 0);
                while let Some(next) = queued.peek() {
                    let w = next.weight();
                    if !batch.is_empty() && (batch.len() == POST_CHUNK || weight + w > BATCH_WEIGHT)
                    {
                        break;
                    }
                    weight += w;
                    batch.extend(queued.next());
                }
                if let Err(batch) = handle.post_batch_or_return(batch) {
                    log::debug!(
                        "loop {} gone; its deliveries go to the queues",
                        handle.index()
                    );
                    queue_unposted(&self.shared, batch);
                    queue_unposted(&self.shared, queued.by_ref().collect());
                }
            }
        }
    }

    fn route(&mut self, c: Committed) {
        let shared = &self.shared;
        let stored = c.outcome.message_seq > 0;
        if stored && !c.duplicate && !self.relaying {
            shared.counters.stored.fetch_add(1, Relaxed);
        }
        // A NoPersist message is never stored (seq 0) but is sent: msg.offline still
        // applies to it (HTTP_API.md §9.3 excludes only Agent channels and EVENT frames).
        let sent = stored || (c.message.flags.no_persist() && c.outcome.reason == reason::SUCCESS);
        if let (Some(hooks), true, false, false) =
            (&shared.webhooks, sent, c.duplicate, self.relaying)
        {
            send_webhooks(hooks, &c, stored, shared.config.node_id);
        }
        match (c.reply, shared.cluster.get()) {
            // A send another node forwarded: answered with the commit's others, at its end.
            (crate::message::Reply::Remote { node, token, .. }, Some(cluster)) => {
                cluster.lead.answer_later(node, token, c.outcome);
            }
            (reply, _) => {
                if let Some((conn, frame)) = shared.reply_frame(reply, c.outcome) {
                    self.commands[conn.loop_index()].push(ToLoop::Frame(conn, frame));
                }
            }
        }
        if c.duplicate {
            return;
        }
        let mut targets = c.targets;
        recheck_offline(shared, &c.slots, &c.recipients, &mut targets);
        if targets.is_empty() {
            return;
        }
        // Targets on other nodes of the cluster are theirs to deliver (`cluster/`).
        for target in targets.into_iter().filter(|t| t.remote_node().is_none()) {
            self.targets[target.conn.loop_index()].push(target);
        }
        let delivery = Arc::new(Delivery {
            message: c.message,
            recipients: c.recipients,
            slots: c.slots,
            push_no: c.push_no,
            login_epoch: c.login_epoch,
            queued: c.queued,
        });
        // A piece's weight stays at most that of `TARGETS_PER_DELIVER` small RECVs
        // whatever the payload.
        let per_receiver = crate::message::receiver_weight(delivery.message.payload.len());
        let per_piece = (TARGETS_PER_DELIVER / per_receiver).max(1);
        for (index, targets) in self.targets.iter_mut().enumerate() {
            while !targets.is_empty() {
                let rest = targets.split_off(targets.len().min(per_piece));
                let piece = std::mem::replace(targets, rest);
                self.commands[index].push(ToLoop::Deliver(Arc::clone(&delivery), piece));
            }
        }
    }
}

/// Deliveries a stopped loop will never make (the server is stopping): each recipient
/// with a reserved seq gets its queue entry, as for any delivery that missed.
fn queue_unposted(shared: &SharedRef, commands: Vec<ToLoop>) {
    for command in commands {
        let ToLoop::Deliver(delivery, targets) = command else {
            continue;
        };
        for target in targets {
            let slot = delivery.slot(target.recipient);
            let Some(uid) = delivery.recipients.get(target.recipient as usize) else {
                continue;
            };
            if delivery.queued && slot.seq > 0 && !slot.stored {
                let job = LaneJob::Requeue {
                    uid: uid.clone(),
                    message: Arc::clone(&delivery.message),
                    reserved: slot.seq,
                };
                // To this very thread's mailbox (read after this commit, before it
                // stops), or the leader's when this node relays.
                shared.send_lane(job);
            }
        }
    }
}

/// Adds the devices that recipients with a stored entry and no receiver at commit have now
/// (module docs: re-check).
fn recheck_offline(
    shared: &SharedRef,
    slots: &[crate::message::QueueSlot],
    recipients: &[String],
    targets: &mut Vec<Target>,
) {
    if !slots.iter().any(|s| s.stored) {
        return;
    }
    let reached = crate::message::reached(targets, slots.len());
    let mut conns: Vec<ConnId> = Vec::new();
    for (index, slot) in slots.iter().enumerate() {
        let recipient = index as u32;
        if !slot.stored || reached[index] {
            continue;
        }
        let Some(uid) = recipients.get(index) else {
            continue;
        };
        conns.clear();
        shared.registry.conns_of(uid, &mut conns);
        targets.extend(conns.iter().map(|&conn| Target { conn, recipient }));
    }
}

impl Outlet for Pusher {
    fn push(&mut self, committed: Vec<Committed>) {
        self.push_commit(committed);
    }

    /// A cluster leader builds its commit's batches before `COMMIT`, so the commit
    /// carries the record of its pledges (`cluster/inherit.rs`).
    fn before_commit(
        &mut self,
        committed: &[&Committed],
    ) -> Option<crate::storage::tx::PledgeWrite> {
        let cluster = self.shared.cluster.get().filter(|_| !self.relaying)?;
        // Read before the COMMIT, so before any push of these messages (`devices.rs`).
        let epoch = cluster
            .devices
            .newest_epoch()
            .max(cluster.leader.epoch_floor());
        let prepared = cluster.lead.build(committed, epoch);
        let write = cluster
            .lead
            .pledge_write(&prepared, &|node| cluster.members.incarnation_of(node));
        self.prepared = Some(prepared);
        write
    }

    fn abandon(&mut self) {
        self.prepared = None;
    }
}
