//! Presence across nodes: who is online is the sum of every node's registry.
//!
//! - `/user/onlinestatus` on any node asks every other node (`<c>.presence`) and waits
//!   for the live ones' answers, [`ASK_WAIT`] at most, then merges them with its own: a
//!   node that does not answer in time is left out (its devices look offline), which the
//!   answer's callers already live with while a device reconnects.
//! - A login tells every node (`<c>.devices`), which closes its devices of that uid and
//!   flag by the kick rules of PROTOCOL.md §6.4 (`Registry::kicks_for`), but only those
//!   that logged in before it: logins carry an epoch from a PostgreSQL sequence, taken in
//!   the auth worker, so a notice that arrives late never closes a newer login. A notice
//!   lost on the bus leaves the older device connected (it is not kicked); a device that
//!   registers after the notice of a newer login on another node was already there
//!   (it is kicked only if the notice comes after it registered).
//! - `/user/device_quit` runs on the leader (it clears tokens), which kicks its own devices
//!   and tells every node to kick theirs (`<c>.quit`); each node kicks on its relay's
//!   thread, never on the bus thread.

use super::bus::Publisher;
use super::wire;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long `/user/onlinestatus` waits for the other nodes at most.
pub const ASK_WAIT: Duration = Duration::from_secs(1);

/// At most this many uids per question (the HTTP API's own bound is the body size).
const MAX_UIDS: usize = 10_000;

/// One online device as presence reports it: (uid, device flag).
pub type Online = (String, u8);

/// "Which of these users have devices on your node?"
#[derive(Debug, Serialize, Deserialize)]
pub struct Ask {
    pub origin: u16,
    pub token: u64,
    pub uids: Vec<String>,
}

/// One node's answer to an [`Ask`].
#[derive(Debug, Serialize, Deserialize)]
pub struct Answer {
    pub token: u64,
    pub devices: Vec<Online>,
}

/// "Close these devices": `device_flag` -1 for all of the user's.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Quit {
    pub uid: String,
    pub device_flag: i32,
}

/// A device logged in on `node`: the same uid and flag elsewhere may have to go.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Login {
    pub node: u16,
    pub uid: String,
    pub device_flag: u8,
    pub device_id: String,
    pub level: u8,
    pub epoch: i64,
}

/// A device of `uid` on `node` went.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Logout {
    pub node: u16,
    pub uid: String,
}

/// A login or a logout, on one subject (`<c>.devices`) so every node applies one node's
/// notices in the order it sent them (a logout overtaking its login would leave a device
/// counted for good: `devices.rs`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Change {
    Login(Login),
    Logout(Logout),
}

/// This node's presence (module docs).
#[derive(Debug)]
pub struct Presence {
    me: u16,
    name: String,
    publisher: Publisher,
    next: AtomicU64,
    /// Questions waiting for answers: token → where the answers go.
    waiting: Mutex<HashMap<u64, crossbeam_channel::Sender<Vec<Online>>>>,
}

impl Presence {
    /// Node `me`'s presence in cluster `name`.
    pub fn new(me: u16, incarnation: i64, name: &str, publisher: Publisher) -> Presence {
        Presence {
            me,
            name: name.to_owned(),
            publisher,
            // From the incarnation: an answer to a previous process matches nothing here.
            next: AtomicU64::new(super::relay::token_base(incarnation)),
            waiting: Mutex::default(),
        }
    }

    /// The devices of `uids` on the `others` other live nodes (HTTP workers only: it
    /// waits, [`ASK_WAIT`] at most).
    pub fn ask(&self, uids: &[String], others: usize) -> Vec<Online> {
        if others == 0 || uids.is_empty() {
            return Vec::new();
        }
        let token = self.next.fetch_add(1, Relaxed);
        // One slot per node asked: the bus thread never waits to hand an answer over.
        let (tx, rx) = crossbeam_channel::bounded(others);
        lock(&self.waiting).insert(token, tx);
        let ask = Ask {
            origin: self.me,
            token,
            uids: uids.iter().take(MAX_UIDS).cloned().collect(),
        };
        let mut online = Vec::new();
        if self
            .publisher
            .try_publish(format!("{}.presence", self.name), wire::encode(&ask))
        {
            let deadline = Instant::now() + ASK_WAIT;
            for _ in 0..others {
                match rx.recv_deadline(deadline) {
                    Ok(devices) => online.extend(devices),
                    Err(_) => break, // the rest did not answer in time
                }
            }
        }
        lock(&self.waiting).remove(&token);
        online
    }

    /// From the bus thread: answers another node's question from this node's registry.
    pub fn on_ask(&self, registry: &crate::registry::Registry, ask: Ask) {
        let devices = ask
            .uids
            .iter()
            .flat_map(|uid| {
                registry
                    .devices(uid)
                    .into_iter()
                    .map(move |d| (uid.clone(), d.device_flag))
            })
            .collect();
        let answer = Answer {
            token: ask.token,
            devices,
        };
        self.publisher.try_publish(
            wire::node_subject(&self.name, ask.origin, "presence"),
            wire::encode(&answer),
        );
    }

    /// From the bus thread: another node's answer to this node's question.
    pub fn on_answer(&self, answer: Answer) {
        if let Some(tx) = lock(&self.waiting).get(&answer.token) {
            let _ = tx.try_send(answer.devices);
        }
    }

    /// Tells every other node that `device` of `uid` logged in here (from a loop thread:
    /// never blocks).
    pub fn logged_in(&self, uid: &str, device: &crate::registry::Device) {
        if crate::fault::login_notices_muted() {
            return; // lost on the bus (the failpoint's purpose)
        }
        let login = Login {
            node: self.me,
            uid: uid.to_owned(),
            device_flag: device.device_flag,
            device_id: device.device_id.clone(),
            level: device.level,
            epoch: device.epoch,
        };
        self.publisher.try_publish(
            format!("{}.devices", self.name),
            wire::encode(&Change::Login(login)),
        );
    }

    /// Tells every other node that a device of `uid` here went (from a loop thread).
    pub fn logged_out(&self, uid: &str) {
        let out = Logout {
            node: self.me,
            uid: uid.to_owned(),
        };
        self.publisher.try_publish(
            format!("{}.devices", self.name),
            wire::encode(&Change::Logout(out)),
        );
    }

    /// Tells every other node to close `uid`'s devices with `device_flag` (-1: all).
    pub fn quit(&self, uid: &str, device_flag: i32) {
        let quit = Quit {
            uid: uid.to_owned(),
            device_flag,
        };
        self.publisher
            .try_publish(format!("{}.quit", self.name), wire::encode(&quit));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
