//! The SQLite schema and its migrations, applied in order by `PRAGMA user_version`.
//!
//! Channels get an integer row id that every other table uses; person chats are stored
//! under their combined id (`a@b`, PROTOCOL.md §8.1). Messages are keyed by
//! (channel, seq) in a `WITHOUT ROWID` table, so a channel's history is one range scan.

use rusqlite::Connection;

/// Each entry moves the schema from version `i` to `i + 1`. Never edit a released entry;
/// append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: the IM core.
    "CREATE TABLE devices (
        uid TEXT NOT NULL,
        device_flag INTEGER NOT NULL,
        token TEXT NOT NULL,
        device_level INTEGER NOT NULL DEFAULT 0,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (uid, device_flag)
    ) WITHOUT ROWID;
    CREATE TABLE channels (
        id INTEGER PRIMARY KEY,
        channel_id TEXT NOT NULL,
        channel_type INTEGER NOT NULL,
        ban INTEGER NOT NULL DEFAULT 0,
        disband INTEGER NOT NULL DEFAULT 0,
        send_ban INTEGER NOT NULL DEFAULT 0,
        large INTEGER NOT NULL DEFAULT 0,
        allow_stranger INTEGER NOT NULL DEFAULT 0,
        UNIQUE (channel_id, channel_type)
    );
    CREATE TABLE subscribers (
        channel INTEGER NOT NULL,
        uid TEXT NOT NULL,
        PRIMARY KEY (channel, uid)
    ) WITHOUT ROWID;
    CREATE TABLE denylist (
        channel INTEGER NOT NULL,
        uid TEXT NOT NULL,
        PRIMARY KEY (channel, uid)
    ) WITHOUT ROWID;
    CREATE TABLE allowlist (
        channel INTEGER NOT NULL,
        uid TEXT NOT NULL,
        PRIMARY KEY (channel, uid)
    ) WITHOUT ROWID;
    CREATE TABLE messages (
        channel INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        message_id INTEGER NOT NULL,
        client_msg_no TEXT NOT NULL,
        from_uid TEXT NOT NULL,
        addressed_to TEXT NOT NULL,
        timestamp INTEGER NOT NULL,
        setting INTEGER NOT NULL,
        flags INTEGER NOT NULL,
        expire INTEGER NOT NULL,
        topic TEXT NOT NULL,
        payload BLOB NOT NULL
    );
    CREATE UNIQUE INDEX messages_by_channel_seq ON messages (channel, seq);
    CREATE TABLE offline (
        uid TEXT NOT NULL,
        seq INTEGER NOT NULL,
        channel INTEGER NOT NULL,
        channel_seq INTEGER NOT NULL,
        PRIMARY KEY (uid, seq)
    ) WITHOUT ROWID;
    CREATE TABLE offline_cursor (
        uid TEXT PRIMARY KEY,
        cursor INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE conversations (
        uid TEXT NOT NULL,
        channel INTEGER NOT NULL,
        read_to INTEGER NOT NULL DEFAULT 0,
        deleted_at INTEGER NOT NULL DEFAULT 0,
        updated_at INTEGER NOT NULL,
                PRIMARY KEY (uid, channel)
    ) WITHOUT ROWID;",
    // 2: a channel's seq high-water mark, kept when its messages are deleted, so seqs are
    // never reused.
    "ALTER TABLE channels ADD COLUMN last_seq INTEGER NOT NULL DEFAULT 0;",
    // 3: offline entries a device acknowledged, entries the per-user bound never trims
    // (`storage/queue.rs`), and the index the requeue's "already queued?" check needs.
    "ALTER TABLE offline ADD COLUMN delivered INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE offline ADD COLUMN keep INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX offline_by_message ON offline (uid, channel, channel_seq);",
    // 4: system uids (HTTP_API.md §4.4): they skip send checks and get no pushes.
    "CREATE TABLE system_uids (uid TEXT PRIMARY KEY) WITHOUT ROWID;",
];

/// Brings `conn` to the newest schema, one migration per transaction.
///
/// # Errors
/// Any SQLite error; the database is left at the last migration that committed.
pub fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let current: usize = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i + 1)?;
        tx.commit()?;
        log::info!("storage: migrated schema to version {}", i + 1);
    }
    Ok(())
}

/// The newest schema version.
pub const VERSION: usize = MIGRATIONS.len();
