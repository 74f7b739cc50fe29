//! System uids (HTTP_API.md §4.4): accounts an app server sends as (a support bot, a
//! notifier). Their sends skip the permission checks (membership, deny and allow lists,
//! send bans), as the HTTP API's own sends do, and messages are never pushed to them.
//!
//! Stored in the `system_uids` table; this is the copy the channel workers read on every
//! send, loaded at start and changed by the HTTP routes after their write commits. An
//! empty set (the usual case) costs one atomic load per check.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;

/// The set of system uids (module docs).
#[derive(Debug, Default)]
pub struct SystemUids {
    /// False while the set is empty: the fast path.
    any: AtomicBool,
    set: RwLock<HashSet<String>>,
    /// Held by a route across its store write and the reload after it, so changes reach
    /// memory in the order they were stored.
    pub changing: std::sync::Mutex<()>,
}

impl SystemUids {
    /// A set holding `uids`.
    pub fn new(uids: Vec<String>) -> SystemUids {
        let set: HashSet<String> = uids.into_iter().collect();
        SystemUids {
            any: AtomicBool::new(!set.is_empty()),
            set: RwLock::new(set),
            changing: std::sync::Mutex::new(()),
        }
    }

    /// True if `uid` is a system uid.
    pub fn contains(&self, uid: &str) -> bool {
        self.any.load(Ordering::Acquire)
            && self
                .set
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .contains(uid)
    }

    /// True while there is none.
    pub fn is_empty(&self) -> bool {
        !self.any.load(Ordering::Acquire)
    }

    /// `uids` without the system uids among them (one lock for the whole list), or `None`
    /// when there is none among them.
    pub fn without(&self, uids: &[String]) -> Option<Vec<String>> {
        if self.is_empty() {
            return None;
        }
        let set = self
            .set
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        uids.iter()
            .any(|u| set.contains(u))
            .then(|| uids.iter().filter(|u| !set.contains(*u)).cloned().collect())
    }

    /// Becomes exactly `uids` (as the store holds them now).
    pub fn replace(&self, uids: Vec<String>) {
        let mut set = self
            .set
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *set = uids.into_iter().collect();
        self.any.store(!set.is_empty(), Ordering::Release);
    }
}
