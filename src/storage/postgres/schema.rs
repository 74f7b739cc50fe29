//! The PostgreSQL schema and its migrations, in order, recorded in `ruyi_schema`. Several
//! nodes may start at once: the migrations run under a session advisory lock, so one
//! applies them and the others find them applied.
//!
//! Every number is `BIGINT` (seqs are `u32` on the wire, ids `i64`): one Rust type per
//! column kind keeps the client's strict type checks simple.

use postgres::Client;

/// The advisory lock key held while migrating ("ruyi" in ASCII).
const MIGRATION_LOCK: i64 = 0x7275_7969;

/// Each entry moves the schema from version `i` to `i + 1`. Never edit a released entry.
const MIGRATIONS: &[&str] = &["
    CREATE TABLE devices (
        uid TEXT NOT NULL,
        device_flag BIGINT NOT NULL,
        token TEXT NOT NULL,
        device_level BIGINT NOT NULL DEFAULT 0,
        updated_at BIGINT NOT NULL,
        PRIMARY KEY (uid, device_flag)
    );
    CREATE TABLE channels (
        id BIGSERIAL PRIMARY KEY,
        channel_id TEXT NOT NULL,
        channel_type BIGINT NOT NULL,
        ban BIGINT NOT NULL DEFAULT 0,
        disband BIGINT NOT NULL DEFAULT 0,
        send_ban BIGINT NOT NULL DEFAULT 0,
        large BIGINT NOT NULL DEFAULT 0,
        allow_stranger BIGINT NOT NULL DEFAULT 0,
        last_seq BIGINT NOT NULL DEFAULT 0,
        UNIQUE (channel_id, channel_type)
    );
    CREATE TABLE subscribers (channel BIGINT NOT NULL, uid TEXT NOT NULL, PRIMARY KEY (channel, uid));
    CREATE TABLE denylist (channel BIGINT NOT NULL, uid TEXT NOT NULL, PRIMARY KEY (channel, uid));
    CREATE TABLE allowlist (channel BIGINT NOT NULL, uid TEXT NOT NULL, PRIMARY KEY (channel, uid));
    CREATE TABLE messages (
        channel BIGINT NOT NULL,
        seq BIGINT NOT NULL,
        message_id BIGINT NOT NULL,
        client_msg_no TEXT NOT NULL,
        from_uid TEXT NOT NULL,
        addressed_to TEXT NOT NULL,
        timestamp BIGINT NOT NULL,
        setting BIGINT NOT NULL,
        flags BIGINT NOT NULL,
        expire BIGINT NOT NULL,
        topic TEXT NOT NULL,
        payload BYTEA NOT NULL,
        PRIMARY KEY (channel, seq)
    );
    CREATE TABLE offline (
        uid TEXT NOT NULL,
        seq BIGINT NOT NULL,
        channel BIGINT NOT NULL,
        channel_seq BIGINT NOT NULL,
        delivered BOOLEAN NOT NULL DEFAULT FALSE,
        keep BOOLEAN NOT NULL DEFAULT FALSE,
        PRIMARY KEY (uid, seq)
    );
    CREATE INDEX offline_by_message ON offline (uid, channel, channel_seq);
    CREATE TABLE offline_cursor (uid TEXT PRIMARY KEY, cursor BIGINT NOT NULL);
    CREATE TABLE conversations (
        uid TEXT NOT NULL,
        channel BIGINT NOT NULL,
        read_to BIGINT NOT NULL DEFAULT 0,
        deleted_at BIGINT NOT NULL DEFAULT 0,
        updated_at BIGINT NOT NULL,
        PRIMARY KEY (uid, channel)
    );
", "
    CREATE TABLE system_uids (uid TEXT PRIMARY KEY);
", "
    CREATE TABLE node_lease (
        node_id BIGINT PRIMARY KEY,
        incarnation BIGINT NOT NULL,
        holder TEXT NOT NULL,
        expires_at TIMESTAMPTZ NOT NULL
    );
", "
    CREATE TABLE cluster_leader (
        id BIGINT PRIMARY KEY CHECK (id = 1),
        node_id BIGINT NOT NULL,
        incarnation BIGINT NOT NULL,
        since TIMESTAMPTZ NOT NULL
    );
", "
    CREATE SEQUENCE login_epoch;
", "
    CREATE TABLE cluster_pledges (
        id BIGSERIAL PRIMARY KEY,
        node_id BIGINT NOT NULL,
        incarnation BIGINT NOT NULL,
        last_batch BIGINT NOT NULL,
        written_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        body BYTEA NOT NULL
    );
    CREATE INDEX cluster_pledges_by_age ON cluster_pledges (node_id, incarnation, last_batch);
"];

/// Brings the database to the newest schema (module docs).
///
/// # Errors
/// PostgreSQL errors; the database is left at the last migration that committed.
pub fn migrate(client: &mut Client) -> Result<(), postgres::Error> {
    client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])?;
    let result = (|| {
        client.batch_execute(
            "CREATE TABLE IF NOT EXISTS ruyi_schema (version BIGINT NOT NULL);
             INSERT INTO ruyi_schema (version) SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM ruyi_schema);",
        )?;
        let current: i64 = client
            .query_one("SELECT version FROM ruyi_schema", &[])?
            .get(0);
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
            let mut tx = client.transaction()?;
            tx.batch_execute(sql)?;
            tx.execute("UPDATE ruyi_schema SET version = $1", &[&(i as i64 + 1)])?;
            tx.commit()?;
            log::info!(
                "storage: migrated the PostgreSQL schema to version {}",
                i + 1
            );
        }
        Ok(())
    })();
    let unlock = client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]);
    result.and(unlock.map(|_| ()))
}
