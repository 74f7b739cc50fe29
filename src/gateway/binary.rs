//! The binary protocol on a connection: frames decoded from its byte stream (TCP, or the
//! stream of a WebSocket's messages), CONNECT handed to the auth pool, SEND checked and
//! handed to the channel pool, RECVACK clearing a retry entry.

use super::session::{Flow, ImSession, Phase};
use super::{emit_slice, Gateway};
use crate::auth::{AuthRequest, NotQueued};
use crate::channel::SendRequest;
use crate::message::{ChannelKey, Reply};
use crate::shared::Submit;
use crate::storage::writer::LaneJob;
use bytes::Bytes;
use ruyi_proto::types::{channel_type, reason};
use ruyi_proto::{
    decode_packet, person_channel_id, ConnectPacket, Flags, Packet, SendPacket, Setting,
    SubackPacket, PONG,
};
use ruyi_reactor::ConnCtx;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

impl Gateway {
    pub(super) fn on_im_data(
        &mut self,
        conn: &mut ConnCtx<'_>,
        s: &mut ImSession,
        input: &[u8],
    ) -> usize {
        let mut consumed = 0;
        while !conn.is_closing() {
            let rest = &input[consumed..];
            let (packet, used) = match decode_packet(rest, s.version, self.frame_limit(s)) {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e) => {
                    log::debug!("conn={} uid={} bad frame: {e}; closing", conn.id(), s.uid);
                    conn.close();
                    return input.len();
                }
            };
            match self.on_packet(conn, s, packet) {
                Flow::Next => consumed += used,
                Flow::Pause => {
                    consumed += used;
                    conn.pause_reading();
                    break;
                }
                Flow::Stall => {
                    conn.pause_reading();
                    self.stalled.push(conn.id());
                    break;
                }
                Flow::Close => {
                    conn.close();
                    return input.len();
                }
            }
        }
        consumed
    }

    pub(super) fn on_packet(
        &mut self,
        conn: &mut ConnCtx<'_>,
        s: &mut ImSession,
        packet: Packet,
    ) -> Flow {
        match (s.phase, packet) {
            (Phase::AwaitConnect, Packet::Connect(c)) => self.on_connect(conn, s, c),
            (Phase::AwaitConnect, other) => {
                log::debug!(
                    "conn={} first frame is {:?}, not CONNECT; closing",
                    conn.id(),
                    other.packet_type()
                );
                Flow::Close
            }
            (Phase::Authenticating, _) => Flow::Stall, // Not reached: reading is paused.
            (Phase::Ready, Packet::Ping) => {
                emit_slice(conn, s.wire(), &PONG);
                Flow::Next
            }
            (Phase::Ready, Packet::Send(send)) => self.on_send(conn, s, send),
            (Phase::Ready, Packet::Recvack(ack)) => {
                self.on_recvack(s, ack.message_id);
                Flow::Next
            }
            (Phase::Ready, Packet::Sub(sub)) => {
                // Subscriptions are not supported for any channel type yet (PROTOCOL.md
                // §5.10): answer 23 so the SDK logs it and goes on.
                let ack = Packet::Suback(SubackPacket {
                    sub_no: sub.sub_no,
                    channel_id: sub.channel_id,
                    channel_type: sub.channel_type,
                    action: sub.action,
                    reason_code: reason::NOT_SUPPORT_CHANNEL_TYPE,
                });
                self.reply(conn, s, &ack);
                Flow::Next
            }
            (Phase::Ready, Packet::Disconnect(_)) => Flow::Close,
            (Phase::Ready, other) => {
                log::debug!(
                    "conn={} uid={} sent a {:?}; closing",
                    conn.id(),
                    s.uid,
                    other.packet_type()
                );
                Flow::Close
            }
        }
    }

    pub(super) fn on_connect(
        &mut self,
        conn: &mut ConnCtx<'_>,
        s: &mut ImSession,
        c: ConnectPacket,
    ) -> Flow {
        if self.drain.is_some() {
            // Stopping: a close without CONNACK, which the SDKs retry (a refusing CONNACK
            // would stop them for good, PROTOCOL.md §6).
            return Flow::Close;
        }
        if c.uid.is_empty()
            || c.uid.contains(['@', '#', '&'])
            || crate::message::is_reserved_id(&c.uid)
        {
            log::debug!(
                "conn={} CONNECT with invalid uid {:?}; closing",
                conn.id(),
                c.uid
            );
            return Flow::Close;
        }
        s.uid.clone_from(&c.uid);
        let request = AuthRequest {
            conn: conn.id(),
            connect: c,
            peer: conn.peer_addr().ok().map(|a| a.ip()),
            // JSON-RPC carries no encryption (PROTOCOL.md §10.4).
            plain: s.rpc().is_some(),
            deadline: s.login_deadline,
        };
        match self.shared.auth.push(request) {
            Ok(()) => {
                s.phase = Phase::Authenticating;
                conn.set_idle_timeout(Some(self.shared.config.connect_timeout));
                Flow::Pause
            }
            Err(NotQueued::Shed(why)) => {
                // A login storm beyond the queue's bounds: the SDK reconnects after 3 s.
                crate::auth::shed_login(&self.shared, why);
                Flow::Close
            }
            Err(NotQueued::Stopping) => Flow::Close,
        }
    }

    pub(super) fn on_send(
        &mut self,
        conn: &mut ConnCtx<'_>,
        s: &mut ImSession,
        send: SendPacket,
    ) -> Flow {
        // Before the decryption: a flood over the limit must cost as little as possible.
        // Counted in messages and in bytes: a few huge SENDs cost as much as many small.
        let now_ms = self.clock_ms(conn);
        // Everything the SEND makes the server store and forward, not the payload alone.
        let bytes = send.payload.len()
            + send.client_msg_no.len()
            + send.topic.len()
            + send.channel_id.len()
            + send.msg_key.len();
        let kib = u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX);
        let counted = s.sends.take(self.send_limit, now_ms);
        if !counted || !s.send_kib.take_n(self.send_kib_limit, now_ms, kib) {
            if counted {
                s.sends.refund(self.send_limit);
            }
            self.shared.counters.rate_limited.fetch_add(1, Relaxed);
            let outcome = crate::message::SendOutcome {
                message_id: 0,
                message_seq: 0,
                reason: reason::RATE_LIMIT,
            };
            self.queue_sendack(conn, s, &send, outcome);
            return Flow::Next;
        }
        if send.client_msg_no.contains('\0') || send.topic.contains('\0') {
            // Stored as text, which cannot hold NUL (see `message::is_reserved_id`).
            return self.refuse_send(conn, s, &send, reason::PAYLOAD_DECODE_ERROR);
        }
        let encrypted = s.cipher.is_some() && !send.setting.has(Setting::NO_ENCRYPT);
        let opened = match (&s.cipher, encrypted) {
            (Some(cipher), true) => cipher.open_send(&send).map(Bytes::from),
            _ => Ok(send.payload.clone()),
        };
        let payload = match opened {
            Ok(payload) => payload,
            Err(e) => {
                log::debug!("conn={} uid={} SEND refused: {e}", conn.id(), s.uid);
                return self.refuse_send(conn, s, &send, reason::PAYLOAD_DECODE_ERROR);
            }
        };
        if send.channel_id.is_empty()
            || send.channel_id.contains(['@', '#', '&'])
            || crate::message::is_reserved_id(&send.channel_id)
        {
            // A person id with '@' would forge a combined id, a reserved one a system
            // channel (`X____cmd`); an empty one names nothing.
            return self.refuse_send(conn, s, &send, reason::CHANNEL_ID_ERROR);
        }
        let key = if send.channel_type == channel_type::PERSON {
            ChannelKey::new(
                person_channel_id(&s.uid, &send.channel_id),
                channel_type::PERSON,
            )
        } else {
            ChannelKey::new(send.channel_id.clone(), send.channel_type)
        };
        let (ack_flags, ack_seq) = (send.flags, send.client_seq);
        let request = SendRequest {
            from_uid: s.uid.clone(),
            from_conn: Some(conn.id()),
            key,
            addressed_to: send.channel_id,
            client_msg_no: send.client_msg_no,
            flags: send.flags.with(Flags::DUP, false),
            setting: send.setting.0,
            expire: send.expire,
            topic: send.topic,
            payload,
            system: false,
            recipients: None,
            store_as: None,
            reply: Reply::Conn {
                conn: conn.id(),
                client_seq: send.client_seq,
                flags: send.flags,
                received: Instant::now(),
            },
        };
        match self.shared.try_submit_send(request) {
            Ok(()) => {
                self.shared.counters.sends_in.fetch_add(1, Relaxed);
                s.in_msgs = s.in_msgs.wrapping_add(1);
                Flow::Next
            }
            Err(Submit::Full) => {
                // The SEND is read again once the queue drains: it must not pay twice.
                s.sends.refund(self.send_limit);
                s.send_kib.refund_n(self.send_kib_limit, kib);
                Flow::Stall
            }
            Err(Submit::Unroutable) => {
                // A cluster node that cannot reach the leader now (`cluster/relay.rs`).
                let ack = Packet::Sendack(ruyi_proto::SendackPacket {
                    flags: ack_flags,
                    message_id: 0,
                    client_seq: ack_seq,
                    message_seq: 0,
                    reason_code: reason::SYSTEM_ERROR,
                });
                self.reply(conn, s, &ack);
                Flow::Next
            }
            Err(Submit::Closed) => Flow::Close,
        }
    }

    /// Answers `send` with SENDACK `code`, nothing stored; the refusal still gets a message
    /// id, as WuKongIM gives one.
    pub(super) fn refuse_send(
        &mut self,
        conn: &mut ConnCtx<'_>,
        s: &mut ImSession,
        send: &SendPacket,
        code: u8,
    ) -> Flow {
        let outcome = crate::message::SendOutcome {
            message_id: self.shared.ids.next(),
            message_seq: 0,
            reason: code,
        };
        self.queue_sendack(conn, s, send, outcome);
        Flow::Next
    }

    pub(super) fn queue_sendack(
        &mut self,
        conn: &mut ConnCtx<'_>,
        s: &mut ImSession,
        send: &SendPacket,
        o: crate::message::SendOutcome,
    ) {
        let ack = Packet::Sendack(ruyi_proto::SendackPacket {
            flags: send.flags,
            message_id: o.message_id,
            client_seq: send.client_seq,
            message_seq: o.message_seq,
            reason_code: o.reason,
        });
        self.reply(conn, s, &ack);
    }

    /// Clears the retry entry of an acknowledged RECV, found by message id whatever the
    /// flags say (the JS SDK sends none). Unknown ids are ignored (JSSDK.md §6: the SDK can
    /// mangle ids). A RECV that stands for a stored queue entry marks it delivered: any
    /// device for an ordinary message, a master device for a SyncOnce one (HTTP_API.md §7).
    pub(super) fn on_recvack(&mut self, s: &mut ImSession, message_id: i64) {
        let Some(pos) = s
            .pending
            .iter()
            .position(|p| p.message.message_id == message_id)
        else {
            return;
        };
        let Some(entry) = s.pending.remove(pos) else {
            return;
        };
        s.pending_bytes -= entry.frame.len();
        let master = s.level == 1;
        if entry.slot.stored && entry.slot.seq > 0 && (master || !entry.message.flags.sync_once()) {
            let job = LaneJob::Delivered {
                uid: s.uid.clone(),
                seq: entry.slot.seq,
            };
            self.send_lane(job);
        }
    }

    /// Hands offline-queue work to storage on the lane that never refuses (`mailbox.rs`),
    /// or to the cluster's leader (`Shared::send_lane`).
    pub(super) fn send_lane(&self, job: LaneJob) {
        if !self.shared.send_lane(job) {
            // Only once storage has stopped, after the loops: nothing is left to do it.
            log::error!("storage writer gone; offline-queue work lost");
        }
    }
}
