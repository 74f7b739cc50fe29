//! The cluster's leader: the one node whose storage writer commits (`cluster/`, issue 17).
//!
//! # Why one writer
//! The writer keeps state between batches that only one process may keep: the users'
//! offline-queue heads and what clients were shown of them (`storage/queue.rs`,
//! `storage/exposure.rs`), the dedupe window. Two writers on one database would each trust
//! their own copy. So one node leads and commits every message of the cluster; the others
//! forward to it. Sharding the lead by channel is the next step when one writer is the
//! limit (`docs/CLUSTER.md`).
//!
//! # The lead is a row, held through the node's lease
//! `cluster_leader` names one (node id, incarnation). That node leads while its own node
//! lease (`lease.rs`) is live: there is no second lease to renew. Any node takes the row
//! over, in one statement, once the named incarnation's lease is gone (lapsed, or deleted
//! by a clean stop). Every commit of the leader reads both rows `FOR SHARE`
//! (`tx.rs`), so a takeover, an `UPDATE` of the row, waits for the commits in flight: the
//! old leader's last commit ends before the new leader's first begins, and a node that is
//! not the leader cannot commit at all.
//!
//! # Watching
//! [`watch`] runs on a thread of its own: every [`LOOK_EVERY`] it tries the takeover (a
//! no-op while the leader lives) and publishes who leads. A node that led and sees another
//! lead has lost its lease: it stops, as a node whose lease was taken does (`lease.rs`).

use super::conn::ConnInfo;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often a node looks at (and may take) the lead.
pub const LOOK_EVERY: Duration = Duration::from_millis(500);

/// Reads of the pledge records to inherit tried before leading without them.
const INHERIT_TRIES: u32 = 10;

/// [`Leader::get`]'s answer while no leader is known.
pub const NONE: u32 = u32::MAX;

/// Who leads, as this node last read it.
#[derive(Debug)]
pub struct Leader {
    node: AtomicU32,
    /// The other leaders' pledge records, as (id, body), read when this node took
    /// the lead and not yet taken (`cluster/inherit.rs`).
    inherited: std::sync::Mutex<Vec<(i64, Vec<u8>)>>,
    /// Where the login epoch sequence stood at this node's last look while leading (first
    /// read before it is named leader): every login up to it came before any commit that
    /// reads it (`cluster/devices.rs`).
    epoch_floor: AtomicI64,
}

impl Leader {
    /// The leading node id, or `None` while unknown (PostgreSQL away since the start).
    pub fn get(&self) -> Option<u16> {
        u16::try_from(self.node.load(Ordering::Acquire)).ok()
    }

