//! RECVs waiting for their RECVACK: re-sent on the retry interval, and on a miss (the
//! connection went, or gave the message up) handed to the user's offline queue.

use super::session::Session;
use super::{emit, Gateway};
use crate::message::{Delivery, QueueSlot};
use crate::storage::writer::LaneJob;
use bytes::Bytes;
use ruyi_reactor::{ConnId, LoopCtx};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

/// A RECV waiting for its RECVACK.
///
/// It leaves the retry list in one of two ways: acknowledged, or **missed** (the
/// connection closed, was replaced by a new login, ran out of retries, or the list was
/// full and this was the oldest). A missed delivery goes to the user's offline queue at
/// its reserved seq ([`Gateway::queue_missed`]); nothing leaves the list silently.
#[derive(Debug)]
pub(super) struct PendingAck {
    pub(super) message: Arc<crate::message::Message>,
    /// The delivery's offline policy says "queue a miss" (`Delivery::queued`), the
    /// receiver has a reserved seq, and no entry is stored yet.
    pub(super) requeue: bool,
    /// The receiver's queue slot (`message::QueueSlot`).
    pub(super) slot: QueueSlot,
    /// See `Delivery::push_no`.
    pub(super) push_no: u64,
    /// See `Delivery::login_epoch`.
    pub(super) login_epoch: i64,
    pub(super) frame: Bytes,
    pub(super) sent_at: Instant,
    pub(super) attempts: u32,
}

/// Why a delivery missed (see [`Gateway::queue_missed`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Miss {
    /// The connection closed, or was gone when the delivery came.
    Gone,
    /// The connection lives but stopped retrying the RECV.
    GaveUp,
}

impl PendingAck {
    pub(super) fn new(
        delivery: &Delivery,
        recipient: u32,
        frame: Bytes,
        now: Instant,
    ) -> PendingAck {
        let slot = delivery.slot(recipient);
        PendingAck {
            message: Arc::clone(&delivery.message),
            requeue: delivery.queued && slot.seq > 0 && !slot.stored,
            slot,
            push_no: delivery.push_no,
            login_epoch: delivery.login_epoch,
            frame,
            sent_at: now,
            attempts: 0,
        }
    }
}

impl Gateway {
    /// A delivery to `conn` missed (see [`PendingAck`]): queue it for `uid`.
    ///
    /// When the connection went (`Miss::Gone`), not while a device that had the message
    /// when it was pushed is still connected: it holds the message, or queues it when it
    /// goes (registry invariants). A connection that replaced this one logged in later, so
    /// it does not count. When the connection gave the message up but lives on
    /// (`Miss::GaveUp`: out of retries, or pushed out of a full retry list), always: the
    /// other devices may have given it up the same way, and a second entry is impossible
    /// (the writer checks), so the worst case is the message offered again.
    pub(super) fn queue_missed(&self, uid: &str, conn: ConnId, p: &PendingAck, miss: Miss) {
        if !p.requeue {
            return;
        }
        if miss == Miss::Gone
            && self
                .shared
                .registry
                .has_older_device(uid, conn, p.push_no, p.login_epoch)
        {
            return;
        }
        self.send_lane(LaneJob::Requeue {
            uid: uid.to_owned(),
            message: Arc::clone(&p.message),
            reserved: p.slot.seq,
        });
    }

    /// Re-sends RECVs that waited longer than the retry interval, byte for byte, at most
    /// `recv_retry_limit` times each (PROTOCOL.md §9.4).
    pub(super) fn scan_retries(&mut self, lp: &mut LoopCtx<'_, Session>) {
        let interval = self.shared.config.recv_retry_interval;
        let limit = self.shared.config.recv_retry_limit;
        let now = lp.now();
        let mut keep = Vec::with_capacity(self.retry_list.len());
        for id in std::mem::take(&mut self.retry_list) {
            let Some((mut conn, Session::Im(s))) = lp.conn(id) else {
                continue;
            };
            if s.draining {
                continue; // Nothing more is sent; `on_close` requeues what is pending.
            }
            let mut dropped_bytes = 0;
            let mut exhausted = Vec::new();
            let wire = s.wire();
            s.pending.retain_mut(|p| {
                if now.duration_since(p.sent_at) < interval {
                    return true;
                }
                if p.attempts >= limit {
                    dropped_bytes += p.frame.len();
                    exhausted.push(PendingAck {
                        message: Arc::clone(&p.message),
                        frame: Bytes::new(),
                        ..*p
                    });
                    return false;
                }
                p.attempts += 1;
                p.sent_at = now;
                emit(&mut conn, wire, p.frame.clone());
                self.shared.counters.retries.fetch_add(1, Relaxed);
                true
            });
            s.pending_bytes -= dropped_bytes;
            // Out of retries: the device is not taking it; the user's queue does.
            for p in &exhausted {
                self.queue_missed(&s.uid, id, p, Miss::GaveUp);
            }
            if s.pending.is_empty() {
                s.on_retry_list = false;
            } else {
                keep.push(id);
            }
        }
        self.retry_list = keep;
    }
}
