//! [`WriteTx`] on a SQLite connection (the writer's, inside its transaction).

use crate::message::{ChannelKey, Message};
use crate::storage::admin::AdminWrite;
use crate::storage::tx::{Batch, RecentMessage, Result, WriteStore, WriteTx};
use rusqlite::{params, Connection};

impl WriteTx for Connection {
    fn ensure_channel(&self, key: &ChannelKey) -> Result<i64> {
        let run = || -> rusqlite::Result<i64> {
            self.prepare_cached(
                "INSERT OR IGNORE INTO channels (channel_id, channel_type) VALUES (?1, ?2)",
            )?
            .execute(params![key.id, key.channel_type])?;
            self.prepare_cached(
                "SELECT id FROM channels WHERE channel_id = ?1 AND channel_type = ?2",
            )?
            .query_row(params![key.id, key.channel_type], |r| r.get(0))
        };
        Ok(run()?)
    }

    fn channel_high_water(&self, row: i64) -> Result<u32> {
        let run = || -> rusqlite::Result<u32> {
            self.prepare_cached(
                "SELECT MAX((SELECT COALESCE(MAX(seq), 0) FROM messages WHERE channel = ?1),
                            (SELECT last_seq FROM channels WHERE id = ?1))",
            )?
            .query_row([row], |r| r.get(0))
        };
        Ok(run()?)
    }

    fn recent_messages(&self, row: i64, after: u32) -> Result<Vec<RecentMessage>> {
        let run = || -> rusqlite::Result<Vec<RecentMessage>> {
            self.prepare_cached(
                "SELECT from_uid, client_msg_no, message_id, seq FROM messages
                 WHERE channel = ?1 AND seq > ?2 ORDER BY seq",
            )?
            .query_map(params![row, after], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?
            .collect()
        };
        Ok(run()?)
    }

    fn insert_message(&self, row: i64, m: &Message) -> Result<()> {
        let run = || -> rusqlite::Result<()> {
            self.prepare_cached(
                "INSERT INTO messages (channel, seq, message_id, client_msg_no, from_uid, addressed_to, timestamp,
                                       setting, flags, expire, topic, payload)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )?
            .execute(params![
                row,
                m.message_seq,
                m.message_id,
                m.client_msg_no,
                m.from_uid,
                m.addressed_to,
                m.timestamp,
                m.setting,
                m.flags.0 & !ruyi_proto::Flags::DUP,
                m.expire,
                m.topic,
                &m.payload[..],
            ])?;
            Ok(())
        };
        Ok(run()?)
    }

    fn ensure_conversation(&self, uid: &str, row: i64, now_secs: i64) -> Result<()> {
        let run = || -> rusqlite::Result<()> {
            self.prepare_cached(
                "INSERT OR IGNORE INTO conversations (uid, channel, read_to, deleted_at, updated_at)
                 VALUES (?1, ?2, 0, 0, ?3)",
            )?
            .execute(params![uid, row, now_secs])?;
            Ok(())
        };
        Ok(run()?)
    }

    fn offline_max_seq(&self, uid: &str) -> Result<u32> {
        let run = || -> rusqlite::Result<u32> {
            self.prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM offline WHERE uid = ?1")?
                .query_row([uid], |r| r.get(0))
        };
        Ok(run()?)
    }

    fn offline_cursor(&self, uid: &str) -> Result<u32> {
        let run = || -> rusqlite::Result<u32> {
            use rusqlite::OptionalExtension;
            Ok(self
                .prepare_cached("SELECT cursor FROM offline_cursor WHERE uid = ?1")?
                .query_row([uid], |r| r.get(0))
                .optional()?
                .unwrap_or(0))
        };
        Ok(run()?)
    }

    fn offline_insert(
        &self,
        uid: &str,
        seq: u32,
        channel: i64,
        channel_seq: u32,
        keep: bool,
    ) -> Result<()> {
        self.prepare_cached(
            "INSERT INTO offline (uid, seq, channel, channel_seq, keep) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![uid, seq, channel, channel_seq, keep])?;
        Ok(())
    }

    fn offline_trim(&self, uid: &str, bound: u32) -> Result<usize> {
        let run = || -> rusqlite::Result<usize> {
            self.prepare_cached(
                "DELETE FROM offline WHERE uid = ?1 AND keep = 0 AND seq <= (
                    SELECT seq FROM offline WHERE uid = ?1 AND keep = 0
                    ORDER BY seq DESC LIMIT 1 OFFSET ?2)",
            )?
            .execute(params![uid, bound])
        };
        Ok(run()?)
    }

    fn offline_holds(&self, uid: &str, channel: i64, channel_seq: u32) -> Result<bool> {
        let run = || -> rusqlite::Result<bool> {
            self.prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM offline WHERE uid = ?1 AND channel = ?2 AND channel_seq = ?3)",
            )?
            .query_row(params![uid, channel, channel_seq], |r| r.get(0))
        };
        Ok(run()?)
    }

    fn offline_seq_taken(&self, uid: &str, seq: u32) -> Result<bool> {
        let run = || -> rusqlite::Result<bool> {
            self.prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM offline WHERE uid = ?1 AND seq = ?2)",
            )?
            .query_row(params![uid, seq], |r| r.get(0))
        };
        Ok(run()?)
    }

    fn offline_mark_delivered(&self, uid: &str, seq: u32) -> Result<bool> {
        let run = || -> rusqlite::Result<bool> {
            Ok(self
                .prepare_cached("UPDATE offline SET delivered = 1 WHERE uid = ?1 AND seq = ?2")?
                .execute(params![uid, seq])?
                > 0)
        };
        Ok(run()?)
    }

    fn offline_raise_cursor(&self, uid: &str, seq: u32) -> Result<()> {
        let run = || -> rusqlite::Result<()> {
            self.prepare_cached(
                "INSERT INTO offline_cursor (uid, cursor) VALUES (?1, ?2)
                 ON CONFLICT (uid) DO UPDATE SET cursor = MAX(cursor, excluded.cursor)",
            )?
            .execute(params![uid, seq])?;
            self.prepare_cached(
                "DELETE FROM offline WHERE uid = ?1 AND seq <= (SELECT cursor FROM offline_cursor WHERE uid = ?1)",
            )?
            .execute([uid])?;
            Ok(())
        };
        Ok(run()?)
    }

    fn offline_walk(&self, uid: &str, after: u32, limit: usize) -> Result<Vec<(u32, bool)>> {
        let run = || -> rusqlite::Result<Vec<(u32, bool)>> {
            self.prepare_cached(
                "SELECT seq, delivered FROM offline WHERE uid = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
            )?
            .query_map(params![uid, after, limit as i64], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect()
        };
        Ok(run()?)
    }

    fn admin(&self, write: &AdminWrite) -> Result<()> {
        let run = || -> rusqlite::Result<()> { super::admin::apply(self, write) };
        Ok(run()?)
    }
}

