//! The logins waiting for an auth worker, bounded in number and in the bytes they hold.
//!
//! A loop queues a login with [`AuthQueue::push`] and never waits; a worker takes one from
//! the receiving end and gives its bytes back with [`AuthQueue::taken`]. The two bounds
//! and their accounting live here, so no caller can count a login in and forget it.

use crossbeam_channel::{Receiver, Sender};
use ruyi_proto::ConnectPacket;
use ruyi_reactor::ConnId;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Instant;

/// Logins waiting for an auth worker; a connect storm beyond this is shed (closed, for the
/// client to retry). Sized for a storm one login deadline long: the workers answer about
/// 18,000 encrypted logins a second on two cores (BENCHMARKS.md), so 65,536 is what they
/// clear in under 4 s (`connect_timeout`); a login still queued at its connection's login
/// deadline is dropped unanswered by the worker, without its key exchange (`auth::run`).
/// At 8,192, a storm of 15,000 at once shed 13–18% of its logins here.
pub const AUTH_QUEUE: usize = 64 << 10;

/// A CONNECT waiting for a worker.
#[derive(Debug)]
pub struct AuthRequest {
    /// The connection.
    pub conn: ConnId,
    /// What it sent.
    pub connect: ConnectPacket,
    /// The peer's address, for the per-address login limit.
    pub peer: Option<std::net::IpAddr>,
    /// The client's dialect has no encryption (JSON-RPC): no key exchange, whatever
    /// `Config::encryption` says.
    pub plain: bool,
    /// The connection's login deadline (accept + `Config::connect_timeout`): past it the
    /// loop closes the connection unless the login has answered.
    pub deadline: Instant,
}

impl AuthRequest {
    /// What this login costs in memory while it waits: the request and its strings.
    fn size(&self) -> usize {
        let c = &self.connect;
        std::mem::size_of::<AuthRequest>()
            + c.uid.len()
            + c.token.len()
            + c.device_id.len()
            + c.client_key.len()
    }
}

/// Why a login was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotQueued {
    /// A storm beyond one of the bounds: the login is shed (the text says which bound).
    Shed(&'static str),
    /// Every worker is gone: the server is stopping.
    Stopping,
}

/// The sending end, shared by the loops.
///
/// The channel itself is unbounded: a bounded one of [`AUTH_QUEUE`] slots would allocate
/// them all up front: the idle server's resident memory was 49.2 MB with one, 36.9 MB
/// without (BENCHMARKS.md). Both bounds are checked here before a push, so with
/// several loops pushing at once each may be passed by at most one login per loop.
#[derive(Debug)]
pub struct AuthQueue {
    tx: Sender<AuthRequest>,
    /// Bytes the queued logins hold ([`AuthRequest::size`]).
    bytes: AtomicUsize,
    /// At most this many (`Config::prelogin_budget_bytes`): the length bound alone would
    /// let 65,536 CONNECTs of 16 KiB each hold a gigabyte.
    max_bytes: usize,
}

impl AuthQueue {
    /// A queue whose logins may hold `max_bytes` at most, and its receiving end for the
    /// workers.
    pub fn new(max_bytes: usize) -> (AuthQueue, Receiver<AuthRequest>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        let queue = AuthQueue {
            tx,
            bytes: AtomicUsize::new(0),
            max_bytes,
        };
        (queue, rx)
    }

    /// Queues `req` for a worker, unless a bound is reached. Never blocks.
    ///
    /// # Errors
    /// [`NotQueued`]: the login is not queued, and its connection should be closed.
    pub fn push(&self, req: AuthRequest) -> Result<(), NotQueued> {
        if self.tx.len() >= AUTH_QUEUE {
            return Err(NotQueued::Shed("found the auth queue full"));
        }
        let size = req.size();
        if self.bytes.fetch_add(size, Relaxed) + size > self.max_bytes {
            self.bytes.fetch_sub(size, Relaxed);
            return Err(NotQueued::Shed("found the auth queue's bytes full"));
        }
        self.tx.send(req).map_err(|_| {
            self.bytes.fetch_sub(size, Relaxed);
            NotQueued::Stopping
        })
    }

    /// A worker took `req` from the queue: its bytes no longer count. (Its size is computed
    /// again from the same strings, which nothing changes while it waits.)
    pub fn taken(&self, req: &AuthRequest) {
        self.bytes.fetch_sub(req.size(), Relaxed);
    }

    /// Logins waiting (`ruyi_queue_depth{pool="auth"}`).
    pub fn len(&self) -> usize {
        self.tx.len()
    }

    /// True when no login waits.
    pub fn is_empty(&self) -> bool {
        self.tx.is_empty()
    }
}
