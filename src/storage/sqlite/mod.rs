//! The SQLite store: the embedded default (`<data_dir>/ruyi.db`, rusqlite with SQLite
//! bundled): WAL mode, one writer thread that commits in groups, read connections for
//! everyone else.
//!
//! # Durability
//! `journal_mode = WAL` and, by default, `synchronous = FULL`: each group commit fsyncs the
//! WAL, so a message that got its SENDACK (sent only after its transaction committed)
//! survives `kill -9` *and* power loss. `synchronous = NORMAL` (config `sync_full = false`)
//! also survives `kill -9`, because the WAL is in the OS page cache, but may lose the last
//! commits on power loss. Group commit makes FULL affordable: one fsync per batch, not per
//! message.
//!
//! # Threads
//! Only the writer (`storage/writer.rs`) writes. Readers open their own connections with
//! [`open_reader`]; WAL lets them read while the writer commits. No connection is ever
//! used on an event-loop thread.

pub mod admin;
pub mod schema;
pub mod tx;
pub mod wal;

pub use wal::{checkpointer, wal_bytes};

use super::{ChannelInfo, Conversation, Device, MessageKey, OfflineEntry, StorageError};
use crate::message::{ChannelKey, Message};
use bytes::Bytes;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use ruyi_proto::Flags;
use std::path::{Path, PathBuf};

/// The database file inside the data directory.
pub fn db_path(data_dir: &Path) -> PathBuf {
    data_dir.join("ruyi.db")
}

/// Names the database file in a SQLite error: an operator must see which file failed.
pub fn in_db<E: Into<super::DbError>>(data_dir: &Path) -> impl Fn(E) -> StorageError + '_ {
    move |source| StorageError::Database {
        path: db_path(data_dir),
        source: source.into(),
    }
}

/// Opens (creating if needed) the database and applies migrations; the writer's connection.
///
/// # Errors
/// The directory cannot be created or SQLite fails.
pub fn open_writer(
    data_dir: &Path,
    sync_full: bool,
    wal_max_bytes: u64,
) -> Result<Connection, StorageError> {
    use std::os::unix::fs::OpenOptionsExt;
    // Created 0600 before SQLite opens it (an empty file is an empty database); SQLite
    // gives the WAL and shared-memory files the database file's mode.
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(db_path(data_dir))
        .map_err(|source| StorageError::Dir {
            path: db_path(data_dir),
            source,
        })?;
    let open = || -> rusqlite::Result<Connection> {
        let mut conn = Connection::open(db_path(data_dir))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(
            None,
            "synchronous",
            if sync_full { "FULL" } else { "NORMAL" },
        )?;
        // Checkpoints do not run on the writer: `checkpointer` copies the WAL back into
        // the database from its own connection, so the writer only ever appends to it.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        // When the WAL restarts after a full checkpoint, it is cut back to this size.
        conn.pragma_update(None, "journal_size_limit", wal_max_bytes as i64)?;
        // 64 MiB of page cache: a batch touches the newest pages of many channels at once.
        conn.pragma_update(None, "cache_size", -65536)?;
        conn.busy_timeout(wal::WRITER_BUSY)?;
        schema::migrate(&mut conn)?;
        Ok(conn)
    };
    open().map_err(in_db(data_dir))
}

/// The database file's size now.
pub fn db_bytes(data_dir: &Path) -> u64 {
    std::fs::metadata(db_path(data_dir)).map_or(0, |m| m.len())
}