/// The SQLite writer's connection (opened with [`super::open_writer`]).
#[derive(Debug)]
pub struct SqliteWriter {
    conn: Connection,
    wal: super::wal::WalGuard,
}

impl SqliteWriter {
    /// The writer over `conn`, keeping the WAL of the database in `data_dir` within twice
    /// `wal_max_bytes` (`wal.rs`).
    pub fn new(conn: Connection, data_dir: &std::path::Path, wal_max_bytes: u64) -> SqliteWriter {
        SqliteWriter {
            conn,
            wal: super::wal::WalGuard::new(data_dir, wal_max_bytes),
        }
    }
}

struct SqliteBatch<'a> {
    tx: rusqlite::Transaction<'a>,
}

impl Batch for SqliteBatch<'_> {
    fn tx(&self) -> &dyn WriteTx {
        &*self.tx
    }

    fn savepoint(&mut self, f: &mut dyn FnMut(&dyn WriteTx) -> Result<()>) -> Result<()> {
        let sp = self.tx.savepoint()?;
        match f(&*sp) {
            Ok(()) => Ok(sp.commit()?),
            Err(e) => Err(e), // dropping `sp` rolls it back
        }
    }

    fn broken(&self) -> bool {
        self.tx.is_autocommit()
    }
}

impl WriteStore for SqliteWriter {
    fn batch(&mut self, f: &mut dyn FnMut(&mut dyn Batch) -> Result<()>) -> Result<()> {
        // Before the transaction: a restart checkpoint needs the writer between two.
        self.wal.make_room(&self.conn);
        // IMMEDIATE: the write lock is taken here, through the busy handler. A deferred
        // transaction reads first and upgrades later, and an upgrade that meets the
        // checkpointer's RESTART (which holds writers back for a moment) fails at once with
        // "database is locked" instead of waiting.
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut batch = SqliteBatch { tx };
        f(&mut batch)?; // on error, dropping the transaction rolls it back
        batch.tx.commit()?;
        Ok(())
    }

    fn name(&self) -> String {
        self.conn.path().unwrap_or("?").to_owned()
    }
}
