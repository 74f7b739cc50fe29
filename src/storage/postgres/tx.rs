//! [`WriteTx`], [`Batch`] and [`WriteStore`] on PostgreSQL.
//!
//! The `postgres` client's calls take `&mut`, the seam's `&self`: the open transaction
//! sits in a `RefCell`, borrowed for one statement at a time (the writer thread alone uses
//! it). Statements are prepared once per connection and kept.

use super::pending::Pending;
use super::ConnInfo;
use crate::message::{ChannelKey, Message};
use crate::storage::admin::AdminWrite;
use crate::storage::tx::{Batch, PledgeWrite, RecentMessage, Result, WriteStore, WriteTx};
use crate::storage::DbError;
use postgres::types::ToSql;
use postgres::{Client, Row, Statement, Transaction};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Requests the writer sent PostgreSQL, each one round trip (statements, prepares,
/// BEGIN, savepoints, COMMIT): `/metrics` shows it as `ruyi_storage_round_trips_total`,
/// and against the batch count it says what a batch costs.
pub static ROUND_TRIPS: AtomicU64 = AtomicU64::new(0);

fn trips(n: u64) {
    ROUND_TRIPS.fetch_add(n, Relaxed);
}

/// (channel row, seq, message id) of the messages a batch wrote.
pub type Written = RefCell<Vec<(i64, i64, i64)>>;

/// Prepared statements of one connection, by their text.
pub type Statements = RefCell<HashMap<&'static str, Statement>>;

/// The open transaction (or savepoint) and the connection's statements.
#[allow(missing_debug_implementations)] // A client transaction: nothing to show.
pub struct PgTx<'a, 'c> {
    tx: RefCell<Transaction<'c>>,
    statements: &'a Statements,
    /// (channel row, seq, message id) of every message this batch wrote: after a COMMIT
    /// whose answer was lost, what tells whether it happened.
    written: &'a Written,
    /// Rows held back until the next other statement (`pending.rs`).
    pending: RefCell<Pending>,
}

impl<'a, 'c> PgTx<'a, 'c> {
    fn new(tx: Transaction<'c>, statements: &'a Statements, written: &'a Written) -> PgTx<'a, 'c> {
        PgTx {
            tx: RefCell::new(tx),
            statements,
            written,
            pending: RefCell::default(),
        }
    }

    /// Writes the held rows (`pending.rs`): before any other statement, a savepoint's end
    /// and the commit.
    pub(super) fn flush(&self) -> Result<()> {
        if self.pending.borrow().is_empty() {
            return Ok(());
        }
        let statements = self.pending.borrow_mut().take();
        for (sql, params) in statements {
            let s = self.statement(sql)?;
            trips(1);
            let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p.as_ref()).collect();
            self.tx.borrow_mut().execute(&s, &refs)?;
        }
        Ok(())
    }

    fn statement(&self, sql: &'static str) -> Result<Statement> {
        if let Some(s) = self.statements.borrow().get(sql) {
            return Ok(s.clone());
        }
        trips(1);
        let s = self.tx.borrow_mut().prepare(sql)?;
        self.statements.borrow_mut().insert(sql, s.clone());
        Ok(s)
    }

    pub(super) fn execute(&self, sql: &'static str, params: &[&(dyn ToSql + Sync)]) -> Result<u64> {
        self.flush()?;
        let s = self.statement(sql)?;
        trips(1);
        Ok(self.tx.borrow_mut().execute(&s, params)?)
    }

    pub(super) fn query(
        &self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>> {
        self.flush()?;
        let s = self.statement(sql)?;
        trips(1);
        Ok(self.tx.borrow_mut().query(&s, params)?)
    }

    pub(super) fn query_opt(
        &self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>> {
        self.flush()?;
        let s = self.statement(sql)?;
        trips(1);
        Ok(self.tx.borrow_mut().query_opt(&s, params)?)
    }

    /// A statement built at run time (a table name): not kept.
    pub(super) fn execute_dynamic(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64> {
        self.flush()?;
        trips(1);
        Ok(self.tx.borrow_mut().execute(sql, params)?)
    }
}

/// A seq or flag as the schema stores it.
fn n(v: impl Into<i64>) -> i64 {
    v.into()
}

/// A stored number back as a `u32` seq (never above `u32::MAX`: written from one).
fn seq(v: i64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

impl WriteTx for PgTx<'_, '_> {
    fn ensure_channel(&self, key: &ChannelKey) -> Result<i64> {
        self.execute(
            "INSERT INTO channels (channel_id, channel_type) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&key.id, &n(key.channel_type)],
        )?;
        let row = self.query(
            "SELECT id FROM channels WHERE channel_id = $1 AND channel_type = $2",
            &[&key.id, &n(key.channel_type)],
        )?;
        Ok(row.first().map(|r| r.get(0)).unwrap_or_default())
    }

    fn channel_high_water(&self, row: i64) -> Result<u32> {
        let r = self.query(
            "SELECT GREATEST(c.last_seq, COALESCE((SELECT MAX(seq) FROM messages WHERE channel = c.id), 0))
             FROM channels c WHERE c.id = $1",
            &[&row],
        )?;
        Ok(r.first().map_or(0, |r| seq(r.get(0))))
    }

    fn recent_messages(&self, row: i64, after: u32) -> Result<Vec<RecentMessage>> {
        let rows = self.query(
            "SELECT from_uid, client_msg_no, message_id, seq FROM messages
             WHERE channel = $1 AND seq > $2 ORDER BY seq",
            &[&row, &n(after)],
        )?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), seq(r.get(3))))
            .collect())
    }

    fn insert_message(&self, row: i64, m: &Message) -> Result<()> {
        // Held, with the channel's counter move, until the next other statement
        // (`pending.rs`). The counter row moves under this transaction's row lock: two
        // writers of one channel queue on it, and a seq one of them took from a stale cache
        // fails on the primary key instead of repeating (issue 16).
        let full = {
            let mut pending = self.pending.borrow_mut();
            pending.message(row, m);
            pending.is_full()
        };
        self.written
            .borrow_mut()
            .push((row, i64::from(m.message_seq), m.message_id));
        if full {
            self.flush()?;
        }
        Ok(())
    }

    fn ensure_conversation(&self, uid: &str, row: i64, now_secs: i64) -> Result<()> {
        self.execute(
            "INSERT INTO conversations (uid, channel, read_to, deleted_at, updated_at)
             VALUES ($1, $2, 0, 0, $3) ON CONFLICT DO NOTHING",
            &[&uid, &row, &now_secs],
        )?;
        Ok(())
    }

    fn offline_max_seq(&self, uid: &str) -> Result<u32> {
        let r = self.query(
            "SELECT COALESCE(MAX(seq), 0) FROM offline WHERE uid = $1",
            &[&uid],
        )?;
        Ok(r.first().map_or(0, |r| seq(r.get(0))))
    }

    fn offline_cursor(&self, uid: &str) -> Result<u32> {
        Ok(self
            .query_opt("SELECT cursor FROM offline_cursor WHERE uid = $1", &[&uid])?
            .map_or(0, |r| seq(r.get(0))))
    }

    fn offline_insert(
        &self,
        uid: &str,
        at: u32,
        channel: i64,
        channel_seq: u32,
        keep: bool,
    ) -> Result<()> {
        self.pending
            .borrow_mut()
            .offline(uid, at, channel, channel_seq, keep);
        Ok(())
    }

    fn offline_trim(&self, uid: &str, bound: u32) -> Result<usize> {
        let gone = self.execute(
            "DELETE FROM offline WHERE uid = $1 AND keep = FALSE AND seq <= (
                SELECT seq FROM offline WHERE uid = $1 AND keep = FALSE
                ORDER BY seq DESC LIMIT 1 OFFSET $2)",
            &[&uid, &n(bound)],
        )?;
        Ok(gone as usize)
    }

    fn offline_holds(&self, uid: &str, channel: i64, channel_seq: u32) -> Result<bool> {
        Ok(self
            .query_opt(
                "SELECT 1 FROM offline WHERE uid = $1 AND channel = $2 AND channel_seq = $3 LIMIT 1",
                &[&uid, &channel, &n(channel_seq)],
            )?
            .is_some())
    }

    fn offline_seq_taken(&self, uid: &str, at: u32) -> Result<bool> {
        Ok(self
            .query_opt(
                "SELECT 1 FROM offline WHERE uid = $1 AND seq = $2",
                &[&uid, &n(at)],
            )?
            .is_some())
    }

    fn offline_mark_delivered(&self, uid: &str, at: u32) -> Result<bool> {
        Ok(self.execute(
            "UPDATE offline SET delivered = TRUE WHERE uid = $1 AND seq = $2",
            &[&uid, &n(at)],
        )? > 0)
    }

    fn offline_raise_cursor(&self, uid: &str, at: u32) -> Result<()> {
        self.execute(
            "INSERT INTO offline_cursor (uid, cursor) VALUES ($1, $2)
             ON CONFLICT (uid) DO UPDATE SET cursor = GREATEST(offline_cursor.cursor, excluded.cursor)",
            &[&uid, &n(at)],
        )?;
        self.execute(
            "DELETE FROM offline WHERE uid = $1 AND seq <= (SELECT cursor FROM offline_cursor WHERE uid = $1)",
            &[&uid],
        )?;
        Ok(())
    }

    fn offline_walk(&self, uid: &str, after: u32, limit: usize) -> Result<Vec<(u32, bool)>> {
        let rows = self.query(
            "SELECT seq, delivered FROM offline WHERE uid = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            &[&uid, &n(after), &(limit as i64)],
        )?;
        Ok(rows.iter().map(|r| (seq(r.get(0)), r.get(1))).collect())
    }

    fn admin(&self, write: &AdminWrite) -> Result<()> {
        super::admin::apply(self, write)
    }

    fn cluster_pledges(&self, write: &PledgeWrite) -> Result<()> {
        super::pledges::write(self, write)
    }
}