/// Writes a consistent copy of the database in `data_dir` to `to` (which must not exist),
/// mode 0600, and returns its size. Safe while a server runs and writes: `VACUUM INTO` on
/// a read-only connection copies one snapshot (WAL mode lets the writer go on meanwhile),
/// so unlike `sqlite3 .backup`, which starts over whenever the database changes under it,
/// it finishes under continuous writes. Whatever was committed (SENDACKed) when it began is
/// in the copy; later commits are not.
///
/// # Errors
/// The database cannot be opened or read, or `to` exists or cannot be written.
pub fn backup(data_dir: &Path, to: &Path) -> Result<u64, StorageError> {
    use std::os::unix::fs::OpenOptionsExt;
    let file_error = |source| StorageError::Dir {
        path: to.to_owned(),
        source,
    };
    if !db_path(data_dir).exists() {
        return Err(StorageError::Dir {
            path: db_path(data_dir),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no database here"),
        });
    }
    let conn = Connection::open_with_flags(
        db_path(data_dir),
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    // Created empty and 0600 first (SQLite writes into an empty file), so the copy of
    // every token and message is never readable by others, not even for a moment.
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)
        .map_err(file_error)?;
    let target = to
        .to_str()
        .ok_or_else(|| file_error(std::io::Error::other("the path is not UTF-8")))?;
    conn.execute("VACUUM INTO ?1", [target])?;
    Ok(std::fs::metadata(to).map_err(file_error)?.len())
}

/// A read-only connection for a pool thread.
///
/// # Errors
/// SQLite fails to open the file.
pub fn open_reader(data_dir: &Path) -> Result<Reader, StorageError> {
    let conn = Connection::open_with_flags(
        db_path(data_dir),
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )
    .map_err(in_db(data_dir))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(in_db(data_dir))?;
    Ok(Reader { conn })
}

