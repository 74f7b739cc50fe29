//! The PostgreSQL store (`--store postgres://user:password@host:port/db`): the same
//! operations and guarantees as SQLite's, on a server other machines can share (issue 16).
//!
//! # Durability
//! Each writer batch is one transaction committed with `synchronous_commit` on (the
//! server's default, which the connection does not change): a SENDACK goes out only after
//! PostgreSQL has flushed the commit to its WAL.
//!
//! # Connections
//! See [`conn`]: the writer's own connection, a bounded pool for the read paths, optional
//! TLS. Every statement is bounded by `statement_timeout`.

pub mod admin;
pub mod conn;
pub mod leader;
pub mod lease;
pub mod pending;
mod pledges;
pub mod schema;
pub mod tx;

pub use conn::{ConnInfo, PgSettings, Pool};
pub use lease::{NodeLease, Renewal};

use super::{ChannelInfo, Conversation, DbError, Device, MessageKey, OfflineEntry, StorageError};
use crate::message::{ChannelKey, Message};
use bytes::Bytes;
use postgres::types::ToSql;
use postgres::Row;
use ruyi_proto::Flags;
use std::sync::Arc;

/// Connects the writer and brings the schema up to date.
///
/// # Errors
/// The server cannot be reached, or a migration fails; the error names host and database.
pub fn open_writer(info: &ConnInfo) -> Result<tx::PgWriter, StorageError> {
    let mut client = info.connect().map_err(info.fail())?;
    schema::migrate(&mut client)
        .map_err(DbError::from)
        .map_err(info.fail())?;
    Ok(tx::PgWriter::new(info.clone(), client))
}

/// Converts tokens stored before hashing (see the SQLite version); returns how many.
///
/// # Errors
/// PostgreSQL errors.
pub fn hash_plain_tokens(
    info: &ConnInfo,
    hash: impl Fn(&str) -> String,
) -> Result<usize, StorageError> {
    let run = || -> Result<usize, DbError> {
        let mut client = info.connect()?;
        let plain = client.query(
            "SELECT uid, device_flag, token FROM devices WHERE token != '' AND token NOT LIKE 'h1:%'",
            &[],
        )?;
        for r in &plain {
            let (uid, flag, token): (String, i64, String) = (r.get(0), r.get(1), r.get(2));
            client.execute(
                "UPDATE devices SET token = $3 WHERE uid = $1 AND device_flag = $2",
                &[&uid, &flag, &hash(&token)],
            )?;
        }
        Ok(plain.len())
    };
    run().map_err(info.fail())
}

/// A pool thread's reads: each statement borrows a connection from the shared [`Pool`].
pub struct PgReader {
    pool: Arc<Pool>,
}

impl std::fmt::Debug for PgReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgReader")
            .field("pool", &self.pool)
            .finish()
    }
}

fn n(v: impl Into<i64>) -> i64 {
    v.into()
}

