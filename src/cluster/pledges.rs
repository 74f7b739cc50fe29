//! Queue seqs the leader reserved for devices on other nodes, held until each node says
//! it handled the batch that carried them.
//!
//! # Why
//! A recipient the leader counts on another node gets a reserved seq, not a stored entry
//! (`devices.rs`): only that node can write the entry, when its device misses the message.
//! If the node never handles the batch (it died within the seconds before it counted as
//! dead, its NATS link dropped the batch, its inbound queue was full, the leader's own
//! publication was refused), nobody would, and the message would be missing from the
//! user's queue after the resync that is meant to recover it.
//!
//! # How
//! Each node reports, for the leader it follows, the highest batch number it handled and
//! how many gaps it has seen (`inbound.rs`): within 50 ms on `<c>.node.<leader>.handled`,
//! and again in every heartbeat. The leader drops the pledges of
//! the batches a node handled. When the node's gap count grows, or it stops counting as
//! live, or it comes back under a new incarnation, or a publication is refused, the
//! leader writes the pledged entries itself (requeues on its writer's lane). A requeue of
//! a message the device did get is harmless: the writer keeps a message in a user's queue
//! at most once, and the worst case is the message offered once more by `/message/sync`.
//!
//! # When the leader dies
//! These are in its memory only; the record of them each commit writes to PostgreSQL lets
//! the next leader write those no node reported handled (`inherit.rs`).
//!
//! # Bound
//! [`MAX_PLEDGES`] per node (about 60 bytes each: 60 MB): past it the oldest batch's
//! pledges are written at once, so a node that stops answering cannot grow the leader's
//! memory. Reports every 50 ms keep a node at the rate of its share of recipients times
//! 0.1 s (one group of 1,000 at 600 messages/s: ~20,000 per node).

use crate::message::Message;
use crate::shared::Shared;
use crate::storage::writer::{Job, LaneJob};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Pledged entries held per node at most.
pub const MAX_PLEDGES: usize = 1_000_000;

/// One reserved entry: (uid, message, reserved seq).
pub type Pledge = (String, Arc<Message>, u32);

#[derive(Debug, Default)]
struct Node {
    /// The gap count last reported.
    gaps: u64,
    /// (batch number, its pledges), oldest first.
    batches: VecDeque<(u64, Vec<Pledge>)>,
    held: usize,
}

/// The leader's pledges, per node (module docs).
#[derive(Debug, Default)]
pub struct Pledges {
    nodes: Mutex<HashMap<u16, Node>>,
    /// (when, the oldest batch) of the pledges this leader wrote itself lately: their
    /// records stay until those requeues have surely committed (`inherit.rs`).
    written: Mutex<VecDeque<(Instant, u64)>>,
}

/// How long the records of pledges the leader wrote itself are kept after: far beyond a
/// lane job's commit (milliseconds), unless the store fails, when nothing is pruned either.
pub const WRITTEN_MARGIN: Duration = Duration::from_secs(60);

/// Writes `pledges` now: requeues on the writer's lane.
pub fn write(shared: &Shared, pledges: Vec<Pledge>) {
    for (uid, message, reserved) in pledges {
        let job = LaneJob::Requeue {
            uid,
            message,
            reserved,
        };
        let _ = shared.writer.send_lane(Job::Lane(job)); // never refused; never blocks
    }
}

impl Pledges {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u16, Node>> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Batch `number` carried `pledges` for `node`.
    pub fn hold(&self, shared: &Shared, node: u16, number: u64, pledges: Vec<Pledge>) {
        if pledges.is_empty() {
            return;
        }
        let (mut overflow, mut first) = (Vec::new(), None);
        {
            let mut nodes = self.lock();
            let n = nodes.entry(node).or_default();
            n.held += pledges.len();
            n.batches.push_back((number, pledges));
            while n.held > MAX_PLEDGES {
                let Some((batch, oldest)) = n.batches.pop_front() else {
                    break;
                };
                first = first.or(Some(batch));
                n.held -= oldest.len();
                overflow.extend(oldest);
            }
        }
        self.write_now(shared, first, overflow);
    }

    /// `node` reports it handled every batch up to `upto`, and has seen `gaps` gaps.
    pub fn progress(&self, shared: &Shared, node: u16, upto: u64, gaps: u64) {
        let (mut done, mut first) = (Vec::new(), None);
        let grew = {
            let mut nodes = self.lock();
            let Some(n) = nodes.get_mut(&node) else {
                return;
            };
            let grew = gaps > n.gaps;
            n.gaps = gaps;
            while n.batches.front().is_some_and(|(number, _)| *number <= upto) {
                if let Some((batch, pledges)) = n.batches.pop_front() {
                    n.held -= pledges.len();
                    if grew {
                        first = first.or(Some(batch));
                        done.extend(pledges);
                    }
                }
            }
            grew
        };
        if grew {
            log::warn!(
                "cluster: node {node} lost delivery batches; writing the {} queue entries \
                 pledged to it up to batch {upto}",
                done.len()
            );
        }
        self.write_now(shared, first, done);
    }

    /// `node` died, restarted, or cannot be told: every entry pledged to it is written.
    pub fn release(&self, shared: &Shared, node: u16) {
        let batches = self
            .lock()
            .remove(&node)
            .map(|n| n.batches)
            .unwrap_or_default();
        let first = batches.front().map(|(batch, _)| *batch);
        let pledges: Vec<Pledge> = batches.into_iter().flat_map(|(_, p)| p).collect();
        if !pledges.is_empty() {
            log::warn!(
                "cluster: node {node} is gone or restarted; writing the {} queue entries \
                 pledged to it",
                pledges.len()
            );
        }
        self.write_now(shared, first, pledges);
    }

    /// Writes `pledges` (of batches from `first` on) now, and remembers it for
    /// [`Pledges::keep_from`].
    pub fn write_now(&self, shared: &Shared, first: Option<u64>, pledges: Vec<Pledge>) {
        if let (Some(first), false) = (first, pledges.is_empty()) {
            let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
            written.push_back((Instant::now(), first));
        }
        write(shared, pledges);
    }

    /// The oldest batch whose record must stay: one with pledges still held, or written by
    /// this leader within [`WRITTEN_MARGIN`] (their requeues may not have committed).
    pub fn keep_from(&self) -> Option<u64> {
        let held = self
            .lock()
            .values()
            .filter_map(|n| n.batches.front().map(|(number, _)| *number))
            .min();
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        while written
            .front()
            .is_some_and(|(at, _)| at.elapsed() > WRITTEN_MARGIN)
        {
            written.pop_front();
        }
        let recent = written.iter().map(|&(_, first)| first).min();
        held.into_iter().chain(recent).min()
    }

    /// The nodes holding pledges now.
    pub fn nodes(&self) -> Vec<u16> {
        self.lock().keys().copied().collect()
    }
}
