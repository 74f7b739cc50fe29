//! `Outbound`: one connection's queue of bytes waiting for the socket.
//!
//! Owned by the connection's event loop; never shared. Two kinds of data go in:
//! - large frames as `Bytes`, kept as they are so a payload fanned out to many connections
//!   is shared, not copied (R7);
//! - small frames, copied into a tail chunk so that many tiny frames (acks, pongs, short
//!   messages) leave in one contiguous slice instead of one `iovec` each (NATS copies small
//!   writes into its pending buffer for the same reason).
//!
//! [`Outbound::flush_to`] writes with `write_vectored`, at most [`MAX_IOV`] slices and a byte
//! budget per call, and trims exactly what the kernel took.
//!
//! # Invariants
//! - Byte order on the wire is push order: `tail` is always logically *after* every entry of
//!   `frames`, so a `Bytes` pushed while the tail holds data first moves the tail into
//!   `frames`.
//! - `queued_bytes` is the sum of the lengths of `frames` and `tail`.
//! - An empty queue owns no heap memory (the tail chunk is released when the queue drains),
//!   which is what keeps idle connections small.

use bytes::{Buf, Bytes, BytesMut};
use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

/// Slices per `writev` call. Linux' `IOV_MAX` is 1024; more is refused with `EINVAL`.
pub const MAX_IOV: usize = 1024;

/// Frames up to this many bytes are copied into the tail chunk instead of being queued as a
/// slice of their own. Copying 512 bytes costs less than an extra `iovec` plus the atomic
/// reference count of a shared `Bytes`.
pub const COPY_THRESHOLD_BYTES: usize = 512;

/// Size of a fresh tail chunk. 4 KiB holds dozens of small frames, and one page is a cheap
/// allocation; a chunk is released as soon as the queue drains.
const TAIL_CHUNK_BYTES: usize = 4096;

/// Slices we gather on the stack before falling back to a heap vector. Most flushes need
/// one to three (the tail plus a few shared frames).
const STACK_IOV: usize = 16;

/// How a flush ended.
#[derive(Debug)]
pub enum FlushStatus {
    /// Everything queued was written.
    Drained,
    /// The byte budget ran out with data still queued; the socket may still be writable.
    BudgetSpent,
    /// The kernel buffer is full; wait for the next WRITABLE event.
    WouldBlock,
    /// The socket failed (reset, broken pipe, ...). The connection must close.
    Failed(io::Error),
}

/// The result of [`Outbound::flush_to`]: bytes written and why it stopped.
#[derive(Debug)]
pub struct FlushOutcome {
    /// Bytes the kernel accepted during this call.
    pub written: usize,
    /// Why the call returned.
    pub status: FlushStatus,
    /// `write_vectored` calls made.
    pub syscalls: usize,
}

/// A byte queue for one connection. See the module docs.
#[derive(Debug, Default)]
pub struct Outbound {
    frames: VecDeque<Bytes>,
    tail: BytesMut,
    queued_bytes: usize,
    /// The loop's total of queued bytes, kept in step with `queued_bytes` (when set).
    gauge: Option<Arc<AtomicUsize>>,
}

impl Drop for Outbound {
    fn drop(&mut self) {
        // A connection closed with bytes still queued: they leave the loop's total.
        self.count(0, self.queued_bytes);
    }
}

impl Outbound {
    /// An empty queue; allocates nothing.
    pub fn new() -> Outbound {
        Outbound::default()
    }

    /// An empty queue that keeps `gauge` (a loop's total) in step with its own count.
    pub fn counted(gauge: Arc<AtomicUsize>) -> Outbound {
        let mut q = Outbound::default();
        q.gauge = Some(gauge);
        q
    }

    fn count(&self, added: usize, removed: usize) {
        if let Some(g) = &self.gauge {
            // Relaxed: a gauge read now and then; only the owning loop writes it.
            if added > 0 {
                g.fetch_add(added, Relaxed);
            }
            if removed > 0 {
                g.fetch_sub(removed, Relaxed);
            }
        }
    }

