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
//!   the node, and the recipients (`Lead::pledge_write`). A record outlives its pledges in
//!   memory: the leader deletes its own after [`PLEDGE_KEEP_SECS`], when each node has
//!   long reported its batches or counted as dead.
//! - **Reports.** Every node keeps, from the heartbeats, what each node said it handled of
//!   each recent leader's batches, and whether it lost any meanwhile ([`Reports`]).
//! - **Taking over.** The node that takes the lead reads every other leader's records
//!   before it says it leads (`storage/postgres/leader.rs`: the takeover waited for the
//!   predecessor's last commit, so all of them are there). For each pledged message and
//!   node, unless that node is live in the incarnation that reported and reported this
//!   batch handled with none lost, the message goes to each recipient's queue ([`inherit`]):
//!   a requeue at the end of the queue, as any requeue of a message an earlier leader
//!   planned goes (`lead.rs`). Its records go a [`PLEDGE_KEEP_SECS`] later, once those
//!   requeues had time to commit.
//!
//! # What it costs, and what it does not cover
//! One row per commit that reserved seqs on other nodes (the recipients' uids, about what
//! the commit's batches carry of them), and a pruning `DELETE` every few seconds; nothing
//! on a single node. Erring towards writing: a node that handled a batch after its last
//! report gets the entry as well, and `/message/sync` offers that message once more
//! (the writer keeps a message in a user's queue at most once). Not covered: a gap a node
//! saw before its first report of a leader; the leader's own devices' reservations, which
//! die with it as on a single node (RELIABILITY.md).

use super::wire::{self, PledgeRecord};
use super::Cluster;
use crate::message::Message;
use crate::shared::Shared;
use crate::storage::tx::PLEDGE_KEEP_SECS;
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
                r.upto = r.upto.max(upto);
                r.gaps = gaps;
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

    /// The highest batch of `leader` that node `node`, in incarnation `incarnation`,
    /// reported handled with none of that leader's lost on the way.
    pub fn handled(&self, node: u16, incarnation: i64, leader: (u16, i64)) -> Option<u64> {
        let nodes = self.lock();
        let n = nodes.get(&node).filter(|n| n.incarnation == incarnation)?;
        let r = n.leaders.iter().find(|r| r.leader == leader)?;
        (r.gaps == r.first_gaps).then_some(r.upto)
    }
}

/// When the leader prunes its records, and which inherited ones may go.
#[derive(Debug)]
pub struct Records {
    state: Mutex<RecordsState>,
}

#[derive(Debug)]
struct RecordsState {
    pruned: Instant,
    /// The highest inherited record id, and when its requeues were handed to the writer.
    inherited: Option<(i64, Instant)>,
}

impl Default for Records {
    fn default() -> Self {
        Records {
            state: Mutex::new(RecordsState {
                pruned: Instant::now(),
                inherited: None,
            }),
        }
    }
}

impl Records {
    fn lock(&self) -> std::sync::MutexGuard<'_, RecordsState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether to prune now, and the inherited records that may go with it (module docs).
    pub fn due(&self) -> (bool, i64) {
        let mut state = self.lock();
        if state.pruned.elapsed() < PRUNE_EVERY {
            return (false, 0);
        }
        state.pruned = Instant::now();
        let keep = Duration::from_secs_f64(PLEDGE_KEEP_SECS);
        let inherited = state
            .inherited
            .filter(|(_, at)| at.elapsed() >= keep)
            .map_or(0, |(id, _)| id);
        (true, inherited)
    }

    fn inherited(&self, id: i64) {
        let mut state = self.lock();
        let highest = state.inherited.map_or(id, |(old, _)| old.max(id));
        state.inherited = Some((highest, Instant::now()));
    }
}