fn seq(v: i64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// The message columns from `at`: seq, message_id, client_msg_no, from_uid, addressed_to,
/// timestamp, setting, flags, expire, topic, payload, channel_id, channel_type.
fn message_from_row(r: &Row, at: usize) -> Message {
    Message {
        message_seq: seq(r.get(at)),
        message_id: r.get(at + 1),
        client_msg_no: r.get(at + 2),
        from_uid: r.get(at + 3),
        addressed_to: r.get(at + 4),
        timestamp: i32::try_from(r.get::<_, i64>(at + 5)).unwrap_or_default(),
        setting: u8::try_from(r.get::<_, i64>(at + 6)).unwrap_or_default(),
        flags: Flags(u8::try_from(r.get::<_, i64>(at + 7)).unwrap_or_default()),
        expire: u32::try_from(r.get::<_, i64>(at + 8)).unwrap_or_default(),
        topic: r.get(at + 9),
        payload: Bytes::from(r.get::<_, Vec<u8>>(at + 10)),
        channel: ChannelKey::new(
            r.get::<_, String>(at + 11),
            u8::try_from(r.get::<_, i64>(at + 12)).unwrap_or_default(),
        ),
    }
}

impl PgReader {
    /// A reader on `pool`.
    pub fn new(pool: Arc<Pool>) -> PgReader {
        PgReader { pool }
    }

    /// Runs one read. A pooled connection that died while idle (PostgreSQL restarted) is
    /// only found out by using it: such a failure is tried once more on a fresh one, which
    /// is safe for a read.
    fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, DbError> {
        let mut lease = self.pool.get()?;
        match lease.query(sql, params) {
            Err(e) if lease.is_closed() => {
                drop(lease);
                // The others idle since before the restart are as dead.
                self.pool.discard_idle();
                log::debug!("storage: a pooled connection was lost ({e}); reading again");
                Ok(self.pool.get()?.query(sql, params)?)
            }
            read => Ok(read?),
        }
    }

    /// See the SQLite reader.
    pub fn device(&self, uid: &str, device_flag: u8) -> Result<Option<Device>, DbError> {
        let rows = self.query(
            "SELECT token, device_level FROM devices WHERE uid = $1 AND device_flag = $2",
            &[&uid, &n(device_flag)],
        )?;
        Ok(rows.first().map(|r| Device {
            token: r.get(0),
            level: u8::try_from(r.get::<_, i64>(1)).unwrap_or_default(),
        }))
    }

    /// See the SQLite reader.
    pub fn channel(&self, key: &ChannelKey) -> Result<Option<ChannelInfo>, DbError> {
        let rows = self.query(
            "SELECT id, ban, disband, send_ban FROM channels WHERE channel_id = $1 AND channel_type = $2",
            &[&key.id, &n(key.channel_type)],
        )?;
        let Some(r) = rows.first() else {
            return Ok(None);
        };
        let id: i64 = r.get(0);
        let flag = |i: usize| r.get::<_, i64>(i) != 0;
        let (ban, disband, send_ban) = (flag(1), flag(2), flag(3));
        let list = |table: &str| -> Result<Vec<String>, DbError> {
            Ok(self
                .query(
                    &format!(
                        "SELECT uid FROM {table} WHERE channel = $1 ORDER BY uid COLLATE \"C\""
                    ),
                    &[&id],
                )?
                .iter()
                .map(|r| r.get(0))
                .collect())
        };
        Ok(Some(ChannelInfo {
            ban,
            disband,
            send_ban,
            subscribers: list("subscribers")?.into(),
            denylist: list("denylist")?,
            allowlist: list("allowlist")?,
        }))
    }

    /// See the SQLite reader.
    pub fn max_message_id(&self) -> Result<i64, DbError> {
        let rows = self.query("SELECT COALESCE(MAX(message_id), 0) FROM messages", &[])?;
        Ok(rows.first().map_or(0, |r| r.get(0)))
    }

    /// See the SQLite reader.
    pub fn offline_cursor(&self, uid: &str) -> Result<u32, DbError> {
        let rows = self.query("SELECT cursor FROM offline_cursor WHERE uid = $1", &[&uid])?;
        Ok(rows.first().map_or(0, |r| seq(r.get(0))))
    }

    /// See the SQLite reader.
    pub fn offline_after(
        &self,
        uid: &str,
        after: u32,
        limit: usize,
    ) -> Result<Vec<OfflineEntry>, DbError> {
        let rows = self.query(
            "SELECT o.seq, m.seq, m.message_id, m.client_msg_no, m.from_uid, m.addressed_to, m.timestamp,
                    m.setting, m.flags, m.expire, m.topic, m.payload, c.channel_id, c.channel_type
             FROM offline o
             JOIN messages m ON m.channel = o.channel AND m.seq = o.channel_seq
             JOIN channels c ON c.id = o.channel
             WHERE o.uid = $1 AND o.seq > $2 AND o.delivered = FALSE
             ORDER BY o.seq
             LIMIT $3",
            &[&uid, &n(after), &(limit as i64)],
        )?;
        let entries = rows.iter().map(|r| {
            Ok::<_, DbError>(OfflineEntry {
                user_seq: seq(r.get(0)),
                message: message_from_row(r, 1),
            })
        });
        super::within_budget(entries, |e| e.message.payload.len())
    }

    /// See the SQLite reader.
    pub fn channel_messages(
        &self,
        key: &ChannelKey,
        low: u32,
        high: u32,
        limit: usize,
        newest: bool,
    ) -> Result<Option<Vec<Message>>, DbError> {
        let rows = self.query(
            "SELECT id FROM channels WHERE channel_id = $1 AND channel_type = $2",
            &[&key.id, &n(key.channel_type)],
        )?;
        let Some(row) = rows.first().map(|r| r.get::<_, i64>(0)) else {
            return Ok(None);
        };
        let sql = format!(
            "SELECT m.seq, m.message_id, m.client_msg_no, m.from_uid, m.addressed_to, m.timestamp,
                    m.setting, m.flags, m.expire, m.topic, m.payload, $5::TEXT, $6::BIGINT
             FROM messages m WHERE m.channel = $1 AND m.seq > $2 AND m.seq <= $3
             ORDER BY m.seq {} LIMIT $4",
            if newest { "DESC" } else { "ASC" }
        );
        let rows = self.query(
            &sql,
            &[
                &row,
                &n(low),
                &n(high),
                &(limit as i64),
                &key.id,
                &n(key.channel_type),
            ],
        )?;
        let messages = rows
            .iter()
            .map(|r| Ok::<_, DbError>(message_from_row(r, 0)));
        // Read from the end the caller asked for, so a cut keeps what is nearest to it.
        let mut list = super::within_budget(messages, |m| m.payload.len())?;
        list.sort_by_key(|m| m.message_seq);
        Ok(Some(list))
    }

    /// See the SQLite reader.
    pub fn channel_message_by(
        &self,
        key: &ChannelKey,
        by: MessageKey<'_>,
    ) -> Result<Option<Message>, DbError> {
        let select =
            "SELECT m.seq, m.message_id, m.client_msg_no, m.from_uid, m.addressed_to, m.timestamp,
                    m.setting, m.flags, m.expire, m.topic, m.payload, c.channel_id, c.channel_type
             FROM messages m JOIN channels c ON c.id = m.channel
             WHERE c.channel_id = $1 AND c.channel_type = $2";
        let rows = match by {
            MessageKey::Id(id) => self.query(
                &format!("{select} AND m.message_id = $3 ORDER BY m.seq LIMIT 1"),
                &[&key.id, &n(key.channel_type), &id],
            )?,
            MessageKey::ClientMsgNo(no) => self.query(
                &format!("{select} AND m.client_msg_no = $3 ORDER BY m.seq LIMIT 1"),
                &[&key.id, &n(key.channel_type), &no],
            )?,
        };
        Ok(rows.first().map(|r| message_from_row(r, 0)))
    }

    /// See the SQLite reader.
    pub fn conversations(&self, uid: &str, limit: usize) -> Result<Vec<Conversation>, DbError> {
        let rows = self.query(
            "SELECT ch.channel_id, ch.channel_type, c.read_to, c.deleted_at FROM conversations c
             JOIN channels ch ON ch.id = c.channel WHERE c.uid = $1
                 ORDER BY (SELECT m.message_id FROM messages m WHERE m.channel = c.channel ORDER BY m.seq DESC LIMIT 1) DESC NULLS LAST,
                     c.updated_at DESC LIMIT $2",
            &[&uid, &(limit as i64)],
        )?;
        Ok(rows
            .iter()
            .map(|r| Conversation {
                channel: ChannelKey::new(
                    r.get::<_, String>(0),
                    u8::try_from(r.get::<_, i64>(1)).unwrap_or_default(),
                ),
                read_to: seq(r.get(2)),
                deleted_at: seq(r.get(3)),
            })
            .collect())
    }

    /// See the SQLite reader.
    pub fn system_uids(&self) -> Result<Vec<String>, DbError> {
        let rows = self.query(
            "SELECT uid FROM system_uids ORDER BY uid COLLATE \"C\"",
            &[],
        )?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// A number larger than every one handed out before, cluster-wide: orders logins on
    /// different nodes (`cluster/presence.rs`).
    pub fn next_login_epoch(&self) -> Result<i64, DbError> {
        let rows = self.query("SELECT nextval('login_epoch')", &[])?;
        Ok(rows.first().map_or(0, |r| r.get(0)))
    }

    /// See the SQLite reader.
    pub fn last_seq(&self, key: &ChannelKey) -> Result<u32, DbError> {
        let rows = self.query(
            "SELECT GREATEST(c.last_seq, COALESCE((SELECT MAX(m.seq) FROM messages m WHERE m.channel = c.id), 0))
             FROM channels c WHERE c.channel_id = $1 AND c.channel_type = $2",
            &[&key.id, &n(key.channel_type)],
        )?;
        Ok(rows.first().map_or(0, |r| seq(r.get(0))))
    }
}
