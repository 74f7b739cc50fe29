//! The way into an event loop from other threads: a bounded crossbeam channel of
//! [`Command`]s plus the loop's `mio::Waker`, with wake-ups coalesced by an atomic flag.
//!
//! # The wake protocol (R2)
//! - A sender pushes its command, then sets `awake` with a swap and calls `Waker::wake` only
//!   if the flag was clear. A thousand sends between two loop turns cost one wake syscall.
//! - The loop clears `awake` *before* it drains the channel. A command pushed after the
//!   clear either is seen by this drain or finds the flag clear and wakes the loop again, so
//!   no wake-up is lost; the worst case is one spurious wake.
//! - mio allows one `Waker` per `Poll` (mio `src/waker.rs`); the loop owns it through
//!   [`LoopShared`].
//!
//! # Full inbox
//! Threads outside the loops block in [`LoopHandle::send`] until there is room: that slows a
//! fast producer to the pace of the loop it feeds. Loop threads must use the `try_` forms
//! and drop (and count) on `Full`, because two loops blocking on each other deadlock.

use crate::conn_id::ConnId;
use crate::stats::LoopStats;
use crate::ListenerId;
use bytes::Bytes;
use crossbeam_channel::{Sender, TrySendError};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;

/// What other threads ask an event loop to do.
pub(crate) enum Command<M> {
    /// A socket the acceptor handed over.
    Register {
        stream: mio::net::TcpStream,
        listener: ListenerId,
        peer: SocketAddr,
        /// The socket's claim on its source's connection count.
        ip_slot: crate::per_ip::IpSlot,
    },
    /// Queue one frame on a connection.
    Send(ConnId, Bytes),
    /// Queue several frames, possibly on several connections of this loop, in order.
    SendBatch(Vec<(ConnId, Bytes)>),
    /// Close a connection (queued output gets one last write attempt).
    Close(ConnId),
    /// A message for the loop's handler (`Handler::on_message`).
    Message(M),
    /// Several messages for the handler, handed over in order with one inbox slot.
    Messages(Vec<M>),
}

/// Stop requests, stored in [`LoopShared::stop`].
pub(crate) const RUNNING: u8 = 0;
pub(crate) const SOFT_STOP: u8 = 1;
pub(crate) const HARD_STOP: u8 = 2;

/// What a loop shares with every thread that talks to it.
#[derive(Debug)]
pub(crate) struct LoopShared {
    pub waker: mio::Waker,
    /// Set by the first sender since the loop's last drain; see the module docs.
    pub awake: AtomicBool,
    /// `RUNNING`, `SOFT_STOP` or `HARD_STOP`.
    pub stop: AtomicU8,
    pub stats: LoopStats,
}

impl LoopShared {
    /// Wakes the loop unless a wake-up is already pending.
    pub fn notify(&self) {
        if !self.awake.swap(true, Ordering::SeqCst) {
            LoopStats::add(&self.stats.wakeups, 1);
            if let Err(e) = self.waker.wake() {
                log::error!("cannot wake event loop: {e}");
            }
        }
    }
}

/// The loop stopped and dropped its inbox; the command was not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the event loop has stopped")]
pub struct LoopGone;

/// Why a `try_` send did not go through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TrySendFailure {
    /// The inbox is full; the command was dropped.
    #[error("the event loop's inbox is full")]
    Full,
    /// The loop has stopped.
    #[error("the event loop has stopped")]
    Gone,
}

/// A cheap, cloneable, `Send` handle to one event loop.
///
/// Every socket write happens on the loop that owns the connection; any other thread uses
/// this handle to ask for it.
pub struct LoopHandle<M> {
    index: usize,
    tx: Sender<Command<M>>,
    shared: Arc<LoopShared>,
}

