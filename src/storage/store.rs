//! Which store the server runs on (`Config::store`), and the one [`Reader`] type the pools
//! hold whatever it is.

use super::postgres::{ConnInfo, PgReader, PgSettings, Pool};
use super::tx::WriteStore;
use super::{ChannelInfo, Conversation, DbError, Device, MessageKey, OfflineEntry, StorageError};
use crate::message::{ChannelKey, Message};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// A store, as `--store` names it.
#[derive(Clone, Debug)]
pub enum Store {
    /// `<data_dir>/ruyi.db` (`--store sqlite`, the default).
    Sqlite {
        data_dir: PathBuf,
        sync_full: bool,
        wal_max_bytes: u64,
    },
    /// A PostgreSQL database (`--store postgres://…`).
    Postgres(Box<ConnInfo>, PoolSlot),
}

/// The read pool every [`Reader`] of one PostgreSQL store shares, opened by the first.
#[derive(Clone, Debug, Default)]
pub struct PoolSlot(Arc<Mutex<Option<Arc<Pool>>>>);

impl Store {
    /// The store `url` names: `sqlite` (or empty), or a `postgres://` / `postgresql://` URL.
    ///
    /// # Errors
    /// Any other value, or a PostgreSQL URL that does not parse.
    pub fn parse(
        url: &str,
        data_dir: PathBuf,
        sync_full: bool,
        wal_max_bytes: u64,
        pg: PgSettings,
    ) -> Result<Store, StorageError> {
        match url {
            "" | "sqlite" => Ok(Store::Sqlite {
                data_dir,
                sync_full,
                wal_max_bytes,
            }),
            u if u.starts_with("postgres://") || u.starts_with("postgresql://") => Ok(
                Store::Postgres(Box::new(ConnInfo::parse(u, pg)?), PoolSlot::default()),
            ),
            _ => Err(StorageError::Database {
                path: PathBuf::from("(the --store setting)"),
                source: DbError::Unavailable(
                    "store must be `sqlite` or a postgres:// URL".to_owned(),
                ),
            }),
        }
    }

    /// True for the embedded SQLite store (it has a WAL to bound and a file to back up).
    pub fn is_sqlite(&self) -> bool {
        matches!(self, Store::Sqlite { .. })
    }

    /// The store as logs name it.
    pub fn name(&self) -> String {
        match self {
            Store::Sqlite { data_dir, .. } => super::db_path(data_dir).display().to_string(),
            Store::Postgres(info, _) => info.name.clone(),
        }
    }

    /// Opens the writer's connection (creating and migrating the schema), converts plain
    /// tokens with `hash` (`tokens.rs`), and returns the writer's store.
    ///
    /// # Errors
    /// The store cannot be opened or migrated; the error names it.
    pub fn open_writer(
        &self,
        hash: impl Fn(&str) -> String,
    ) -> Result<Box<dyn WriteStore>, StorageError> {
        match self {
            Store::Sqlite {
                data_dir,
                sync_full,
                wal_max_bytes,
            } => {
                let conn = super::open_writer(data_dir, *sync_full, *wal_max_bytes)?;
                super::sqlite::admin::hash_plain_tokens(&conn, hash)
                    .map_err(super::in_db(data_dir))?;
                Ok(Box::new(super::sqlite::tx::SqliteWriter::new(
                    conn,
                    data_dir,
                    *wal_max_bytes,
                )))
            }
            Store::Postgres(info, _) => {
                let writer = super::postgres::open_writer(info)?;
                let converted = super::postgres::hash_plain_tokens(info, hash)?;
                if converted > 0 {
                    log::info!("storage: {converted} plain device tokens replaced by their hashes");
                }
                Ok(Box::new(writer))
            }
        }
    }

    /// Claims `node_id` for this data directory's `holder` (`postgres/lease.rs`): on
    /// PostgreSQL, where several servers may share the database; `None` on SQLite, whose
    /// data directory lock already allows one server.
    ///
    /// # Errors
    /// The store's errors, or the node id is held by another live server.
    pub fn claim_node(
        &self,
        node_id: u16,
        holder: &str,
    ) -> Result<Option<super::postgres::NodeLease>, StorageError> {
        match self {
            Store::Sqlite { .. } => Ok(None),
            Store::Postgres(info, _) => {
                super::postgres::lease::claim(info, node_id, holder).map(Some)
            }
        }
    }