/// A device's token and level.
/// Maps the message columns starting at `at`: seq, message_id, client_msg_no, from_uid,
/// addressed_to, timestamp, setting, flags, expire, topic, payload, channel_id,
/// channel_type.
fn message_from_row(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Message> {
    Ok(Message {
        message_seq: r.get(at)?,
        message_id: r.get(at + 1)?,
        client_msg_no: r.get(at + 2)?,
        from_uid: r.get(at + 3)?,
        addressed_to: r.get(at + 4)?,
        timestamp: r.get(at + 5)?,
        setting: r.get(at + 6)?,
        flags: Flags(r.get(at + 7)?),
        expire: r.get(at + 8)?,
        topic: r.get(at + 9)?,
        payload: Bytes::from(r.get::<_, Vec<u8>>(at + 10)?),
        channel: ChannelKey::new(r.get::<_, String>(at + 11)?, r.get(at + 12)?),
    })
}

/// A read connection with the queries the pools need.
#[derive(Debug)]
pub struct Reader {
    conn: Connection,
}

impl Reader {
    /// The device registered for (uid, flag).
    ///
    /// # Errors
    /// SQLite errors.
    pub fn device(&self, uid: &str, device_flag: u8) -> super::tx::Result<Option<Device>> {
        let run = || -> rusqlite::Result<Option<Device>> {
            self.conn
                .prepare_cached(
                    "SELECT token, device_level FROM devices WHERE uid = ?1 AND device_flag = ?2",
                )?
                .query_row(params![uid, device_flag], |r| {
                    Ok(Device {
                        token: r.get(0)?,
                        level: r.get(1)?,
                    })
                })
                .optional()
        };
        Ok(run()?)
    }

    /// Flags and lists of a channel, or `None` if it was never created.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn channel(&self, key: &ChannelKey) -> super::tx::Result<Option<ChannelInfo>> {
        let run = || -> rusqlite::Result<Option<ChannelInfo>> {
            let row = self
                .conn
                .prepare_cached("SELECT id, ban, disband, send_ban FROM channels WHERE channel_id = ?1 AND channel_type = ?2")?
                .query_row(params![key.id, key.channel_type], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, bool>(1)?, r.get::<_, bool>(2)?, r.get::<_, bool>(3)?))
                })
                .optional()?;
            let Some((id, ban, disband, send_ban)) = row else {
                return Ok(None);
            };
            let list = |table: &str| -> rusqlite::Result<Vec<String>> {
                let mut stmt = self.conn.prepare_cached(&format!(
                    "SELECT uid FROM {table} WHERE channel = ?1 ORDER BY uid"
                ))?;
                let rows = stmt.query_map([id], |r| r.get(0))?;
                rows.collect()
            };
            Ok(Some(ChannelInfo {
                ban,
                disband,
                send_ban,
                subscribers: list("subscribers")?.into(),
                denylist: list("denylist")?,
                allowlist: list("allowlist")?,
            }))
        };
        Ok(run()?)
    }

    /// The largest message id stored (0 when empty): the id generator's floor.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn max_message_id(&self) -> super::tx::Result<i64> {
        let run = || -> rusqlite::Result<i64> {
            self.conn.query_row(
                "SELECT COALESCE(MAX(message_id), 0) FROM messages",
                [],
                |r| r.get(0),
            )
        };
        Ok(run()?)
    }

    /// The user's offline-queue cursor (0 when never acknowledged).
    ///
    /// # Errors
    /// SQLite errors.
    pub fn offline_cursor(&self, uid: &str) -> super::tx::Result<u32> {
        let run = || -> rusqlite::Result<u32> {
            Ok(self
                .conn
                .prepare_cached("SELECT cursor FROM offline_cursor WHERE uid = ?1")?
                .query_row([uid], |r| r.get(0))
                .optional()?
                .unwrap_or(0))
        };
        Ok(run()?)
    }

    /// Undelivered queue entries with user seq above `after`, oldest first, at most
    /// `limit` and about [`READ_BUDGET_BYTES`] of payload (an entry a device acknowledged
    /// is not offered again: `queue.rs`).
    ///
    /// # Errors
    /// SQLite errors.
    pub fn offline_after(
        &self,
        uid: &str,
        after: u32,
        limit: usize,
    ) -> super::tx::Result<Vec<OfflineEntry>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT o.seq, m.seq, m.message_id, m.client_msg_no, m.from_uid, m.addressed_to, m.timestamp,
                    m.setting, m.flags, m.expire, m.topic, m.payload, c.channel_id, c.channel_type
             FROM offline o
             JOIN messages m ON m.channel = o.channel AND m.seq = o.channel_seq
             JOIN channels c ON c.id = o.channel
             WHERE o.uid = ?1 AND o.seq > ?2 AND o.delivered = 0
             ORDER BY o.seq
             LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![uid, after, limit as i64], |r| {
            Ok(OfflineEntry {
                user_seq: r.get(0)?,
                message: message_from_row(r, 1)?,
            })
        })?;
        Ok(super::within_budget(rows, |e| e.message.payload.len())?)
    }

    /// Messages of a channel with `low < seq <= high`, at most `limit` and about
    /// [`READ_BUDGET_BYTES`] of payload, taking the newest (`newest`) or the oldest of the
    /// range; returned in ascending seq order. `None` when the channel was never created.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn channel_messages(
        &self,
        key: &ChannelKey,
        low: u32,
        high: u32,
        limit: usize,
        newest: bool,
    ) -> super::tx::Result<Option<Vec<Message>>> {
        let row: Option<i64> = self
            .conn
            .prepare_cached("SELECT id FROM channels WHERE channel_id = ?1 AND channel_type = ?2")?
            .query_row(params![key.id, key.channel_type], |r| r.get(0))
            .optional()?;
        let Some(row) = row else { return Ok(None) };
        let sql = format!(
            "SELECT m.seq, m.message_id, m.client_msg_no, m.from_uid, m.addressed_to, m.timestamp,
                    m.setting, m.flags, m.expire, m.topic, m.payload, ?5, ?6
             FROM messages m WHERE m.channel = ?1 AND m.seq > ?2 AND m.seq <= ?3
             ORDER BY m.seq {} LIMIT ?4",
            if newest { "DESC" } else { "ASC" }
        );
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(
            params![row, low, high, limit as i64, key.id, key.channel_type],
            |r| message_from_row(r, 0),
        )?;
        // Read from the end the caller asked for, so a cut keeps what is nearest to it.
        let mut list = super::within_budget(rows, |m| m.payload.len())?;
        list.sort_by_key(|m| m.message_seq);
        Ok(Some(list))
    }

    /// The message of a channel with this message id or client_msg_no (a scan of that
    /// channel's rows: these lookups are rare admin calls, not worth an index on every
    /// insert).
    ///
    /// # Errors
    /// SQLite errors.
    pub fn channel_message_by(
        &self,
        key: &ChannelKey,
        by: MessageKey<'_>,
    ) -> super::tx::Result<Option<Message>> {
        let (column, value): (&str, rusqlite::types::Value) = match by {
            MessageKey::Id(id) => ("message_id", id.into()),
            MessageKey::ClientMsgNo(no) => ("client_msg_no", no.to_owned().into()),
        };
        let sql = format!(
            "SELECT m.seq, m.message_id, m.client_msg_no, m.from_uid, m.addressed_to, m.timestamp,
                    m.setting, m.flags, m.expire, m.topic, m.payload, c.channel_id, c.channel_type
             FROM messages m JOIN channels c ON c.id = m.channel
             WHERE c.channel_id = ?1 AND c.channel_type = ?2 AND m.{column} = ?3
             ORDER BY m.seq LIMIT 1"
        );
        Ok(self
            .conn
            .prepare_cached(&sql)?
            .query_row(params![key.id, key.channel_type, value], |r| {
                message_from_row(r, 0)
            })
            .optional()?)
    }

    /// A user's conversations (at most `limit`): channel, read position, deletion mark;
    /// those whose channel holds the newest message first (message ids grow with time),
    /// so a cap keeps the active ones.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn conversations(&self, uid: &str, limit: usize) -> super::tx::Result<Vec<Conversation>> {
        let run = || -> rusqlite::Result<Vec<Conversation>> {
            let mut stmt = self.conn.prepare_cached(
                "SELECT ch.channel_id, ch.channel_type, c.read_to, c.deleted_at FROM conversations c
                 JOIN channels ch ON ch.id = c.channel WHERE c.uid = ?1
                 ORDER BY (SELECT m.message_id FROM messages m WHERE m.channel = c.channel ORDER BY m.seq DESC LIMIT 1) DESC NULLS LAST,
                     c.updated_at DESC LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![uid, limit as i64], |r| {
                Ok(Conversation {
                    channel: ChannelKey::new(r.get::<_, String>(0)?, r.get(1)?),
                    read_to: r.get(2)?,
                    deleted_at: r.get(3)?,
                })
            })?;
            rows.collect()
        };
        Ok(run()?)
    }

    /// Every system uid (HTTP_API.md §4.4), sorted.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn system_uids(&self) -> super::tx::Result<Vec<String>> {
        let run = || -> rusqlite::Result<Vec<String>> {
            let mut stmt = self
                .conn
                .prepare_cached("SELECT uid FROM system_uids ORDER BY uid")?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            rows.collect()
        };
        Ok(run()?)
    }

    /// Login epochs order logins across a cluster's nodes, which SQLite never serves: 0.
    pub fn next_login_epoch(&self) -> super::tx::Result<i64> {
        Ok(0)
    }

    /// The last seq of a channel (0 when it has no messages).
    ///
    /// # Errors
    /// SQLite errors.
    pub fn last_seq(&self, key: &ChannelKey) -> super::tx::Result<u32> {
        let run = || -> rusqlite::Result<u32> {
            self.conn
                .prepare_cached(
                                    "SELECT MAX(c.last_seq, (SELECT COALESCE(MAX(m.seq), 0) FROM messages m WHERE m.channel = c.id))
                     FROM channels c WHERE c.channel_id = ?1 AND c.channel_type = ?2",
                )?
                .query_row(params![key.id, key.channel_type], |r| r.get(0))
                .optional()
                .map(Option::unwrap_or_default) // a channel never stored: 0
        };
        Ok(run()?)
    }
}