struct PgBatch<'a, 'c> {
    tx: PgTx<'a, 'c>,
    /// Set when a savepoint failed because the connection went: nothing can follow.
    broken: bool,
}

impl Batch for PgBatch<'_, '_> {
    fn tx(&self) -> &dyn WriteTx {
        &self.tx
    }

    fn savepoint(&mut self, f: &mut dyn FnMut(&dyn WriteTx) -> Result<()>) -> Result<()> {
        // Any failure of SAVEPOINT, RELEASE or ROLLBACK TO leaves PostgreSQL's transaction
        // aborted, and a COMMIT of an aborted transaction is a rollback that reports
        // success: the batch must fail instead (`broken`).
        // What the batch holds is written first: the savepoint's statements must see it,
        // and a rollback of the savepoint must not take it along.
        if let Err(e) = self.tx.flush() {
            self.broken = true;
            return Err(e);
        }
        let mut outer = self.tx.tx.borrow_mut();
        trips(2); // SAVEPOINT, and RELEASE or ROLLBACK TO
        let inner = match outer.transaction() {
            Ok(inner) => inner,
            Err(e) => {
                self.broken = true;
                return Err(e.into());
            }
        };
        let sp = PgTx::new(inner, self.tx.statements, self.tx.written);
        // Its held rows are written before it is released (or dropped with it).
        let result = f(&sp).and_then(|()| sp.flush());
        let inner = sp.tx.into_inner();
        let ended = match &result {
            Ok(()) => inner.commit(),
            Err(_) => inner.rollback(),
        };
        if let Err(e) = ended {
            self.broken = true;
            return Err(e.into());
        }
        result
    }

