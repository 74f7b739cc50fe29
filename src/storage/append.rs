//! Appending one message inside the writer's transaction: dedupe, the channel seq, the
//! row, and the plan of who gets it: a RECV for every connection the registry holds **at
//! commit**, and a queue slot for every queued recipient (`message::QueueSlot`). Writer
//! thread only.
//!
//! Planning here rather than in the channel worker closes the window between plan and
//! commit: a device that logged in meanwhile, and whose first sync ran before the commit,
//! used to get neither a RECV nor a queue entry it had not already read.

use super::channels::{self, Channels};
use super::queue::Queues;
use crate::message::{Committed, Planned, QueueSlot, SendOutcome, Target};
use rusqlite::{params, Connection};
use ruyi_proto::types::{channel_type, reason};
use ruyi_reactor::ConnId;
use std::sync::Arc;

/// What the writer needs from the rest of the server, on its own thread.
pub trait Outlet: Send {
    /// Ticks the registry's push clock and returns the message's `push_no` (registry
    /// invariants). Called before the recipients are looked up.
    fn tick(&mut self) -> u64;
    /// Appends every connection of `uid` to `out`; returns how many.
    fn conns_of(&mut self, uid: &str, out: &mut Vec<ConnId>) -> usize;
    /// Hands one commit's messages on (answers, deliveries), in commit order, after
    /// `COMMIT` returned.
    fn push(&mut self, committed: Vec<Committed>);
}

fn now_secs() -> i32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i32)
}

/// Stores `planned` (unless NoPersist or a resend) and plans its delivery.
///
/// # Errors
/// SQLite errors; the caller fails the whole batch.
pub fn store_message(
    conn: &Connection,
    channels: &mut Channels,
    queues: &mut Queues,
    outlet: &mut dyn Outlet,
    planned: Planned,
) -> rusqlite::Result<Committed> {
    let Planned {
        mut message,
        from_conn,
        recipients,
        queued,
        webhook_offline,
        reply,
    } = planned;
    crate::fault::check_panic(&message.client_msg_no);
    let mut committed = Committed {
        targets: Vec::new(),
        recipients,
        slots: Vec::new(),
        push_no: 0,
        queued: queued && !message.flags.no_persist() && !message.flags.sync_once(),
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
        plan(
            conn,
            queues,
            outlet,
            &message,
            from_conn,
            None,
            &mut committed,
        )?;
        committed.message = Arc::new(message);
        return Ok(committed);
    }
    let state = channels::state(conn, channels, &message.channel)?;
    if let Some((id, seq)) = state.recall(&message.from_uid, &message.client_msg_no) {
        committed.outcome.message_id = id;
        committed.outcome.message_seq = seq;
        committed.duplicate = true;
        committed.message = Arc::new(message);
        return Ok(committed);
    }
    let seq = state.last_seq + 1;
    let row = state.row;
    message.message_seq = seq;
    message.timestamp = now_secs();
    conn.prepare_cached(
        "INSERT INTO messages (channel, seq, message_id, client_msg_no, from_uid, addressed_to, timestamp,
                               setting, flags, expire, topic, payload)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?
    .execute(params![
        row,
        seq,
        message.message_id,
        message.client_msg_no,
        message.from_uid,
        message.addressed_to,
        message.timestamp,
        message.setting,
        message.flags.0 & !ruyi_proto::Flags::DUP,
        message.expire,
        message.topic,
        &message.payload[..],
    ])?;
    state.last_seq = seq;
    state.remember(
        &message.from_uid,
        &message.client_msg_no,
        message.message_id,
        seq,
    );
    plan(
        conn,
        queues,
        outlet,
        &message,
        from_conn,
        Some((row, queued)),
        &mut committed,
    )?;
    // Person chats get a conversation for both sides with their first message (PROTOCOL.md
    // §9.6); groups get theirs when subscribers are added.
    if message.channel.channel_type == channel_type::PERSON
        && seq == 1
        && !message.channel.id.ends_with("____cmd")
    {
        if let Some((a, b)) = message.channel.id.split_once('@') {
            let now = now_secs();
            for uid in [a, b] {
                conn.prepare_cached(
                    "INSERT OR IGNORE INTO conversations (uid, channel, read_to, deleted_at, updated_at)
                     VALUES (?1, ?2, 0, 0, ?3)",
                )?
                .execute(params![uid, row, now])?;
            }
        }
    }
    committed.outcome.message_seq = seq;
    committed.message = Arc::new(message);
    Ok(committed)
}

/// Fills `targets`, `slots` and `push_no` (module docs). `stored` is the message's row and
/// whether the offline policy covers its channel; `None` for NoPersist.
fn plan(
    conn: &Connection,
    queues: &mut Queues,
    outlet: &mut dyn Outlet,
    message: &crate::message::Message,
    from_conn: Option<ConnId>,
    stored: Option<(i64, bool)>,
    committed: &mut Committed,
) -> rusqlite::Result<()> {
    committed.push_no = outlet.tick();
    let sync_once = message.flags.sync_once();
    // SyncOnce messages are queued for everyone, whatever the group's size (§7 (a)).
    let queue = stored.filter(|&(_, policy)| policy || sync_once);
    if queue.is_some() {
        committed.slots = vec![QueueSlot::default(); committed.recipients.len()];
    }
    let mut conns = Vec::new();
    for (index, uid) in committed.recipients.iter().enumerate() {
        conns.clear();
        let found = outlet.conns_of(uid, &mut conns);
        let recipient = index as u32;
        committed.targets.extend(
            conns
                .iter()
                .filter(|&&c| Some(c) != from_conn)
                .map(|&conn| Target { conn, recipient }),
        );
        let Some((row, _)) = queue else { continue };
        if *uid == message.from_uid {
            continue; // The sender is online by definition.
        }
        committed.slots[index] = if sync_once || found == 0 {
            QueueSlot {
                seq: queues.append(conn, uid, row, message.message_seq)?,
                stored: true,
            }
        } else {
            QueueSlot {
                seq: queues.reserve(conn, uid)?,
                stored: false,
            }
        };
    }
    Ok(())
}
