//! The WAL's bound: a checkpointer thread that folds it back into the database, and the
//! writer's backstop for when the checkpointer falls behind.
//!
//! # Why the WAL needs more than passive checkpoints
//! SQLite starts the WAL over from its beginning only when a write transaction begins
//! while the whole WAL is checkpointed. Under steady writes a `PASSIVE` checkpoint (which
//! never blocks anyone) always ends a few frames behind the writer, so the WAL never starts
//! over and grows without bound (964 MB in 30 s at 1,800 messages/s, before this). So once
//! the WAL passes `wal_max_bytes`, the checkpointer runs a passive pass and right after it
//! `RESTART`, which has only what was written meanwhile left to copy: it waits (at most
//! `RESTART_WAIT`) for readers of older frames and the writer's current transaction, and
//! the writer's next transaction starts the WAL over, cut back to `journal_size_limit`.
//!
//! # Why the writer has a backstop
//! A thread that only watches cannot bound what another thread writes: when the disk is
//! slow to sync a checkpoint, or the checkpointer is not scheduled for a while, the writer
//! goes on appending (a CI machine busy with other I/O saw 12 MiB over a 1 MiB bound). So
//! past twice the bound the writer itself, before its next transaction, waits for the
//! checkpointer's pass and restarts the WAL ([`WalGuard`]). Commits slow down to what the
//! disk can take back, which is what a bound means. The one exception is a reader holding
//! an old snapshot (a backup, a long history read): no checkpoint can restart the WAL
//! then, and the writer goes on, trying again with a growing pause, so it is not starved.
//!
//! # Disk use
//! The database plus about `wal_max_bytes`, twice that plus one batch at most, except
//! while a reader pins an old snapshot and for up to a second after (the pause before the
//! next try). A batch is at most `max_commit_batch` messages: with large messages and a
//! small bound, one batch can be larger than the bound, and the WAL is then cut back to
//! that batch's size.

use super::db_path;
use rusqlite::Connection;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a RESTART checkpoint waits for readers and the writer at most.
const RESTART_WAIT: Duration = Duration::from_millis(50);

/// How often the checkpointer folds the WAL back into the database.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// How often the checkpointer looks at the WAL's size (a `stat`, no database work).
const WATCH_EVERY: Duration = Duration::from_millis(5);

/// The longest pause between two RESTARTs that a pinned WAL made fail.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// How long the writer's backstop waits, at most, for the checkpointer's pass to end.
const WRITER_WAIT: Duration = Duration::from_secs(2);

/// The writer's busy timeout outside the backstop (`open_writer`).
pub(super) const WRITER_BUSY: Duration = Duration::from_secs(5);

/// The WAL file's size now (0 when there is none).
pub fn wal_bytes(data_dir: &Path) -> u64 {
    std::fs::metadata(data_dir.join("ruyi.db-wal")).map_or(0, |m| m.len())
}

/// What one `RESTART` checkpoint found.
enum Restart {
    /// Everything was copied and no reader is left in the WAL: the next write transaction
    /// starts it over.
    Done,
    /// Another connection is checkpointing (SQLite gives no wait for that lock).
    OtherCheckpointer,
    /// A reader holds frames the checkpoint could not get past.
    Pinned,
}

/// Runs `PRAGMA wal_checkpoint(RESTART)` on `conn`, within `conn`'s busy timeout.
fn restart(conn: &Connection) -> rusqlite::Result<Restart> {
    // The row is (busy, frames in the WAL, frames checkpointed); SQLite leaves both counts
    // at -1 when it could not take the checkpoint lock at all.
    let (busy, log): (i64, i64) = conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })?;
    Ok(match (busy, log) {
        (0, _) => Restart::Done,
        (_, -1) => Restart::OtherCheckpointer,
        _ => Restart::Pinned,
    })
}

/// A pause that doubles after each failure, up to [`MAX_BACKOFF`].
#[derive(Debug)]
struct Backoff {
    pause: Duration,
    retry_at: Instant,
}

impl Backoff {
    fn new() -> Backoff {
        Backoff {
            pause: CHECKPOINT_EVERY,
            retry_at: Instant::now(),
        }
    }

    fn due(&self) -> bool {
        Instant::now() >= self.retry_at
    }

    fn failed(&mut self) {
        self.retry_at = Instant::now() + self.pause;
        self.pause = (self.pause * 2).min(MAX_BACKOFF);
    }

    fn succeeded(&mut self) {
        self.pause = CHECKPOINT_EVERY;
    }
}

/// The writer's side of the bound: past `hard_bytes` (twice `wal_max_bytes`), the writer
/// restarts the WAL itself before its next transaction (module docs).
#[derive(Debug)]
pub struct WalGuard {
    data_dir: PathBuf,
    hard_bytes: u64,
    backoff: Backoff,
}

