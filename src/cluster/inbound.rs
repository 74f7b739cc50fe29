//! The relay's thread: what the leader sends this node (outcomes, commit batches, its
//! heartbeat's batch count, quits), the forwarded sends that wait too long, and the lane
//! jobs to send again. A pool thread: it may block on a loop's full inbox (backpressure,
//! as the writer on the leader) and read storage.
//!
//! # Gaps
//! Core NATS may drop a publication, and a dropped commit batch means messages this
//! node's clients will never be pushed. Three ways to see one:
//! - a batch number skipped;
//! - the leader's heartbeat counts more batches than arrived, and they have not come a
//!   [`MARK_GRACE`] later (this catches the *last* batches before a quiet spell, or NATS
//!   coming back after an outage);
//! - batches from a new leader (or a new incarnation): the old one's last batches may be
//!   lost with it, and nothing can tell. The node that takes the lead resyncs its own
//!   clients for the same reason.
//!
//! Each closes every client of this node without DISCONNECT, so each reconnects and syncs
//! what it missed (CLUSTER.md invariant 4).
//!
//! # Recipients the leader counted on here
//! A delivery names, per recipient, the nodes the leader counted on for their devices
//! (`devices.rs`); this node queues the message for a named recipient it has no device
//! for.
//!
//! # A forwarded send without an outcome
//! After [`SEND_TIMEOUT`] it is looked up in storage by its sender and number (the dedupe
//! key): stored, it is answered with its id and seq, as the outcome would have; not
//! stored, 15, and the client sends it again.

use super::relay::{Inbound, Pending, Relay};
use super::wire::CommitBatch;
use crate::message::{Committed, Reply, SendOutcome, Target};
use crate::shared::SharedRef;
use crate::storage::{MessageKey, Reader};
use crate::to_loop::ToLoop;
use ruyi_proto::types::reason;
use ruyi_reactor::ConnId;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A forwarded send not answered within this is looked up in storage.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// How often, at most, this node tells the leader which batches it handled.
const TELL_EVERY: Duration = Duration::from_millis(50);

/// How long batches the leader's heartbeat counted may take to arrive.
pub const MARK_GRACE: Duration = Duration::from_secs(2);

/// The relay thread's view of the delivery stream.
struct Stream {
    /// (leader, incarnation, number) of the last batch seen or counted.
    last: Option<(u16, i64, u64)>,
    /// Batches a heartbeat counted that had not arrived: (count, since).
    owed: Option<(u64, Instant)>,
}

impl Stream {
    /// A batch from `leader`/`incarnation` numbered `number`: true when some were lost.
    fn batch(&mut self, leader: u16, incarnation: i64, number: u64) -> bool {
        let gap = match self.last {
            Some((l, i, n)) if (l, i) == (leader, incarnation) => number != n + 1,
            Some(_) => true, // a new leader (module docs)
            None => false,
        };
        self.last = Some((leader, incarnation, number));
        if self.owed.is_some_and(|(count, _)| number >= count) {
            self.owed = None;
        }
        gap
    }

    /// The leader's heartbeat: it has published `count` batches.
    fn mark(&mut self, leader: u16, incarnation: i64, count: u64) -> bool {
        match self.last {
            Some((l, i, n)) if (l, i) == (leader, incarnation) => {
                if count > n && self.owed.is_none() {
                    self.owed = Some((count, Instant::now()));
                }
                false
            }
            // The first word from a leader: what it sent before is not this node's.
            None => {
                self.last = Some((leader, incarnation, count));
                false
            }
            Some(_) => {
                self.last = Some((leader, incarnation, count));
                self.owed = None;
                true
            }
        }
    }

    /// True when counted batches are overdue; forgets them (the resync covers them).
    fn overdue(&mut self) -> bool {
        match self.owed {
            Some((count, since)) if since.elapsed() >= MARK_GRACE => {
                if let Some(last) = self.last.as_mut() {
                    last.2 = last.2.max(count);
                }
                self.owed = None;
                true
            }
            _ => false,
        }
    }
}