    fn broken(&self) -> bool {
        self.broken
    }
}

/// How long a lost COMMIT's outcome is asked for at most (`PgWriter::committed`).
const READ_BACK_FOR: Duration = Duration::from_secs(5);

/// How often it is asked meanwhile.
const READ_BACK_EVERY: Duration = Duration::from_millis(250);

/// How long the writer waits between attempts to reach a PostgreSQL it lost.
const RECONNECT_EVERY: Duration = Duration::from_secs(1);

/// The writer's PostgreSQL connection; reconnects, at most once per
/// [`RECONNECT_EVERY`], when it finds the connection gone (each batch meanwhile fails:
/// its SENDs get reason 15, nothing is acknowledged).
pub struct PgWriter {
    info: ConnInfo,
    client: Option<Client>,
    statements: Statements,
    last_attempt: Option<Instant>,
    /// (node id, incarnation) of this server's lease: every commit checks it holds it.
    fence: Option<(i64, i64)>,
    /// Commit only while leading the cluster too (`WriteStore::lead`).
    lead: bool,
    /// The current batch's messages (see [`PgTx`]).
    written: Written,
}

impl std::fmt::Debug for PgWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgWriter")
            .field("store", &self.info.name)
            .finish()
    }
}

impl PgWriter {
    /// The writer over a connected, migrated `client`.
    pub fn new(info: ConnInfo, client: Client) -> PgWriter {
        PgWriter {
            info,
            client: Some(client),
            statements: RefCell::default(),
            last_attempt: None,
            fence: None,
            lead: false,
            written: RefCell::default(),
        }
    }
}

