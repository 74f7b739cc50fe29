//! Crash policy, and the failpoints that test it and the WAL's bound.
//!
//! # A panic stops the process
//! A panic on a pool thread (the storage writer, a channel worker, an auth or HTTP worker)
//! or a loop used to end that thread alone, leaving a server that accepts SENDs it will
//! never answer. The binary installs [`exit_on_panic`]: the panic is reported, then the
//! whole process exits with [`PANIC_EXIT_CODE`], so a supervisor (systemd, Kubernetes)
//! restarts it at once. Nothing acknowledged is lost: a SENDACK is only sent after its
//! commit, and a restart after an abrupt exit is the `kill -9` case `tests/crash.rs`
//! covers. Restarting one pool inside a live process was rejected: the pools share state
//! (the writer's caches, the registry, queues in flight) that a panic may have left half
//! changed.
//!
//! # The failpoint
//! `RUYI_FAILPOINT_PANIC=<client_msg_no>` makes the storage writer panic when it meets a
//! message with that `client_msg_no` (`tests/crash.rs` proves the exit with it). Unset, it
//! costs one comparison against an empty value per message.
//!
//! `RUYI_FAILPOINT_CHECKPOINTER=stall` keeps the SQLite checkpointer thread from ever
//! checkpointing, as a checkpointer that the scheduler or a slow disk holds back would:
//! `tests/datadir.rs` proves with it that the writer alone keeps the WAL bounded
//! (`storage/sqlite/wal.rs`). Read once, when the checkpointer starts.
//!
//! `RUYI_FAILPOINT_MUTE_BATCHES=<n>` makes a cluster leader publish none of its commit
//! batches after the `n`-th and leave them out of its heartbeat's count: they are lost on
//! the bus and no node can tell, as when a leader is killed between a commit and its
//! publication. `tests/cluster_chat.rs` proves with it that a successor writes what
//! the dead leader reserved (`cluster/inherit.rs`). Read once.
//!
//! `RUYI_FAILPOINT_SLOW_BATCHES=<ms>` makes a cluster follower handle each commit batch
//! that many milliseconds late, as a busy relay thread would: `tests/cluster_chat.rs`
//! proves with it that a device that moved here after the leader pushed it a message is
//! not pushed it again (`cluster/devices.rs`). Read once.
//!
//! `RUYI_FAILPOINT_MUTE_LOGIN_NOTICES=1` makes a cluster node publish none of its login
//! notices, as if each were lost on the bus: `tests/cluster_moves.rs` proves with it that
//! the leader's stamp still comes to cover such a device (`cluster/devices.rs`). Read once.
//!
//! `RUYI_FAILPOINT_SLOW_LOGINS=<ms>` makes an auth worker take that long over each login
//! it answers, as workers starved of CPU in a storm would: `tests/limits.rs` proves with it
//! that a login left waiting past its deadline is dropped without its key exchange
//! (`auth/`). Read once.

use std::sync::OnceLock;

/// The exit status after a panic (`EX_SOFTWARE` in sysexits.h: an internal error).
pub const PANIC_EXIT_CODE: i32 = 70;

/// Threads whose name starts with this only run a third-party call and hand its result
/// over a channel (a PostgreSQL connect, which panics when the process is out of file
/// descriptors): they hold none of the shared state a panic could leave half changed, so
/// their panic is reported and ends only them; the waiting side sees an error.
pub const CONTAINED: &str = "ruyi-contained-";

/// Installs the crash policy (module docs). Call once, before the server starts.
pub fn exit_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        let thread = std::thread::current();
        if thread.name().is_some_and(|n| n.starts_with(CONTAINED)) {
            return; // its owner sees the panic as an error (see CONTAINED)
        }
        log::error!(
            "thread {} panicked: stopping the process (exit {PANIC_EXIT_CODE}) so a supervisor \
             restarts it; acknowledged messages are durable",
            thread.name().unwrap_or("unnamed")
        );
        std::process::exit(PANIC_EXIT_CODE);
    }));
}

/// Panics when `client_msg_no` is the failpoint's value (module docs).
///
/// # Panics
/// That is its purpose, and only when `RUYI_FAILPOINT_PANIC` names this message.
pub fn check_panic(client_msg_no: &str) {
    static WANTED: OnceLock<String> = OnceLock::new();
    let wanted = WANTED.get_or_init(|| std::env::var("RUYI_FAILPOINT_PANIC").unwrap_or_default());
    if !wanted.is_empty() && wanted == client_msg_no {
        panic!("failpoint RUYI_FAILPOINT_PANIC reached for {client_msg_no:?}");
    }
}

/// True when `RUYI_FAILPOINT_CHECKPOINTER=stall` (module docs).
pub fn checkpointer_stalled() -> bool {
    std::env::var("RUYI_FAILPOINT_CHECKPOINTER").is_ok_and(|v| v == "stall")
}

/// `RUYI_FAILPOINT_MUTE_BATCHES`, read once (module docs).
fn muted_after() -> Option<u64> {
    static AFTER: OnceLock<Option<u64>> = OnceLock::new();
    *AFTER.get_or_init(|| {
        std::env::var("RUYI_FAILPOINT_MUTE_BATCHES")
            .ok()
            .and_then(|v| v.parse().ok())
    })
}

/// True when commit batch `number` must not be published (module docs).
pub fn batch_muted(number: u64) -> bool {
    muted_after().is_some_and(|after| number > after)
}

/// How late a follower handles each commit batch (module docs); zero unless set.
pub fn batch_delay() -> std::time::Duration {
    static DELAY: OnceLock<std::time::Duration> = OnceLock::new();
    *DELAY.get_or_init(|| millis_from_env("RUYI_FAILPOINT_SLOW_BATCHES"))
}

/// How long an auth worker takes over each login beyond its own work (module docs); zero
/// unless set.
pub fn login_delay() -> std::time::Duration {
    static DELAY: OnceLock<std::time::Duration> = OnceLock::new();
    *DELAY.get_or_init(|| millis_from_env("RUYI_FAILPOINT_SLOW_LOGINS"))
}

/// The milliseconds in environment variable `name`; zero when unset or not a number.
fn millis_from_env(name: &str) -> std::time::Duration {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(std::time::Duration::ZERO, std::time::Duration::from_millis)
}

/// True when login notices must not be published (module docs).
pub fn login_notices_muted() -> bool {
    static MUTED: OnceLock<bool> = OnceLock::new();
    *MUTED
        .get_or_init(|| std::env::var("RUYI_FAILPOINT_MUTE_LOGIN_NOTICES").is_ok_and(|v| v == "1"))
}

/// The commit batches a leader's heartbeat counts, of the `published` it numbered.
pub fn batches_counted(published: u64) -> u64 {
    muted_after().map_or(published, |after| published.min(after))
}
