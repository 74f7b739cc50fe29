//! The connection registry ("connection manager"): uid → every authenticated connection of
//! that user (multi-device), read on the push path by every channel worker.
//!
//! Sharded by uid hash into independent `RwLock`s, so lookups for different users never
//! contend and a login only write-locks its own shard. Locks are held only for a map
//! operation, never across I/O (R1).
//!
//! # Invariants
//! - Only the loop that owns a connection adds it (when its login completes) and removes it
//!   (in `on_close`), so the registry never holds a connection that has closed for long,
//!   and never misses one that is authenticated.
//! - Every device carries the [`PushClock`] reading taken inside the write lock that added
//!   it (`login_no`). The storage writer ticks the clock *before* it looks a message's
//!   recipients up, so a device the lookup did not see has `login_no >=` that message's
//!   `push_no`: "was this device there when the message was pushed?" is `login_no <
//!   push_no`, never a guess from timestamps. (A device the lookup did see may also read
//!   `>=`; that errs toward queueing, which can duplicate but never lose.)

use ruyi_reactor::ConnId;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::RwLock;

/// A counter the storage writer ticks once per message before it looks up the message's
/// recipients, and that a login reads while it holds the registry's write lock (module
/// invariants).
#[derive(Debug, Default)]
pub struct PushClock(AtomicU64);

impl PushClock {
    /// Ticks and returns the new reading (the message's `push_no`).
    pub fn tick(&self) -> u64 {
        self.0.fetch_add(1, SeqCst) + 1
    }

    /// The current reading.
    pub fn read(&self) -> u64 {
        self.0.load(SeqCst)
    }
}

/// Shards: a power of two well above the core count, so concurrent logins and lookups of
/// different users rarely share a lock (WuKongIM uses 18 buckets).
const SHARDS: usize = 64;

/// One authenticated connection of a user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    /// The connection.
    pub conn: ConnId,
    /// 0 APP, 1 WEB, 2 PC.
    pub device_flag: u8,
    /// 0 slave, 1 master.
    pub level: u8,
    /// The client's device id.
    pub device_id: String,
    /// The [`PushClock`] when this device was added (set by [`Registry::add`]).
    pub login_no: u64,
    /// Orders logins across a cluster's nodes (`cluster/presence.rs`); 0 on one node.
    pub epoch: i64,
}

/// A connection to kick because a new login replaced it (PROTOCOL.md §6.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kick {
    /// The old connection.
    pub conn: ConnId,
    /// Send DISCONNECT(12, "login in other device") before closing.
    pub notify: bool,
}

/// uid → devices. See the module docs.
#[derive(Debug)]
pub struct Registry {
    shards: Vec<RwLock<HashMap<String, Vec<Device>>>>,
    /// Devices over all shards, kept under each shard's write lock (read by metrics and
    /// the shutdown drain without walking the users).
    count: std::sync::atomic::AtomicUsize,
    /// Read at every login; ticked by the storage writer.
    pub clock: PushClock,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            count: std::sync::atomic::AtomicUsize::new(0),
            clock: PushClock::default(),
        }
    }
}

fn shard_of(uid: &str) -> usize {
    // FNV-1a, as WuKongIM's pools use, with a finalizer so the low bits are well mixed.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in uid.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (crate::message::mix64(h) % SHARDS as u64) as usize
}

/// The kick rules of [`Registry::add`] for `device` against `devices` (those `older`
/// lets through).
fn kicks_of(devices: &[Device], device: &Device, older: impl Fn(&Device) -> bool) -> Vec<Kick> {
    devices
        .iter()
        .filter(|d| d.device_flag == device.device_flag && older(d))
        .filter_map(|d| {
            let same_device = d.device_id == device.device_id;
            match (device.level, same_device) {
                (_, true) => Some(Kick {
                    conn: d.conn,
                    notify: false,
                }),
                (1, false) => Some(Kick {
                    conn: d.conn,
                    notify: true,
                }),
                _ => None,
            }
        })
        .collect()
}

impl Registry {
    /// Adds a connection that just logged in and returns the older connections of the same
    /// uid and device flag that the kick rules say must go:
    ///
    /// | new level | other device id | same device id |
    /// |---|---|---|
    /// | master | kick with DISCONNECT | kick silently |
    /// | slave | keep | kick silently |
    pub fn add(&self, uid: &str, mut device: Device) -> Vec<Kick> {
        let mut shard = self.shards[shard_of(uid)]
            .write()
            .unwrap_or_else(|e| e.into_inner());
        // Inside the lock: see the module invariants.
        device.login_no = self.clock.read();
        // Most users have one device online: a Vec's first push would reserve four.
        let devices = shard
            .entry(uid.to_owned())
            .or_insert_with(|| Vec::with_capacity(1));
        let kicks = kicks_of(devices, &device, |_| true);
        devices.push(device);
        self.count
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        kicks
    }

