//! The cluster (issue 17): several Ruyi nodes on one PostgreSQL and one NATS.
//!
//! `--nats` turns it on. PostgreSQL is the system of record and leases each node its id
//! (`storage/postgres/lease.rs`) and one node the lead (`storage/postgres/leader.rs`):
//! the leader's writer commits every message. NATS is the bus between nodes (`bus.rs`,
//! subjects in `wire.rs`): membership (`members.rs`), sends and lane jobs forwarded to
//! the leader and the commits it tells every node about (`lead.rs`, `relay.rs`). The
//! design, what holds and what is still to come are in `docs/CLUSTER.md`.
//!
//! The rest of the server sees the cluster through `Shared::cluster`, `None` on a single
//! node, which then pays nothing for it.

pub mod bus;
pub mod devices;
pub mod inbound;
pub mod inherit;
pub mod lead;
pub mod members;
pub mod pledges;
pub mod presence;
pub mod relay;
pub mod wire;

use crate::shared::{Shared, SharedRef};
use crate::storage::postgres::leader::Leader;
use bytes::Bytes;
use lead::Lead;
use members::{Members, NodeInfo};
use relay::Relay;
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
    /// The leader's side of the message path.
    pub lead: Lead,
    /// This node's side while another leads.
    pub relay: Relay,
    /// Who is online on the other nodes.
    pub presence: presence::Presence,
    /// Which users have devices on which other node (`devices.rs`).
    pub devices: Arc<devices::RemoteDevices>,
}

