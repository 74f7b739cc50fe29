//! [`AdminWrite`]s as SQLite statements.

use crate::message::ChannelKey;
use crate::storage::admin::{AdminWrite, ConversationOp, ListKind, ListOp};
use rusqlite::{params, Connection, OptionalExtension};
use ruyi_proto::person_channel_id;
use ruyi_proto::types::channel_type;

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The channel's row, created (with every flag 0) when missing.
fn ensure_channel(c: &Connection, key: &ChannelKey) -> rusqlite::Result<i64> {
    c.prepare_cached("INSERT OR IGNORE INTO channels (channel_id, channel_type) VALUES (?1, ?2)")?
        .execute(params![key.id, key.channel_type])?;
    channel_row(c, key)?.ok_or(rusqlite::Error::QueryReturnedNoRows)
}

fn channel_row(c: &Connection, key: &ChannelKey) -> rusqlite::Result<Option<i64>> {
    c.prepare_cached("SELECT id FROM channels WHERE channel_id = ?1 AND channel_type = ?2")?
        .query_row(params![key.id, key.channel_type], |r| r.get(0))
        .optional()
}

fn last_seq(c: &Connection, row: i64) -> rusqlite::Result<i64> {
    c.prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM messages WHERE channel = ?1")?
        .query_row([row], |r| r.get(0))
}

/// Applies `w` on the writer's connection, inside its open transaction.
///
/// # Errors
/// SQLite errors; the caller rolls the job's savepoint back.
pub fn apply(c: &Connection, w: &AdminWrite) -> rusqlite::Result<()> {
    match w {
        AdminWrite::SetToken {
            uid,
            device_flag,
            token_hash,
            level,
        } => {
            c.execute(
                "INSERT INTO devices (uid, device_flag, token, device_level, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (uid, device_flag) DO UPDATE SET token = excluded.token,
                     device_level = excluded.device_level, updated_at = excluded.updated_at",
                params![uid, device_flag, token_hash, level, now_secs()],
            )?;
        }
        AdminWrite::ClearTokens { uid, device_flag } => {
            let flag = device_flag.map_or(-1, i32::from);
            c.execute(
                "UPDATE devices SET token = '' WHERE uid = ?1 AND (device_flag = ?2 OR ?2 = -1)",
                params![uid, flag],
            )?;
        }
        AdminWrite::ChannelFlags { key, flags: f } => {
            c.execute(
                "INSERT INTO channels (channel_id, channel_type, ban, disband, send_ban, large, allow_stranger)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (channel_id, channel_type) DO UPDATE SET ban = excluded.ban, disband = excluded.disband,
                     send_ban = excluded.send_ban, large = excluded.large, allow_stranger = excluded.allow_stranger",
                params![key.id, key.channel_type, f.ban, f.disband, f.send_ban, f.large, f.allow_stranger],
            )?;
        }
        AdminWrite::AddSubscribers { key, reset, uids } => add_subscribers(c, key, *reset, uids)?,
        AdminWrite::RemoveSubscribers { key, uids } => {
            let Some(row) = channel_row(c, key)? else {
                return Ok(());
            };
            for uid in uids {
                c.execute(
                    "DELETE FROM subscribers WHERE channel = ?1 AND uid = ?2",
                    params![row, uid],
                )?;
                if key.channel_type != channel_type::LIVE {
                    c.execute(
                        "DELETE FROM conversations WHERE channel = ?1 AND uid = ?2",
                        params![row, uid],
                    )?;
                }
            }
        }
        AdminWrite::RemoveAllSubscribers { key } => {
            let Some(row) = channel_row(c, key)? else {
                return Ok(());
            };
            if key.channel_type != channel_type::LIVE {
                c.execute(
                    "DELETE FROM conversations WHERE channel = ?1 AND uid IN (SELECT uid FROM subscribers WHERE channel = ?1)",
                    [row],
                )?;
            }
            c.execute("DELETE FROM subscribers WHERE channel = ?1", [row])?;
        }
        AdminWrite::DeleteChannel { key } => delete_channel(c, key)?,
        AdminWrite::SystemUids { uids, add } => {
            let sql = if *add {
                "INSERT OR IGNORE INTO system_uids (uid) VALUES (?1)"
            } else {
                "DELETE FROM system_uids WHERE uid = ?1"
            };
            for uid in uids {
                c.prepare_cached(sql)?.execute([uid])?;
            }
        }
        AdminWrite::List {
            key,
            kind,
            op,
            uids,
        } => change_list(c, key, *kind, *op, uids)?,
        AdminWrite::Conversation {
            uid,
            key,
            op,
            unread,
        } => change_conversation(c, uid, key, *op, *unread)?,
    }
    Ok(())
}

fn add_subscribers(
    c: &Connection,
    key: &ChannelKey,
    reset: bool,
    uids: &[String],
) -> rusqlite::Result<()> {
    let row = ensure_channel(c, key)?;
    // A deleted channel that gets members again is a fresh one (its seqs go on).
    c.execute(
        "UPDATE channels SET disband = 0, ban = 0, send_ban = 0 WHERE id = ?1 AND disband = 2",
        [row],
    )?;
    if reset {
        c.execute("DELETE FROM subscribers WHERE channel = ?1", [row])?;
    }
    let last = last_seq(c, row)?;
    for uid in uids {
        let added = c.execute(
            "INSERT OR IGNORE INTO subscribers (channel, uid) VALUES (?1, ?2)",
            params![row, uid],
        )?;
        // New members start with nothing unread (HTTP_API.md §5.3); Live channels keep no
        // conversations.
        if added > 0 && key.channel_type != channel_type::LIVE {
            c.execute(
                "INSERT INTO conversations (uid, channel, read_to, deleted_at, updated_at) VALUES (?1, ?2, ?3, 0, ?4)
                 ON CONFLICT (uid, channel) DO UPDATE SET read_to = excluded.read_to, updated_at = excluded.updated_at",
                params![uid, row, last, now_secs()],
            )?;
        }
    }
    Ok(())
}