/// The writer's client, reconnected first when it was lost (see [`PgWriter`]).
fn connected<'a>(
    client: &'a mut Option<Client>,
    info: &ConnInfo,
    last_attempt: &mut Option<Instant>,
    statements: &Statements,
) -> Result<&'a mut Client> {
    if client.as_ref().is_some_and(Client::is_closed) {
        log::error!("storage: lost the connection to {}", info.name);
        *client = None;
    }
    if client.is_none() {
        if last_attempt.is_some_and(|at| at.elapsed() < RECONNECT_EVERY) {
            return Err(DbError::Unavailable(format!(
                "{} is unreachable; retrying every {RECONNECT_EVERY:?}",
                info.name
            )));
        }
        *last_attempt = Some(Instant::now());
        let fresh = info.connect()?;
        log::info!("storage: reconnected to {}", info.name);
        // Prepared statements belonged to the old connection.
        statements.borrow_mut().clear();
        *client = Some(fresh);
    }
    client
        .as_mut()
        .ok_or_else(|| DbError::Unavailable(info.name.clone()))
}

/// Where a batch failed: at its BEGIN (nothing of it sent), at its COMMIT (it may have
/// happened), or between.
enum Failed {
    Begin(postgres::Error),
    Commit(postgres::Error),
    Later(DbError),
}

impl From<DbError> for Failed {
    fn from(e: DbError) -> Failed {
        Failed::Later(e)
    }
}

impl From<postgres::Error> for Failed {
    fn from(e: postgres::Error) -> Failed {
        Failed::Later(e.into())
    }
}

impl PgWriter {
    fn run(
        &mut self,
        f: &mut dyn FnMut(&mut dyn Batch) -> Result<()>,
    ) -> std::result::Result<(), Failed> {
        let client = connected(
            &mut self.client,
            &self.info,
            &mut self.last_attempt,
            &self.statements,
        )?;
        trips(3); // BEGIN, the check below and COMMIT
        self.written.borrow_mut().clear();
        let tx = client.transaction().map_err(Failed::Begin)?;
        let mut batch = PgBatch {
            tx: PgTx::new(tx, &self.statements, &self.written),
            broken: false,
        };
        f(&mut batch)?; // on error, dropping the transaction rolls it back
        batch.tx.flush()?;
        let mut tx = batch.tx.tx.into_inner();
        // PostgreSQL answers COMMIT of an aborted transaction with a rollback that the
        // client reports as success. A statement fails in an aborted one: the batch fails
        // and nothing is acknowledged, whatever aborted it.
        // The same statement fences the commit (CLUSTER.md invariant 2): it holds this
        // server's lease row FOR SHARE until COMMIT, so a takeover (an UPDATE of the row)
        // waits for it, and a batch whose lease lapsed or was taken fails instead of
        // committing ids another server may be handing out too.
        match self.fence {
            None => tx.batch_execute("SELECT 1")?,
            Some((node, incarnation)) => {
                // In a cluster the lead's row is read (and held) too: only the leader
                // commits, and a takeover waits for this commit (`leader.rs`).
                let sql = if self.lead {
                    "SELECT 1 FROM node_lease l, cluster_leader c
                     WHERE l.node_id = $1 AND l.incarnation = $2 AND l.expires_at > now()
                       AND c.id = 1 AND c.node_id = $1 AND c.incarnation = $2 FOR SHARE"
                } else {
                    "SELECT 1 FROM node_lease WHERE node_id = $1 AND incarnation = $2
                     AND expires_at > now() FOR SHARE"
                };
                if tx.query_opt(sql, &[&node, &incarnation])?.is_none() {
                    let what = if self.lead { "lease or lead" } else { "lease" };
                    return Err(DbError::Unavailable(format!(
                        "node {node}'s {what} (incarnation {incarnation}) lapsed or was taken: \
                         refusing to commit"
                    ))
                    .into());
                }
            }
        }
        tx.commit().map_err(Failed::Commit)?;
        Ok(())
    }

