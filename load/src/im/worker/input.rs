//! A worker's input: the packets one connection's bytes decode to, answered and counted.

use super::*;
use ruyi_proto::crypto::SealScratch;

pub(super) fn handle_input(
    c: &mut Conn,
    args: &ImArgs,
    now: Instant,
    window: Option<Instant>,
    logged_in: &AtomicUsize,
    r: &mut WorkerResult,
    seal: &mut SealScratch,
) -> io::Result<()> {
    c.framing.unwrap(&mut c.raw, &mut c.input)?;
    let mut consumed = 0;
    let next = |c: &mut Conn, at: usize| {
        if c.peer != crate::peer::Peer::Ruyi {
            crate::peer::next_packet(c.peer, &mut c.peer_state, &c.input[at..])
        } else if c.jsonrpc {
            crate::jsonrpc::next_packet(&c.input[at..])
        } else {
            decode_packet(&c.input[at..], c.version, MAX_BODY_BYTES).map_err(io::Error::other)
        }
    };
    while let Some((packet, used)) = next(c, consumed)? {
        consumed += used;
        match packet {
            Packet::Connack(ack) => {
                if ack.reason_code != 1 {
                    return Err(io::Error::other(format!(
                        "{} login refused: {}",
                        c.plan.uid, ack.reason_code
                    )));
                }
                if args.encrypt {
                    c.cipher = Some(
                        SessionCipher::derive(c.secret, &ack.server_key, &ack.salt)
                            .map_err(io::Error::other)?,
                    );
                }
                c.logged_in = true;
                if !c.counted {
                    c.counted = true;
                    logged_in.fetch_add(1, Ordering::AcqRel);
                }
                if c.reconnects > 0 {
                    r.failovers += 1;
                    resend(c)?;
                }
            }
            Packet::Sendack(ack) => {
                trace(
                    c,
                    format_args!(
                        "SENDACK cs{} {} id{} seq{}",
                        ack.client_seq, ack.reason_code, ack.message_id, ack.message_seq
                    ),
                );
                let sent = c
                    .in_flight
                    .iter()
                    .position(|f| f.client_seq == ack.client_seq)
                    .and_then(|i| c.in_flight.remove(i));
                if ack.reason_code != 1 {
                    r.refused += 1; // Never accepted, so never owed.
                } else {
                    if let (Some(sender), Some(f)) = (c.plan.sender_index, &sent) {
                        r.acked.push((sender, f.counter));
                    }
                    if let (Some(from), Some(f)) = (window, &sent) {
                        r.sends += 1;
                        r.tick(from, now, 0);
                        report::record(&mut r.sendack, now.saturating_duration_since(f.stamp));
                    }
                }
            }
            Packet::Recv(recv) => {
                let payload = match &c.cipher {
                    // Check the msgKey as the SDKs do: a bad one is a server bug.
                    Some(cipher) => cipher
                        .open_recv_into(&recv.head(), &recv.payload, recv.msg_key.as_bytes(), seal)
                        .map_err(io::Error::other)?,
                    None => &recv.payload[..],
                };
                if c.peer == crate::peer::Peer::Ruyi {
                    c.queue(&Packet::Recvack(RecvackPacket {
                        flags: Flags(0),
                        message_id: recv.message_id,
                        message_seq: recv.message_seq,
                    }))?;
                }
                if payload.len() >= 24 {
                    let sent_ns = u64::from_be_bytes(payload[0..8].try_into().unwrap_or_default());
                    let sender =
                        u64::from_be_bytes(payload[8..16].try_into().unwrap_or_default()) as usize;
                    let counter =
                        u64::from_be_bytes(payload[16..24].try_into().unwrap_or_default());
                    if c.peer != crate::peer::Peer::Ruyi && Some(sender) == c.plan.sender_index {
                        continue; // a peer's group sender gets its own back (`peer.rs`)
                    }
                    trace(
                        c,
                        format_args!(
                            "RECV {sender}/{counter} id{} seq{}",
                            recv.message_id, recv.message_seq
                        ),
                    );
                    match c.seen.entry(sender).or_default().record(counter) {
                        crate::ledger::Arrival::New => {}
                        crate::ledger::Arrival::Duplicate => {
                            if r.duplicated < 10 {
                                // The first few, to look for in the server's logs.
                                log::warn!(
                                    "duplicate: {} got message {counter} of sender {sender} again \
                                     (id {}, seq {}, after {} failovers)",
                                    c.plan.uid,
                                    recv.message_id,
                                    recv.message_seq,
                                    c.reconnects
                                );
                            }
                            r.duplicated += 1;
                        }
                        crate::ledger::Arrival::Reordered => r.reordered += 1,
                    }
                    if let Some(from) = window {
                        r.deliveries += 1;
                        r.tick(from, now, 1);
                        let latency = nanos_since_epoch(now).saturating_sub(sent_ns);
                        report::record(&mut r.delivery, Duration::from_nanos(latency));
                    }
                }
            }
            Packet::Pong => {}
            other => {
                return Err(io::Error::other(format!(
                    "{}: unexpected {:?}",
                    c.plan.uid,
                    other.packet_type()
                )))
            }
        }
    }
    c.input.drain(..consumed);
    Ok(())
}
