//! Per-connection state kept in the loop's slab. Pure data: no `Poll` access here.
//!
//! Owned by exactly one event loop thread for the connection's whole life.
//!
//! # The flags
//!
//! | flag                | set by                                          | cleared by                                   |
//! |---------------------|-------------------------------------------------|----------------------------------------------|
//! | `WRITABLE`          | registration, a WRITABLE event                  | a write that returned `WouldBlock`           |
//! | `DIRTY`             | `Core::mark_dirty` (output queued)              | `flush_dirty` taking it off the dirty list   |
//! | `BACKLOG`           | `Core::mark_backlog` (budget spent, resumed)    | `process_backlog` taking it off the list     |
//! | `READ_PAUSED`       | `pause_reading`, `close_after_flush`            | `resume_reading` (not after a close began)   |
//! | `READ_PENDING`      | a readable edge; a read that spent the budget   | a read that found the socket drained         |
//! | `REDELIVER`         | `resume_reading`                                | the backlog pass offering buffered input     |
//! | `CLOSE_AFTER_FLUSH` | `close_after_flush`, EOF with output queued     | never: the connection closes                 |
//! | `PEER_CLOSED`       | EOF with output queued (a half-close)           | never                                        |
//! | `SOFT_WATCHED`      | the queue going above the soft cap              | the tick that finds it back below            |
//! | `OUTPUT_DROPPED`    | a cap clearing the queue                        | never: the close will be a reset             |
//! | `CLOSING`           | `Core::mark_close`, from anywhere               | never: `reap` removes the connection         |
//! | `PROXY_CHECK`       | registration on a PROXY listener (`proxy.rs`)   | the first bytes read as a header or not one  |
//! | `VIA_PROXY`         | registration: the source is a trusted proxy     | never                                        |
//! | `PROXY_REQUIRED`    | registration: ... that must send a header       | never                                        |
//! | `TLS_FAILED`        | records that cannot be read (`tls.rs`)          | never: the connection closes                 |
//!
//! # Invariants
//! - `input` holds only bytes of a frame the handler could not consume yet; it is empty (and
//!   unallocated) between frames, so an idle connection owns no read buffer.
//! - `DIRTY`, `BACKLOG`, `SOFT_WATCHED` and `CLOSING` are set exactly while the connection
//!   is on the matching work list (`core.rs`), so it is never listed twice. (The last
//!   write of a connection being reaped may list it once more; the entry is found stale.)
//! - `WRITABLE` is our belief that a write would not block: set at registration and by a
//!   WRITABLE event, cleared only by a `WouldBlock` from the socket.

use crate::global::Admission;
use crate::outbound::Outbound;
use crate::ListenerId;
use mio::net::TcpStream;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

/// Bit flags of one connection; see the module docs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Flags(u16);

impl Flags {
    pub const WRITABLE: Flags = Flags(1);
    pub const DIRTY: Flags = Flags(1 << 1);
    pub const BACKLOG: Flags = Flags(1 << 2);
    /// Reading is paused by the handler (backpressure) or by a close in progress.
    pub const READ_PAUSED: Flags = Flags(1 << 3);
    /// The socket may hold unread bytes: a readable edge arrived while paused, or the read
    /// budget ran out before `WouldBlock`.
    pub const READ_PENDING: Flags = Flags(1 << 4);
    pub const CLOSING: Flags = Flags(1 << 5);
    /// Buffered `input` should be offered to the handler again (after a resume).
    pub const REDELIVER: Flags = Flags(1 << 6);
    /// Close once the output queue is empty (reading is paused meanwhile).
    pub const CLOSE_AFTER_FLUSH: Flags = Flags(1 << 7);
    /// The peer sent its FIN while output was queued: it is flushed, then the connection
    /// closes as `PeerClosed`.
    pub const PEER_CLOSED: Flags = Flags(1 << 8);
    /// On the loop's `soft_watch` list.
    pub const SOFT_WATCHED: Flags = Flags(1 << 9);
    /// Output was thrown away by a cap: the close must be a reset.
    pub const OUTPUT_DROPPED: Flags = Flags(1 << 10);
    /// The first bytes are still to be read as a PROXY header, or not one.
    pub const PROXY_CHECK: Flags = Flags(1 << 11);
    /// The socket's peer is a trusted proxy: it may name the client (`proxy.rs`).
    pub const VIA_PROXY: Flags = Flags(1 << 12);
    /// ... and must open with a PROXY header (`HeaderRule::Required`).
    pub const PROXY_REQUIRED: Flags = Flags(1 << 13);
    /// A TLS session failed: its alert is the last record, and the close counts as
    /// `CloseReason::Tls`.
    pub const TLS_FAILED: Flags = Flags(1 << 14);

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

impl std::ops::BitOr for Flags {
    type Output = Flags;
    fn bitor(self, other: Flags) -> Flags {
        Flags(self.0 | other.0)
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
    /// This socket's place in the connection counts, given back when it drops.
    pub admission: Admission,
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
    /// What only some connections carry: a client address a proxy named, a TLS session.
    /// Boxed: one word on every connection, the rest only where it is used.
    pub extra: Option<Box<Extra>>,
}

/// The rarer parts of a connection (`ConnIo::extra`).
#[derive(Debug, Default)]
pub(crate) struct Extra {
    /// The client a trusted proxy named (`proxy.rs`); `None`: the socket's peer.
    pub client: Option<std::net::SocketAddr>,
    /// The TLS session of a connection on a TLS listener (`event_loop/tls.rs`): bytes on
    /// the socket are its records; `input` and `outbound` hold plaintext.
    pub tls: Option<rustls::ServerConnection>,
    /// Bytes of records the client sent before its handshake completed.
    pub handshake_bytes: u32,
    /// The session holds handshake records the loop put off to a later turn (over its
    /// per-turn handshake budget): the backlog pass processes them.
    pub deferred: bool,
    /// The peer's close_notify came while reading was paused: the resume closes.
    pub peer_ended: bool,
}

impl ConnIo {
    pub fn new(
        stream: TcpStream,
        generation: u32,
        listener: ListenerId,
        now_tick: u64,
        queued_out: Arc<AtomicUsize>,
        admission: Admission,
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
            admission,
            input: Vec::new(),
            outbound: Outbound::counted(queued_out),
            last_active_tick: now_tick,
            idle_ticks: 0,
            scheduled_tick: 0,
            soft_since_tick: 0,
            extra: None,
        }
    }

    /// The client address a trusted proxy named, if one did.
    pub fn client(&self) -> Option<std::net::SocketAddr> {
        self.extra.as_ref().and_then(|e| e.client)
    }

    /// Records the client address a trusted proxy named.
    pub fn set_client(&mut self, client: std::net::SocketAddr) {
        self.extra.get_or_insert_with(Box::default).client = Some(client);
    }

    /// The connection's TLS session, on a TLS listener.
    pub fn tls(&mut self) -> Option<&mut rustls::ServerConnection> {
        self.extra.as_mut().and_then(|e| e.tls.as_mut())
    }

    /// True while bytes wait to be written: queued plaintext, or TLS records (a handshake
    /// message, an alert, encrypted data) not yet on the socket.
    pub fn has_output(&self) -> bool {
        !self.outbound.is_empty()
            || self
                .extra
                .as_ref()
                .and_then(|e| e.tls.as_ref())
                .is_some_and(|t| t.wants_write())
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
        // (176 until the PROXY protocol's client address: one boxed word.)
        let size = std::mem::size_of::<ConnIo>();
        assert!(size <= 184, "ConnIo grew to {size} bytes");
    }
}
