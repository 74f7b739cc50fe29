//! A bounded queue with one consumer thread that sleeps without spinning.
//!
//! The storage writer and each channel worker read one queue each. `crossbeam-channel`'s
//! blocking receive spins and then calls `sched_yield` several times before it parks, which
//! pays off when a message is a few hundred nanoseconds away; on a busy two-core machine at
//! moderate load the next message is a millisecond away, so every receive burnt its spin
//! and yields for nothing (`sched_yield` was 2–4% of the server's CPU at 1,000 sends/s,
//! 2.6 calls per commit in the writer). A mailbox keeps crossbeam's queue but parks the
//! consumer with `std::thread::park`, announced through a flag the producers check, the
//! same protocol as the event loops' inbox and `mio::Waker` (reactor `inbox.rs`, R2).
//!
//! # The wake protocol
//! - The consumer sets `parked`, then (after a full fence) checks the queue once more, and
//!   only then parks. A producer pushes, then (after a full fence) reads `parked`, and
//!   unparks the consumer only if it was set, clearing it on the way.
//! - Either the consumer's re-check sees the message, or the producer sees the flag: the
//!   two fences order each side's write before its read (Dekker), so no wake-up is lost.
//!   An unpark that arrives before the park makes the park return at once
//!   (`std::thread::park`'s token), so the order of unpark and park does not matter.
//! - A busy consumer never has the flag set: producers pay one fence and one load, no
//!   system call.
//!
//! # Full queue
//! Producers choose: [`MailSender::send`] blocks until there is room (threads outside the
//! loops: that is the backpressure), [`MailSender::try_send`] never blocks (loop threads).
//!
//! # The lane for work that may neither wait nor be dropped
//! A loop thread must never block, yet some of its work must never be lost: putting an
//! unacknowledged message back in a user's offline queue, marking a queue entry delivered.
//! [`MailSender::send_lane`] puts such a job on a second, unbounded queue that the consumer
//! reads before the bounded one, behind the same bell. Unbounded is a policy, not an
//! oversight: a lane job stands for a message a connection already held in memory (its
//! retry list, a delivery in its inbox), so the lane holds at most what the sessions held;
//! `lane_len` is exported so an operator sees it.

use crossbeam_channel::{
    Receiver, RecvTimeoutError, SendError, Sender, TryRecvError, TrySendError,
};
use std::cell::Cell;
use std::marker::PhantomData;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
struct Bell {
    /// Set by the consumer just before it parks; cleared by whoever wakes it.
    parked: AtomicBool,
    /// The consumer thread, known from its first receive.
    consumer: OnceLock<Thread>,
}

/// The producing side; cheap to clone.
#[derive(Debug)]
pub struct MailSender<T> {
    tx: Sender<T>,
    lane: Sender<T>,
    bell: Arc<Bell>,
}

impl<T> Clone for MailSender<T> {
    fn clone(&self) -> Self {
        MailSender {
            tx: self.tx.clone(),
            lane: self.lane.clone(),
            bell: Arc::clone(&self.bell),
        }
    }
}

/// The consuming side: one thread receives from it (it can move to that thread, but it is
/// not `Sync`, so two threads cannot share it).
#[derive(Debug)]
pub struct Mailbox<T> {
    rx: Receiver<T>,
    lane: Receiver<T>,
    bell: Arc<Bell>,
    _one_consumer: PhantomData<Cell<()>>,
}

/// A mailbox holding at most `capacity` messages.
pub fn bounded<T>(capacity: usize) -> (MailSender<T>, Mailbox<T>) {
    let (tx, rx) = crossbeam_channel::bounded(capacity);
    let (lane_tx, lane_rx) = crossbeam_channel::unbounded();
    let bell = Arc::new(Bell::default());
    (
        MailSender {
            tx,
            lane: lane_tx,
            bell: Arc::clone(&bell),
        },
        Mailbox {
            rx,
            lane: lane_rx,
            bell,
            _one_consumer: PhantomData,
        },
    )
}

impl<T> MailSender<T> {
    /// Queues `msg`, blocking while the mailbox is full.
    ///
    /// # Errors
    /// The consumer is gone; the message comes back.
    pub fn send(&self, msg: T) -> Result<(), SendError<T>> {
        self.tx.send(msg)?;
        self.ring();
        Ok(())
    }

    /// Queues `msg` if there is room; never blocks.
    ///
    /// # Errors
    /// Full, or the consumer is gone; the message comes back.
    pub fn try_send(&self, msg: T) -> Result<(), TrySendError<T>> {
        self.tx.try_send(msg)?;
        self.ring();
        Ok(())
    }

    /// Queues `msg` on the unbounded lane (module docs): never blocks, never refuses while
    /// the consumer lives.
    ///
    /// # Errors
    /// The consumer is gone; the message comes back.
    pub fn send_lane(&self, msg: T) -> Result<(), SendError<T>> {
        self.lane.send(msg)?;
        self.ring();
        Ok(())
    }

    /// Messages waiting in the bounded queue.
    pub fn len(&self) -> usize {
        self.tx.len()
    }

    /// Messages waiting on the lane.
    pub fn lane_len(&self) -> usize {
        self.lane.len()
    }

    /// True when nothing waits on either queue.
    pub fn is_empty(&self) -> bool {
        self.tx.is_empty() && self.lane.is_empty()
    }

    fn ring(&self) {
        fence(Ordering::SeqCst);
        if self.bell.parked.load(Ordering::Relaxed)
            && self.bell.parked.swap(false, Ordering::AcqRel)
        {
            if let Some(consumer) = self.bell.consumer.get() {
                consumer.unpark();
            }
        }
    }
}