    /// Takes the pledge records this node inherited when it took the lead (read before
    /// [`Leader::get`] named it).
    pub fn take_inherited(&self) -> Vec<(i64, Vec<u8>)> {
        std::mem::take(&mut *self.inherited.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// See [`Leader::epoch_floor`]'s field; 0 until this node leads.
    pub fn epoch_floor(&self) -> i64 {
        self.epoch_floor.load(Ordering::Acquire)
    }
}

/// Pledge records as (id, body).
type Records = Vec<(i64, Vec<u8>)>;

/// Every other leader's pledge records (`cluster/inherit.rs`); incarnations count per
/// node id, so a leader is its (node, incarnation). With them, where the login epoch
/// sequence stands ([`Leader::epoch_floor`]).
fn inherited(
    client: &mut postgres::Client,
    node: i64,
    incarnation: i64,
) -> Result<(Records, i64), postgres::Error> {
    let rows = client.query(
        "SELECT id, body FROM cluster_pledges
         WHERE NOT (node_id = $1 AND incarnation = $2) ORDER BY id",
        &[&node, &incarnation],
    )?;
    let epoch: i64 = client
        .query_one("SELECT last_value FROM login_epoch", &[])?
        .get(0);
    Ok((rows.iter().map(|r| (r.get(0), r.get(1))).collect(), epoch))
}

/// Takes the lead if it is free, and returns who leads: one statement that inserts the
/// row, or moves it to `(node, incarnation)` when the named holder's lease is gone.
fn look(
    client: &mut postgres::Client,
    node: i64,
    incarnation: i64,
    may_take: bool,
) -> Result<i64, postgres::Error> {
    if may_take {
        take(client, node, incarnation)?;
    }
    Ok(client
        .query_one("SELECT node_id FROM cluster_leader WHERE id = 1", &[])?
        .get(0))
}

/// Inserts the lead row, or moves it to `(node, incarnation)` when the named holder's
/// lease is gone and this node's is live.
fn take(client: &mut postgres::Client, node: i64, incarnation: i64) -> Result<(), postgres::Error> {
    client.execute(
        "INSERT INTO cluster_leader (id, node_id, incarnation, since) VALUES (1, $1, $2, now())
         ON CONFLICT (id) DO UPDATE SET node_id = excluded.node_id,
             incarnation = excluded.incarnation, since = excluded.since
         WHERE NOT EXISTS (SELECT 1 FROM node_lease l
             WHERE l.node_id = cluster_leader.node_id
               AND l.incarnation = cluster_leader.incarnation AND l.expires_at > now())
           AND EXISTS (SELECT 1 FROM node_lease l
             WHERE l.node_id = $1 AND l.incarnation = $2 AND l.expires_at > now())",
        &[&node, &incarnation],
    )?;
    Ok(())
}

/// Starts the watcher for `(node, incarnation)` (module docs); it ends when `stop` is set.
///
/// # Errors
/// The thread cannot be spawned.
pub fn watch(
    info: &ConnInfo,
    node: i64,
    incarnation: i64,
    stop: Arc<AtomicBool>,
    gate: Arc<std::sync::Mutex<Option<super::lease::Gate>>>,
) -> std::io::Result<Arc<Leader>> {
    let leader = Arc::new(Leader {
        node: AtomicU32::new(NONE),
        inherited: std::sync::Mutex::default(),
        epoch_floor: AtomicI64::new(0),
    });
    let (info, seen) = (info.clone(), Arc::clone(&leader));
    std::thread::Builder::new()
        .name("ruyi-leader".into())
        .spawn(move || {
            let mut client: Option<postgres::Client> = None;
            let mut led = false;
            let mut failed_reads = 0;
            // Leading, with the inherited records still to read (`cluster/inherit.rs`).
            let mut unread = false;
            let mut next = Instant::now();
            while !stop.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(50));
                if Instant::now() < next {
                    continue;
                }
                next = Instant::now() + LOOK_EVERY;
                if client.as_ref().is_none_or(postgres::Client::is_closed) {
                    client = info.connect().ok();
                }
                let Some(c) = client.as_mut() else { continue };
                // Only a node that would renew its lease now may take the lead: one off the
                // bus still holds a live lease for a few seconds (`lease.rs`).
                let may_take = gate
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_ref()
                    .is_none_or(|g| g() == super::lease::Renewal::Renew);
                match look(c, node, incarnation, may_take) {
                    Ok(now) => {
                        if led && now != node {
                            panic!(
                                "node {node} lost the cluster's lead to node {now} (its lease \
                                 lapsed); stopping so it restarts as a follower"
                            );
                        }
                        if !led && now == node {
                            // Before anyone here learns it leads: the takeover waited for
                            // the predecessor's last commit, so its records are all there.
                            match inherited(c, node, incarnation) {
                                Ok((rows, epoch)) => {
                                    *seen.inherited.lock().unwrap_or_else(|p| p.into_inner()) =
                                        rows;
                                    seen.epoch_floor.fetch_max(epoch, Ordering::AcqRel);
                                }
                                // The next look tries again, for a few seconds: meanwhile
                                // the cluster has no leader it knows of (sends get 15).
                                Err(e) if failed_reads < INHERIT_TRIES => {
                                    failed_reads += 1;
                                    log::warn!("cluster: cannot read the pledges to inherit: {e}");
                                    client = None;
                                    continue;
                                }
                                Err(e) => {
                                    log::error!(
                                        "cluster: leading before the previous leaders' pledges \
                                         could be read ({e}); trying on"
                                    );
                                    unread = true;
                                }
                            }
                            log::info!("cluster: this node (node {node}) leads");
                        }
                        if led && now == node && unread {
                            if let Ok((rows, _)) = inherited(c, node, incarnation) {
                                unread = false;
                                seen.inherited
                                    .lock()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .extend(rows);
                            }
                        }
                        led = now == node;
                        if led {
                            // Every look: a device whose login notice is late or lost is
                            // pushed again within one (`cluster/devices.rs`). Every epoch
                            // up to the value read was taken before the read, so before
                            // any commit that uses it.
                            if let Ok(row) = c.query_one("SELECT last_value FROM login_epoch", &[])
                            {
                                seen.epoch_floor.fetch_max(row.get(0), Ordering::AcqRel);
                            }
                        }
                        let now = u32::try_from(now).unwrap_or(NONE);
                        if seen.node.swap(now, Ordering::AcqRel) != now && !led {
                            log::info!("cluster: node {now} leads");
                        }
                    }
                    Err(e) => {
                        log::warn!("cluster: cannot read the lead: {e}");
                        client = None;
                    }
                }
            }
        })?;
    Ok(leader)
}
