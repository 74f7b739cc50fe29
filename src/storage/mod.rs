//! Everything Ruyi keeps: where a reader of the storage code starts.
//!
//! # The seam
//! The server talks to storage in three ways, and each is a seam a backend fills:
//! - **The writer** (`writer.rs`): one thread takes jobs in batches and applies each batch
//!   in one transaction: messages get their channel seq, dedupe and offline-queue slots
//!   (`append.rs`, `channels.rs`, `queue.rs`), the HTTP API's writes arrive as values
//!   (`admin.rs`), lane jobs requeue missed deliveries. These rules are written once,
//!   against [`tx::WriteTx`], a trait of primitive operations inside the open transaction;
//!   only after `COMMIT` are outcomes handed on (SENDACK after commit).
//! - **Readers** ([`Reader`]): one per pool thread (auth, channel workers, HTTP), for
//!   lookups and history: its own SQLite connection, or a share of PostgreSQL's bounded
//!   pool (`postgres/conn.rs`).
//! - **What is not SQL**: the data directory's lock and permissions (here), and what only
//!   the writer's memory holds (`exposure.rs`, `lru.rs`).
//!
//! Two backends fill it: SQLite (`sqlite/`), the embedded default, and PostgreSQL
//! (`postgres/`), chosen by `--store` (`store.rs`). Nothing outside `storage/` names
//! either's crate.

pub mod admin;
/// What a store's operations fail with: the backend's own error, shown as it is.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// SQLite said no.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL (or the connection to it) said no. Shown with its causes: the client's
    /// own text is a category ("db error", "error performing TLS handshake").
    #[error("{}", causes(.0))]
    Postgres(#[from] ::postgres::Error),
    /// The store cannot be reached now (a reconnect is pending).
    #[error("{0}")]
    Unavailable(String),
}

/// True when an I/O error is among `e`'s causes (a lost link, a timeout, a failed TLS
/// handshake: tokio-rustls reports its errors as I/O).
fn io_caused(e: &dyn std::error::Error) -> bool {
    let mut cause = e.source();
    while let Some(c) = cause {
        if c.is::<std::io::Error>() {
            return true;
        }
        cause = c.source();
    }
    false
}

/// `e` and each error that caused it, joined by ": ".
fn causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

impl DbError {
    /// True when the store could not answer now (rather than refusing a statement): the
    /// HTTP API answers 503, and the caller may try again. On PostgreSQL: the connection
    /// (closed, or an I/O error on the way), and the server's transient refusals: SQLSTATE
    /// classes 08 (connection), 53 (out of resources; not 53400, a setting), 57 (the
    /// statement timeout, a shutdown; not 57P04, a dropped database), 40 (serialization
    /// failure, deadlock) and 55P03 (lock not available). A value that cannot be decoded
    /// is not: it will not go away.
    pub fn is_unavailable(&self) -> bool {
        match self {
            DbError::Unavailable(_) => true,
            DbError::Postgres(e) => match e.as_db_error() {
                Some(db) => {
                    let code = db.code().code();
                    (["08", "53", "57", "40"].iter().any(|c| code.starts_with(c))
                        || code == "55P03")
                        && !["53400", "57P04"].contains(&code)
                }
                None => e.is_closed() || io_caused(e),
            },
            DbError::Sqlite(_) => false,
        }
    }
}
pub mod append;
pub mod channels;
pub mod exposure;
pub mod lru;
pub mod postgres;
pub mod queue;
pub mod sqlite;
pub mod store;
pub mod tx;
pub mod writer;

use crate::message::{ChannelKey, Message};
use std::path::{Path, PathBuf};

pub use postgres::PgSettings;
pub use sqlite::{
    backup, checkpointer, db_bytes, db_path, in_db, open_reader, open_writer, wal_bytes,
};
pub use store::{Reader, Store};

/// Storage errors.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// SQLite said no.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The data directory cannot be created.
    #[error("data directory {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The store said no at start (opening, migrating, first reads).
    #[error("database {}: {source}", path.display())]
    Database {
        /// The database: a file, or a server and database name (no password).
        path: PathBuf,
        /// What it said.
        source: DbError,
    },
    /// The writer thread is gone (shutting down).
    #[error("the storage writer has stopped")]
    WriterGone,
    /// Another process serves this data directory.
    #[error(
        "data directory {} is in use by another ruyi process (it holds {}); one server per \
         data directory: two would corrupt each other's seqs",
        path.display(),
        path.join(LOCK_FILE).display()
    )]
    Locked {
        /// The directory.
        path: PathBuf,
    },
}

/// The lock file inside the data directory (`lock_data_dir`).
pub const LOCK_FILE: &str = "ruyi.lock";

/// An exclusive lock on a data directory, held while this value lives (a `flock` on
/// [`LOCK_FILE`], released by the kernel when the process exits, however it exits).
#[derive(Debug)]
pub struct DataDirLock {
    _file: std::fs::File,
}

/// Clears the group and other bits of `path` beyond `mode`.
fn tighten(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let current = std::fs::metadata(path)?.permissions().mode() & 0o777;
    if current & !mode != 0 {
        log::warn!(
            "{}: mode {current:o} let others read it; set to {mode:o}",
            path.display()
        );
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(current & mode))?;
    }
    Ok(())
}

/// Creates `path` (it must not exist) for its owner only (0600) holding `bytes`, synced:
/// the data directory's secrets and identity.
///
/// # Errors
/// The file exists, or cannot be written.
pub fn write_new_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes).and_then(|()| file.sync_all())
}

