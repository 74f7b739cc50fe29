//! `ConnId`: the name of one connection that is safe to hold on any thread.
//!
//! A connection lives in one event loop's `Slab`, at a slot that is reused after it closes.
//! So an id that leaves the loop carries three numbers: the loop, the slot, and the
//! generation the loop gave the connection when it was inserted. The loop drops every
//! command whose generation does not match the connection now in the slot.
//!
//! # Invariants
//! - Generations are handed out by one loop from a counter that only grows (wrapping after
//!   2^32 connections on that loop), so two connections that share a slot during the life of
//!   any realistic id never share a generation.
//! - A stale id is a privacy bug, not a nuisance: a message for the old user would reach the
//!   new one. An id names the live connection only when all three numbers match: the loop
//!   (ids of different loops share slots and generations), the slot, and the generation.
//!   Inside the engine one function makes that check (`event_loop::live`), and every id
//!   that arrives from elsewhere goes through it.

use std::fmt;

/// Identifies one connection across threads: `(loop, slot, generation)`.
///
/// Displayed as `loop:slot#generation`, e.g. `2:17#5`, which is the context every
/// per-connection log line starts with.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    loop_index: u32,
    slot: u32,
    generation: u32,
}

impl ConnId {
    /// Builds an id. Only event loops mint ids for live connections; tests and handlers
    /// may build ids to look up or to name connections that no longer exist.
    pub const fn new(loop_index: usize, slot: usize, generation: u32) -> ConnId {
        ConnId {
            loop_index: loop_index as u32,
            slot: slot as u32,
            generation,
        }
    }

    /// Index of the event loop that owns the connection.
    pub const fn loop_index(self) -> usize {
        self.loop_index as usize
    }

    /// The connection's slot in its loop's slab; also its `mio::Token`.
    pub const fn slot(self) -> usize {
        self.slot as usize
    }

    /// The generation the loop gave this connection when it was inserted.
    pub const fn generation(self) -> u32 {
        self.generation
    }

    /// True when `generation` is this id's. Only part of the check (module docs): the loop
    /// and the slot must match too.
    pub const fn matches(self, generation: u32) -> bool {
        self.generation == generation
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}#{}", self.loop_index, self.slot, self.generation)
    }
}

impl fmt::Debug for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnId({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_and_display_is_the_log_context() {
        let id = ConnId::new(2, 17, 5);
        assert_eq!((id.loop_index(), id.slot(), id.generation()), (2, 17, 5));
        assert_eq!(id.to_string(), "2:17#5");
        assert_eq!(format!("{id:?}"), "ConnId(2:17#5)");
    }

    #[test]
    fn same_slot_other_generation_is_another_connection() {
        let old = ConnId::new(0, 3, 7);
        let new = ConnId::new(0, 3, 8);
        assert_ne!(old, new);
        assert!(old.matches(7));
        assert!(!old.matches(new.generation()));
    }
}
