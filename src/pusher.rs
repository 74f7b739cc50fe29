//! The pusher pool: after a commit, the SENDACK (or the HTTP answer) and the RECVs.
//!
//! A committed message's online connections are grouped by loop, and each loop gets one
//! `Deliver` command with the shared message and its connections, so a fan-out to a
//! thousand members is one inbox slot per loop, not a thousand. Shards by channel keep
//! each channel's deliveries in seq order.

use crate::gateway::ToLoop;
use crate::message::{Committed, Delivery};
use crate::shared::SharedRef;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

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

/// Polling period for the stop flag while idle.
const IDLE_POLL: Duration = Duration::from_millis(100);

/// Runs one pusher until the server stops and its queue is drained.
pub fn run(shared: SharedRef, rx: Receiver<Committed>) {
    let loops = shared.loops().loops().len();
    let mut by_loop: Vec<Vec<crate::message::Target>> = vec![Vec::new(); loops];
    loop {
        let c = match rx.recv_timeout(IDLE_POLL) {
            Ok(c) => c,
            Err(RecvTimeoutError::Timeout) if !shared.is_stopping() => continue,
            Err(_) => return,
        };
        if c.outcome.message_seq > 0 && !c.duplicate {
            shared.counters.stored.fetch_add(1, Relaxed);
            if let Some(hooks) = &shared.webhooks {
                send_webhooks(hooks, &c, shared.config.node_id);
            }
        }
        shared.reply(c.reply, c.outcome);
        if c.duplicate || c.online.is_empty() {
            continue;
        }
        for target in c.online {
            by_loop[target.conn.loop_index()].push(target);
        }
        let delivery = Arc::new(Delivery {
            message: c.message,
            user_seqs: c.user_seqs,
            recipients: c.recipients,
            queue_when_missed: c.queue_when_missed,
        });
        for (index, conns) in by_loop.iter_mut().enumerate() {
            if conns.is_empty() {
                continue;
            }
            let batch = std::mem::take(conns);
            let _ =
                shared.loops().loops()[index].post(ToLoop::Deliver(Arc::clone(&delivery), batch));
        }
    }
}