    /// A read connection for one pool thread.
    ///
    /// # Errors
    /// The store cannot be opened.
    pub fn open_reader(&self) -> Result<Reader, StorageError> {
        match self {
            Store::Sqlite { data_dir, .. } => Ok(Reader::Sqlite(super::open_reader(data_dir)?)),
            Store::Postgres(info, slot) => {
                let mut pool = slot
                    .0
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let pool = match &*pool {
                    Some(pool) => Arc::clone(pool),
                    None => Arc::clone(pool.insert(Arc::new(Pool::open(info)?))),
                };
                Ok(Reader::Postgres(Box::new(PgReader::new(pool))))
            }
        }
    }
}

/// A pool thread's read connection to the store.
#[derive(Debug)]
pub enum Reader {
    Sqlite(super::sqlite::Reader),
    Postgres(Box<PgReader>),
}

/// Calls the same method on whichever reader this is.
macro_rules! both {
    ($self:ident, $r:ident => $call:expr) => {
        match $self {
            Reader::Sqlite($r) => $call,
            Reader::Postgres($r) => $call,
        }
    };
}

impl Reader {
    /// The device registered for (uid, flag).
    ///
    /// # Errors
    /// The store's errors.
    pub fn device(&self, uid: &str, device_flag: u8) -> Result<Option<Device>, DbError> {
        both!(self, r => r.device(uid, device_flag))
    }

    /// Flags and lists of a channel, or `None` if it was never created.
    ///
    /// # Errors
    /// The store's errors.
    pub fn channel(&self, key: &ChannelKey) -> Result<Option<ChannelInfo>, DbError> {
        both!(self, r => r.channel(key))
    }

    /// Every system uid (HTTP_API.md §4.4), sorted.
    ///
    /// # Errors
    /// The store's errors.
    pub fn system_uids(&self) -> Result<Vec<String>, DbError> {
        both!(self, r => r.system_uids())
    }

    /// A login epoch (`cluster/presence.rs`); 0 on SQLite.
    ///
    /// # Errors
    /// The store's errors.
    pub fn next_login_epoch(&self) -> Result<i64, DbError> {
        both!(self, r => r.next_login_epoch())
    }

    /// The largest message id stored (0 when empty): the id generator's floor.
    ///
    /// # Errors
    /// The store's errors.
    pub fn max_message_id(&self) -> Result<i64, DbError> {
        both!(self, r => r.max_message_id())
    }

    /// The user's offline-queue cursor (0 when never acknowledged).
    ///
    /// # Errors
    /// The store's errors.
    pub fn offline_cursor(&self, uid: &str) -> Result<u32, DbError> {
        both!(self, r => r.offline_cursor(uid))
    }

    /// Undelivered queue entries above `after`, oldest first, at most `limit` and about
    /// [`super::READ_BUDGET_BYTES`] of payload.
    ///
    /// # Errors
    /// The store's errors.
    pub fn offline_after(
        &self,
        uid: &str,
        after: u32,
        limit: usize,
    ) -> Result<Vec<OfflineEntry>, DbError> {
        both!(self, r => r.offline_after(uid, after, limit))
    }

    /// Messages of a channel with `low < seq <= high` (see the SQLite reader).
    ///
    /// # Errors
    /// The store's errors.
    pub fn channel_messages(
        &self,
        key: &ChannelKey,
        low: u32,
        high: u32,
        limit: usize,
        newest: bool,
    ) -> Result<Option<Vec<Message>>, DbError> {
        both!(self, r => r.channel_messages(key, low, high, limit, newest))
    }

    /// The message of a channel with this id or client_msg_no.
    ///
    /// # Errors
    /// The store's errors.
    pub fn channel_message_by(
        &self,
        key: &ChannelKey,
        by: MessageKey<'_>,
    ) -> Result<Option<Message>, DbError> {
        both!(self, r => r.channel_message_by(key, by))
    }

    /// A user's conversations (at most `limit`).
    ///
    /// # Errors
    /// The store's errors.
    pub fn conversations(&self, uid: &str, limit: usize) -> Result<Vec<Conversation>, DbError> {
        both!(self, r => r.conversations(uid, limit))
    }

    /// The last seq of a channel (0 when it has no messages).
    ///
    /// # Errors
    /// The store's errors.
    pub fn last_seq(&self, key: &ChannelKey) -> Result<u32, DbError> {
        both!(self, r => r.last_seq(key))
    }
}
