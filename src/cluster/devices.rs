//! Which users have devices on which other node: the leader's view of the cluster's
//! presence, so it plans a recipient online on another node as it plans one online here
//! (a RECV and a reserved queue seq), not as offline (a stored queue entry, which that
//! node's RECVACK then has to mark delivered: a row and an update per delivery on the
//! leader's writer, which held a three-node cluster to a tenth of one node's sends).
//!
//! Every node keeps the map (any node may come to lead), from the `<c>.login` and
//! `<c>.logout` notices each node publishes for its own devices, counted per (uid, node).
//!
//! # Why a stale map loses nothing
//! - A lost login notice: the leader sees the user offline and stores the entry; the
//!   node's device still gets the RECV (each node looks up its own devices), and its
//!   acknowledgement marks the entry delivered. The single node's path.
//! - A lost logout notice, or a device that left after the plan: the leader names, per
//!   recipient, the nodes it counted on (`WireDelivery::expect`); a named node with no
//!   device for that recipient puts the message in the user's queue at its reserved seq,
//!   as a device that closed would (`inbound.rs`).
//! - A node that leaves the live table is not counted on (its map entries are dropped
//!   when it is seen again under a new incarnation, or live again). A node that dies after
//!   the plan is a device that died holding the message, as on a single node's crash:
//!   the message is in channel history; the reservation is not written.
//!
//! # A device that logged in after the plan is not pushed to
//! A node delivers a batch to its own devices when the batch arrives, which may be after
//! one of them moved: a device pushed the message on the leader (or on another node), then
//! closed and logged in here before this node handled the batch, would get it twice. On a
//! single node the registry's push clock keeps a login after the push from it; across
//! nodes the login epochs do (`presence.rs`: a number from a PostgreSQL sequence, taken at
//! every login). Every node keeps the newest epoch it has seen ([`RemoteDevices::newest_epoch`]:
//! its own logins and every login notice), and the leader also reads where the sequence
//! stands at each look at the lead (every 500 ms: `Leader::epoch_floor`, so a device whose
//! notice was late or lost waits at most that long); the leader stamps each batch with the
//! larger before the commit (`wire::CommitBatch::login_epoch`), and a node pushes the batch
//! only to devices whose epoch is not above the stamp. A device above it logged in after
//! the stamp was read: it gets the message as a device that logged in after a push on one
//! node does, from its queue (the leader reserved or stored a seq there for the user, and
//! the devices it counted on write a miss there). Since it was not pushed the message, it
//! does not count as holding it when another device of the user goes without
//! acknowledging (`Registry::has_older_device`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::RwLock;

/// Shards of the map, so channel workers reading it and the bus thread writing it rarely
/// meet on one lock.
const SHARDS: usize = 16;

/// One shard: uid → (node, devices there).
type Shard = RwLock<HashMap<String, Vec<(u16, u32)>>>;

/// uid → (node, devices there), in shards.
#[derive(Debug)]
pub struct RemoteDevices {
    shards: Vec<Shard>,
    /// The newest login epoch seen here (module docs).
    newest_epoch: AtomicI64,
}

impl Default for RemoteDevices {
    fn default() -> Self {
        RemoteDevices {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            newest_epoch: AtomicI64::new(0),
        }
    }
}

fn shard_of(uid: &str) -> usize {
    let key = crate::message::ChannelKey::new(uid, 0);
    key.shard(SHARDS)
}

impl RemoteDevices {
    fn shard(&self, uid: &str) -> &Shard {
        &self.shards[shard_of(uid)]
    }

    /// A login with `epoch` happened somewhere (here, or a notice from another node), or
    /// the sequence stood at `epoch` when this node took the lead: every login up to it
    /// came before what this node plans from now on.
    pub fn saw_epoch(&self, epoch: i64) {
        self.newest_epoch.fetch_max(epoch, Ordering::AcqRel);
    }

    /// The newest login epoch seen here (module docs).
    pub fn newest_epoch(&self) -> i64 {
        self.newest_epoch.load(Ordering::Acquire)
    }

    /// A device of `uid` logged in on `node`.
    pub fn login(&self, node: u16, uid: &str) {
        let mut shard = self.shard(uid).write().unwrap_or_else(|p| p.into_inner());
        let nodes = shard.entry(uid.to_owned()).or_default();
        match nodes.iter_mut().find(|(n, _)| *n == node) {
            Some((_, count)) => *count += 1,
            None => nodes.push((node, 1)),
        }
    }

    /// A device of `uid` on `node` went.
    pub fn logout(&self, node: u16, uid: &str) {
        let mut shard = self.shard(uid).write().unwrap_or_else(|p| p.into_inner());
        let Some(nodes) = shard.get_mut(uid) else {
            return;
        };
        if let Some(i) = nodes.iter().position(|(n, _)| *n == node) {
            nodes[i].1 -= 1;
            if nodes[i].1 == 0 {
                nodes.swap_remove(i);
            }
        }
        if nodes.is_empty() {
            shard.remove(uid);
        }
    }

    /// Forgets everything known of `node` (it restarted, or came back after being dead:
    /// its devices are learned again from their next logins; until then they count as
    /// offline, which stores entries and loses nothing).
    pub fn forget(&self, node: u16) {
        for shard in &self.shards {
            let mut shard = shard.write().unwrap_or_else(|p| p.into_inner());
            shard.retain(|_, nodes| {
                nodes.retain(|(n, _)| *n != node);
                !nodes.is_empty()
            });
        }
    }

    /// Appends the nodes where `uid` has devices to `out`.
    pub fn nodes_of(&self, uid: &str, out: &mut Vec<u16>) {
        let shard = self.shard(uid).read().unwrap_or_else(|p| p.into_inner());
        if let Some(nodes) = shard.get(uid) {
            out.extend(nodes.iter().map(|(n, _)| *n));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_are_counted_per_node_and_forgotten_with_it() {
        let d = RemoteDevices::default();
        d.login(2, "u");
        d.login(2, "u");
        d.login(3, "u");
        let nodes = |d: &RemoteDevices| {
            let mut out = Vec::new();
            d.nodes_of("u", &mut out);
            out.sort_unstable();
            out
        };
        assert_eq!(nodes(&d), vec![2, 3]);
        d.logout(2, "u");
        assert_eq!(nodes(&d), vec![2, 3], "one of two devices left");
        d.forget(3);
        assert_eq!(nodes(&d), vec![2]);
        d.logout(2, "u");
        assert!(nodes(&d).is_empty());
        d.logout(2, "u"); // a duplicate notice is harmless
        assert!(nodes(&d).is_empty());
    }
}
