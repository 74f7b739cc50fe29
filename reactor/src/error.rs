//! Errors the engine reports to the code that starts and stops it.
//!
//! Per-connection I/O problems are not errors here: they close that one connection and
//! surface as a [`crate::CloseReason`]. Only failures that stop the engine itself (a listener
//! that cannot bind, a thread that cannot start, a poll that keeps failing) are `Error`s.

use std::io;
use std::net::SocketAddr;

/// An error starting or running the engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A listener could not be created, bound or put into listening state.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address we tried.
        addr: SocketAddr,
        /// What the OS said.
        source: io::Error,
    },
    /// A `mio::Poll`, `Waker` or registration failed while starting.
    #[error("cannot set up the poller: {0}")]
    Poll(#[source] io::Error),
    /// An engine thread could not be spawned.
    #[error("cannot spawn thread {name}: {source}")]
    Spawn {
        /// The thread's name.
        name: String,
        /// What the OS said.
        source: io::Error,
    },
    /// The configuration cannot work (for example zero event loops).
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// Shorthand for results of engine set-up.
pub type Result<T> = std::result::Result<T, Error>;
