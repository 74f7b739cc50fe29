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
//!   `WouldBlock` while some loop has room, picks a loop with the [`Balancer`] (by
//!   connections plus sockets in flight), hands the socket over without waiting on a full
//!   loop.
//! - **Event loops** (`event_loop/`): N threads (default: the number of cores), each with
//!   its own `Poll`, `Slab` of connections, inbox and handler. A connection lives on one loop
//!   for its whole life, and only that loop touches its socket.
//! - **Everyone else** talks to a loop through a [`LoopHandle`] (`inbox.rs`): frames for a
//!   connection, closes, or messages for the loop's [`Handler`]. Loop threads themselves
//!   use only the non-blocking `try_` forms (R1).
//!
//! `LIFECYCLE.md` next to this crate walks one connection from accept to close.
//!
//! ## Rules
//! `RULES.md` next to this crate states the ten rules the code keeps and cites as
//! `R1`–`R10`, each with the test that pins it. In one line each:
//! R1 a loop never blocks except in `poll`; R2 one owner per socket, everyone else goes
//! through the inbox; R3 edge-triggered discipline (work left undone is listed, never
//! forgotten); R4 fairness budgets per turn; R5 bounded everything, each bound with a
//! policy; R6 writes coalesced per turn; R7 an idle connection costs little memory; R8
//! stale ids go nowhere; R9 the accept gate; R10 stopping is ordered and bounded.
//!
//! ## Where to read next
//! `event_loop/mod.rs` draws one turn of a loop; `inbox.rs` the cross-thread write path;
//! `conn.rs` the connection flags; `core.rs` the work lists; `event_loop/close.rs` how a
//! close ends on the wire. `examples/echo.rs` is the smallest engine, `examples/broadcast.rs`
//! shows messages between threads and loops.
//!
//! ## Example
//! ```
//! use ruyi_reactor::{ConnCtx, Engine, EngineConfig, Handler, StopMode};
//! use std::io::{Read, Write};
//!
//! struct Echo;
//! impl Handler for Echo {
//!     type State = ();
//!     type Message = ();
//!     fn on_open(&mut self, _: &mut ConnCtx<'_>) {}
//!     fn on_data(&mut self, conn: &mut ConnCtx<'_>, _: &mut (), input: &[u8]) -> usize {
//!         conn.queue_slice(input); // No syscall: written at the end of the turn.
//!         input.len() // Consumed everything; a framed protocol returns whole frames only.
//!     }
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut builder = Engine::builder(EngineConfig { loops: 2, ..EngineConfig::default() });
//! let listener = builder.listen("127.0.0.1:0".parse()?)?;
//! let mut engine = builder.start(|_, _| Echo)?;
//!
//! let mut client = std::net::TcpStream::connect(engine.local_addr(listener))?;
//! client.write_all(b"ping")?;
//! let mut echoed = [0u8; 4];
//! client.read_exact(&mut echoed)?;
//! assert_eq!(&echoed, b"ping");
//!
//! // Stop accepting, flush what is queued, close, and join the threads (with a deadline).
//! assert!(engine.stop(StopMode::Soft));
//! # Ok(())
//! # }
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
mod loop_shared;
pub mod outbound;
mod per_ip;
mod proxy;
mod stats;
mod timer;

pub use balancer::Balancer;
pub use config::{Balancing, EngineConfig};
pub use conn_id::ConnId;
pub use engine::{Engine, EngineBuilder, StopMode};
pub use error::{Error, Result};
pub use handler::{ConnCtx, Handler, LoopCtx};
pub use inbox::{Handles, LoopGone, LoopHandle, TrySendFailure};
pub use proxy::{HeaderRule, ProxyTrust};
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
