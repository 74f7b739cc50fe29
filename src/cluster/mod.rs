//! The cluster (issue 17): several Ruyi nodes on one PostgreSQL and one NATS.
//!
//! `--nats` turns it on. PostgreSQL is the system of record and leases each node its id
//! (`storage/postgres/lease.rs`); NATS is the bus between nodes (`bus.rs`). What is here
//! so far is membership (`members.rs`): each node's heartbeats, the live table, and
//! `/route` answering with a live node. The design, what holds and what is still to
//! come are in `docs/CLUSTER.md`.
//!
//! The rest of the server sees the cluster through `Shared::cluster`, `None` on a single
//! node, which then pays nothing for it.

pub mod bus;
pub mod members;

use crate::storage::postgres::leader::Leader;
use bytes::Bytes;
use members::{Members, NodeInfo};
use std::sync::Arc;

/// This node's part of the cluster.
#[derive(Debug)]
pub struct Cluster {
    /// The live table, from heartbeats.
    pub members: Arc<Members>,
    /// The NATS connection.
    pub bus: bus::Bus,
    /// `--cluster-name`: every subject starts with it.
    pub name: String,
    /// Who leads: the one node whose writer commits (`storage/postgres/leader.rs`).
    pub leader: Arc<Leader>,
}

/// Checks a `--cluster-name`: NATS subject tokens, so letters, digits, `-` and `_`.
///
/// # Errors
/// Says which character is wrong.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err("cluster_name must be 1 to 64 characters".into());
    }
    match name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        Some(c) => Err(format!(
            "cluster_name {name:?}: {c:?} is not allowed (letters, digits, '-' and '_')"
        )),
        None => Ok(()),
    }
}

impl Cluster {
    /// Joins the cluster `name` on NATS at `urls` as `me`; `connections` counts this
    /// node's logged-in clients for its heartbeats. Does not wait for NATS (`bus.rs`).
    ///
    /// # Errors
    /// A NATS address that does not parse, or a thread that cannot be spawned.
    pub fn start(
        urls: &[String],
        name: &str,
        me: NodeInfo,
        leader: Arc<Leader>,
        connections: Box<dyn Fn() -> u64 + Send>,
    ) -> Result<Cluster, String> {
        check_name(name)?;
        let members = Arc::new(Members::new(me.clone()));
        let heartbeats = format!("{name}.hb");
        let on_heartbeat: bus::Handler = {
            let members = Arc::clone(&members);
            let (my_id, my_incarnation) = (me.node, me.incarnation);
            Box::new(move |payload: Bytes| {
                let Ok(info) = serde_json::from_slice::<NodeInfo>(&payload) else {
                    log::warn!("cluster: a heartbeat that does not parse; ignored");
                    return;
                };
                if info.node == my_id {
                    if info.incarnation != my_incarnation {
                        // The lease makes this impossible while both are alive; a
                        // heartbeat of this node's previous incarnation may linger.
                        log::warn!(
                            "cluster: a heartbeat for this node id {my_id} from incarnation \
                             {} (this is {my_incarnation})",
                            info.incarnation
                        );
                    }
                    return;
                }
                let (id, tcp) = (info.node, info.tcp_addr.clone());
                if members.heard(info) {
                    log::info!("cluster: node {id} ({tcp}) is live");
                }
            })
        };
        let ticker: bus::Ticker = {
            let (members, subject) = (Arc::clone(&members), heartbeats.clone());
            Box::new(move || {
                let info = NodeInfo {
                    connections: connections(),
                    ..me.clone()
                };
                let payload = serde_json::to_vec(&info).unwrap_or_default();
                members.heard(info);
                vec![(subject.clone(), Bytes::from(payload))]
            })
        };
        let bus = bus::Bus::start(
            urls,
            format!("ruyi-{name}-{}", members.me()),
            vec![(heartbeats, on_heartbeat)],
            members::HEARTBEAT_EVERY,
            ticker,
        )?;
        Ok(Cluster {
            members,
            bus,
            name: name.to_owned(),
            leader,
        })
    }

    /// True when this node leads (its writer commits the cluster's messages).
    pub fn leads(&self) -> bool {
        self.leader.get() == Some(self.members.me())
    }

    /// The cluster's part of `/varz`.
    pub fn varz(&self) -> serde_json::Value {
        use std::sync::atomic::Ordering::Relaxed;
        let stats = &self.bus.stats;
        serde_json::json!({
            "name": self.name,
            "node": self.members.me(),
            "leader": self.leader.get(),
            "nodes_live": self.members.live().len(),
            "nats_connected": self.bus.connected(),
            "bus_published": stats.published.load(Relaxed),
            "bus_received": stats.received.load(Relaxed),
            "bus_dropped": stats.dropped.load(Relaxed),
        })
    }

    /// Leaves the bus (a clean stop: the others see this node go within
    /// `members::DEAD_AFTER`).
    pub fn stop(&self) {
        self.bus.stop();
    }
}