impl WalGuard {
    /// The backstop for the database in `data_dir` with the checkpointer's bound
    /// `wal_max_bytes`.
    pub fn new(data_dir: &Path, wal_max_bytes: u64) -> WalGuard {
        WalGuard {
            data_dir: data_dir.to_path_buf(),
            hard_bytes: wal_max_bytes.saturating_mul(2),
            backoff: Backoff::new(),
        }
    }

    /// Called by the writer with no transaction open. Costs a `stat` while the WAL is
    /// within twice its bound; past it, waits until the WAL can start over (up to
    /// [`WRITER_WAIT`] for a checkpointer's pass), unless a reader pins it.
    pub fn make_room(&mut self, conn: &Connection) {
        if !self.backoff.due() || wal_bytes(&self.data_dir) <= self.hard_bytes {
            return;
        }
        let _ = conn.busy_timeout(RESTART_WAIT);
        let deadline = Instant::now() + WRITER_WAIT;
        loop {
            match restart(conn) {
                Ok(Restart::Done) => {
                    self.backoff.succeeded();
                    break;
                }
                Ok(Restart::OtherCheckpointer) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                // The checkpointer's pass is slow (a large WAL, a slow disk), not stuck:
                // commit this batch and wait again before the next, with no pause.
                Ok(Restart::OtherCheckpointer) => {
                    log::debug!("WAL past twice its bound; the checkpointer's pass is slow");
                    break;
                }
                Ok(Restart::Pinned) => {
                    log::debug!("WAL past twice its bound and pinned; the writer goes on");
                    self.backoff.failed();
                    break;
                }
                Err(e) => {
                    log::warn!("the writer's restart checkpoint failed: {e}");
                    self.backoff.failed();
                    break;
                }
            }
        }
        let _ = conn.busy_timeout(WRITER_BUSY);
    }
}

/// Runs checkpoints from its own connection until `stop` is set, so the writer never pays
/// for copying pages back into the database (module docs).
///
/// # Why it watches the size, not the clock
/// The WAL grows by what is written between two looks. Looking every `CHECKPOINT_EVERY`
/// let it reach 8 MiB over a 1 MiB bound on a machine that wrote ~60 MiB/s (a 4 KiB
/// message costs about five pages with its index and queue entry); a `stat` every
/// `WATCH_EVERY` keeps the overshoot to what is written in a few milliseconds. While a
/// reader holds an old snapshot no checkpoint can restart the WAL, and RESTARTs are tried
/// with a growing pause (up to a second) so the writer is not starved meanwhile.
pub fn checkpointer(
    data_dir: PathBuf,
    wal_max_bytes: u64,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    let conn = match Connection::open(db_path(&data_dir)) {
        Ok(c) => c,
        Err(e) => {
            log::error!("checkpointer cannot open the database: {e}; the WAL will grow");
            return;
        }
    };
    // A RESTART holds new write transactions back while it waits: it may wait this long
    // at most, so the writer (busy timeout 5 s) never fails a batch on it and SENDACKs
    // stall at most this much; a busy RESTART is tried again at the next look.
    let _ = conn.busy_timeout(RESTART_WAIT);
    let _ = conn.pragma_update(None, "journal_size_limit", wal_max_bytes as i64);
    // The WAL's size at the last RESTART: it only shrinks at the writer's next
    // transaction, and an idle server must not RESTART at every look meanwhile.
    let mut restarted_at = None;
    let stalled = crate::fault::checkpointer_stalled();
    let mut last_pass = Instant::now();
    // After a pinned RESTART, the next waits, doubling to a second: each RESTART holds the
    // writer back up to RESTART_WAIT, and one every few milliseconds would starve it.
    let mut backoff = Backoff::new();
    while !stop.load(std::sync::atomic::Ordering::Acquire) {
        std::thread::sleep(WATCH_EVERY);
        if stalled {
            continue;
        }
        let wal = wal_bytes(&data_dir);
        // Over the bound with a RESTART due: now. Otherwise a passive pass each period.
        let restart_due = wal > wal_max_bytes && restarted_at != Some(wal) && backoff.due();
        if !restart_due && last_pass.elapsed() < CHECKPOINT_EVERY {
            continue;
        }
        last_pass = Instant::now();
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            log::warn!("checkpoint failed: {e}");
            continue;
        }
        if !restart_due {
            continue;
        }
        restarted_at = Some(wal);
        match restart(&conn) {
            Ok(Restart::Done) => {
                backoff.succeeded();
                log::debug!("WAL past {wal_max_bytes} bytes: restarted");
            }
            // The writer's backstop is checkpointing: look again at the next watch.
            Ok(Restart::OtherCheckpointer) => restarted_at = None,
            Ok(Restart::Pinned) => {
                restarted_at = None;
                backoff.failed();
                log::debug!("WAL restart checkpoint busy; trying again later");
            }
            Err(e) => log::warn!("restart checkpoint failed: {e}"),
        }
    }
    // A last full pass so a clean shutdown leaves a small WAL.
    let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
}