/// Runs until the server stops (module docs).
pub fn run(
    shared: SharedRef,
    rx: crossbeam_channel::Receiver<Inbound>,
    reader: Reader,
    spare: Reader,
) {
    let mut spare = Some(spare);
    let Some(cluster) = shared.cluster.get() else {
        return;
    };
    let relay = &cluster.relay;
    let mut pusher = crate::pusher::Pusher::relaying(Arc::clone(&shared));
    let mut stream = Stream {
        last: None,
        owed: None,
    };
    let mut next_sweep = Instant::now();
    let mut led = false;
    // What was last told the leader of the batches handled here (`pledges.rs`).
    let mut told = None;
    let mut next_tell = Instant::now();
    while !shared.is_stopping() {
        // Spooled lane jobs leave within a couple of milliseconds, many per bus message.
        let wait = if relay.lane_waiting() {
            Duration::from_millis(2)
        } else {
            Duration::from_millis(100)
        };
        let first = match rx.recv_timeout(wait) {
            Ok(item) => Some(item),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => None,
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
        };
        // Everything queued before looking at timeouts: an outcome that waits in the
        // queue must not lose to its own timeout.
        for item in first
            .into_iter()
            .chain(std::iter::from_fn(|| rx.try_recv().ok()))
        {
            handle(&shared, relay, &reader, &mut stream, &mut pusher, item);
        }
        relay.flush_lane(&shared, false);
        if Instant::now() >= next_tell {
            // Every 50 ms at most, so the leader lets go of its pledges soon after the
            // batches were handled (the heartbeat alone would hold a second's worth).
            next_tell = Instant::now() + TELL_EVERY;
            let now = *super::relay::lock(&relay.handled);
            if now != told {
                if let Some(seen) = now {
                    relay.tell_handled(seen);
                }
                told = now;
            }
        }
        if Instant::now() >= next_sweep {
            next_sweep = Instant::now() + Duration::from_millis(100);
            for pending in relay.take_expired(SEND_TIMEOUT) {
                relay.timeouts.fetch_add(1, Relaxed);
                let outcome = look_up(&reader, &pending);
                shared.reply(pending.reply, outcome);
            }
            if stream.overdue() {
                resync(&shared, relay);
                if let Some((leader, incarnation, number)) = stream.last {
                    handled(relay, leader, incarnation, number);
                }
            }
            let leads = cluster.leads();
            if leads && !led {
                took_the_lead(&shared, &reader);
                // This node followed the previous leader too, and may have missed its last
                // batches as any follower: its clients resync as theirs do (module docs),
                // and find in their queues what it inherits (`inherit.rs`).
                resync(&shared, relay);
                let rows = cluster.leader.take_inherited();
                if let Some(spare) = spare.take() {
                    super::inherit::take_over(&shared, spare, rows);
                }
            }
            led = leads;
            if leads {
                // A node no longer live handles no batch: what was pledged to it is
                // written here (`pledges.rs`).
                for node in cluster.lead.pledges.nodes() {
                    if !cluster.members.is_live(node) {
                        cluster.lead.pledges.release(&shared, node);
                    }
                }
            }
            relay.flush_lane(&shared, true);
        }
    }
}