    /// The connections here that a login on another node of the cluster (`device`, with
    /// its epoch) makes go, by the same rules as [`Registry::add`]: only those that logged
    /// in before it (a lower epoch), so a late notice never closes a newer login.
    pub fn kicks_for(&self, uid: &str, device: &Device) -> Vec<Kick> {
        let shard = self.shards[shard_of(uid)]
            .read()
            .unwrap_or_else(|e| e.into_inner());
        shard.get(uid).map_or_else(Vec::new, |devices| {
            kicks_of(devices, device, |d| d.epoch < device.epoch)
        })
    }

    /// Removes a connection (it closed).
    pub fn remove(&self, uid: &str, conn: ConnId) {
        let mut shard = self.shards[shard_of(uid)]
            .write()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(devices) = shard.get_mut(uid) {
            let before = devices.len();
            devices.retain(|d| d.conn != conn);
            let gone = before - devices.len();
            self.count
                .fetch_sub(gone, std::sync::atomic::Ordering::Relaxed);
            if devices.is_empty() {
                shard.remove(uid);
            }
        }
    }

    /// Every logged-in connection (a cluster node that lost part of the delivery stream
    /// closes them all so their clients resync: `cluster/relay.rs`).
    pub fn all_conns(&self) -> Vec<ConnId> {
        let mut out = Vec::new();
        for shard in &self.shards {
            let shard = shard.read().unwrap_or_else(|e| e.into_inner());
            out.extend(shard.values().flatten().map(|d| d.conn));
        }
        out
    }

    /// Appends every connection of `uid` to `out`; returns how many it appended.
    pub fn conns_of(&self, uid: &str, out: &mut Vec<ConnId>) -> usize {
        let shard = self.shards[shard_of(uid)]
            .read()
            .unwrap_or_else(|e| e.into_inner());
        let Some(devices) = shard.get(uid) else {
            return 0;
        };
        out.extend(devices.iter().map(|d| d.conn));
        devices.len()
    }

    /// The user's connections that logged in with an epoch up to `epoch`: those a
    /// cluster batch stamped `epoch` is pushed to (`cluster/devices.rs`).
    pub fn conns_logged_in_by(&self, uid: &str, epoch: i64, out: &mut Vec<ConnId>) {
        let shard = self.shards[shard_of(uid)]
            .read()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(devices) = shard.get(uid) {
            out.extend(devices.iter().filter(|d| d.epoch <= epoch).map(|d| d.conn));
        }
    }

    /// True when the user has a connection other than `except` that was logged in before
    /// the message with `push_no` was pushed (module invariants), with an epoch up to
    /// `login_epoch` (a cluster follower pushes no device above it: `cluster/devices.rs`):
    /// that device was one of the message's receivers, so it holds the message or will
    /// queue it when it goes.
    pub fn has_older_device(
        &self,
        uid: &str,
        except: ConnId,
        push_no: u64,
        login_epoch: i64,
    ) -> bool {
        let shard = self.shards[shard_of(uid)]
            .read()
            .unwrap_or_else(|e| e.into_inner());
        shard.get(uid).is_some_and(|devices| {
            devices
                .iter()
                .any(|d| d.conn != except && d.login_no < push_no && d.epoch <= login_epoch)
        })
    }

    /// The user's connections, not counting those of `device_flag` + `device_id` (a new
    /// login of that device replaces them).
    pub fn count_other_devices(&self, uid: &str, device_flag: u8, device_id: &str) -> usize {
        let shard = self.shards[shard_of(uid)]
            .read()
            .unwrap_or_else(|e| e.into_inner());
        shard.get(uid).map_or(0, |devices| {
            devices
                .iter()
                .filter(|d| d.device_flag != device_flag || d.device_id != device_id)
                .count()
        })
    }

    /// True when the user has at least one authenticated connection.
    pub fn is_online(&self, uid: &str) -> bool {
        let shard = self.shards[shard_of(uid)]
            .read()
            .unwrap_or_else(|e| e.into_inner());
        shard.contains_key(uid)
    }

    /// A copy of the user's devices.
    pub fn devices(&self, uid: &str) -> Vec<Device> {
        let shard = self.shards[shard_of(uid)]
            .read()
            .unwrap_or_else(|e| e.into_inner());
        shard.get(uid).cloned().unwrap_or_default()
    }

