//! What a new leader inherits: the queue seqs its predecessor reserved for devices on
//! other nodes and that no node reported handling.
//!
//! # Why
//! A recipient the leader counts on another node gets a reserved seq, not a stored entry
//! (`devices.rs`), and the leader keeps it in memory as a pledge until that node reports
//! the batch handled (`pledges.rs`). A leader killed between a commit and its batch
//! reaching the nodes takes those pledges with it: the message is stored and its SENDACK
//! given, but its recipients there are never pushed it (their node resyncs them, as the
//! lead changed) and their queues never get it. Nothing could tell them it exists.
//!
//! # How
//! - **Durable.** Each commit that reserves such seqs writes, in its own transaction, one
//!   [`PledgeRecord`] row in `cluster_pledges`: per message, the batch that carries it,
//!   the node and the incarnation of it counted on, and the recipients
//!   (`Lead::pledge_write`). The leader deletes its own rows once no pledge of theirs is
//!   left in its memory or was written by it within `pledges::WRITTEN_MARGIN` (its
//!   requeues may not have committed), and they are `PLEDGE_KEEP_SECS` old.
//! - **Reports.** Every node keeps, from the heartbeats, what each node said it handled of
//!   each recent leader's batches, and whether it lost any since its first report of that
//!   leader ([`Reports`]). A (node, incarnation) names one process for good: a clean stop
//!   expires its lease instead of deleting it, so the next claim counts on.
//! - **Taking over.** The node that takes the lead reads every other leader's records
//!   before it says it leads (`storage/postgres/leader.rs`: the takeover waited for the
//!   predecessor's last commit, so all of them are there). On a thread of its own, once
//!   it has heard a few heartbeats, it writes each pledged message to each recipient's
//!   queue unless that node, in the incarnation counted on, reported that batch handled
//!   with none lost (a node that
//!   handled a batch took it over: what its devices missed it requeued itself). The
//!   requeues go at the end of the queue, as any requeue of a message an earlier leader
//!   planned (`lead.rs`), so newer messages may be ahead of them. Each record is deleted in
//!   the savepoint that writes its requeues (`LaneJob::Inherit`): it goes only with them.
//!
//! # What it costs, and what it does not cover
//! One row per commit that reserved seqs on other nodes (the recipients' uids, about what
//! the commit's batches carry of them) and a pruning `DELETE` every few seconds; nothing
//! on a single node. Rows are read at the takeover all at once: as many as the pledges the
//! dead leader held (at most `MAX_PLEDGES` per node) plus 15 seconds' worth. Erring towards
//! writing: a node whose last report was older than its last batches, or that lost one,
//! gets the entries again, and `/message/sync` offers those messages once more (the writer
//! keeps a message in a user's queue at most once, but not after the user's syncack).
//! Not covered: a gap a node saw before its first report of a leader; the leader's own
//! devices' reservations, which die with it as on a single node (RELIABILITY.md); a
//! requeue the leader wrote itself that keeps failing for longer than the margin.

use super::wire::{self, PledgeRecord};
use super::Cluster;
use crate::message::Message;
use crate::shared::Shared;
use crate::storage::writer::{Job, LaneJob};
use crate::storage::Reader;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the leader prunes its records.
const PRUNE_EVERY: Duration = Duration::from_secs(5);

/// Leaders remembered per node.
const LEADERS_KEPT: usize = 4;

/// What one node reported of one leader's batches.
#[derive(Clone, Copy, Debug)]
struct Report {
    leader: (u16, i64),
    upto: u64,
    /// Its gap count at its first report of this leader, and now: when they differ, it
    /// lost a batch of this leader.
    first_gaps: u64,
    gaps: u64,
}

#[derive(Debug, Default)]
struct NodeReports {
    incarnation: i64,
    leaders: VecDeque<Report>,
}

/// What each node reported handling, per recent leader (module docs).
#[derive(Debug, Default)]
pub struct Reports {
    nodes: Mutex<HashMap<u16, NodeReports>>,
}