fn delete_channel(c: &Connection, key: &ChannelKey) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO channels (channel_id, channel_type, disband) VALUES (?1, ?2, 2)
         ON CONFLICT (channel_id, channel_type) DO UPDATE SET disband = 2",
        params![key.id, key.channel_type],
    )?;
    let row = ensure_channel(c, key)?;
    // Keep the seq high-water mark before the messages go (never reuse a seq).
    c.execute(
        "UPDATE channels SET last_seq = MAX(last_seq, (SELECT COALESCE(MAX(seq), 0) FROM messages WHERE channel = ?1))
         WHERE id = ?1",
        [row],
    )?;
    for table in [
        "subscribers",
        "denylist",
        "allowlist",
        "conversations",
        "offline",
    ] {
        c.execute(&format!("DELETE FROM {table} WHERE channel = ?1"), [row])?;
    }
    c.execute("DELETE FROM messages WHERE channel = ?1", [row])?;
    Ok(())
}

/// Person lists belong to the owner (`channel_id` = owner uid, type 1). Denying removes
/// the listed users' conversation with the channel, un-denying brings it back (not for
/// Live channels); allowing on a person channel gives the owner a conversation with each
/// listed user.
fn change_list(
    c: &Connection,
    key: &ChannelKey,
    kind: ListKind,
    op: ListOp,
    uids: &[String],
) -> rusqlite::Result<()> {
    let table = kind.table();
    let row = ensure_channel(c, key)?;
    if matches!(op, ListOp::Set | ListOp::RemoveAll) {
        c.execute(&format!("DELETE FROM {table} WHERE channel = ?1"), [row])?;
    }
    for uid in uids {
        match op {
            ListOp::Add | ListOp::Set => {
                c.execute(
                    &format!("INSERT OR IGNORE INTO {table} (channel, uid) VALUES (?1, ?2)"),
                    params![row, uid],
                )?;
            }
            ListOp::Remove => {
                c.execute(
                    &format!("DELETE FROM {table} WHERE channel = ?1 AND uid = ?2"),
                    params![row, uid],
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
                c.execute(
                    "DELETE FROM conversations WHERE uid = ?1 AND channel = ?2",
                    params![uid, row],
                )?;
            }
        }
        (ListKind::Deny, ListOp::Remove) if !live => {
            for uid in uids {
                c.execute(
                    "INSERT OR IGNORE INTO conversations (uid, channel, read_to, deleted_at, updated_at)
                     VALUES (?1, ?2, (SELECT COALESCE(MAX(seq), 0) FROM messages WHERE channel = ?2), 0, ?3)",
                    params![uid, row, now],
                )?;
            }
        }
        (ListKind::Allow, ListOp::Add) if key.channel_type == channel_type::PERSON => {
            for uid in uids {
                let combined = person_channel_id(&key.id, uid);
                c.execute(
                    "INSERT OR IGNORE INTO channels (channel_id, channel_type) VALUES (?1, ?2)",
                    params![combined, channel_type::PERSON],
                )?;
                c.execute(
                    "INSERT OR IGNORE INTO conversations (uid, channel, read_to, deleted_at, updated_at)
                     SELECT ?1, id, 0, 0, ?3 FROM channels WHERE channel_id = ?2 AND channel_type = 1",
                    params![key.id, combined, now],
                )?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn change_conversation(
    c: &Connection,
    uid: &str,
    key: &ChannelKey,
    op: ConversationOp,
    unread: i64,
) -> rusqlite::Result<()> {
    let row = ensure_channel(c, key)?;
    let last = last_seq(c, row)?;
    c.execute(
        "INSERT OR IGNORE INTO conversations (uid, channel, read_to, deleted_at, updated_at) VALUES (?1, ?2, 0, 0, ?3)",
        params![uid, row, now_secs()],
    )?;
    match op {
        ConversationOp::ClearUnread => {
            c.execute(
                "UPDATE conversations SET read_to = ?3 WHERE uid = ?1 AND channel = ?2",
                params![uid, row, last],
            )?;
        }
        ConversationOp::SetUnread => {
            let target = crate::storage::admin::unread_target(last, unread);
            c.execute(
                "UPDATE conversations SET read_to = MAX(read_to, ?3) WHERE uid = ?1 AND channel = ?2",
                params![uid, row, target],
            )?;
        }
        ConversationOp::Delete => {
            c.execute(
                "UPDATE conversations SET deleted_at = ?3 WHERE uid = ?1 AND channel = ?2",
                params![uid, row, last],
            )?;
        }
    }
    Ok(())
}

/// Converts the plain tokens of rows written before tokens were hashed, with `hash`;
/// returns how many.
///
/// # Errors
/// SQLite errors.
pub fn hash_plain_tokens(c: &Connection, hash: impl Fn(&str) -> String) -> rusqlite::Result<usize> {
    let plain: Vec<(String, i64, String)> = c
        .prepare("SELECT uid, device_flag, token FROM devices WHERE token != '' AND token NOT LIKE 'h1:%'")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (uid, flag, token) in &plain {
        c.execute(
            "UPDATE devices SET token = ?3 WHERE uid = ?1 AND device_flag = ?2",
            params![uid, flag, hash(token)],
        )?;
    }
    if !plain.is_empty() {
        log::info!(
            "storage: {} plain device tokens replaced by their hashes",
            plain.len()
        );
    }
    Ok(plain.len())
}