/// A bus handler that decodes each message as a `T` and runs `f` with it, the server and
/// its cluster, once both are there (a message that arrives during the start is dropped,
/// as a lost one would be; one that does not decode is dropped and logged).
fn on<T: serde::de::DeserializeOwned>(
    shared: &Arc<Shared>,
    f: impl Fn(&SharedRef, &Cluster, T) + Send + Sync + 'static,
) -> bus::Handler {
    let weak = Arc::downgrade(shared);
    Box::new(move |payload: Bytes| {
        let Some(shared) = weak.upgrade() else { return };
        let Some(cluster) = shared.cluster.get() else {
            return;
        };
        match wire::decode::<T>(&payload) {
            Some(value) => f(&shared, cluster, value),
            None => log::warn!("cluster: a bus message that does not decode; dropped"),
        }
    })
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
    /// Joins the cluster (`config.nats`, `config.cluster_name`) as `me`, led by whoever
    /// `leader` names. Does not wait for NATS (`bus.rs`).
    ///
    /// # Errors
    /// A NATS address that does not parse, or a thread that cannot be spawned.
    pub fn start(
        shared: &Arc<Shared>,
        me: NodeInfo,
        leader: Arc<Leader>,
    ) -> Result<(Cluster, crossbeam_channel::Receiver<relay::Inbound>), String> {
        let name = shared.config.cluster_name.as_str();
        check_name(name)?;
        let (publisher, outbox) = bus::outbox();
        let members = Arc::new(Members::new(me.clone()));
        let me_incarnation = me.incarnation;
        let lead = Lead::new(me.node, me.incarnation, name, publisher.clone());
        let (relay, inbound) = Relay::new(
            me.node,
            me.incarnation,
            name,
            publisher.clone(),
            Arc::clone(&leader),
        );
        let presence = presence::Presence::new(me.node, me.incarnation, name, publisher.clone());
        let devices = Arc::new(devices::RemoteDevices::default());
        let heartbeats = format!("{name}.hb");
        let on_heartbeat: bus::Handler = {
            let members = Arc::clone(&members);
            let devices = Arc::clone(&devices);
            let weak = Arc::downgrade(shared);
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
                let shared = weak.upgrade();
                let cluster = shared.as_ref().and_then(|s| s.cluster.get());
                if let Some(c) = cluster.filter(|c| c.leader.get() == Some(info.node)) {
                    let mark = relay::Inbound::Mark(info.node, info.incarnation, info.batches);
                    c.relay.hand_over(mark);
                }
                // What the node handled of the batches of the leader it follows: for this
                // leader's pledges (`pledges.rs`), and for a successor's (`inherit.rs`).
                if let (Some(c), Some(seen)) = (cluster, info.seen) {
                    c.lead.reports.record(info.node, info.incarnation, seen);
                }
                if let (Some(s), Some(c), Some((l, i, upto, gaps))) = (&shared, cluster, info.seen)
                {
                    if (l, i) == (my_id, my_incarnation) {
                        c.lead.pledges.progress(s, info.node, upto, gaps);
                    }
                }
                let (id, tcp) = (info.node, info.tcp_addr.clone());
                if members.heard(info) {
                    // New, restarted or back from the dead: what was known of its devices
                    // is stale (`devices.rs`).
                    devices.forget(id);
                    if let (Some(s), Some(c)) = (&shared, cluster) {
                        c.lead.pledges.release(s, id);
                    }
                    log::info!("cluster: node {id} ({tcp}) is live");
                }
            })
        };
        let ticker: bus::Ticker = {
            let (members, subject) = (Arc::clone(&members), heartbeats.clone());
            // Weak: the cluster lives in `Shared`; its threads must not keep it alive.
            let weak = Arc::downgrade(shared);
            Box::new(move || {
                let shared = weak.upgrade();
                let connections = shared.as_ref().map_or(0, |s| s.registry.len() as u64);
                let cluster = shared.as_ref().and_then(|s| s.cluster.get());
                let batches = cluster.map_or(0, |c| c.lead.batches());
                let seen = cluster.and_then(|c| *relay::lock(&c.relay.handled));
                if let (Some(c), Some(seen)) = (cluster, seen) {
                    c.lead.reports.record(me.node, me.incarnation, seen);
                }
                let info = NodeInfo {
                    connections,
                    batches,
                    seen,
                    ..me.clone()
                };
                let payload = serde_json::to_vec(&info).unwrap_or_default();
                members.heard(info);
                vec![(subject.clone(), Bytes::from(payload))]
            })
        };
        let me_id = members.me();
        let mine = |what: &str| wire::node_subject(name, me_id, what);
        let subs = vec![
            (heartbeats, on_heartbeat),
            (mine("send"), on(shared, |s, c, fwd| c.lead.on_send(s, fwd))),
            (mine("lane"), on(shared, |s, c, fwd| c.lead.on_lane(s, fwd))),
            (mine("http"), on(shared, |s, c, fwd| c.lead.on_http(s, fwd))),
            (
                mine("handled"),
                on(shared, move |s, c, h: wire::Handled| {
                    let (leader, incarnation, upto, gaps) = h.seen;
                    if (leader, incarnation) == (me_id, me_incarnation) {
                        c.lead.pledges.progress(s, h.node, upto, gaps);
                    }
                }),
            ),
            (
                mine("outcome"),
                on(shared, |_, c, out| {
                    c.relay.hand_over(relay::Inbound::Outcomes(out));
                }),
            ),
            (
                mine("laneack"),
                on(shared, |_, c, ack: wire::LaneAck| {
                    c.relay.on_lane_ack(&ack.ids)
                }),
            ),
            (
                mine("httpanswer"),
                on(shared, |_, c, answer| c.relay.on_http_answer(answer)),
            ),
            (
                format!("{name}.presence"),
                on(shared, |s, c, ask| c.presence.on_ask(&s.registry, ask)),
            ),
            (
                mine("presence"),
                on(shared, |_, c, answer| c.presence.on_answer(answer)),
            ),
            (
                format!("{name}.devices"),
                on(shared, |_, c, change: presence::Change| match change {
                    presence::Change::Login(login) => {
                        // Before the map counts it: a plan that counts the device is
                        // stamped with an epoch at least its own (`devices.rs`).
                        c.devices.saw_epoch(login.epoch);
                        c.devices.login(login.node, &login.uid);
                        c.relay.hand_over(relay::Inbound::Login(login));
                    }
                    presence::Change::Logout(out) => c.devices.logout(out.node, &out.uid),
                }),
            ),
            (
                format!("{name}.quit"),
                on(shared, |_, c, quit| {
                    c.relay.hand_over(relay::Inbound::Quit(quit))
                }),
            ),
            (
                wire::deliver_subject(name),
                on(shared, |_, c, batch| {
                    c.relay.hand_over(relay::Inbound::Commit(batch));
                }),
            ),
        ];
        let bus = bus::Bus::start(
            &shared.config.nats,
            format!("ruyi-{name}-{me_id}"),
            subs,
            members::HEARTBEAT_EVERY,
            ticker,
            (publisher, outbox),
        )?;
        let cluster = Cluster {
            members,
            bus,
            name: name.to_owned(),
            leader,
            lead,
            relay,
            presence,
            devices,
        };
        Ok((cluster, inbound))
    }

    /// Adds to a message's plan the recipients' devices on other live nodes
    /// (`devices.rs`): one [`Target::remote`] per (recipient, node).
    pub fn plan_remote(&self, recipients: &[String], targets: &mut Vec<crate::message::Target>) {
        let me = self.members.me();
        let mut nodes = Vec::new();
        for (index, uid) in recipients.iter().enumerate() {
            nodes.clear();
            self.devices.nodes_of(uid, &mut nodes);
            for &node in &nodes {
                if node != me && self.members.is_live(node) {
                    targets.push(crate::message::Target::remote(node, index as u32));
                }
            }
        }
    }

    /// True when this node leads (its writer commits the cluster's messages).
    pub fn leads(&self) -> bool {
        self.leader.get() == Some(self.members.me())
    }

    /// The cluster's part of `/varz`.
    pub fn varz(&self) -> serde_json::Value {
        use std::sync::atomic::Ordering::Relaxed;
        let stats = &self.bus.publisher().stats;
        serde_json::json!({
            "name": self.name,
            "node": self.members.me(),
            "leader": self.leader.get(),
            "nodes_live": self.members.live().len(),
            "nats_connected": self.bus.connected(),
            "bus_published": stats.published.load(Relaxed),
            "bus_received": stats.received.load(Relaxed),
            "bus_dropped": stats.dropped.load(Relaxed),
            "forwarded_sends_timed_out": self.relay.timeouts.load(Relaxed),
            "forwarded_sends_busy": self.lead.busy.load(Relaxed),
            "lane_jobs_spooled": self.relay.spooled(),
            "delivery_gaps": self.relay.gaps.load(Relaxed),
        })
    }

    /// Leaves the bus (a clean stop: the others see this node go within
    /// `members::DEAD_AFTER`).
    pub fn stop(&self) {
        self.bus.stop();
    }
}