impl<T> Mailbox<T> {
    /// The next message, waiting up to `timeout` for one.
    ///
    /// # Errors
    /// `Timeout`, or `Disconnected` once every sender is gone and the queue is empty.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        match self.try_recv() {
            Ok(msg) => return Ok(msg),
            Err(TryRecvError::Disconnected) => return Err(RecvTimeoutError::Disconnected),
            Err(TryRecvError::Empty) => {}
        }
        let me = self.bell.consumer.get_or_init(std::thread::current);
        debug_assert_eq!(
            me.id(),
            std::thread::current().id(),
            "a mailbox has one consumer thread"
        );
        let deadline = Instant::now() + timeout;
        loop {
            // Release: a producer that sees the flag also sees `consumer` set above.
            self.bell.parked.store(true, Ordering::Release);
            fence(Ordering::SeqCst);
            let next = self.try_recv();
            if !matches!(next, Err(TryRecvError::Empty)) {
                self.bell.parked.store(false, Ordering::Relaxed);
                return next.map_err(|_| RecvTimeoutError::Disconnected);
            }
            let now = Instant::now();
            if now >= deadline {
                self.bell.parked.store(false, Ordering::Relaxed);
                return Err(RecvTimeoutError::Timeout);
            }
            // Returns on an unpark (or spuriously); the loop re-checks either way.
            std::thread::park_timeout(deadline - now);
        }
    }

    /// The next message if one waits.
    ///
    /// # Errors
    /// `Empty`, or `Disconnected` once every sender is gone and the queue is empty.
    /// The lane first: its jobs were already promised to someone.
    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        match self.lane.try_recv() {
            Ok(msg) => Ok(msg),
            Err(_) => self.try_recv_bounded(),
        }
    }

    /// The bounded queue only (a consumer that limits how much lane work it takes).
    pub fn try_recv_bounded(&self) -> Result<T, TryRecvError> {
        match self.rx.try_recv() {
            // Both queues' senders live in the same `MailSender`s, so they disconnect
            // together; a lane message sent just before that is still read here.
            Err(TryRecvError::Disconnected) => {
                self.lane.try_recv().map_err(|_| TryRecvError::Disconnected)
            }
            other => other,
        }
    }

    /// Messages waiting, on both queues.
    pub fn len(&self) -> usize {
        self.rx.len() + self.lane.len()
    }

    /// True when nothing waits on either queue.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty() && self.lane.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_from_four_producers_arrives_in_producer_order() {
        const PER: u64 = 50_000;
        let (tx, rx) = bounded::<(u64, u64)>(64);
        let producers: Vec<_> = (0..4)
            .map(|p| {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for i in 0..PER {
                        if i % 1000 == 0 {
                            // Let the consumer run dry and park now and then.
                            std::thread::sleep(Duration::from_micros(200));
                        }
                        tx.send((p, i)).expect("consumer alive");
                    }
                })
            })
            .collect();
        drop(tx);
        let mut next = [0u64; 4];
        loop {
            match rx.recv_timeout(Duration::from_secs(10)) {
                Ok((p, i)) => {
                    assert_eq!(i, next[p as usize], "producer {p} out of order");
                    next[p as usize] += 1;
                }
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => panic!("a wake-up was lost: {next:?}"),
            }
        }
        for p in producers {
            p.join().expect("producer");
        }
        assert_eq!(next, [PER; 4]);
    }

    #[test]
    fn a_parked_consumer_wakes_for_one_message_long_before_its_timeout() {
        let (tx, rx) = bounded::<u32>(4);
        let consumer = std::thread::spawn(move || {
            let start = Instant::now();
            let got = rx.recv_timeout(Duration::from_secs(30));
            (got, start.elapsed())
        });
        std::thread::sleep(Duration::from_millis(50)); // The consumer parks meanwhile.
        tx.send(7).expect("consumer alive");
        let (got, waited) = consumer.join().expect("consumer");
        assert_eq!(got, Ok(7));
        assert!(waited < Duration::from_secs(10), "woke only at {waited:?}");
    }

    #[test]
    fn the_lane_takes_what_the_full_queue_refuses_and_is_read_first() {
        let (tx, rx) = bounded::<u32>(1);
        tx.try_send(1).expect("room");
        assert!(matches!(tx.try_send(2), Err(TrySendError::Full(2))));
        tx.send_lane(3).expect("consumer alive");
        assert_eq!(rx.len(), 2);
        assert_eq!(rx.recv_timeout(Duration::from_millis(10)), Ok(3));
        assert_eq!(rx.recv_timeout(Duration::from_millis(10)), Ok(1));
        let consumer = std::thread::spawn(move || rx.recv_timeout(Duration::from_secs(30)));
        std::thread::sleep(Duration::from_millis(50));
        tx.send_lane(4).expect("consumer alive");
        assert_eq!(consumer.join().expect("consumer"), Ok(4));
    }

    #[test]
    fn timeout_and_disconnect_are_reported() {
        let (tx, rx) = bounded::<u32>(1);
        assert_eq!(
            rx.recv_timeout(Duration::from_millis(10)),
            Err(RecvTimeoutError::Timeout)
        );
        tx.try_send(1).expect("room");
        assert!(matches!(tx.try_send(2), Err(TrySendError::Full(2))));
        drop(tx);
        assert_eq!(rx.recv_timeout(Duration::from_millis(10)), Ok(1));
        assert_eq!(
            rx.recv_timeout(Duration::from_millis(10)),
            Err(RecvTimeoutError::Disconnected)
        );
    }
}