fn handle(
    shared: &SharedRef,
    relay: &Relay,
    reader: &Reader,
    stream: &mut Stream,
    pusher: &mut crate::pusher::Pusher,
    item: Inbound,
) {
    match item {
        Inbound::Outcomes(out) => {
            for (token, message_id, message_seq, code) in out.items {
                if let Some(pending) = relay.take_pending(token) {
                    let outcome = SendOutcome {
                        message_id,
                        message_seq,
                        reason: code,
                    };
                    shared.reply(pending.reply, outcome);
                }
            }
        }
        Inbound::Commit(batch) => {
            let late = crate::fault::batch_delay();
            if !late.is_zero() {
                std::thread::sleep(late);
            }
            let lost = relay.lost.swap(false, Relaxed);
            if stream.batch(batch.leader, batch.incarnation, batch.number) || lost {
                resync(shared, relay);
            }
            let (leader, incarnation, number) = (batch.leader, batch.incarnation, batch.number);
            deliver(shared, relay, reader, batch, pusher);
            handled(relay, leader, incarnation, number);
        }
        Inbound::Mark(leader, incarnation, count) => {
            if stream.mark(leader, incarnation, count) {
                resync(shared, relay);
                handled(relay, leader, incarnation, count);
            }
        }
        Inbound::Quit(quit) => shared.kick_devices(&quit.uid, quit.device_flag),
        Inbound::Login(login) => {
            let device = crate::registry::Device {
                conn: ConnId::new(0, 0, 0),
                device_flag: login.device_flag,
                level: login.level,
                device_id: login.device_id,
                login_no: 0,
                epoch: login.epoch,
            };
            for kick in shared.registry.kicks_for(&login.uid, &device) {
                let replaced = ToLoop::replaced_by_login(kick.conn, kick.notify);
                let _ = shared.loops().for_conn(kick.conn).post(replaced);
            }
        }
    }
}

/// This node now leads: what the HTTP API changed meanwhile on the previous leader and
/// that only its memory held is read again. The system uids, which spare their sends the
/// sender checks (`http/users.rs`), live in each node's memory from its start.
fn took_the_lead(shared: &SharedRef, reader: &Reader) {
    match reader.system_uids() {
        Ok(uids) => shared.system_uids.replace(uids),
        Err(e) => log::error!("cluster: leading, but cannot reload the system uids: {e}"),
    }
}

/// The outcome of a forwarded send whose answer did not come (module docs).
fn look_up(reader: &Reader, p: &Pending) -> SendOutcome {
    let found = reader
        .channel_message_by(&p.stored_in, MessageKey::ClientMsgNo(&p.client_msg_no))
        .ok()
        .flatten()
        .filter(|m| m.from_uid == p.from_uid && !p.client_msg_no.is_empty());
    match found {
        Some(m) => SendOutcome {
            message_id: m.message_id,
            message_seq: m.message_seq,
            reason: reason::SUCCESS,
        },
        None => SendOutcome {
            message_id: 0,
            message_seq: 0,
            reason: reason::SYSTEM_ERROR,
        },
    }
}

/// Records, for the heartbeat, that every batch up to `number` was handled here, with the
/// gaps seen so far (after them: the leader writes what it pledged to the lost batches).
fn handled(relay: &Relay, leader: u16, incarnation: i64, number: u64) {
    let gaps = relay.gaps.load(Relaxed);
    *super::relay::lock(&relay.handled) = Some((leader, incarnation, number, gaps));
}

