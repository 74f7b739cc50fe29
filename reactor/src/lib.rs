//! # ruyi-reactor: a multi-reactor TCP engine
//!
//! Read this first. The engine knows sockets, not IM: it accepts TCP connections, reads
//! bytes, hands them to a [`Handler`], and writes what the handler (or any other thread)
//! queues. The Ruyi server implements `Handler`; so does `examples/echo.rs`.
//!
//! ## Threads
//! ```text
//!             +-----------+   Register(stream) + wake   +-------------------------+
//!  clients -->| acceptor  |---------------------------->| event loop 0..N-1 (mio) |
//!             +-----------+                              |  Slab<Conn>, Handler    |
//!                                                        +-----------^-------------+
//!     any thread: LoopHandle::send(conn, Bytes) / post(msg) ---------+
//!                 (bounded crossbeam channel + coalesced mio::Waker)
//! ```
//! - **Acceptor** (`acceptor.rs`): one thread, its own `Poll`, every listener. Accepts until
//!   `WouldBlock`, picks a loop with the [`Balancer`], hands the socket over.
//! - **Event loops** (`event_loop.rs`): N threads (default: the number of cores), each with
//!   its own `Poll`, `Slab` of connections, inbox and handler. A connection lives on one loop
//!   for its whole life, and only that loop touches its socket.
//! - **Everyone else** talks to a loop through a [`LoopHandle`] (`inbox.rs`).
//!
//! `LIFECYCLE.md` next to this crate walks one connection from accept to close.
//!
//! ## Invariants
//! - **One owner per socket.** Only the owning loop reads, writes or closes a connection.
//! - **The loop never blocks** except in `poll`. Handlers must not block either.
//! - **Stale ids go nowhere.** A [`ConnId`] carries the slot's generation; a command for a
//!   closed connection is dropped, never delivered to a newer connection in the same slot.
//! - **Bounded everything.** Output per connection is capped in bytes (slow consumers are
//!   closed), incomplete input is capped, inboxes are bounded, reads and writes have a byte
//!   budget per turn, inbox draining has a command budget per turn.
//! - **Writes are coalesced.** Output queued during a turn is written once, at the end of the
//!   turn, with `writev`.
//!
//! ## Example
//! ```no_run
//! use ruyi_reactor::{ConnCtx, Engine, EngineConfig, Handler};
//!
//! struct Echo;
//! impl Handler for Echo {
//!     type State = ();
//!     type Message = ();
//!     fn on_open(&mut self, _: &mut ConnCtx<'_>) {}
//!     fn on_data(&mut self, conn: &mut ConnCtx<'_>, _: &mut (), input: &[u8]) -> usize {
//!         conn.queue_slice(input);
//!         input.len()
//!     }
//! }
//!
//! let mut builder = Engine::builder(EngineConfig::default());
//! let listener = builder.listen("127.0.0.1:0".parse().unwrap()).unwrap();
//! let engine = builder.start(|_, _| Echo).unwrap();
//! println!("echo on {}", engine.local_addr(listener));
//! ```

mod acceptor;
pub mod balancer;
mod config;
mod conn;
mod conn_id;
mod core;
mod engine;
mod error;
mod event_loop;
mod global;
mod handler;
mod inbox;
pub mod outbound;
mod per_ip;
mod stats;
mod timer;

pub use balancer::Balancer;
pub use config::{Balancing, EngineConfig};
pub use conn_id::ConnId;
pub use engine::{Engine, EngineBuilder, StopMode};
pub use error::{Error, Result};
pub use handler::{ConnCtx, Handler, LoopCtx};
pub use inbox::{Handles, LoopGone, LoopHandle, TrySendFailure};
pub use stats::{CloseReason, LoopStats, LoopStatsSnapshot};

/// Names the listener a connection was accepted on, in the order listeners were added
/// with [`EngineBuilder::listen`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ListenerId(pub(crate) u16);

impl ListenerId {
    /// Position of the listener in the builder's `listen` calls, from 0.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}