impl Reports {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u16, NodeReports>> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Node `node`, incarnation `incarnation`, reports `seen`: (leader, its incarnation,
    /// highest batch handled, gaps seen so far).
    pub fn record(&self, node: u16, incarnation: i64, seen: (u16, i64, u64, u64)) {
        let (leader, leader_incarnation, upto, gaps) = seen;
        let mut nodes = self.lock();
        let n = nodes.entry(node).or_default();
        if n.incarnation != incarnation {
            *n = NodeReports {
                incarnation,
                leaders: VecDeque::new(),
            };
        }
        let key = (leader, leader_incarnation);
        match n.leaders.iter_mut().find(|r| r.leader == key) {
            Some(r) => {
                // Heartbeats may arrive out of order: neither count goes back.
                r.upto = r.upto.max(upto);
                r.gaps = r.gaps.max(gaps);
            }
            None => {
                n.leaders.push_back(Report {
                    leader: key,
                    upto,
                    first_gaps: gaps,
                    gaps,
                });
                if n.leaders.len() > LEADERS_KEPT {
                    n.leaders.pop_front();
                }
            }
        }
    }

    /// The highest batch of `leader` that node `node`, in incarnation `incarnation` (live
    /// or not now), reported handled with none of that leader's lost on the way.
    pub fn handled(&self, node: u16, incarnation: i64, leader: (u16, i64)) -> Option<u64> {
        let nodes = self.lock();
        let n = nodes.get(&node).filter(|n| n.incarnation == incarnation)?;
        let r = n.leaders.iter().find(|r| r.leader == leader)?;
        (r.gaps == r.first_gaps).then_some(r.upto)
    }
}

/// When the leader prunes its records.
#[derive(Debug)]
pub struct Records {
    pruned: Mutex<Instant>,
}

impl Default for Records {
    fn default() -> Self {
        Records {
            pruned: Mutex::new(Instant::now()),
        }
    }
}

impl Records {
    /// Whether to prune now (every [`PRUNE_EVERY`]).
    pub fn due(&self) -> bool {
        let mut pruned = self.pruned.lock().unwrap_or_else(|p| p.into_inner());
        if pruned.elapsed() < PRUNE_EVERY {
            return false;
        }
        *pruned = Instant::now();
        true
    }
}

/// This node took the lead: writes, on a thread of its own, the pledges in `rows` (other
/// leaders' records, as (id, body)) that no node reported handling (module docs). The
/// thread stays while this node leads: records it could not read, and any the lead
/// watcher reads late (`Leader::take_inherited`), are tried again every [`RETRY_EVERY`].
pub fn take_over(shared: &Arc<Shared>, reader: Reader, rows: Vec<(i64, Vec<u8>)>) {
    let shared = Arc::clone(shared);
    let spawned = std::thread::Builder::new()
        .name("ruyi-inherit".into())
        .spawn(move || {
            let Some(cluster) = shared.cluster.get() else {
                return;
            };
            let mut waiting = rows;
            loop {
                waiting.extend(cluster.leader.take_inherited());
                if !waiting.is_empty() {
                    waiting = inherit(&shared, cluster, &reader, waiting);
                }
                std::thread::sleep(RETRY_EVERY);
                if !cluster.leads() || shared.is_stopping() {
                    return;
                }
            }
        });
    if let Err(e) = spawned {
        log::error!("cluster: cannot start the thread that writes inherited pledges: {e}");
    }
}

/// How often records not written yet are tried again.
const RETRY_EVERY: Duration = Duration::from_secs(5);

/// [`take_over`]'s work; returns the records kept for a store that could not read them.
/// Waits until this process has heard a few heartbeats (a node that just restarted knows
/// no one's reports yet, and would write everything).
fn inherit(
    shared: &Shared,
    cluster: &Cluster,
    reader: &Reader,
    rows: Vec<(i64, Vec<u8>)>,
) -> Vec<(i64, Vec<u8>)> {
    if let Some(wait) = WARM_UP.checked_sub(shared.started.elapsed()) {
        std::thread::sleep(wait);
    }
    let deadline = Instant::now() + READ_FOR;
    let mut messages: HashMap<i64, Result<Option<Arc<Message>>, ()>> = HashMap::new();
    let (mut written, mut handled, mut gone) = (0usize, 0usize, 0usize);
    let mut kept = Vec::new();
    for (id, body) in rows {
        let Some(record) = wire::decode::<PledgeRecord>(&body) else {
            log::error!("cluster: pledge record {id} does not decode; left alone");
            continue;
        };
        let leader = (record.leader, record.incarnation);
        let mut requeues = Vec::new();
        let mut unreadable = false;
        for item in record.items {
            // A node that reported the batch handled took it over: what its devices then
            // missed it requeued itself, through whoever led (`relay.rs`).
            if cluster
                .lead
                .reports
                .handled(item.node, item.node_incarnation, leader)
                .is_some_and(|upto| upto >= item.batch)
            {
                handled += item.uids.len();
                continue;
            }
            let message = messages
                .entry(item.message_id)
                .or_insert_with(|| read(reader, &item, deadline))
                .clone();
            let message = match message {
                Ok(Some(message)) => message,
                Ok(None) => {
                    gone += item.uids.len(); // its channel was deleted since
                    continue;
                }
                Err(()) => {
                    unreadable = true;
                    continue;
                }
            };
            written += item.uids.len();
            requeues.extend(item.uids.into_iter().map(|uid| (uid, Arc::clone(&message))));
        }
        if unreadable {
            // Tried again later, whole: what could be read is written now (twice is
            // harmless: a message is in a user's queue at most once).
            kept.push((id, body));
            for (uid, message) in requeues {
                let job = LaneJob::Requeue {
                    uid,
                    message,
                    reserved: 0,
                };
                let _ = shared.writer.send_lane(Job::Lane(job)); // never refused
            }
            continue;
        }
        // The record goes with its requeues, in one savepoint (`storage/writer.rs`).
        let job = LaneJob::Inherit { row: id, requeues };
        let _ = shared.writer.send_lane(Job::Lane(job)); // never refused
    }
    log::warn!(
        "cluster: took over the previous leaders' pledges: {written} queue entries to write, \
         {handled} reported handled, {gone} for messages no longer stored; {} records kept \
         for a store that failed to read them",
        kept.len()
    );
    kept
}

/// A node restarted this recently has not heard every node's report yet.
const WARM_UP: Duration = Duration::from_millis(2500);

/// How long the reads of inherited messages may keep retrying a failing store, in all.
const READ_FOR: Duration = Duration::from_secs(30);

/// The stored message a pledge names, `None` if it is no longer stored. A store that
/// fails is asked again until `deadline`, then `Err`.
fn read(
    reader: &Reader,
    item: &wire::PledgedMessage,
    deadline: Instant,
) -> Result<Option<Arc<Message>>, ()> {
    let (low, key) = (item.seq.saturating_sub(1), item.channel());
    loop {
        match reader.channel_messages(&key, low, item.seq, 1, false) {
            Ok(found) => {
                return Ok(found
                    .unwrap_or_default()
                    .into_iter()
                    .find(|m| m.message_id == item.message_id)
                    .map(Arc::new))
            }
            Err(e) if Instant::now() < deadline => {
                log::warn!("cluster: cannot read a pledged message yet: {e}");
                std::thread::sleep(Duration::from_millis(250));
            }
            Err(e) => {
                log::error!(
                    "cluster: cannot read pledged message {}: {e}",
                    item.message_id
                );
                return Err(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Reports;

    #[test]
    fn a_report_counts_for_the_incarnation_that_made_it_and_without_a_lost_batch() {
        let reports = Reports::default();
        let leader = (1, 7);
        assert_eq!(reports.handled(2, 1, leader), None, "never reported");
        reports.record(2, 1, (1, 7, 4, 3));
        reports.record(2, 1, (1, 7, 9, 3));
        assert_eq!(reports.handled(2, 1, leader), Some(9));
        // Heartbeats overtaken by later ones change nothing.
        reports.record(2, 1, (1, 7, 8, 3));
        assert_eq!(reports.handled(2, 1, leader), Some(9));
        assert_eq!(reports.handled(2, 1, (1, 8)), None, "another leader");
        // A gap seen since its first report of this leader: a batch may be missing, even
        // when an older heartbeat with the old count arrives after.
        reports.record(2, 1, (1, 7, 12, 4));
        reports.record(2, 1, (1, 7, 11, 3));
        assert_eq!(reports.handled(2, 1, leader), None);
        // A restarted node starts over: its previous process's reports are gone with it.
        reports.record(2, 2, (1, 7, 3, 0));
        assert_eq!(reports.handled(2, 2, leader), Some(3));
        assert_eq!(
            reports.handled(2, 1, leader),
            None,
            "the pledge was for the old one"
        );
    }

    #[test]
    fn a_node_keeps_reports_of_its_last_few_leaders() {
        let reports = Reports::default();
        for leader in 1..=6u16 {
            reports.record(3, 1, (leader, 1, u64::from(leader), 0));
        }
        assert_eq!(reports.handled(3, 1, (1, 1)), None);
        assert_eq!(reports.handled(3, 1, (2, 1)), None);
        assert_eq!(reports.handled(3, 1, (6, 1)), Some(6));
        assert_eq!(reports.handled(3, 1, (3, 1)), Some(3));
    }
}
