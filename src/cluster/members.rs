//! Membership: who is in the cluster now, from heartbeats on the bus.
//!
//! Every node publishes its [`NodeInfo`] on `<cluster>.hb` every [`HEARTBEAT_EVERY`] and
//! keeps the last one heard from each node. A node not heard for [`DEAD_AFTER`] is not
//! live: `/route` stops sending clients to it. Node identity is not decided here: the
//! node id is leased in PostgreSQL (`storage/postgres/lease.rs`), so two live nodes never
//! share one, and a restart after `kill -9` comes back with a new incarnation, which
//! replaces the old one's entry (an older incarnation's late heartbeat is ignored).
//!
//! # Where a user is sent
//! `/route?uid=` picks among the live nodes by rendezvous hashing of the uid: every node
//! answers the same for the same membership, a user's devices meet on one node, and when
//! a node leaves only its own users move.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

/// How often a node says it is alive.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

/// A node not heard for this long is not live (three heartbeats missed).
pub const DEAD_AFTER: Duration = Duration::from_secs(3);

/// What a node says of itself in each heartbeat (JSON on the bus: about 200 bytes a
/// second per node).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The leased node id.
    pub node: u16,
    /// The lease's incarnation: a new one at each start.
    pub incarnation: i64,
    /// The advertised addresses (`advertise.rs`).
    pub tcp_addr: String,
    pub ws_addr: String,
    pub wss_addr: String,
    /// Logged-in client connections on it.
    pub connections: u64,
    /// Commit batches it published while leading (`inbound.rs`: the last ones lost are
    /// seen by their count).
    #[serde(default)]
    pub batches: u64,
    /// The leader it follows, as (leader, incarnation, highest batch handled, gaps seen so
    /// far): the leader keeps its pledges until then (`pledges.rs`).
    #[serde(default)]
    pub seen: Option<(u16, i64, u64, u64)>,
}

/// The live table. Shared by the bus thread (writes) and the HTTP workers (reads); the
/// lock is held for a map operation only.
#[derive(Debug)]
pub struct Members {
    me: u16,
    table: RwLock<HashMap<u16, (NodeInfo, Instant)>>,
}

impl Members {
    /// The table of node `me`, which holds only `me` until others are heard.
    pub fn new(me: NodeInfo) -> Members {
        let id = me.node;
        Members {
            me: id,
            table: RwLock::new(HashMap::from([(id, (me, Instant::now()))])),
        }
    }

    /// This node's id.
    pub fn me(&self) -> u16 {
        self.me
    }

    /// The incarnation last heard of `node` (0: never heard).
    pub fn incarnation_of(&self, node: u16) -> i64 {
        let table = self.table.read().unwrap_or_else(|p| p.into_inner());
        table.get(&node).map_or(0, |(info, _)| info.incarnation)
    }

    /// Records a heartbeat. Returns true when it announced a node (or an incarnation)
    /// not live before, for the log.
    pub fn heard(&self, info: NodeInfo) -> bool {
        let mut table = self.table.write().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match table.get(&info.node) {
            // A late heartbeat of an incarnation already replaced.
            Some((known, _)) if known.incarnation > info.incarnation => false,
            Some((known, at)) => {
                let new = known.incarnation != info.incarnation || now - *at > DEAD_AFTER;
                table.insert(info.node, (info, now));
                new
            }
            None => {
                table.insert(info.node, (info, now));
                true
            }
        }
    }

    /// True when `node` was heard within [`DEAD_AFTER`] (or is this one).
    pub fn is_live(&self, node: u16) -> bool {
        let table = self.table.read().unwrap_or_else(|p| p.into_inner());
        node == self.me
            || table
                .get(&node)
                .is_some_and(|(_, at)| at.elapsed() <= DEAD_AFTER)
    }

    /// The live nodes, this one included, by node id.
    pub fn live(&self) -> Vec<NodeInfo> {
        let table = self.table.read().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let mut live: Vec<NodeInfo> = table
            .values()
            .filter(|(info, at)| info.node == self.me || now - *at <= DEAD_AFTER)
            .map(|(info, _)| info.clone())
            .collect();
        live.sort_by_key(|n| n.node);
        live
    }

    /// The live node `uid`'s clients should connect to (module docs).
    pub fn route(&self, uid: &str) -> NodeInfo {
        let live = self.live();
        pick(&live, uid).cloned().unwrap_or_else(|| {
            // Unreachable: `live` always holds this node; answer it anyway.
            let table = self.table.read().unwrap_or_else(|p| p.into_inner());
            table[&self.me].0.clone()
        })
    }
}

/// Rendezvous hashing: the node with the highest hash of (uid, node).
pub fn pick<'a>(nodes: &'a [NodeInfo], uid: &str) -> Option<&'a NodeInfo> {
    nodes.iter().max_by_key(|n| score(uid, n.node))
}

/// FNV-1a over the uid and the node id, then a final mix (FNV alone spreads short keys
/// that differ in their last byte poorly). Stable across processes and builds, unlike
/// the standard library's hasher.
fn score(uid: &str, node: u16) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in uid.bytes().chain(node.to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // splitmix64's finaliser.
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u16, incarnation: i64) -> NodeInfo {
        NodeInfo {
            node: id,
            incarnation,
            tcp_addr: format!("10.0.0.{id}:5100"),
            ws_addr: String::new(),
            wss_addr: String::new(),
            connections: 0,
            batches: 0,
            seen: None,
        }
    }

    #[test]
    fn a_late_heartbeat_of_an_old_incarnation_is_ignored() {
        let m = Members::new(node(1, 1));
        assert!(m.heard(node(2, 5)));
        assert!(!m.heard(node(2, 5)), "the same node again is not news");
        assert!(m.heard(node(2, 6)), "a restart is");
        assert!(!m.heard(node(2, 5)));
        assert_eq!(m.live()[1].incarnation, 6);
    }

    #[test]
    fn routing_spreads_users_and_moves_only_a_leaving_nodes_users() {
        let three = [node(1, 1), node(2, 1), node(3, 1)];
        let uids: Vec<String> = (0..3000).map(|i| format!("user{i}")).collect();
        let mut counts = HashMap::new();
        for uid in &uids {
            *counts
                .entry(pick(&three, uid).expect("some").node)
                .or_insert(0) += 1;
        }
        for id in 1..=3 {
            let n = counts[&id];
            assert!((800..1200).contains(&n), "node {id} got {n} of 3000");
        }
        let two = [node(1, 1), node(3, 1)];
        for uid in &uids {
            let before = pick(&three, uid).expect("some").node;
            let after = pick(&two, uid).expect("some").node;
            if before != 2 {
                assert_eq!(before, after, "{uid} moved though its node stayed");
            }
        }
    }
}