    /// Authenticated connections over all users.
    pub fn len(&self) -> usize {
        self.count.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// True when nobody is online.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(slot: usize, flag: u8, level: u8, id: &str) -> Device {
        Device {
            conn: ConnId::new(0, slot, 1),
            device_flag: flag,
            level,
            device_id: id.into(),
            login_no: 0,
            epoch: 0,
        }
    }

    #[test]
    fn a_login_elsewhere_kicks_only_older_logins_by_the_same_rules() {
        let r = Registry::default();
        let older = Device {
            epoch: 5,
            ..dev(1, 1, 1, "phone")
        };
        let other_flag = Device {
            epoch: 5,
            ..dev(2, 2, 1, "pc")
        };
        r.add("u", older);
        r.add("u", other_flag);
        let newer = |epoch, level, id: &str| Device {
            epoch,
            ..dev(9, 1, level, id)
        };
        assert!(
            r.kicks_for("u", &newer(4, 1, "x")).is_empty(),
            "a late notice"
        );
        assert_eq!(
            r.kicks_for("u", &newer(6, 1, "x")),
            vec![Kick {
                conn: ConnId::new(0, 1, 1),
                notify: true
            }]
        );
        assert_eq!(
            r.kicks_for("u", &newer(6, 0, "phone")),
            vec![Kick {
                conn: ConnId::new(0, 1, 1),
                notify: false
            }],
            "the same device id, silently"
        );
        assert!(
            r.kicks_for("u", &newer(6, 0, "x")).is_empty(),
            "a slave keeps the others"
        );
    }

    #[test]
    fn a_device_added_after_a_push_does_not_count_as_holding_it() {
        let r = Registry::default();
        r.add("u", dev(1, 1, 0, "a"));
        let push_no = r.clock.tick();
        r.add("u", dev(2, 1, 0, "b"));
        let (a, b) = (ConnId::new(0, 1, 1), ConnId::new(0, 2, 1));
        assert!(r.has_older_device("u", b, push_no, i64::MAX), "a was there");
        assert!(
            !r.has_older_device("u", a, push_no, i64::MAX),
            "b came later"
        );
        assert!(!r.has_older_device("nobody", a, push_no, i64::MAX));
    }

    #[test]
    fn a_device_above_a_batch_stamp_does_not_count_as_holding_it() {
        // A cluster follower pushed a batch stamped 5 only to devices of epoch 5 or less.
        let r = Registry::default();
        r.add(
            "u",
            Device {
                epoch: 5,
                ..dev(1, 1, 0, "phone")
            },
        );
        r.add(
            "u",
            Device {
                epoch: 9,
                ..dev(2, 2, 0, "pc")
            },
        );
        let push_no = r.clock.tick();
        let (phone, pc) = (ConnId::new(0, 1, 1), ConnId::new(0, 2, 1));
        let mut pushed = Vec::new();
        r.conns_logged_in_by("u", 5, &mut pushed);
        assert_eq!(pushed, vec![phone]);
        assert!(
            !r.has_older_device("u", phone, push_no, 5),
            "the pc was not pushed it: the phone's miss must be queued"
        );
        assert!(r.has_older_device("u", pc, push_no, 5), "the phone was");
    }

    #[test]
    fn multi_device_lookup_and_removal() {
        let r = Registry::default();
        assert!(r.add("u1", dev(1, 0, 0, "a")).is_empty());
        assert!(r.add("u1", dev(2, 1, 0, "b")).is_empty());
        let mut out = Vec::new();
        assert_eq!(r.conns_of("u1", &mut out), 2);
        assert_eq!(r.len(), 2);
        r.remove("u1", ConnId::new(0, 1, 1));
        r.remove("u1", ConnId::new(0, 1, 1)); // twice: counted once
        assert_eq!(r.devices("u1").len(), 1);
        assert_eq!(r.len(), 1);
        r.remove("u1", ConnId::new(0, 2, 1));
        assert!(r.is_empty());
    }

    #[test]
    fn kick_rules_of_the_spec() {
        let r = Registry::default();
        r.add("u", dev(1, 1, 0, "old"));
        // Slave, other device id, same flag: nobody is kicked.
        assert!(r.add("u", dev(2, 1, 0, "new")).is_empty());
        // Same device id: kicked silently whatever the level.
        assert_eq!(
            r.add("u", dev(3, 1, 0, "new")),
            vec![Kick {
                conn: ConnId::new(0, 2, 1),
                notify: false
            }]
        );
        // Master: other device ids of the same flag get DISCONNECT; other flags are left.
        r.add("u", dev(4, 2, 0, "pc"));
        let kicks = r.add("u", dev(5, 1, 1, "master"));
        assert_eq!(kicks.len(), 3);
        assert!(kicks.iter().all(|k| k.notify));
        assert!(kicks.iter().all(|k| k.conn.slot() != 4));
    }
}
