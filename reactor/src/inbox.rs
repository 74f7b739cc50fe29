//! The way into an event loop from other threads: a bounded crossbeam channel of
//! [`Command`]s plus the loop's `mio::Waker`, with wake-ups coalesced by an atomic flag.
//!
//! # The cross-thread write path, in one place (R2)
//! 1. A thread holding a [`LoopHandle`] calls `send(conn, frame)` (or `post`, `close`, a
//!    batch form). The command goes into the loop's bounded channel; frames also count
//!    their bytes against the loop's `max_inbox_bytes`.
//! 2. The sender then sets `awake` with a swap and calls `Waker::wake` only if the flag was
//!    clear: a thousand sends between two loop turns cost one wake syscall.
//! 3. The loop's `poll` returns with the waker's token. The event itself is ignored: the
//!    loop drains its inbox on *every* turn, woken or not, so the token only ends the sleep.
//! 4. `drain_inbox` clears `awake` *before* it reads the channel. A command pushed after the
//!    clear either is seen by this drain or finds the flag clear and wakes the loop again,
//!    so no wake-up is lost; the worst case is one spurious wake.
//! 5. Each command's `ConnId` is checked against the slot (loop, slot, generation: R8), the
//!    frame is queued on the connection's `Outbound`, and the end-of-turn flush writes it.
//!
//! The poll timeout never exceeds one tick (`Core::until_next_tick`), so even a lost
//! wake-up would cost at most a tick; the tests hold the wake-up to far less with a
//! 60-second tick.
//!
//! mio allows one `Waker` per `Poll` (mio `src/waker.rs`); the loop owns it through
//! `LoopShared` (`loop_shared.rs`, with the protocols that bound and end an inbox).
//!
//! # Full inbox (R1, R5)
//! The inbox is bounded twice: `inbox_capacity` commands, and `max_inbox_bytes` of frames.
//! Threads outside the loops block in [`LoopHandle::send`] until there is room: that slows
//! a fast producer to the pace of the loop it feeds. Loop threads must use the `try_` forms
//! and drop (and count) on `Full`, because two loops blocking on each other deadlock; a
//! debug build panics when a loop thread calls a blocking form.

use crate::conn_id::ConnId;
use crate::loop_shared::{assert_may_block, LoopShared};
use crate::stats::LoopStats;
use crate::ListenerId;
use bytes::Bytes;
use crossbeam_channel::{Sender, TrySendError};
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

