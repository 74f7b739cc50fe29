//! Connections per source address: the table behind `EngineConfig::max_connections_per_ip`.
//!
//! One host must not be able to take every descriptor the process has. The acceptor takes a
//! [`IpSlot`] for each accepted socket and the loop that drops the socket gives it back, so
//! the count is exact however the connection ends.
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

use slab::Slab;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

/// A connection's claim on its source's count. `NONE` when the limit is off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IpSlot(u32);

impl IpSlot {
    pub const NONE: IpSlot = IpSlot(u32::MAX);
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
    pub fn acquire(&self, ip: IpAddr) -> Option<IpSlot> {
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
        Some(IpSlot(slot))
    }

    /// Gives back a slot taken by `acquire`.
    pub fn release(&self, slot: IpSlot) {
        if slot == IpSlot::NONE {
            return;
        }
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let Some(entry) = t.entries.get_mut(slot.0 as usize) else {
            debug_assert!(false, "released an unknown per-IP slot");
            return;
        };
        entry.1 -= 1;
        if entry.1 == 0 {
            let (source, _) = t.entries.remove(slot.0 as usize);
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
    fn a_source_is_refused_at_the_limit_and_admitted_again_after_a_release() {
        let per_ip = PerIp::new(2);
        let a = per_ip.acquire(ip("10.0.0.1")).unwrap();
        let _b = per_ip.acquire(ip("10.0.0.1")).unwrap();
        assert_eq!(per_ip.acquire(ip("10.0.0.1")), None);
        // Another source has its own count.
        let c = per_ip.acquire(ip("10.0.0.2")).unwrap();
        per_ip.release(a);
        assert!(per_ip.acquire(ip("10.0.0.1")).is_some());
        per_ip.release(c);
    }

    #[test]
    fn the_table_forgets_a_source_with_no_connection_left() {
        let per_ip = PerIp::new(5);
        let slots: Vec<_> = (0..3)
            .map(|_| per_ip.acquire(ip("10.0.0.1")).unwrap())
            .collect();
        assert_eq!(per_ip.sources(), 1);
        for s in slots {
            per_ip.release(s);
        }
        assert_eq!(per_ip.sources(), 0);
        per_ip.release(IpSlot::NONE);
        assert_eq!(per_ip.sources(), 0);
    }

    #[test]
    fn ipv6_counts_by_its_64_prefix_and_mapped_ipv4_as_ipv4() {
        let per_ip = PerIp::new(1);
        let _a = per_ip.acquire(ip("2001:db8:1:2::1")).unwrap();
        assert_eq!(per_ip.acquire(ip("2001:db8:1:2:ffff::9")), None);
        assert!(per_ip.acquire(ip("2001:db8:1:3::1")).is_some());
        let _v4 = per_ip.acquire(ip("192.0.2.7")).unwrap();
        assert_eq!(per_ip.acquire(ip("::ffff:192.0.2.7")), None);
    }
}
