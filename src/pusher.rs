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
//! Bound: a batch holds at most [`POST_CHUNK`] commands (a large commit goes in several), so
//! a loop's inbox holds at most its capacity times that many, and the writer blocks when it
//! is full; the loop counts a batch's commands against its per-turn budget.

use crate::gateway::ToLoop;
use crate::message::{Committed, Delivery, Target};
use crate::shared::SharedRef;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

/// Commands per `post_batch` at most.
pub const POST_CHUNK: usize = 128;

/// `msg.notify` for every stored message, `msg.offline` when some recipients have no master
/// device online (HTTP_API.md §9.3–9.4). Non-blocking: full webhook queues drop.
fn send_webhooks(hooks: &crate::webhook::Webhooks, c: &Committed, node_id: u16) {
    let m = &c.message;
    hooks.notify(crate::http::message_json(m, None));
    if !c.webhook_offline.is_empty() {
        let mut v = crate::http::message_json(m, None);
        v["channel_id"] = serde_json::json!(m.addressed_to);
        v["from_uid"] = serde_json::json!(m.from_uid);
        v["to_uids"] = serde_json::json!(c.webhook_offline);
        v["source_id"] = serde_json::json!(node_id);
        v["timestamp"] = serde_json::json!(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()));
        hooks.offline(v);
    }
}

/// Routes committed messages to the loops; owned by the writer thread.
#[allow(missing_debug_implementations)] // Scratch buffers only.
pub struct Pusher {
    shared: SharedRef,
    /// Per loop: the commands of the commit being routed.
    commands: Vec<Vec<ToLoop>>,
    /// Per loop: one message's receivers, reused.
    targets: Vec<Vec<Target>>,
}

impl Pusher {
    /// A pusher for the loops in `shared` (set before the writer starts).
    pub fn new(shared: SharedRef) -> Pusher {
        let loops = shared.loops().loops().len();
        Pusher {
            shared,
            commands: (0..loops).map(|_| Vec::new()).collect(),
            targets: vec![Vec::new(); loops],
        }
    }

    /// Answers and delivers one commit's messages, in commit order.
    pub fn push(&mut self, committed: Vec<Committed>) {
        for c in committed {
            self.route(c);
        }
        let loops = self.shared.loops().loops();
        for (handle, commands) in loops.iter().zip(self.commands.iter_mut()) {
            // Blocks while that loop's inbox is full: backpressure from the loops to
            // storage, on the writer thread, never on a loop.
            while !commands.is_empty() {
                let rest = commands.split_off(commands.len().min(POST_CHUNK));
                if handle
                    .post_batch(std::mem::replace(commands, rest))
                    .is_err()
                {
                    log::debug!("loop {} gone; dropping a commit's answers", handle.index());
                    commands.clear();
                }
            }
        }
    }

    fn route(&mut self, c: Committed) {
        let shared = &self.shared;
        if c.outcome.message_seq > 0 && !c.duplicate {
            shared.counters.stored.fetch_add(1, Relaxed);
            if let Some(hooks) = &shared.webhooks {
                send_webhooks(hooks, &c, shared.config.node_id);
            }
        }
        if let Some((conn, frame)) = shared.reply_frame(c.reply, c.outcome) {
            self.commands[conn.loop_index()].push(ToLoop::Frame(conn, frame));
        }
        if c.duplicate || c.online.is_empty() {
            return;
        }
        for target in c.online {
            self.targets[target.conn.loop_index()].push(target);
        }
        let delivery = Arc::new(Delivery {
            message: c.message,
            user_seqs: c.user_seqs,
            recipients: c.recipients,
            queue_when_missed: c.queue_when_missed,
        });
        for (index, targets) in self.targets.iter_mut().enumerate() {
            if !targets.is_empty() {
                let batch = std::mem::take(targets);
                self.commands[index].push(ToLoop::Deliver(Arc::clone(&delivery), batch));
            }
        }
    }
}