/// What other threads ask an event loop to do.
pub(crate) enum Command<M> {
    /// A socket the acceptor handed over.
    Register {
        stream: mio::net::TcpStream,
        listener: ListenerId,
        peer: SocketAddr,
        /// The socket's place in the connection counts.
        admission: crate::global::Admission,
        /// How its first bytes are read (`proxy.rs`).
        arrival: crate::proxy::Arrival,
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
    /// Blocks while the inbox is full (in commands or in bytes). Never call from a loop
    /// thread (checked in debug builds).
    pub(crate) fn push(&self, cmd: Command<M>) -> Result<(), LoopGone> {
        self.push_or_return(cmd).map_err(|_| LoopGone)
    }

    /// Like `push`, but hands the command back when the loop is gone, so the acceptor can
    /// give the socket to another loop.
    pub(crate) fn push_or_return(&self, cmd: Command<M>) -> Result<(), Command<M>> {
        assert_may_block();
        let Some(_inside) = self.shared.enter() else {
            return Err(cmd);
        };
        let bytes = cmd.frame_bytes();
        if !self.shared.wait_for_room(bytes) {
            return Err(cmd);
        }
        if let Err(e) = self.tx.send(cmd) {
            self.shared.drained_bytes(bytes);
            return Err(e.0);
        }
        self.shared.notify();
        Ok(())
    }

    fn try_push(&self, cmd: Command<M>) -> Result<(), TrySendFailure> {
        let Some(_inside) = self.shared.enter() else {
            return Err(TrySendFailure::Gone);
        };
        let bytes = cmd.frame_bytes();
        if !self.shared.try_reserve(bytes) {
            return Err(TrySendFailure::Full);
        }
        match self.tx.try_send(cmd) {
            Ok(()) => {
                self.shared.notify();
                Ok(())
            }
            Err(e) => {
                self.shared.drained_bytes(bytes);
                Err(match e {
                    TrySendError::Full(_) => TrySendFailure::Full,
                    TrySendError::Disconnected(_) => TrySendFailure::Gone,
                })
            }
        }
    }

    /// Waits up to `timeout` for room in the inbox for a command without frames (the
    /// acceptor's sockets), then hands it back: `(command, gone)`.
    pub(crate) fn push_within(
        &self,
        cmd: Command<M>,
        timeout: std::time::Duration,
    ) -> Result<(), (Command<M>, bool)> {
        debug_assert_eq!(cmd.frame_bytes(), 0, "frames are counted in push_or_return");
        let Some(_inside) = self.shared.enter() else {
            return Err((cmd, true));
        };
        match self.tx.send_timeout(cmd, timeout) {
            Ok(()) => {
                self.shared.notify();
                Ok(())
            }
            Err(crossbeam_channel::SendTimeoutError::Timeout(cmd)) => Err((cmd, false)),
            Err(crossbeam_channel::SendTimeoutError::Disconnected(cmd)) => Err((cmd, true)),
        }
    }

    /// [`LoopHandle::push_or_return`] for the acceptor, which must not wait on one full
    /// loop while others have room: hands the command back when the inbox is full.
    pub(crate) fn try_push_or_return(&self, cmd: Command<M>) -> Result<(), (Command<M>, bool)> {
        let Some(_inside) = self.shared.enter() else {
            return Err((cmd, true));
        };
        match self.tx.try_send(cmd) {
            Ok(()) => {
                self.shared.notify();
                Ok(())
            }
            Err(TrySendError::Full(cmd)) => Err((cmd, false)),
            Err(TrySendError::Disconnected(cmd)) => Err((cmd, true)),
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

    /// Like [`LoopHandle::send_batch`], but never blocks.
    ///
    /// # Errors
    /// As [`LoopHandle::try_send`]; on `Full` none of the frames was queued.
    pub fn try_send_batch(&self, frames: Vec<(ConnId, Bytes)>) -> Result<(), TrySendFailure> {
        if frames.is_empty() {
            return Ok(());
        }
        self.try_push(Command::SendBatch(frames))
    }

    /// Like [`LoopHandle::post_batch`], but never blocks.
    ///
    /// # Errors
    /// As [`LoopHandle::try_send`]; on `Full` none of the messages was delivered.
    pub fn try_post_batch(&self, msgs: Vec<M>) -> Result<(), TrySendFailure> {
        if msgs.is_empty() {
            return Ok(());
        }
        self.try_push(Command::Messages(msgs))
    }
}

impl<M> Command<M> {
    /// Bytes of frames this command carries (counted against `max_inbox_bytes`).
    /// Handler messages count as none: their cost is the handler's to bound
    /// (`Handler::message_weight` bounds the work of a turn, not memory).
    pub(crate) fn frame_bytes(&self) -> usize {
        match self {
            Command::Send(_, frame) => frame.len(),
            Command::SendBatch(frames) => frames.iter().map(|(_, f)| f.len()).sum(),
            _ => 0,
        }
    }
}

/// Handles to every loop of an engine, routing by [`ConnId::loop_index`].
pub struct Handles<M> {
    loops: Arc<[LoopHandle<M>]>,
    global: Arc<crate::global::Global>,
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
    pub(crate) fn new(loops: Vec<LoopHandle<M>>, global: Arc<crate::global::Global>) -> Self {
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

    /// Shorthand for `self.for_conn(conn).try_send(conn, frame)`: safe on a loop thread.
    ///
    /// # Errors
    /// As [`LoopHandle::try_send`].
    pub fn try_send(&self, conn: ConnId, frame: Bytes) -> Result<(), TrySendFailure> {
        self.for_conn(conn).try_send(conn, frame)
    }

    /// Shorthand for `self.for_conn(conn).try_close(conn)`: safe on a loop thread.
    ///
    /// # Errors
    /// As [`LoopHandle::try_send`].
    pub fn try_close(&self, conn: ConnId) -> Result<(), TrySendFailure> {
        self.for_conn(conn).try_close(conn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loop_shared::LoopShared;

    #[test]
    fn a_push_after_the_loop_is_gone_hands_its_command_back() {
        let poll = mio::Poll::new().unwrap();
        let waker = mio::Waker::new(poll.registry(), mio::Token(0)).unwrap();
        let shared = Arc::new(LoopShared::new(waker, 1000));
        let (tx, rx) = crossbeam_channel::bounded::<Command<()>>(4);
        let handle = LoopHandle::new(0, tx, Arc::clone(&shared));
        shared.mark_gone();
        assert!(handle.post(()).is_err());
        assert_eq!(handle.try_post(()), Err(TrySendFailure::Gone));
        assert!(rx.is_empty(), "a command went into a dead loop's inbox");
        assert!(!shared.senders_inside());
    }
}