/// This node took the lead: writes the pledges in `rows` (other incarnations' records, as
/// (id, body)) that no node reported handling (module docs). On the relay's thread, which
/// may read storage.
pub fn inherit(shared: &Shared, cluster: &Cluster, reader: &Reader, rows: Vec<(i64, Vec<u8>)>) {
    if rows.is_empty() {
        return;
    }
    let live: HashMap<u16, i64> = cluster
        .members
        .live()
        .iter()
        .map(|n| (n.node, n.incarnation))
        .collect();
    let mut messages: HashMap<i64, Option<Arc<Message>>> = HashMap::new();
    let (mut written, mut handled, mut gone, mut highest) = (0usize, 0usize, 0usize, 0);
    for (id, body) in rows {
        highest = highest.max(id);
        let Some(record) = wire::decode::<PledgeRecord>(&body) else {
            log::error!("cluster: pledge record {id} does not decode; skipped");
            continue;
        };
        let leader = (record.leader, record.incarnation);
        for item in record.items {
            let reported = live.get(&item.node).and_then(|&incarnation| {
                cluster.lead.reports.handled(item.node, incarnation, leader)
            });
            if reported.is_some_and(|upto| upto >= item.batch) {
                handled += item.uids.len();
                continue;
            }
            let message = messages
                .entry(item.message_id)
                .or_insert_with(|| read(reader, &item))
                .clone();
            let Some(message) = message else {
                gone += item.uids.len(); // its channel was deleted since
                continue;
            };
            for uid in item.uids {
                // Reserved 0: what clients were shown of this queue lived in the
                // predecessor's memory (`lead.rs`, `on_lane`).
                let job = LaneJob::Requeue {
                    uid,
                    message: Arc::clone(&message),
                    reserved: 0,
                };
                let _ = shared.writer.send_lane(Job::Lane(job)); // never refused
                written += 1;
            }
        }
    }
    cluster.lead.records.inherited(highest);
    log::warn!(
        "cluster: took over the previous leaders' pledges: {written} queue entries written, \
         {handled} reported handled, {gone} for messages no longer stored"
    );
}

/// The stored message a pledge names, if it is still there. A store that fails is asked
/// again for a few seconds: what cannot be read then is logged as lost.
fn read(reader: &Reader, item: &wire::PledgedMessage) -> Option<Arc<Message>> {
    let (low, key) = (item.seq.saturating_sub(1), item.channel());
    let mut tries = 0;
    let found = loop {
        match reader.channel_messages(&key, low, item.seq, 1, false) {
            Ok(found) => break found?,
            Err(e) if tries < 20 => {
                tries += 1;
                log::warn!("cluster: cannot read a pledged message yet: {e}");
                std::thread::sleep(Duration::from_millis(250));
            }
            Err(e) => {
                log::error!(
                    "cluster: cannot read pledged message {} ({e}): its recipients on other \
                     nodes will not find it in their queues",
                    item.message_id
                );
                return None;
            }
        }
    };
    found
        .into_iter()
        .find(|m| m.message_id == item.message_id)
        .map(Arc::new)
}

#[cfg(test)]
mod tests {
    use super::Reports;

    #[test]
    fn a_report_counts_only_for_the_incarnation_that_made_it_and_without_a_lost_batch() {
        let reports = Reports::default();
        let leader = (1, 7);
        assert_eq!(reports.handled(2, 1, leader), None, "never reported");
        reports.record(2, 1, (1, 7, 4, 3));
        reports.record(2, 1, (1, 7, 9, 3));
        assert_eq!(reports.handled(2, 1, leader), Some(9));
        // Reports never go back (a heartbeat overtaken by a later one).
        reports.record(2, 1, (1, 7, 8, 3));
        assert_eq!(reports.handled(2, 1, leader), Some(9));
        assert_eq!(
            reports.handled(2, 2, leader),
            None,
            "another incarnation of node 2"
        );
        assert_eq!(reports.handled(2, 1, (1, 8)), None, "another leader");
        // A gap seen since its first report of this leader: a batch may be missing.
        reports.record(2, 1, (1, 7, 12, 4));
        assert_eq!(reports.handled(2, 1, leader), None);
        // A restarted node starts over.
        reports.record(2, 2, (1, 7, 3, 0));
        assert_eq!(reports.handled(2, 2, leader), Some(3));
        assert_eq!(reports.handled(2, 1, leader), None);
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
