//! [`AdminWrite`]s as PostgreSQL statements (the same effects as `sqlite/admin.rs`).

use super::tx::PgTx;
use crate::message::ChannelKey;
use crate::storage::admin::{AdminWrite, ConversationOp, ListKind, ListOp};
use crate::storage::tx::{Result, WriteTx};
use ruyi_proto::person_channel_id;
use ruyi_proto::types::channel_type;

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn n(v: impl Into<i64>) -> i64 {
    v.into()
}

fn channel_row(tx: &PgTx<'_, '_>, key: &ChannelKey) -> Result<Option<i64>> {
    Ok(tx
        .query_opt(
            "SELECT id FROM channels WHERE channel_id = $1 AND channel_type = $2",
            &[&key.id, &n(key.channel_type)],
        )?
        .map(|r| r.get(0)))
}

fn last_seq(tx: &PgTx<'_, '_>, row: i64) -> Result<i64> {
    Ok(tx
        .query_opt(
            "SELECT COALESCE(MAX(seq), 0) FROM messages WHERE channel = $1",
            &[&row],
        )?
        .map_or(0, |r| r.get(0)))
}

/// Applies `w` inside the writer's open transaction.
///
/// # Errors
/// PostgreSQL errors; the caller rolls the job's savepoint back.
pub fn apply(tx: &PgTx<'_, '_>, w: &AdminWrite) -> Result<()> {
    match w {
        AdminWrite::SetToken {
            uid,
            device_flag,
            token_hash,
            level,
        } => {
            tx.execute(
                "INSERT INTO devices (uid, device_flag, token, device_level, updated_at) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (uid, device_flag) DO UPDATE SET token = excluded.token,
                     device_level = excluded.device_level, updated_at = excluded.updated_at",
                &[uid, &n(*device_flag), token_hash, &n(*level), &now_secs()],
            )?;
        }
        AdminWrite::ClearTokens { uid, device_flag } => {
            let flag = device_flag.map_or(-1, i64::from);
            tx.execute(
                "UPDATE devices SET token = '' WHERE uid = $1 AND (device_flag = $2 OR $2 = -1)",
                &[uid, &flag],
            )?;
        }
        AdminWrite::ChannelFlags { key, flags: f } => {
            tx.execute(
                "INSERT INTO channels (channel_id, channel_type, ban, disband, send_ban, large, allow_stranger)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (channel_id, channel_type) DO UPDATE SET ban = excluded.ban, disband = excluded.disband,
                     send_ban = excluded.send_ban, large = excluded.large, allow_stranger = excluded.allow_stranger",
                &[
                    &key.id,
                    &n(key.channel_type),
                    &n(f.ban),
                    &n(f.disband),
                    &n(f.send_ban),
                    &n(f.large),
                    &n(f.allow_stranger),
                ],
            )?;
        }
        AdminWrite::AddSubscribers { key, reset, uids } => {
            let row = tx.ensure_channel(key)?;
            // A deleted channel that gets members again is a fresh one (its seqs go on).
            tx.execute(
                "UPDATE channels SET disband = 0, ban = 0, send_ban = 0 WHERE id = $1 AND disband = 2",
                &[&row],
            )?;
            if *reset {
                tx.execute("DELETE FROM subscribers WHERE channel = $1", &[&row])?;
            }
            let last = last_seq(tx, row)?;
            for uid in uids {
                let added = tx.execute(
                    "INSERT INTO subscribers (channel, uid) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    &[&row, uid],
                )?;
                // New members start with nothing unread; Live channels keep no conversations.
                if added > 0 && key.channel_type != channel_type::LIVE {
                    tx.execute(
                        "INSERT INTO conversations (uid, channel, read_to, deleted_at, updated_at) VALUES ($1, $2, $3, 0, $4)
                         ON CONFLICT (uid, channel) DO UPDATE SET read_to = excluded.read_to, updated_at = excluded.updated_at",
                        &[uid, &row, &last, &now_secs()],
                    )?;
                }
            }
        }
        AdminWrite::RemoveSubscribers { key, uids } => {
            let Some(row) = channel_row(tx, key)? else {
                return Ok(());
            };
            for uid in uids {
                tx.execute(
                    "DELETE FROM subscribers WHERE channel = $1 AND uid = $2",
                    &[&row, uid],
                )?;
                if key.channel_type != channel_type::LIVE {
                    tx.execute(
                        "DELETE FROM conversations WHERE channel = $1 AND uid = $2",
                        &[&row, uid],
                    )?;
                }
            }
        }
        AdminWrite::RemoveAllSubscribers { key } => {
            let Some(row) = channel_row(tx, key)? else {
                return Ok(());
            };
            if key.channel_type != channel_type::LIVE {
                tx.execute(
                    "DELETE FROM conversations WHERE channel = $1 AND uid IN (SELECT uid FROM subscribers WHERE channel = $1)",
                    &[&row],
                )?;
            }
            tx.execute("DELETE FROM subscribers WHERE channel = $1", &[&row])?;
        }
        AdminWrite::SystemUids { uids, add } => {
            let sql = if *add {
                "INSERT INTO system_uids (uid) VALUES ($1) ON CONFLICT DO NOTHING"
            } else {
                "DELETE FROM system_uids WHERE uid = $1"
            };
            for uid in uids {
                tx.execute(sql, &[uid])?;
            }
        }
        AdminWrite::DeleteChannel { key } => {
            tx.execute(
                "INSERT INTO channels (channel_id, channel_type, disband) VALUES ($1, $2, 2)
                 ON CONFLICT (channel_id, channel_type) DO UPDATE SET disband = 2",
                &[&key.id, &n(key.channel_type)],
            )?;
            let row = tx.ensure_channel(key)?;
            // Keep the seq high-water mark before the messages go (never reuse a seq).
            tx.execute(
                "UPDATE channels SET last_seq = GREATEST(last_seq, (SELECT COALESCE(MAX(seq), 0) FROM messages WHERE channel = $1))
                 WHERE id = $1",
                &[&row],
            )?;
            for table in [
                "subscribers",
                "denylist",
                "allowlist",
                "conversations",
                "offline",
            ] {
                tx.execute_dynamic(&format!("DELETE FROM {table} WHERE channel = $1"), &[&row])?;
            }
            tx.execute("DELETE FROM messages WHERE channel = $1", &[&row])?;
        }
        AdminWrite::List {
            key,
            kind,
            op,
            uids,
        } => change_list(tx, key, *kind, *op, uids)?,
        AdminWrite::Conversation {
            uid,
            key,
            op,
            unread,
        } => change_conversation(tx, uid, key, *op, *unread)?,
    }
    Ok(())
}