    /// Bytes waiting to be written.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// True when nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.queued_bytes == 0
    }

    /// Appends a frame. Small frames are copied into the tail chunk; large ones are queued as
    /// shared `Bytes`. Makes no syscall.
    pub fn queue(&mut self, frame: Bytes) {
        if frame.len() <= COPY_THRESHOLD_BYTES {
            self.queue_slice(&frame);
            return;
        }
        self.seal_tail();
        self.queued_bytes += frame.len();
        self.count(frame.len(), 0);
        self.frames.push_back(frame);
    }

    /// Appends bytes by copying them into the tail chunk. Makes no syscall.
    pub fn queue_slice(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if self.tail.capacity() - self.tail.len() < bytes.len() {
            // Start a new chunk rather than let `reserve` copy the old tail into a bigger
            // allocation: what is already in the tail moves to `frames` as it is.
            self.seal_tail();
            self.tail = BytesMut::with_capacity(bytes.len().max(TAIL_CHUNK_BYTES));
        }
        self.tail.extend_from_slice(bytes);
        self.queued_bytes += bytes.len();
        self.count(bytes.len(), 0);
    }

    /// Moves the tail's bytes (not its spare capacity) to the back of `frames`, so that a
    /// frame queued next goes after them.
    fn seal_tail(&mut self) {
        if !self.tail.is_empty() {
            self.frames.push_back(self.tail.split().freeze());
        }
    }

    /// Writes queued bytes to `writer` until the queue is empty, the kernel would block, the
    /// writer fails, or `budget_bytes` are written.
    ///
    /// Each call to `write_vectored` carries at most [`MAX_IOV`] slices and never more bytes
    /// than the budget has left, so one connection cannot monopolise its loop.
    pub fn flush_to<W: Write>(&mut self, writer: &mut W, budget_bytes: usize) -> FlushOutcome {
        let mut outcome = FlushOutcome {
            written: 0,
            status: FlushStatus::Drained,
            syscalls: 0,
        };
        while !self.is_empty() {
            let allowance = budget_bytes.saturating_sub(outcome.written);
            if allowance == 0 {
                outcome.status = FlushStatus::BudgetSpent;
                return outcome;
            }
            outcome.syscalls += 1;
            match self.write_once(writer, allowance) {
                Ok(0) => {
                    outcome.status = FlushStatus::Failed(io::ErrorKind::WriteZero.into());
                    return outcome;
                }
                Ok(n) => {
                    self.consume(n);
                    outcome.written += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    outcome.status = FlushStatus::WouldBlock;
                    return outcome;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    outcome.status = FlushStatus::Failed(e);
                    return outcome;
                }
            }
        }
        self.release_tail();
        outcome
    }

    /// One `write_vectored` over the first slices of the queue, at most `allowance` bytes.
    fn write_once<W: Write>(&self, writer: &mut W, allowance: usize) -> io::Result<usize> {
        let slices = self.frames.len() + usize::from(!self.tail.is_empty());
        if slices <= STACK_IOV {
            let mut iov = [IoSlice::new(&[]); STACK_IOV];
            let n = self.gather(&mut iov, allowance);
            writer.write_vectored(&iov[..n])
        } else {
            let mut iov = vec![IoSlice::new(&[]); slices.min(MAX_IOV)];
            let n = self.gather(&mut iov, allowance);
            writer.write_vectored(&iov[..n])
        }
    }

    /// Fills `iov` with the queue's first slices, cutting the last one so the total stays
    /// within `allowance`. Returns how many slots it filled.
    fn gather<'a>(&'a self, iov: &mut [IoSlice<'a>], mut allowance: usize) -> usize {
        let chunks = self
            .frames
            .iter()
            .map(|b| &b[..])
            .chain(std::iter::once(&self.tail[..]))
            .filter(|c| !c.is_empty());
        let mut filled = 0;
        for (slot, chunk) in iov.iter_mut().zip(chunks) {
            let take = chunk.len().min(allowance);
            *slot = IoSlice::new(&chunk[..take]);
            filled += 1;
            allowance -= take;
            if allowance == 0 {
                break;
            }
        }
        filled
    }

    /// Drops the first `n` written bytes: whole frames are popped, a partly written one is
    /// trimmed in place (`Bytes::advance` is O(1)), and the rest keeps its order.
    fn consume(&mut self, mut n: usize) {
        debug_assert!(n <= self.queued_bytes, "kernel wrote more than we gave it");
        self.queued_bytes -= n;
        self.count(0, n);
        while n > 0 {
            match self.frames.front_mut() {
                Some(front) if front.len() <= n => {
                    n -= front.len();
                    self.frames.pop_front();
                }
                Some(front) => {
                    front.advance(n);
                    return;
                }
                None => {
                    self.tail.advance(n);
                    return;
                }
            }
        }
    }

    /// Gives the memory of a drained queue back, so an idle connection holds none (the
    /// frame list too: kept, its few slots cost more per idle connection than the engine's
    /// own state, and a busy connection reallocates it once per burst).
    fn release_tail(&mut self) {
        debug_assert!(self.is_empty());
        self.tail = BytesMut::new();
        if self.frames.capacity() > 0 {
            self.frames = VecDeque::new();
        }
    }

    /// Drops everything queued (the connection is closing without a flush).
    pub fn clear(&mut self) {
        self.count(0, self.queued_bytes);
        self.frames = VecDeque::new();
        self.tail = BytesMut::new();
        self.queued_bytes = 0;
    }

    /// Debug-only cross-field check.
    #[cfg(debug_assertions)]
    pub fn check_invariants(&self) {
        let sum: usize = self.frames.iter().map(Bytes::len).sum::<usize>() + self.tail.len();
        assert_eq!(
            sum, self.queued_bytes,
            "queued_bytes out of step with the queue"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes at most `chunk` bytes per call and records what it got, and
    /// reports WouldBlock after `calls_before_block` calls.
    struct Trickle {
        out: Vec<u8>,
        chunk: usize,
        calls: usize,
        calls_before_block: usize,
        max_slices_seen: usize,
    }

    impl Trickle {
        fn new(chunk: usize, calls_before_block: usize) -> Trickle {
            Trickle {
                out: Vec::new(),
                chunk,
                calls: 0,
                calls_before_block,
                max_slices_seen: 0,
            }
        }
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            if self.calls == self.calls_before_block {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.calls += 1;
            self.max_slices_seen = self.max_slices_seen.max(bufs.len());
            let mut left = self.chunk;
            for b in bufs {
                let take = b.len().min(left);
                self.out.extend_from_slice(&b[..take]);
                left -= take;
                if left == 0 {
                    break;
                }
            }
            Ok(self.chunk - left)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn frame(byte: u8, len: usize) -> Bytes {
        Bytes::from(vec![byte; len])
    }

    #[test]
    fn the_loop_gauge_follows_queue_write_clear_and_drop() {
        let gauge = Arc::new(AtomicUsize::new(0));
        let mut a = Outbound::counted(Arc::clone(&gauge));
        let mut b = Outbound::counted(Arc::clone(&gauge));
        a.queue(frame(1, 10));
        a.queue(frame(2, 5000));
        b.queue_slice(&[3; 7]);
        assert_eq!(gauge.load(Relaxed), 5017);
        let mut sink = Trickle::new(1000, 2);
        let _ = a.flush_to(&mut sink, usize::MAX);
        assert_eq!(gauge.load(Relaxed), 5017 - sink.out.len());
        assert_eq!(gauge.load(Relaxed), a.queued_bytes() + 7);
        b.clear();
        assert_eq!(gauge.load(Relaxed), a.queued_bytes());
        drop(a);
        assert_eq!(gauge.load(Relaxed), 0);
    }

    #[test]
    fn partial_writes_keep_order_and_trim_exactly() {
        let mut q = Outbound::new();
        let mut expected = Vec::new();
        for i in 0..50u8 {
            // Alternate small (copied) and large (shared) frames.
            let len = if i % 2 == 0 {
                10 + i as usize
            } else {
                600 + i as usize
            };
            let f = frame(i, len);
            expected.extend_from_slice(&f);
            q.queue(f);
            q.check_invariants();
        }
        let mut w = Trickle::new(333, usize::MAX);
        let outcome = q.flush_to(&mut w, usize::MAX);
        assert!(matches!(outcome.status, FlushStatus::Drained));
        assert_eq!(outcome.written, expected.len());
        assert_eq!(w.out, expected);
        assert!(q.is_empty());
    }

    #[test]
    fn would_block_keeps_the_rest_queued_in_order() {
        let mut q = Outbound::new();
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        q.queue(Bytes::from(data.clone()));
        let mut w = Trickle::new(1000, 2);
        let outcome = q.flush_to(&mut w, usize::MAX);
        assert!(matches!(outcome.status, FlushStatus::WouldBlock));
        assert_eq!(outcome.written, 2000);
        assert_eq!(q.queued_bytes(), 3000);
        q.check_invariants();
        let mut w2 = Trickle::new(10_000, usize::MAX);
        q.flush_to(&mut w2, usize::MAX);
        w.out.extend_from_slice(&w2.out);
        assert_eq!(w.out, data);
    }

    #[test]
    fn budget_bounds_bytes_per_flush() {
        let mut q = Outbound::new();
        q.queue(frame(1, 10_000));
        let mut w = Trickle::new(4096, usize::MAX);
        let outcome = q.flush_to(&mut w, 5000);
        assert!(matches!(outcome.status, FlushStatus::BudgetSpent));
        assert_eq!(outcome.written, 5000, "the last write is cut to the budget");
        assert_eq!(q.queued_bytes(), 5000);
    }

    #[test]
    fn at_most_iov_max_slices_per_call() {
        let mut q = Outbound::new();
        for i in 0..3000 {
            q.queue(frame((i % 200) as u8, COPY_THRESHOLD_BYTES + 1));
        }
        let mut w = Trickle::new(usize::MAX / 2, usize::MAX);
        let outcome = q.flush_to(&mut w, usize::MAX);
        assert!(matches!(outcome.status, FlushStatus::Drained));
        assert_eq!(w.max_slices_seen, MAX_IOV);
        assert_eq!(
            outcome.syscalls, 3,
            "3000 slices need three calls of at most 1024"
        );
    }

    #[test]
    fn small_frames_coalesce_into_one_slice() {
        let mut q = Outbound::new();
        for _ in 0..100 {
            q.queue(frame(7, 20));
        }
        let mut w = Trickle::new(usize::MAX / 2, usize::MAX);
        q.flush_to(&mut w, usize::MAX);
        assert_eq!(w.max_slices_seen, 1);
        assert_eq!(w.out.len(), 2000);
    }

    #[test]
    fn a_drained_queue_holds_no_memory() {
        let mut q = Outbound::new();
        q.queue(frame(1, 100));
        q.flush_to(&mut Trickle::new(1000, usize::MAX), usize::MAX);
        assert_eq!(q.tail.capacity(), 0);
        assert!(q.frames.is_empty());
    }

    #[test]
    fn write_errors_are_reported_not_panicked() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut q = Outbound::new();
        q.queue(frame(1, 10));
        let outcome = q.flush_to(&mut Broken, usize::MAX);
        assert!(
            matches!(outcome.status, FlushStatus::Failed(ref e) if e.kind() == io::ErrorKind::BrokenPipe)
        );
        assert_eq!(
            q.queued_bytes(),
            10,
            "nothing is lost from the queue on failure"
        );
    }
}