impl<M> Clone for LoopHandle<M> {
    fn clone(&self) -> Self {
        LoopHandle {
            index: self.index,
            tx: self.tx.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<M> fmt::Debug for LoopHandle<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoopHandle")
            .field("index", &self.index)
            .finish()
    }
}

impl<M> LoopHandle<M> {
    pub(crate) fn new(index: usize, tx: Sender<Command<M>>, shared: Arc<LoopShared>) -> Self {
        LoopHandle { index, tx, shared }
    }

    /// The index of the loop this handle reaches.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The loop's counters.
    pub fn stats(&self) -> &LoopStats {
        &self.shared.stats
    }

    /// Commands waiting in the inbox now.
    pub fn queued_commands(&self) -> usize {
        self.tx.len()
    }

    pub(crate) fn shared(&self) -> &Arc<LoopShared> {
        &self.shared
    }
}

impl<M: Send> LoopHandle<M> {
    /// Blocks while the inbox is full. Never call from a loop thread.
    pub(crate) fn push(&self, cmd: Command<M>) -> Result<(), LoopGone> {
        self.tx.send(cmd).map_err(|_| LoopGone)?;
        self.shared.notify();
        Ok(())
    }

    /// Like `push`, but hands the command back when the loop is gone, so the acceptor can
    /// give the socket to another loop.
    pub(crate) fn push_or_return(&self, cmd: Command<M>) -> Result<(), Command<M>> {
        self.tx.send(cmd).map_err(|e| e.0)?;
        self.shared.notify();
        Ok(())
    }

    fn try_push(&self, cmd: Command<M>) -> Result<(), TrySendFailure> {
        match self.tx.try_send(cmd) {
            Ok(()) => {
                self.shared.notify();
                Ok(())
            }
            Err(TrySendError::Full(_)) => Err(TrySendFailure::Full),
            Err(TrySendError::Disconnected(_)) => Err(TrySendFailure::Gone),
        }
    }

    /// Queues `frame` on `conn`. Blocks while the inbox is full, so it must not be called
    /// from an event-loop thread (use [`LoopHandle::try_send`] there).
    ///
    /// A frame for a connection that has closed, or for an older connection in a reused
    /// slot, is dropped by the loop and counted in `stale_commands`.
    ///
    /// # Errors
    /// [`LoopGone`] when the loop has stopped.
    pub fn send(&self, conn: ConnId, frame: Bytes) -> Result<(), LoopGone> {
        debug_assert_eq!(
            conn.loop_index(),
            self.index,
            "{conn} sent through the wrong loop"
        );
        self.push(Command::Send(conn, frame))
    }

    /// Queues many frames with one inbox slot and at most one wake-up. Frames are queued in
    /// the order given; they may name different connections of this loop.
    ///
    /// # Errors
    /// [`LoopGone`] when the loop has stopped.
    pub fn send_batch(&self, frames: Vec<(ConnId, Bytes)>) -> Result<(), LoopGone> {
        if frames.is_empty() {
            return Ok(());
        }
        self.push(Command::SendBatch(frames))
    }

    /// Asks the loop to close `conn` after one last attempt to write what is queued.
    ///
    /// # Errors
    /// [`LoopGone`] when the loop has stopped.
    pub fn close(&self, conn: ConnId) -> Result<(), LoopGone> {
        self.push(Command::Close(conn))
    }

    /// Delivers `msg` to the loop's handler (`Handler::on_message`).
    ///
    /// # Errors
    /// [`LoopGone`] when the loop has stopped.
    pub fn post(&self, msg: M) -> Result<(), LoopGone> {
        self.push(Command::Message(msg))
    }

    /// Delivers every message in `msgs`, in order, with one inbox slot and at most one
    /// wake-up: a producer that finishes a batch of work (a storage commit) posts its
    /// results for this loop at once instead of waking the loop once per result.
    ///
    /// # Errors
    /// [`LoopGone`] when the loop has stopped.
    pub fn post_batch(&self, msgs: Vec<M>) -> Result<(), LoopGone> {
        if msgs.is_empty() {
            return Ok(());
        }
        self.push(Command::Messages(msgs))
    }

