//! What a loop shares with every thread that talks to it ([`LoopShared`]): the waker
//! and its coalescing flag, the stop request, the counters, and the two protocols that
//! bound and end its inbox: the byte reservation (`try_reserve`, `wait_for_room`,
//! `drained_bytes`) and the end-of-inbox handshake (`enter`, `mark_gone`). `inbox.rs` is
//! the senders' side; the loop is the other.
//!
//! # The end of an inbox
//! A sender counts itself in `pushing`, then checks `gone`; the loop sets `gone`, then
//! drains until the channel is empty and `pushing` is zero (`EventLoop::last_drain`).
//! With SeqCst on both sides, either the sender sees `gone` and hands its command back,
//! or the loop sees the sender and waits for its command to land: no command is left in
//! a dead loop's inbox.

use crate::stats::LoopStats;
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

thread_local! {
    /// True on an event loop's thread (set by `EventLoop::run`).
    static ON_LOOP_THREAD: Cell<bool> = const { Cell::new(false) };
}

/// Marks the calling thread as an event loop's, for the blocking-call check.
pub(crate) fn enter_loop_thread() {
    ON_LOOP_THREAD.with(|t| t.set(true));
}

/// The check behind "a loop thread never blocks on an inbox" (R1): debug builds only.
pub(crate) fn assert_may_block() {
    debug_assert!(
        !ON_LOOP_THREAD.with(Cell::get),
        "a blocking LoopHandle call on an event loop thread: use the try_ form (R1)"
    );
}

/// How long a sender waiting for inbox bytes sleeps before it looks again (a backstop:
/// the loop wakes waiters as it drains).
const ROOM_RECHECK: Duration = Duration::from_millis(20);

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
    /// Bytes of frames in the inbox now (R5).
    pub inbox_bytes: AtomicUsize,
    /// The bound on `inbox_bytes` (`EngineConfig::max_inbox_bytes`).
    pub max_inbox_bytes: usize,
    /// Senders waiting for `inbox_bytes` to fall.
    waiting: AtomicUsize,
    room: (Mutex<()>, Condvar),
    /// Set when the loop is ending (its inbox drains for the last time), a panic
    /// included. Senders check it inside their `pushing` count (see `LoopShared::enter`).
    pub gone: AtomicBool,
    /// Senders between their check of `gone` and the end of their send.
    pushing: AtomicUsize,
}

/// A sender inside its push (`LoopShared::enter`); leaves on drop.
pub(crate) struct Pushing<'a>(&'a LoopShared);

impl Drop for Pushing<'_> {
    fn drop(&mut self) {
        self.0.pushing.fetch_sub(1, Ordering::SeqCst);
    }
}

impl LoopShared {
    pub fn new(waker: mio::Waker, max_inbox_bytes: usize) -> LoopShared {
        LoopShared {
            waker,
            awake: AtomicBool::new(false),
            stop: AtomicU8::new(RUNNING),
            stats: LoopStats::default(),
            inbox_bytes: AtomicUsize::new(0),
            max_inbox_bytes,
            waiting: AtomicUsize::new(0),
            room: (Mutex::new(()), Condvar::new()),
            gone: AtomicBool::new(false),
            pushing: AtomicUsize::new(0),
        }
    }

    /// Wakes the loop unless a wake-up is already pending.
    pub fn notify(&self) {
        if !self.awake.swap(true, Ordering::SeqCst) {
            LoopStats::add(&self.stats.wakeups, 1);
            if let Err(e) = self.waker.wake() {
                log::error!("cannot wake event loop: {e}");
            }
        }
    }

    /// Starts a push: `None` when the loop is gone. While the returned guard lives, the
    /// loop's last drain waits for the push to land (`EventLoop::last_drain`), so no
    /// command is left in a dead loop's inbox: either the sender sees `gone`, or the loop
    /// sees the sender (both sides use SeqCst).
    pub fn enter(&self) -> Option<Pushing<'_>> {
        self.pushing.fetch_add(1, Ordering::SeqCst);
        let guard = Pushing(self);
        (!self.gone.load(Ordering::SeqCst)).then_some(guard)
    }

    /// True while a sender is inside a push.
    pub fn senders_inside(&self) -> bool {
        self.pushing.load(Ordering::SeqCst) > 0
    }

    /// Reserves room for `bytes` more bytes of frames, or says there is none. A frame
    /// larger than the whole bound is let into an empty inbox, so it can go at all (it may
    /// wait while smaller frames keep the inbox from emptying). Commands without frames
    /// (messages, closes, sockets) touch no shared counter: they are the hot path.
    pub fn try_reserve(&self, bytes: usize) -> bool {
        if bytes == 0 {
            return true;
        }
        let mut now = self.inbox_bytes.load(Ordering::Acquire);
        loop {
            if now != 0 && now + bytes > self.max_inbox_bytes {
                return false;
            }
            match self.inbox_bytes.compare_exchange_weak(
                now,
                now + bytes,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(actual) => now = actual,
            }
        }
    }

    /// The loop took `bytes` of frames out of its inbox (or a send failed after counting
    /// them); wakes senders waiting for room.
    pub fn drained_bytes(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        self.inbox_bytes.fetch_sub(bytes, Ordering::AcqRel);
        if self.waiting.load(Ordering::SeqCst) > 0 {
            let _guard = self.room.0.lock().unwrap_or_else(|e| e.into_inner());
            self.room.1.notify_all();
        }
    }

    /// The loop is ending: new pushes fail, and senders waiting for room stop waiting.
    pub fn mark_gone(&self) {
        self.gone.store(true, Ordering::SeqCst);
        let _guard = self.room.0.lock().unwrap_or_else(|e| e.into_inner());
        self.room.1.notify_all();
    }

    /// Blocks until `bytes` more are reserved in the inbox (true), or the loop is gone
    /// (false).
    pub fn wait_for_room(&self, bytes: usize) -> bool {
        if self.try_reserve(bytes) {
            return true;
        }
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let mut guard = self.room.0.lock().unwrap_or_else(|e| e.into_inner());
        let outcome = loop {
            if self.gone.load(Ordering::SeqCst) {
                break false;
            }
            if self.try_reserve(bytes) {
                break true;
            }
            guard = match self.room.1.wait_timeout(guard, ROOM_RECHECK) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        };
        drop(guard);
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn concurrent_reservations_never_pass_the_byte_bound() {
        let poll = mio::Poll::new().unwrap();
        let waker = mio::Waker::new(poll.registry(), mio::Token(0)).unwrap();
        let shared = Arc::new(LoopShared::new(waker, 1000));
        for _ in 0..50 {
            let start = Arc::new(std::sync::Barrier::new(16));
            let granted: usize = (0..16)
                .map(|_| {
                    let (shared, start) = (Arc::clone(&shared), Arc::clone(&start));
                    std::thread::spawn(move || {
                        start.wait();
                        usize::from(shared.try_reserve(900))
                    })
                })
                .collect::<Vec<_>>()
                .into_iter()
                .map(|t| t.join().unwrap())
                .sum();
            assert_eq!(
                granted, 1,
                "{granted} frames of 900 bytes in a 1,000-byte inbox"
            );
            assert_eq!(shared.inbox_bytes.load(Ordering::SeqCst), 900);
            shared.drained_bytes(900);
        }
    }
}