    /// A failed COMMIT's outcome: success when it did commit after all ([`Self::committed`]).
    fn after_lost_commit(&mut self, e: postgres::Error) -> Result<()> {
        match self.committed() {
            Some(true) => {
                log::warn!("storage: the answer to a COMMIT was lost ({e}); it had committed");
                Ok(())
            }
            _ => Err(e.into()),
        }
    }

    /// After a COMMIT whose answer was lost with the connection: whether it happened, read
    /// back on a fresh connection by the batch's messages (a transaction is all or
    /// nothing: one of them stored means all were; CLUSTER.md invariant 1). `None` when
    /// that cannot be told: no message in the batch, or PostgreSQL still unreachable.
    ///
    /// PostgreSQL may be restarting (the usual reason the answer was lost): it is asked
    /// again every [`READ_BACK_EVERY`] for up to [`READ_BACK_FOR`], the writer holding its
    /// other batches meanwhile (they could not commit either).
    fn committed(&mut self) -> Option<bool> {
        let written = std::mem::take(&mut *self.written.borrow_mut());
        if written.is_empty() {
            return None;
        }
        let give_up = Instant::now() + READ_BACK_FOR;
        let client = loop {
            (self.client, self.last_attempt) = (None, None);
            match connected(
                &mut self.client,
                &self.info,
                &mut self.last_attempt,
                &self.statements,
            ) {
                Ok(_) => break self.client.as_mut()?,
                Err(_) if Instant::now() < give_up => std::thread::sleep(READ_BACK_EVERY),
                Err(_) => return None,
            }
        };
        let (channels, seqs, ids): (Vec<i64>, Vec<i64>, Vec<i64>) = (
            written.iter().map(|w| w.0).collect(),
            written.iter().map(|w| w.1).collect(),
            written.iter().map(|w| w.2).collect(),
        );
        let found = client
            .query_opt(
                "SELECT 1 FROM messages m
                 JOIN UNNEST($1::bigint[], $2::bigint[], $3::bigint[]) AS w(channel, seq, id)
                   ON m.channel = w.channel AND m.seq = w.seq AND m.message_id = w.id
                 LIMIT 1",
                &[&channels, &seqs, &ids],
            )
            .ok()?;
        Some(found.is_some())
    }
}

impl WriteStore for PgWriter {
    fn batch(&mut self, f: &mut dyn FnMut(&mut dyn Batch) -> Result<()>) -> Result<()> {
        match self.run(f) {
            Ok(()) => Ok(()),
            Err(Failed::Later(e)) => Err(e),
            // The connection died while idle (PostgreSQL restarted, or ended it after
            // `idle_session_timeout`: a FATAL it reads first, or no answer at all):
            // nothing of this batch was sent, so one fresh connection may take it.
            Err(Failed::Begin(e))
                if e.as_db_error().is_none()
                    || self.client.as_ref().is_none_or(Client::is_closed) =>
            {
                log::error!("storage: lost the connection to {} ({e})", self.info.name);
                (self.client, self.last_attempt) = (None, None);
                match self.run(f) {
                    Ok(()) => Ok(()),
                    Err(Failed::Begin(e)) => Err(e.into()),
                    Err(Failed::Later(e)) => Err(e),
                    Err(Failed::Commit(e)) => self.after_lost_commit(e),
                }
            }
            Err(Failed::Begin(e)) => Err(e.into()),
            // The answer to COMMIT was lost: read back whether it happened rather than
            // answer 15 for messages that are stored (and then deduped on resend, with
            // no RECV to the devices that were online).
            Err(Failed::Commit(e)) => self.after_lost_commit(e),
        }
    }

    fn name(&self) -> String {
        self.info.name.clone()
    }

    fn lead(&mut self) {
        self.lead = true;
    }

    fn fence(&mut self, node_id: i64, incarnation: i64) {
        self.fence = Some((node_id, incarnation));
    }
}
