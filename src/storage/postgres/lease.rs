//! Node leases: one row per node id in PostgreSQL, renewed on the database's own clock,
//! so two live servers on one database never share a node id (message ids embed it: two
//! would hand out the same ids). The first piece of the cluster's membership
//! (`../shared/CLUSTER.md`, "Leases, ownership, node identity"; issue 17).
//!
//! # Claiming
//! A server claims its `--node-id` at start. The claim succeeds when the row is free, its
//! lease expired, or its holder is this same data directory on this same running machine
//! (`storage::lease_holder`), whose lock we now hold: the holder before us is dead, as
//! after a `kill -9`. Otherwise it waits up to [`TTL`] plus a margin for the lease to
//! lapse, and fails naming the node id if the other holder keeps renewing.
//!
//! # Holding, and fencing
//! A thread renews every [`RENEW_EVERY`], and keeps trying while PostgreSQL is away. What
//! makes the lease safe is not the renewer but the fence: every commit of the storage
//! writer reads its lease row `FOR SHARE` (`tx.rs`, CLUSTER.md invariant 2), so a batch
//! commits only while this incarnation holds an unexpired lease on PostgreSQL's own clock,
//! and a takeover waits for commits in flight. A lapsed lease (the renewer cut off, the
//! process paused) fails batches (SENDACK 15) until renewed; a lease taken by another
//! incarnation fails them for good, and the renewer then panics so the crash policy
//! (`fault.rs`) stops the process. A clean stop deletes the row, so a restart claims at
//! once.
//!
//! # In a cluster, renewed only while the node is safe ([`NodeLease::gate`])
//! A cluster node renews while it is on the bus (CLUSTER.md invariant 7). A follower off
//! the bus lets its lease lapse, so it cannot take the lead it could not exercise. A
//! leader off the bus renews only while no other node has renewed within [`FRESH`]: when
//! the others still renew, they reach one another and it is the one cut off, so its lease
//! lapses, one of them takes the lead, and it stops. When no one else renews, the bus is
//! down for everyone, and the leader keeps serving what needs no other node.

use super::ConnInfo;
use crate::storage::{DbError, StorageError};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a lease lives without renewal: also how long a dead leader's lead outlives
/// it (docs/CLUSTER.md, failover).
pub const TTL: Duration = Duration::from_secs(6);

/// How often a lease is renewed: a PostgreSQL that misses five renewals in a row costs
/// the lease.
pub const RENEW_EVERY: Duration = Duration::from_secs(1);

/// A lease renewed within this long belongs to a node that is on the bus now (module
/// docs): two and a half renewals.
pub const FRESH: Duration = Duration::from_millis(2500);

/// What a cluster node's renewer does at its next renewal (module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Renewal {
    /// Renew: the node is on the bus (or not in a cluster).
    Renew,
    /// Renew unless another node renewed within [`FRESH`]: the leader, off the bus.
    UnlessOthersRenew,
    /// Let the lease lapse: a follower off the bus.
    Skip,
}

/// Decides each renewal (module docs); runs on the renewer's thread.
pub type Gate = Box<dyn Fn() -> Renewal + Send + Sync>;

/// A claimed node id, renewed until dropped (then released).
pub struct NodeLease {
    stop: Arc<AtomicBool>,
    gate: Arc<std::sync::Mutex<Option<Gate>>>,
    renewer: Option<std::thread::JoinHandle<()>>,
    info: ConnInfo,
    node_id: i64,
    incarnation: i64,
}

impl std::fmt::Debug for NodeLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeLease")
            .field("node_id", &self.node_id)
            .field("incarnation", &self.incarnation)
            .finish()
    }
}

impl NodeLease {
    /// The node id leased.
    pub fn node_id(&self) -> i64 {
        self.node_id
    }

    /// This claim's incarnation: 1 for the node id's first, one more at each claim.
    pub fn incarnation(&self) -> i64 {
        self.incarnation
    }