/// This data directory on this running machine, as a node-lease holder
/// (`postgres/lease.rs`): the same only for a process that now holds this directory's
/// lock, so a claim may take over a live-looking lease from it (the process before was
/// killed). Made of a random id kept in the directory (`instance.id`; not `token.key`,
/// which servers sharing a database must share), this boot's id, the host name and the
/// directory's canonical path, hashed: a copied directory, another container or another
/// machine differs in at least one.
///
/// # Errors
/// `instance.id` cannot be read or created.
pub fn lease_holder(data_dir: &Path) -> Result<String, StorageError> {
    use sha2::{Digest, Sha256};
    let path = data_dir.join("instance.id");
    let error = |source| StorageError::Dir {
        path: path.clone(),
        source,
    };
    let id = match std::fs::read_to_string(&path) {
        Ok(id) => id,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let random = ruyi_proto::crypto::random_secret()
                .map_err(|e| error(std::io::Error::other(e.to_string())))?;
            let id: String = random[..16].iter().map(|b| format!("{b:02x}")).collect();
            write_new_private(&path, id.as_bytes()).map_err(error)?;
            id
        }
        Err(e) => return Err(error(e)),
    };
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let dir = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    let mut h = Sha256::new();
    for part in [
        id.trim().as_bytes(),
        read("/proc/sys/kernel/random/boot_id").trim().as_bytes(),
        read("/proc/sys/kernel/hostname").trim().as_bytes(),
        dir.as_os_str().as_encoded_bytes(),
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    Ok(h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Creates the data directory if needed (mode 0700: it holds tokens and every message;
/// an existing one is tightened to it, and its files to 0600) and takes its lock.
///
/// # Errors
/// The directory or lock file cannot be created, or another process holds the lock
/// ([`StorageError::Locked`]).
pub fn lock_data_dir(data_dir: &Path) -> Result<DataDirLock, StorageError> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let dir_error = |source| StorageError::Dir {
        path: data_dir.to_owned(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)
        .map_err(dir_error)?;
    // A directory (and files) from before this rule, or made by hand, are tightened too:
    // the mode given at creation does nothing to what exists.
    tighten(data_dir, 0o700).map_err(dir_error)?;
    for name in [
        "ruyi.db",
        "ruyi.db-wal",
        "ruyi.db-shm",
        LOCK_FILE,
        "token.key",
    ] {
        let path = data_dir.join(name);
        if path.exists() {
            tighten(&path, 0o600).map_err(dir_error)?;
        }
    }
    let path = data_dir.join(LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(dir_error)?;
    // SAFETY: flock on a descriptor this function owns; it reads and writes no memory.
    let locked = unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            libc::LOCK_EX | libc::LOCK_NB,
        )
    };
    if locked != 0 {
        let e = std::io::Error::last_os_error();
        return Err(if e.kind() == std::io::ErrorKind::WouldBlock {
            StorageError::Locked {
                path: data_dir.to_owned(),
            }
        } else {
            dir_error(e)
        });
    }
    // For an operator who finds the file: who holds it.
    let _ = file.set_len(0);
    let _ = writeln!(file, "{}", std::process::id());
    Ok(DataDirLock { _file: file })
}

/// Payload bytes one read of several messages loads at most (at least one message). An
/// HTTP answer carries about this much (`crate::answer`), and without it a history request
/// for 10,000 messages of 1 MiB would load 10 GB before anything could trim it.
pub const READ_BUDGET_BYTES: usize = 2 << 20;

/// Collects rows until their payloads pass [`READ_BUDGET_BYTES`] (at least one row), so a
/// read stops early whatever the backend.
///
/// # Errors
/// The first row that failed.
pub(crate) fn within_budget<T, E>(
    rows: impl Iterator<Item = Result<T, E>>,
    payload_len: impl Fn(&T) -> usize,
) -> Result<Vec<T>, E> {
    let mut out = Vec::new();
    let mut bytes = 0;
    for row in rows {
        let row = row?;
        bytes += payload_len(&row);
        out.push(row);
        if bytes >= READ_BUDGET_BYTES {
            break;
        }
    }
    Ok(out)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    /// The registered token.
    pub token: String,
    /// 0 slave, 1 master.
    pub level: u8,
}

/// A channel's flags and member lists, as the channel workers cache them.
#[derive(Clone, Debug, Default)]
pub struct ChannelInfo {
    /// Sends fail with 19 (group); logins refused (person channel of a uid).
    pub ban: bool,
    /// Sends fail with 24.
    pub disband: bool,
    /// Person channel of a uid: that user cannot send (25).
    pub send_ban: bool,
    /// Subscribers, sorted; shared with every message's recipient list.
    pub subscribers: std::sync::Arc<[String]>,
    /// Blacklist, sorted.
    pub denylist: Vec<String>,
    /// Whitelist, sorted.
    pub allowlist: Vec<String>,
}

/// How to find one message of a channel.
#[derive(Clone, Copy, Debug)]
pub enum MessageKey<'a> {
    /// By message id.
    Id(i64),
    /// By the sender's client_msg_no.
    ClientMsgNo(&'a str),
}

/// One row of a user's conversation list.
#[derive(Clone, Debug)]
pub struct Conversation {
    /// The channel (combined id for person chats).
    pub channel: ChannelKey,
    /// Last seq the user has read.
    pub read_to: u32,
    /// Hidden up to this seq (0: not deleted).
    pub deleted_at: u32,
}

/// One offline-queue entry with its message.
#[derive(Clone, Debug)]
pub struct OfflineEntry {
    /// Per-user queue seq.
    pub user_seq: u32,
    /// The message (its `message_seq` is the channel's).
    pub message: Message,
}
