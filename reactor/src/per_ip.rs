//! Connections per source address: the table behind `EngineConfig::max_connections_per_ip`.
//!
//! One host must not be able to take every descriptor the process has. The acceptor takes
//! an [`IpSlot`] for each accepted socket; the slot travels with the socket (the loop's
//! inbox, its pending list, the connection) and gives the count back when it is dropped, so
//! the count is exact however the connection ends, a panicking loop included.
//!
//! IPv6 peers are counted by their /64 prefix, the usual size of one subscriber's network:
//! a host that rotates through its own /64 must not get a fresh limit per address.
//! IPv4-mapped IPv6 addresses count as the IPv4 address they carry.
//!
//! # Invariants
//! - `entries[slot].count` is the number of live `IpSlot`s naming `slot`, and an entry
//!   exists exactly while its count is above zero (so the table holds only the sources that
//!   have connections open now: it cannot be grown by connecting from many addresses
//!   beyond the connections themselves).
//! - The lock is held for a hash lookup only: never across I/O.
//! - A slot lives exactly as long as its socket: it is moved, never copied.

use slab::Slab;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// A connection's claim on its source's count, given back on drop. Empty when the limit
/// is off.
#[derive(Debug, Default)]
pub(crate) struct IpSlot(Option<(Arc<PerIp>, u32)>);

impl IpSlot {
    /// No claim (the limit is off).
    pub fn none() -> IpSlot {
        IpSlot(None)
    }

    /// The claim's slot number, or `u32::MAX` for none; the claim is then the caller's to
    /// give back with [`PerIp::release`] (`global::Admission` does, saving the `Arc` per
    /// connection).
    pub fn into_raw(mut self) -> u32 {
        self.0.take().map_or(u32::MAX, |(_, slot)| slot)
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        if let Some((table, slot)) = self.0.take() {
            table.release(slot);
        }
    }
}

/// Live connections per source.
#[derive(Debug)]
pub(crate) struct PerIp {
    limit: usize,
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    by_source: HashMap<IpAddr, u32>,
    entries: Slab<(IpAddr, usize)>,
}

impl PerIp {
    pub fn new(limit: usize) -> PerIp {
        PerIp {
            limit,
            table: Mutex::new(Table::default()),
        }
    }

    /// Counts one more connection from `ip`, or `None` if its source is at the limit.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        let source = source_of(ip);
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let slot = match t.by_source.get(&source) {
            Some(&slot) => slot,
            // `u32::MAX` is `IpSlot::NONE`; a table that large is far beyond any process.
            None if t.entries.len() >= u32::MAX as usize => return None,
            None => {
                let slot = t.entries.insert((source, 0)) as u32;
                t.by_source.insert(source, slot);
                slot
            }
        };
        let entry = &mut t.entries[slot as usize];
        if entry.1 >= self.limit {
            return None;
        }
        entry.1 += 1;
        Some(IpSlot(Some((Arc::clone(self), slot))))
    }

    /// Moves the claim `slot` (`u32::MAX`: none) to `ip`'s source: the same slot when the
    /// source is the same, else a slot of the new source, the old one given back. `None`,
    /// and nothing changed, when the new source is at the limit.
    pub fn reassign(self: &Arc<Self>, slot: u32, ip: IpAddr) -> Option<u32> {
        if slot != u32::MAX {
            let t = self.table.lock().unwrap_or_else(|p| p.into_inner());
            if t.entries
                .get(slot as usize)
                .is_some_and(|e| e.0 == source_of(ip))
            {
                return Some(slot);
            }
        }
        let new = self.acquire(ip)?.into_raw();
        if slot != u32::MAX {
            self.release(slot);
        }
        Some(new)
    }

    /// Gives back a slot taken by `acquire` (from `IpSlot::drop`, or the owner of
    /// `IpSlot::into_raw`'s number).
    pub fn release(&self, slot: u32) {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let Some(entry) = t.entries.get_mut(slot as usize) else {
            debug_assert!(false, "released an unknown per-IP slot");
            return;
        };
        entry.1 -= 1;
        if entry.1 == 0 {
            let (source, _) = t.entries.remove(slot as usize);
            t.by_source.remove(&source);
        }
    }

    /// Sources with at least one connection open.
    #[cfg(test)]
    fn sources(&self) -> usize {
        self.table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entries
            .len()
    }
}

/// The key a peer is counted under: the IPv4 address, or the IPv6 /64.
fn source_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_source_is_refused_at_the_limit_and_admitted_again_after_a_drop() {
        let per_ip = Arc::new(PerIp::new(2));
        let a = per_ip.acquire(ip("10.0.0.1")).unwrap();
        let _b = per_ip.acquire(ip("10.0.0.1")).unwrap();
        assert!(per_ip.acquire(ip("10.0.0.1")).is_none());
        // Another source has its own count.
        let _c = per_ip.acquire(ip("10.0.0.2")).unwrap();
        drop(a);
        assert!(per_ip.acquire(ip("10.0.0.1")).is_some());
    }

    #[test]
    fn the_table_forgets_a_source_with_no_connection_left() {
        let per_ip = Arc::new(PerIp::new(5));
        let slots: Vec<_> = (0..3)
            .map(|_| per_ip.acquire(ip("10.0.0.1")).unwrap())
            .collect();
        assert_eq!(per_ip.sources(), 1);
        drop(slots);
        assert_eq!(per_ip.sources(), 0);
        drop(IpSlot::none());
        assert_eq!(per_ip.sources(), 0);
    }

    #[test]
    fn a_claim_moves_to_another_source_only_when_it_has_room_and_stays_on_its_own() {
        let per_ip = Arc::new(PerIp::new(1));
        let slot = per_ip.acquire(ip("10.0.0.1")).unwrap().into_raw();
        // The same source: the same slot, even at the limit.
        assert_eq!(per_ip.reassign(slot, ip("10.0.0.1")), Some(slot));
        let _full = per_ip.acquire(ip("10.0.0.2")).unwrap();
        assert_eq!(per_ip.reassign(slot, ip("10.0.0.2")), None);
        let moved = per_ip.reassign(slot, ip("10.0.0.3")).unwrap();
        assert!(
            per_ip.acquire(ip("10.0.0.1")).is_some(),
            "the old slot was kept"
        );
        per_ip.release(moved);
        assert_eq!(per_ip.sources(), 1);
    }

    #[test]
    fn ipv6_counts_by_its_64_prefix_and_mapped_ipv4_as_ipv4() {
        let per_ip = Arc::new(PerIp::new(1));
        let _a = per_ip.acquire(ip("2001:db8:1:2::1")).unwrap();
        assert!(per_ip.acquire(ip("2001:db8:1:2:ffff::9")).is_none());
        let _b = per_ip.acquire(ip("2001:db8:1:3::1")).unwrap();
        let _v4 = per_ip.acquire(ip("192.0.2.7")).unwrap();
        assert!(per_ip.acquire(ip("::ffff:192.0.2.7")).is_none());
    }
}
