//! Appending one message inside the writer's transaction: dedupe, the channel seq, the
//! row, and every queued recipient's slot (`message::QueueSlot`): a stored entry for a
//! recipient the plan found no device of (or for every recipient of an app server's
//! command, `Planned::command`), a
//! reserved seq for one it found. Slots are given here, in commit order, so each user's
//! queue follows each channel's seqs. Writer thread only.

use super::channels::{self, Channels};
use super::queue::Queues;
use super::tx::{Result, WriteTx};
use crate::message::{Committed, Planned, QueueSlot, SendOutcome};
use ruyi_proto::types::{channel_type, reason};
use std::sync::Arc;

/// Where the writer hands what it committed, on its own thread.
pub trait Outlet: Send {
    /// Hands one commit's messages on (answers, deliveries), in commit order, after
    /// `COMMIT` returned.
    fn push(&mut self, committed: Vec<Committed>);

    /// Inside the transaction, once every job is applied and before `COMMIT`: what the
    /// commit must also write (a cluster leader's pledges, `cluster/pledges.rs`). Either
    /// [`Outlet::push`] or [`Outlet::abandon`] follows.
    fn before_commit(&mut self, _committed: &[&Committed]) -> Option<super::tx::PledgeWrite> {
        None
    }

    /// The transaction [`Outlet::before_commit`] saw was rolled back.
    fn abandon(&mut self) {}
}

fn now_secs() -> i32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i32)
}

/// Stores `planned` (unless NoPersist or a resend) and plans its delivery.
///
/// # Errors
/// The store's errors; the caller fails the whole batch.
pub fn store_message<T: WriteTx + ?Sized>(
    tx: &T,
    channels: &mut Channels,
    queues: &mut Queues,
    planned: Planned,
) -> Result<Committed> {
    let Planned {
        mut message,
        targets,
        push_no,
        recipients,
        queued,
        command,
        webhook_offline,
        reply,
    } = planned;
    crate::fault::check_panic(&message.client_msg_no);
    let mut committed = Committed {
        targets,
        recipients,
        slots: Vec::new(),
        push_no,
        login_epoch: i64::MAX,
        queued: queued && !message.flags.no_persist() && !command,
        webhook_offline,
        reply,
        outcome: SendOutcome {
            message_id: message.message_id,
            message_seq: 0,
            reason: reason::SUCCESS,
        },
        duplicate: false,
        message: Arc::new(crate::message::Message::placeholder(0)),
    };
    if message.flags.no_persist() {
        // Never stored, no seq, never queued; delivered online only (PROTOCOL.md §2.1).
        committed.message = Arc::new(message);
        return Ok(committed);
    }
    let state = channels::state(tx, channels, &message.channel)?;
    if let Some((id, seq)) = state.recall(&message.from_uid, &message.client_msg_no) {
        committed.outcome.message_id = id;
        committed.outcome.message_seq = seq;
        committed.duplicate = true;
        committed.message = Arc::new(message);
        return Ok(committed);
    }
    let Some(seq) = state.last_seq.checked_add(1) else {
        // 4 billion messages in one channel: refuse this one, fail no batch.
        log::error!(
            "channel {:?} has used every seq; send refused",
            message.channel
        );
        committed.outcome.reason = reason::SYSTEM_ERROR;
        committed.duplicate = true;
        committed.message = Arc::new(message);
        return Ok(committed);
    };
    let row = state.row;
    message.message_seq = seq;
    message.timestamp = now_secs();
    tx.insert_message(row, &message)?;
    state.last_seq = seq;
    state.remember(
        &message.from_uid,
        &message.client_msg_no,
        message.message_id,
        seq,
    );
    if queued || command {
        assign_slots(tx, queues, &message, row, command, &mut committed)?;
    }
    // Person chats get a conversation for both sides with their first message (PROTOCOL.md
    // §9.6); groups get theirs when subscribers are added.
    if message.channel.channel_type == channel_type::PERSON
        && seq == 1
        && !message.channel.id.ends_with("____cmd")
    {
        if let Some((a, b)) = message.channel.id.split_once('@') {
            let now = i64::from(now_secs());
            for uid in [a, b] {
                tx.ensure_conversation(uid, row, now)?;
            }
        }
    }
    committed.outcome.message_seq = seq;
    committed.message = Arc::new(message);
    Ok(committed)
}

/// Gives every recipient but the sender a queue slot (module docs).
fn assign_slots<T: WriteTx + ?Sized>(
    tx: &T,
    queues: &mut Queues,
    message: &crate::message::Message,
    row: i64,
    command: bool,
    committed: &mut Committed,
) -> Result<()> {
    let reached = crate::message::reached(&committed.targets, committed.recipients.len());
    let mut slots = vec![QueueSlot::default(); committed.recipients.len()];
    for (index, uid) in committed.recipients.iter().enumerate() {
        if *uid == message.from_uid {
            continue; // The sender is online by definition.
        }
        slots[index] = if command || !reached[index] {
            let keep = message.channel.id.ends_with("____cmd");
            let seq = queues.append(tx, uid, row, message.message_seq, keep)?;
            if message.flags.sync_once() && seq > 0 {
                // A RECV of it carries this per-user seq, which a client may syncack: no
                // miss may be written below it from now on (`exposure.rs`).
                queues.shared.exposure.show(uid, seq);
            }
            QueueSlot { seq, stored: true }
        } else {
            QueueSlot {
                seq: queues.reserve(tx, uid)?,
                stored: false,
            }
        };
    }
    committed.slots = slots;
    Ok(())
}
