//! A hashed timing wheel for idle timeouts. Owned by one event loop.
//!
//! Time is counted in ticks of `EngineConfig::tick` since the loop started. A connection
//! does not move in the wheel when it is active: it only records the tick of its last input.
//! When its wheel entry comes due, the loop compares the real deadline
//! (`last_active + idle_ticks`) with now and either closes the connection or schedules it
//! again. So activity costs one store, and each idle period costs at most a couple of wheel
//! entries, with no allocation per tick per connection.
//!
//! # Invariants
//! - An entry is a hint, never proof: the loop drops entries whose slot holds another
//!   generation, or whose tick is not the connection's current `scheduled_tick`.
//! - Deadlines further out than the wheel's span are parked at the wheel's far end and
//!   re-examined there.

/// A wheel entry: which connection to look at, and the tick it was scheduled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TimerEntry {
    pub slot: u32,
    pub generation: u32,
    pub tick: u64,
}

#[derive(Debug)]
pub(crate) struct TimerWheel {
    slots: Vec<Vec<TimerEntry>>,
    /// The last tick whose slot has been drained.
    current: u64,
}

/// Slots in the wheel. At the default 100 ms tick this spans about 100 s; longer idle
/// timeouts (the IM default is minutes) park and re-examine once per span.
pub(crate) const WHEEL_SLOTS: u64 = 1024;

impl TimerWheel {
    pub fn new() -> TimerWheel {
        TimerWheel {
            slots: (0..WHEEL_SLOTS).map(|_| Vec::new()).collect(),
            current: 0,
        }
    }

    /// Schedules `slot#generation` for `deadline` (a tick), parked at the far end if it is
    /// beyond the wheel's span. Returns the tick the entry was actually placed at; the
    /// connection stores it as its `scheduled_tick`.
    pub fn schedule(&mut self, slot: u32, generation: u32, deadline: u64) -> u64 {
        let tick = deadline.clamp(self.current + 1, self.current + WHEEL_SLOTS - 1);
        self.slots[(tick % WHEEL_SLOTS) as usize].push(TimerEntry {
            slot,
            generation,
            tick,
        });
        tick
    }

    /// Moves the wheel to `now`, appending every entry that came due to `due`.
    pub fn advance(&mut self, now: u64, due: &mut Vec<TimerEntry>) {
        // After a long stall (a debugger, a suspended VM) every slot is due once; entries
        // are re-examined against their real deadlines, so nothing fires early.
        let steps = now.saturating_sub(self.current).min(WHEEL_SLOTS);
        for step in 1..=steps {
            let index = ((self.current + step) % WHEEL_SLOTS) as usize;
            due.append(&mut self.slots[index]);
        }
        self.current = self.current.max(now);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots.iter().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_come_due_at_their_tick_not_before() {
        let mut w = TimerWheel::new();
        let at = w.schedule(3, 1, 10);
        assert_eq!(at, 10);
        let mut due = Vec::new();
        w.advance(9, &mut due);
        assert!(due.is_empty());
        w.advance(10, &mut due);
        assert_eq!(
            due,
            [TimerEntry {
                slot: 3,
                generation: 1,
                tick: 10
            }]
        );
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn far_deadlines_park_at_the_end_of_the_span() {
        let mut w = TimerWheel::new();
        let at = w.schedule(1, 1, 50_000);
        assert_eq!(at, WHEEL_SLOTS - 1);
        let mut due = Vec::new();
        w.advance(WHEEL_SLOTS - 2, &mut due);
        assert!(due.is_empty());
        w.advance(WHEEL_SLOTS - 1, &mut due);
        assert_eq!(due.len(), 1, "re-examined at the far end");
    }

    #[test]
    fn a_past_deadline_fires_on_the_next_tick() {
        let mut w = TimerWheel::new();
        let mut due = Vec::new();
        w.advance(100, &mut due);
        assert_eq!(w.schedule(1, 1, 5), 101);
    }

    #[test]
    fn a_long_stall_drains_everything_once() {
        let mut w = TimerWheel::new();
        for s in 0..10 {
            w.schedule(s, 0, 1 + u64::from(s) * 50);
        }
        let mut due = Vec::new();
        w.advance(100_000, &mut due);
        assert_eq!(due.len(), 10);
        assert_eq!(w.len(), 0);
    }
}