fn change_list(
    tx: &PgTx<'_, '_>,
    key: &ChannelKey,
    kind: ListKind,
    op: ListOp,
    uids: &[String],
) -> Result<()> {
    let table = kind.table();
    let row = tx.ensure_channel(key)?;
    if matches!(op, ListOp::Set | ListOp::RemoveAll) {
        tx.execute_dynamic(&format!("DELETE FROM {table} WHERE channel = $1"), &[&row])?;
    }
    for uid in uids {
        match op {
            ListOp::Add | ListOp::Set => {
                tx.execute_dynamic(
                    &format!(
                        "INSERT INTO {table} (channel, uid) VALUES ($1, $2) ON CONFLICT DO NOTHING"
                    ),
                    &[&row, uid],
                )?;
            }
            ListOp::Remove => {
                tx.execute_dynamic(
                    &format!("DELETE FROM {table} WHERE channel = $1 AND uid = $2"),
                    &[&row, uid],
                )?;
            }
            ListOp::RemoveAll => {}
        }
    }
    let live = key.channel_type == channel_type::LIVE;
    let now = now_secs();
    match (kind, op) {
        (ListKind::Deny, ListOp::Add | ListOp::Set) if !live => {
            for uid in uids {
                tx.execute(
                    "DELETE FROM conversations WHERE uid = $1 AND channel = $2",
                    &[uid, &row],
                )?;
            }
        }
        (ListKind::Deny, ListOp::Remove) if !live => {
            for uid in uids {
                tx.execute(
                    "INSERT INTO conversations (uid, channel, read_to, deleted_at, updated_at)
                     VALUES ($1, $2, (SELECT COALESCE(MAX(seq), 0) FROM messages WHERE channel = $2), 0, $3)
                     ON CONFLICT DO NOTHING",
                    &[uid, &row, &now],
                )?;
            }
        }
        (ListKind::Allow, ListOp::Add) if key.channel_type == channel_type::PERSON => {
            for uid in uids {
                let combined = person_channel_id(&key.id, uid);
                tx.execute(
                    "INSERT INTO channels (channel_id, channel_type) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    &[&combined, &n(channel_type::PERSON)],
                )?;
                tx.execute(
                    "INSERT INTO conversations (uid, channel, read_to, deleted_at, updated_at)
                     SELECT $1, id, 0, 0, $3 FROM channels WHERE channel_id = $2 AND channel_type = 1
                     ON CONFLICT DO NOTHING",
                    &[&key.id, &combined, &now],
                )?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn change_conversation(
    tx: &PgTx<'_, '_>,
    uid: &str,
    key: &ChannelKey,
    op: ConversationOp,
    unread: i64,
) -> Result<()> {
    let row = tx.ensure_channel(key)?;
    let last = last_seq(tx, row)?;
    tx.execute(
        "INSERT INTO conversations (uid, channel, read_to, deleted_at, updated_at) VALUES ($1, $2, 0, 0, $3)
         ON CONFLICT DO NOTHING",
        &[&uid, &row, &now_secs()],
    )?;
    match op {
        ConversationOp::ClearUnread => {
            tx.execute(
                "UPDATE conversations SET read_to = $3 WHERE uid = $1 AND channel = $2",
                &[&uid, &row, &last],
            )?;
        }
        ConversationOp::SetUnread => {
            let target = crate::storage::admin::unread_target(last, unread);
            tx.execute(
                "UPDATE conversations SET read_to = GREATEST(read_to, $3) WHERE uid = $1 AND channel = $2",
                &[&uid, &row, &target],
            )?;
        }
        ConversationOp::Delete => {
            tx.execute(
                "UPDATE conversations SET deleted_at = $3 WHERE uid = $1 AND channel = $2",
                &[&uid, &row, &last],
            )?;
        }
    }
    Ok(())
}
