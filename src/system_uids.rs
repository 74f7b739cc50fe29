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
}

impl SystemUids {
    /// A set holding `uids`.
    pub fn new(uids: Vec<String>) -> SystemUids {
        let set: HashSet<String> = uids.into_iter().collect();
        SystemUids {
            any: AtomicBool::new(!set.is_empty()),
            set: RwLock::new(set),
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

    /// Adds (`add`) or removes `uids`, after the store did.
    pub fn change(&self, uids: &[String], add: bool) {
        let mut set = self
            .set
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for uid in uids {
            if add {
                set.insert(uid.clone());
            } else {
                set.remove(uid);
            }
        }
        self.any.store(!set.is_empty(), Ordering::Release);
    }
}