/// Some batches were lost: close every client here so each reconnects and syncs.
fn resync(shared: &SharedRef, relay: &Relay) {
    relay.gaps.fetch_add(1, Relaxed);
    let conns = shared.registry.all_conns();
    log::warn!(
        "cluster: commit batches from the leader were lost; closing {} client connections so \
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
fn deliver(
    shared: &SharedRef,
    relay: &Relay,
    reader: &Reader,
    batch: CommitBatch,
    pusher: &mut crate::pusher::Pusher,
) {
    use crate::storage::append::Outlet;
    let login_epoch = batch.login_epoch;
    let mut committed = Vec::with_capacity(batch.messages.len());
    let mut conns: Vec<ConnId> = Vec::new();
    for d in batch.messages {
        let slots = d.queue_slots();
        let sender = d
            .origin
            .filter(|&(node, token, _)| node == relay.me() && relay.issued_here(token))
            .map(|(_, _, conn)| ConnId::from(conn));
        // Tick before the lookup (registry invariants), as the leader's worker does.
        let push_no = shared.registry.clock.tick();
        let recipients: Arc<[String]> = d.recipients.into();
        let mut targets = Vec::new();
        for (index, uid) in recipients.iter().enumerate() {
            conns.clear();
            // Not a device that logged in after the commit began (`devices.rs`).
            shared
                .registry
                .conns_logged_in_by(uid, login_epoch, &mut conns);
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
        // Recipients the leader counted on this node for, whose devices here are gone (a
        // logout notice not yet heard, or one that left since): their queue gets the
        // message at its reserved seq, as a device that closed would put it there
        // (`devices.rs`).
        let gone: Vec<usize> = d
            .expect
            .iter()
            .filter(|&&(_, node)| node == relay.me())
            .map(|&(i, _)| i as usize)
            .filter(|&i| d.queued && slots.get(i).is_some_and(|s| s.seq > 0 && !s.stored))
            .filter(|&i| !targets.iter().any(|t| t.recipient as usize == i))
            .collect();
        if !gone.is_empty() {
            let message = Arc::new(crate::message::Message::from(d.message.clone()));
            for i in gone {
                relay.forward_lane(&crate::storage::writer::LaneJob::Requeue {
                    uid: recipients[i].clone(),
                    message: Arc::clone(&message),
                    reserved: slots[i].seq,
                });
            }
        }
        // With none here, a stored entry's recipient may still have a device to push to:
        // the pusher looks again for those (`pusher::recheck_offline`), which also reaches
        // a device above the stamp whose login notice the leader missed.
        if targets.is_empty() {
            conns.clear();
            let stored_here = slots
                .iter()
                .zip(recipients.iter())
                .any(|(s, uid)| s.stored && shared.registry.conns_of(uid, &mut conns) > 0);
            if !stored_here {
                continue;
            }
        }
        let mut message: crate::message::Message = d.message.into();
        if d.by_reference {
            let key = message.channel.clone();
            let seq = message.message_seq;
            // `low < seq <= high`.
            match reader.channel_messages(&key, seq.saturating_sub(1), seq, 1, false) {
                Ok(Some(found))
                    if found
                        .first()
                        .is_some_and(|m| m.message_id == message.message_id) =>
                {
                    message.payload = found[0].payload.clone();
                }
                other => {
                    // Committed, so readable: a store that fails now leaves these devices
                    // without it, so their users' queues get it (reserved seqs).
                    log::warn!(
                        "cluster: cannot read message {} for delivery ({other:?}); queued \
                         for its recipients here instead",
                        message.message_id
                    );
                    let message = Arc::new(message);
                    let mut seen = Vec::new();
                    for t in &targets {
                        let i = t.recipient as usize;
                        let slot = slots.get(i).copied().unwrap_or_default();
                        if d.queued && slot.seq > 0 && !slot.stored && !seen.contains(&i) {
                            seen.push(i);
                            relay.forward_lane(&crate::storage::writer::LaneJob::Requeue {
                                uid: recipients[i].clone(),
                                message: Arc::clone(&message),
                                reserved: slot.seq,
                            });
                        }
                    }
                    continue;
                }
            }
        }
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
            login_epoch,
            queued: d.queued,
            webhook_offline: Vec::new(),
            reply: Reply::None,
            outcome,
            duplicate: false,
        });
    }
    if !committed.is_empty() {
        pusher.push(committed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream() -> Stream {
        Stream {
            last: None,
            owed: None,
        }
    }

    #[test]
    fn a_skipped_number_or_a_new_leader_is_a_gap() {
        let mut s = stream();
        assert!(!s.batch(1, 1, 5), "the first batch seen is not a gap");
        assert!(!s.batch(1, 1, 6));
        assert!(s.batch(1, 1, 8));
        assert!(s.batch(2, 1, 1), "a new leader");
        assert!(s.batch(2, 2, 1), "a new incarnation");
    }

    #[test]
    fn batches_a_heartbeat_counted_must_arrive() {
        let mut s = stream();
        assert!(!s.mark(1, 1, 3), "the first word sets the start");
        assert!(!s.batch(1, 1, 4));
        assert!(!s.mark(1, 1, 5));
        assert!(!s.overdue(), "not yet");
        assert!(!s.batch(1, 1, 5));
        s.owed = Some((9, Instant::now() - MARK_GRACE));
        assert!(s.overdue());
        assert!(!s.batch(1, 1, 10), "counting goes on after the resync");
    }
}
