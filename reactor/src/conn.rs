//! Per-connection state kept in the loop's slab. Pure data: no `Poll` access here.
//!
//! Owned by exactly one event loop thread for the connection's whole life.
//!
//! # Invariants
//! - `input` holds only bytes of a frame the handler could not consume yet; it is empty (and
//!   unallocated) between frames, so an idle connection owns no read buffer.
//! - `DIRTY` is set exactly while the connection is on its loop's dirty list, `BACKLOG`
//!   exactly while it is on the backlog list, `CLOSING` once it is on the closing list.
//! - `WRITABLE` is our belief that a write would not block: set at registration and by a
//!   WRITABLE event, cleared only by a `WouldBlock` from the socket.

use crate::outbound::Outbound;
use crate::per_ip::IpSlot;
use crate::ListenerId;
use mio::net::TcpStream;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

/// Bit flags of one connection; see the module invariants.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Flags(u8);

impl Flags {
    pub const WRITABLE: Flags = Flags(1);
    pub const DIRTY: Flags = Flags(1 << 1);
    pub const BACKLOG: Flags = Flags(1 << 2);
    /// Reading is paused by the handler (backpressure).
    pub const READ_PAUSED: Flags = Flags(1 << 3);
    /// The socket may hold unread bytes: a readable edge arrived while paused, or the read
    /// budget ran out before `WouldBlock`.
    pub const READ_PENDING: Flags = Flags(1 << 4);
    pub const CLOSING: Flags = Flags(1 << 5);
    /// Buffered `input` should be offered to the handler again (after a resume).
    pub const REDELIVER: Flags = Flags(1 << 6);
    /// Close once the output queue is empty (reading is paused meanwhile).
    pub const CLOSE_AFTER_FLUSH: Flags = Flags(1 << 7);

    pub fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }
    pub fn insert(&mut self, other: Flags) {
        self.0 |= other.0;
    }
    pub fn remove(&mut self, other: Flags) {
        self.0 &= !other.0;
    }
}

/// The engine's part of a connection: socket, buffers, timers. The handler's part is the
/// `state` beside it in [`Conn`].
#[derive(Debug)]
pub(crate) struct ConnIo {
    pub stream: TcpStream,
    pub generation: u32,
    pub listener: ListenerId,
    pub flags: Flags,
    /// Claim on the source address's connection count, given back when the socket drops.
    pub ip_slot: IpSlot,
    pub input: Vec<u8>,
    pub outbound: Outbound,
    /// Tick of the last inbound bytes.
    pub last_active_tick: u64,
    /// Idle timeout in ticks; 0 = none.
    pub idle_ticks: u64,
    /// Tick of this connection's live timer-wheel entry; 0 = none.
    pub scheduled_tick: u64,
    /// Tick at which the output queue went above the soft cap; 0 = it is not above.
    pub soft_since_tick: u64,
}

impl ConnIo {
    pub fn new(
        stream: TcpStream,
        generation: u32,
        listener: ListenerId,
        now_tick: u64,
        queued_out: Arc<AtomicUsize>,
    ) -> Self {
        let mut flags = Flags::default();
        // A freshly accepted socket has an empty send buffer: assume writable and let the
        // first `WouldBlock` correct us, rather than wait for the first WRITABLE edge.
        flags.insert(Flags::WRITABLE);
        ConnIo {
            stream,
            generation,
            listener,
            flags,
            ip_slot: IpSlot::none(),
            input: Vec::new(),
            outbound: Outbound::counted(queued_out),
            last_active_tick: now_tick,
            idle_ticks: 0,
            scheduled_tick: 0,
            soft_since_tick: 0,
        }
    }
}

/// One slab entry: the engine's I/O state and the handler's per-connection state.
#[derive(Debug)]
pub(crate) struct Conn<S> {
    pub io: ConnIo,
    pub state: S,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_insert_remove_contains() {
        let mut f = Flags::default();
        f.insert(Flags::DIRTY);
        f.insert(Flags::CLOSING);
        assert!(f.contains(Flags::DIRTY) && f.contains(Flags::CLOSING));
        f.remove(Flags::DIRTY);
        assert!(!f.contains(Flags::DIRTY) && f.contains(Flags::CLOSING));
    }

    #[test]
    fn an_idle_connection_is_small() {
        // The engine's part of an idle connection, before the handler's state. Kernel
        // socket buffers are not counted: this is the user-space cost per connection.
        let size = std::mem::size_of::<ConnIo>();
        assert!(size <= 176, "ConnIo grew to {size} bytes");
    }
}