    /// Renews from now on only as `gate` says (module docs); without one, always.
    pub fn gate(&self, gate: Gate) {
        *self.gate.lock().unwrap_or_else(|p| p.into_inner()) = Some(gate);
    }

    /// Watches (and takes when free) the cluster's lead for as long as this lease is held
    /// (`leader.rs`).
    ///
    /// # Errors
    /// The watcher's thread cannot be spawned.
    pub fn watch_leader(&self) -> std::io::Result<Arc<super::leader::Leader>> {
        super::leader::watch(
            &self.info,
            self.node_id,
            self.incarnation,
            Arc::clone(&self.stop),
            Arc::clone(&self.gate),
        )
    }
}

fn ttl_ms() -> i64 {
    i64::try_from(TTL.as_millis()).unwrap_or(i64::MAX)
}

/// Claims `node_id` for `holder` (module docs).
///
/// # Errors
/// PostgreSQL errors, or the node id is held by another live server.
pub fn claim(info: &ConnInfo, node_id: u16, holder: &str) -> Result<NodeLease, StorageError> {
    let fail = info.fail();
    let mut client = info.connect().map_err(&fail)?;
    let node = i64::from(node_id);
    let give_up = Instant::now() + TTL + Duration::from_secs(3);
    let mut waiting = false;
    let incarnation = loop {
        let row = client
            .query_opt(
                "INSERT INTO node_lease (node_id, incarnation, holder, expires_at)
                 VALUES ($1, 1, $2, now() + $3::bigint * interval '1 millisecond')
                 ON CONFLICT (node_id) DO UPDATE SET incarnation = node_lease.incarnation + 1,
                     holder = excluded.holder, expires_at = excluded.expires_at
                 WHERE node_lease.expires_at < now() OR node_lease.holder = excluded.holder
                 RETURNING incarnation",
                &[&node, &holder, &ttl_ms()],
            )
            .map_err(|e| fail(DbError::from(e)))?;
        if let Some(row) = row {
            break row.get::<_, i64>(0);
        }
        if Instant::now() >= give_up {
            return Err(fail(DbError::Unavailable(format!(
                "node id {node_id} is in use by another server on this database (its lease \
                 keeps being renewed); give each server its own --node-id"
            ))));
        }
        if !waiting {
            waiting = true;
            log::warn!(
                "node id {node_id} is leased by another server; waiting up to {:?} for the lease to lapse",
                TTL
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    log::info!("storage: node id {node_id} claimed (incarnation {incarnation})");
    let stop = Arc::new(AtomicBool::new(false));
    let gate = Arc::new(std::sync::Mutex::new(None));
    let renewer = {
        let (stop, info, gate) = (Arc::clone(&stop), info.clone(), Arc::clone(&gate));
        std::thread::Builder::new()
            .name("ruyi-lease".into())
            .spawn(move || renew(&info, node, incarnation, &stop, &gate))
            .map_err(|e| {
                fail(DbError::Unavailable(format!(
                    "cannot start the lease thread: {e}"
                )))
            })?
    };
    Ok(NodeLease {
        stop,
        gate,
        renewer: Some(renewer),
        info: info.clone(),
        node_id: node,
        incarnation,
    })
}

fn renew(
    info: &ConnInfo,
    node: i64,
    incarnation: i64,
    stop: &AtomicBool,
    gate: &std::sync::Mutex<Option<Gate>>,
) {
    let mut client = None;
    let mut next = Instant::now() + RENEW_EVERY;
    let mut held_back = false;
    let mut seen = Seen::new();
    while !stop.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(100));
        if Instant::now() < next {
            continue;
        }
        next = Instant::now() + RENEW_EVERY;
        if client.as_ref().is_none_or(postgres::Client::is_closed) {
            client = info.connect().ok();
        }
        let Some(c) = client.as_mut() else {
            log::warn!(
                "storage: cannot reach {} to renew node {node}'s lease",
                info.name
            );
            continue;
        };
        let decision = gate
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map_or(Renewal::Renew, |g| g());
        let hold_back = match decision {
            Renewal::Renew => false,
            Renewal::Skip => true,
            Renewal::UnlessOthersRenew => match others_renewing(c, node, &mut seen) {
                Ok(others) => others,
                Err(e) => {
                    log::warn!("storage: reading the other nodes' leases failed: {e}");
                    client = None;
                    continue;
                }
            },
        };
        if hold_back != held_back {
            held_back = hold_back;
            if hold_back {
                log::warn!(
                    "cluster: node {node} is off the bus while {}; letting its lease lapse \
                     (in {TTL:?}) so that a node on the bus serves instead",
                    if decision == Renewal::Skip {
                        "it follows"
                    } else {
                        "the others still renew theirs"
                    }
                );
            } else {
                log::info!("cluster: node {node} renews its lease again");
            }
        }
        if hold_back {
            continue;
        }
        match c.execute(
            "UPDATE node_lease SET expires_at = now() + $3::bigint * interval '1 millisecond'
             WHERE node_id = $1 AND incarnation = $2",
            &[&node, &incarnation, &ttl_ms()],
        ) {
            Ok(1) => {}
            Ok(_) => panic!(
                "node {node}'s lease was taken by another server (incarnation {incarnation} \
                 lost it): two servers would share a node id; stopping"
            ),
            Err(e) => {
                log::warn!("storage: renewing node {node}'s lease failed: {e}");
                client = None;
            }
        }
    }
}

/// The other nodes' leases as the last look saw them: (node, incarnation) → expiry in ms.
type Seen = std::collections::HashMap<(i64, i64), i64>;

/// True when another node renewed its lease within [`FRESH`] (PostgreSQL's clock) and
/// since the last look: the same incarnation's expiry moved on. A claim alone (a node
/// just started, or restarted, that the bus may not reach) is no renewal: a node off the
/// bus never renews, so only one on it keeps counting.
fn others_renewing(
    c: &mut postgres::Client,
    node: i64,
    seen: &mut Seen,
) -> Result<bool, postgres::Error> {
    let since_ms = i64::try_from((TTL - FRESH).as_millis()).unwrap_or(0);
    let rows = c.query(
        "SELECT node_id, incarnation,
                (extract(epoch FROM expires_at) * 1000)::bigint
         FROM node_lease WHERE node_id <> $1
             AND expires_at > now() + $2::bigint * interval '1 millisecond'",
        &[&node, &since_ms],
    )?;
    let now: Seen = rows
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect();
    let renewing = now
        .iter()
        .any(|(key, expires)| seen.get(key).is_some_and(|before| expires > before));
    *seen = now;
    Ok(renewing)
}

impl Drop for NodeLease {
    /// Released, so a restart claims at once: on a contained thread waited for at most
    /// [`RELEASE_WAIT`] (a PostgreSQL that does not answer must not hold a stop for the
    /// length of its timeouts); a release that does not happen leaves the lease to lapse.
    /// The renewer is told to stop and not waited for.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        drop(self.renewer.take());
        let (info, node, incarnation) = (self.info.clone(), self.node_id, self.incarnation);
        let (done, wait) = std::sync::mpsc::sync_channel(1);
        let release = std::thread::Builder::new()
            .name(format!("{}lease-release", crate::fault::CONTAINED))
            .spawn(move || {
                if let Ok(mut c) = info.connect() {
                    // Expired, not deleted: the next claim of this id then counts on from
                    // this incarnation. A deleted row would start again at 1, and a
                    // (node, incarnation) must name one process for good (reply tokens,
                    // pledge records and handled reports are keyed by it).
                    let _ = c.execute(
                        "UPDATE node_lease SET expires_at = now() - interval '1 second'
                         WHERE node_id = $1 AND incarnation = $2",
                        &[&node, &incarnation],
                    );
                }
                let _ = done.send(());
            });
        if release.is_ok() {
            let _ = wait.recv_timeout(RELEASE_WAIT);
        }
    }
}

/// How long a stop waits for its lease's release at most.
const RELEASE_WAIT: Duration = Duration::from_secs(2);
