//! Deliveries on a loop: one RECV per target connection, encrypted per connection or
//! shared between receivers that see the same frame, each kept for its RECVACK.

use super::retries::{Miss, PendingAck};
use super::session::{Phase, Session};
use super::{emit, Gateway, Wire, MAX_PENDING_ACK_BYTES};
use crate::message::{Delivery, Target, SYSTEM_UID};
use bytes::Bytes;
use ruyi_proto::types::channel_type;
use ruyi_proto::{Flags, RecvHead, Setting};
use ruyi_reactor::{ConnId, LoopCtx};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

impl Gateway {
    pub(super) fn on_deliver(
        &mut self,
        lp: &mut LoopCtx<'_, Session>,
        delivery: &Delivery,
        targets: Vec<Target>,
    ) {
        let m = &delivery.message;
        let persistent = !m.flags.no_persist();
        let mut shared_frames: Vec<(Variant, Bytes)> = Vec::new();
        // The same for JSON-RPC texts (their variant ignores the binary version).
        let mut shared_texts: Vec<(Variant, Bytes)> = Vec::new();
        let mut delivered = 0u64;
        let mut missed = Vec::new();
        let now = lp.now();
        for target in targets {
            let id = target.conn;
            let Some((mut conn, Session::Im(s))) = lp.conn(id) else {
                if let Some(Session::Im(s)) = lp.closing(id) {
                    // Closing but not closed: the registry still counts this device, so
                    // deciding now would find the user "online". Leave the message with
                    // the connection; `on_close` requeues it once the device is gone.
                    if persistent {
                        let p = PendingAck::new(delivery, target.recipient, Bytes::new(), now);
                        if p.requeue {
                            s.pending.push_back(p);
                        }
                    }
                    continue;
                }
                // Gone since the commit: its user may need a queue entry instead.
                missed.push(target);
                continue;
            };
            if s.phase != Phase::Ready {
                continue;
            }
            if s.draining {
                // Not sent: kept for `on_close` to requeue, as for a closing connection.
                if persistent {
                    let p = PendingAck::new(delivery, target.recipient, Bytes::new(), now);
                    if p.requeue {
                        s.pending.push_back(p);
                    }
                }
                continue;
            }
            let view = RecvView::of(delivery, &s.uid, target.recipient);
            let frame = match &s.cipher {
                // JSON-RPC: no encryption, one text per variant, shared as binary frames
                // are.
                _ if s.wire() == Wire::WsText => {
                    const JSON: u8 = 0;
                    match shared_texts.iter().find(|(v, _)| v.matches(&view, JSON)) {
                        Some((_, f)) => f.clone(),
                        None => {
                            let b64 = self.shared.config.jsonrpc_base64_payloads;
                            let text = crate::jsonrpc::recv(&view.head(m), &m.payload, b64);
                            let f = Bytes::from(text);
                            shared_texts.push((Variant::of(&view, JSON), f.clone()));
                            f
                        }
                    }
                }
                Some(cipher) if !Setting(m.setting).has(Setting::NO_ENCRYPT) => {
                    // Every connection has its own key: one AES pass and msgKey each, in
                    // the loop's scratch buffers (no allocation but the frame).
                    let head = view.head(m);
                    let (wire, key) = cipher.seal_recv_into(&head, &m.payload, &mut self.seal);
                    let key = std::str::from_utf8(&key).unwrap_or_default();
                    self.buf.clear();
                    if head.encode(s.version, key, wire, &mut self.buf).is_err() {
                        self.unencodable(&s.uid, id, delivery, target.recipient, now);
                        continue;
                    }
                    self.buf.split().freeze()
                }
                _ => {
                    // Unencrypted: one frame per variant, shared by every receiver on this
                    // loop; the common case allocates nothing per receiver.
                    match shared_frames
                        .iter()
                        .find(|(v, _)| v.matches(&view, s.version))
                    {
                        Some((_, f)) => f.clone(),
                        None => {
                            self.buf.clear();
                            if view
                                .head(m)
                                .encode(s.version, "", &m.payload, &mut self.buf)
                                .is_err()
                            {
                                self.unencodable(&s.uid, id, delivery, target.recipient, now);
                                continue;
                            }
                            let f = self.buf.split().freeze();
                            shared_frames.push((Variant::of(&view, s.version), f.clone()));
                            f
                        }
                    }
                }
            };
            emit(&mut conn, s.wire(), frame.clone());
            delivered += 1;
            s.out_msgs = s.out_msgs.wrapping_add(1);
            if persistent {
                s.pending_bytes += frame.len();
                s.pending
                    .push_back(PendingAck::new(delivery, target.recipient, frame, now));
                // A full retry list drops its oldest RECV into the user's queue.
                while s.pending.len() > self.shared.config.max_pending_acks
                    || (s.pending_bytes > MAX_PENDING_ACK_BYTES && s.pending.len() > 1)
                {
                    let Some(old) = s.pending.pop_front() else {
                        break;
                    };
                    s.pending_bytes -= old.frame.len();
                    self.shared.counters.evicted_recvs.fetch_add(1, Relaxed);
                    self.queue_missed(&s.uid, id, &old, Miss::GaveUp);
                }
                if !s.on_retry_list {
                    s.on_retry_list = true;
                    self.retry_list.push(id);
                }
            }
        }
        if m.payload.len() > ruyi_proto::SealScratch::KEEP_BYTES / 6 {
            self.seal.trim(); // A rare large message: its buffers are not kept.
        }
        // One shared-counter update per command, not per receiver: the loops would
        // otherwise bounce its cache line between cores.
        self.shared
            .counters
            .deliveries
            .fetch_add(delivered, Relaxed);
        for target in missed {
            if let Some(uid) = delivery.recipients.get(target.recipient as usize) {
                let p = PendingAck::new(delivery, target.recipient, Bytes::new(), now);
                self.queue_missed(uid, target.conn, &p, Miss::Gone);
            }
        }
    }