    /// [`LoopHandle::post_batch`] that hands the messages back when the loop has stopped,
    /// so a producer can account for work no loop will do.
    ///
    /// # Errors
    /// The messages, when the loop has stopped.
    pub fn post_batch_or_return(&self, msgs: Vec<M>) -> Result<(), Vec<M>> {
        if msgs.is_empty() {
            return Ok(());
        }
        match self.push_or_return(Command::Messages(msgs)) {
            Ok(()) => Ok(()),
            Err(Command::Messages(msgs)) => Err(msgs),
            Err(_) => Err(Vec::new()), // Not reached: the command is the one pushed.
        }
    }

    /// Like [`LoopHandle::send`], but never blocks: safe on a loop thread.
    ///
    /// # Errors
    /// [`TrySendFailure::Full`] when the inbox is full (the frame is dropped; the caller
    /// counts it), [`TrySendFailure::Gone`] when the loop has stopped.
    pub fn try_send(&self, conn: ConnId, frame: Bytes) -> Result<(), TrySendFailure> {
        self.try_push(Command::Send(conn, frame))
    }

    /// Like [`LoopHandle::post`], but never blocks: safe on a loop thread.
    ///
    /// # Errors
    /// As [`LoopHandle::try_send`].
    pub fn try_post(&self, msg: M) -> Result<(), TrySendFailure> {
        self.try_push(Command::Message(msg))
    }

    /// Like [`LoopHandle::close`], but never blocks.
    ///
    /// # Errors
    /// As [`LoopHandle::try_send`].
    pub fn try_close(&self, conn: ConnId) -> Result<(), TrySendFailure> {
        self.try_push(Command::Close(conn))
    }
}

/// Handles to every loop of an engine, routing by [`ConnId::loop_index`].
pub struct Handles<M> {
    loops: Arc<[LoopHandle<M>]>,
    global: Arc<crate::event_loop::Global>,
}

impl<M> Clone for Handles<M> {
    fn clone(&self) -> Self {
        Handles {
            loops: Arc::clone(&self.loops),
            global: Arc::clone(&self.global),
        }
    }
}

impl<M> fmt::Debug for Handles<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handles")
            .field("loops", &self.loops.len())
            .finish()
    }
}

impl<M> Handles<M> {
    pub(crate) fn new(loops: Vec<LoopHandle<M>>, global: Arc<crate::event_loop::Global>) -> Self {
        Handles {
            loops: loops.into(),
            global,
        }
    }

    /// Connections reset at accept because their source address was at
    /// `max_connections_per_ip` (the same count as `Engine::refused_per_ip`).
    pub fn refused_per_ip(&self) -> u64 {
        self.global
            .refused_per_ip
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The handle of the loop that owns `conn`.
    ///
    /// # Panics
    /// If `conn` names a loop this engine does not have: ids are minted by this engine's
    /// loops only, so that is a bug in the caller.
    pub fn for_conn(&self, conn: ConnId) -> &LoopHandle<M> {
        &self.loops[conn.loop_index()]
    }

    /// Every loop's handle, by index.
    pub fn loops(&self) -> &[LoopHandle<M>] {
        &self.loops
    }
}

impl<M: Send> Handles<M> {
    /// Shorthand for `self.for_conn(conn).send(conn, frame)`.
    ///
    /// # Errors
    /// [`LoopGone`] when the loop has stopped.
    pub fn send(&self, conn: ConnId, frame: Bytes) -> Result<(), LoopGone> {
        self.for_conn(conn).send(conn, frame)
    }

    /// Shorthand for `self.for_conn(conn).close(conn)`.
    ///
    /// # Errors
    /// [`LoopGone`] when the loop has stopped.
    pub fn close(&self, conn: ConnId) -> Result<(), LoopGone> {
        self.for_conn(conn).close(conn)
    }
}
