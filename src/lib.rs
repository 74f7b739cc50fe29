//! # Ruyi: a WuKongIM-compatible IM server
//!
//! The server half of the project: auth, connection registry, channels, storage, pusher and
//! HTTP API, on the `ruyi-reactor` engine with the `ruyi-proto` codec. See
//! `../shared/DESIGN.md` for the shape and `server.rs` for the wiring; the message path is
//! loop → channel pool → storage writer (commit, then the pusher on the same thread) →
//! loops.

pub mod advertise;
pub mod answer;
pub mod auth;
pub mod channel;
pub mod cluster;
pub mod config;
pub mod connz;
pub mod drain;
pub mod fault;
pub mod forwarded;
pub mod gateway;
pub mod http;
pub mod ids;
pub mod jsonrpc;
pub mod logging;
pub mod mailbox;
pub mod message;
pub mod metrics;
pub mod origin;
pub mod pusher;
pub mod rate;
pub mod registry;
pub mod server;
pub mod shared;
pub mod storage;
pub mod system_uids;
pub mod tls;
pub mod to_loop;
pub mod tokens;
pub mod webhook;

pub mod ws;

pub use config::Config;
pub use fault::exit_on_panic;
pub use server::{Server, StartError};