    /// A RECV that cannot be encoded for this connection's protocol version: the device
    /// can never get it live, so the user's queue does.
    pub(super) fn unencodable(
        &self,
        uid: &str,
        conn: ConnId,
        d: &Delivery,
        recipient: u32,
        now: Instant,
    ) {
        log::error!(
            "conn={conn} uid={uid} cannot encode RECV {}",
            d.message.message_id
        );
        let p = PendingAck::new(d, recipient, Bytes::new(), now);
        self.queue_missed(uid, conn, &p, Miss::GaveUp);
    }
}

/// What differs between receivers of one message (PROTOCOL.md §5.5, §8.2), borrowed from
/// the message: person chats show the peer as the channel; the sender's own other devices
/// get no red dot; SyncOnce messages carry the receiver's queue seq; the system uid shows
/// as an empty sender.
#[derive(Debug)]
struct RecvView<'a> {
    setting: Setting,
    channel_id: &'a str,
    from_uid: &'a str,
    red_dot: bool,
    seq: u32,
}

impl<'a> RecvView<'a> {
    fn of(delivery: &'a Delivery, receiver: &str, recipient: u32) -> RecvView<'a> {
        let m = &delivery.message;
        // Groups show the channel as the sender addressed it: the same as the storage id,
        // except for command messages stored under `X____cmd` (PROTOCOL.md §8.4).
        let channel_id = if m.channel.channel_type != channel_type::PERSON {
            &m.addressed_to
        } else if m.addressed_to == receiver {
            &m.from_uid
        } else {
            &m.addressed_to
        };
        let slot = delivery.slot(recipient);
        let seq = if m.flags.sync_once() && slot.stored && slot.seq > 0 {
            slot.seq
        } else {
            m.message_seq
        };
        RecvView {
            setting: Setting(m.setting),
            channel_id,
            from_uid: if m.from_uid == SYSTEM_UID {
                ""
            } else {
                &m.from_uid
            },
            red_dot: m.flags.red_dot() && m.from_uid != receiver,
            seq,
        }
    }

    /// Whether this RECV carries stream fields at `version` (they change the layout).
    fn stream_fields(&self, version: u8) -> bool {
        self.setting.stream_fields(version)
    }

    /// The RECV without msgKey and payload (the caller passes those to `encode`), borrowed
    /// from the message: nothing is copied per receiver.
    fn head(&self, m: &'a crate::message::Message) -> RecvHead<'a> {
        RecvHead {
            flags: Flags(m.flags.0 & (Flags::NO_PERSIST | Flags::SYNC_ONCE))
                .with(Flags::RED_DOT, self.red_dot),
            setting: Setting(m.setting),
            from_uid: self.from_uid,
            channel_id: self.channel_id,
            channel_type: m.channel.channel_type,
            expire: m.expire,
            client_msg_no: &m.client_msg_no,
            stream_flag: 0,
            stream_no: "",
            stream_id: m.message_id as u64,
            message_id: m.message_id,
            message_seq: self.seq,
            timestamp: m.timestamp,
            topic: &m.topic,
        }
    }
}

/// The key of one shared unencrypted RECV frame within a delivery.
#[derive(Debug)]
struct Variant {
    expire_field: bool,
    stream_fields: bool,
    channel_id: String,
    red_dot: bool,
    seq: u32,
}

impl Variant {
    fn of(view: &RecvView<'_>, version: u8) -> Variant {
        Variant {
            expire_field: version >= 3,
            stream_fields: view.stream_fields(version),
            channel_id: view.channel_id.to_owned(),
            red_dot: view.red_dot,
            seq: view.seq,
        }
    }

    fn matches(&self, view: &RecvView<'_>, version: u8) -> bool {
        self.expire_field == (version >= 3)
            && self.stream_fields == view.stream_fields(version)
            && self.red_dot == view.red_dot
            && self.seq == view.seq
            && self.channel_id == view.channel_id
    }
}
