//! `--peer redis|nats`: the IM workloads against redis pub/sub or NATS core instead of
//! Ruyi, for a same-run comparison (`scripts/bench-peers.sh`). As with `--jsonrpc`
//! (`jsonrpc.rs`), the workers keep speaking in packets: this module writes what a client
//! sends in the peer's protocol and reads the peer's answers back into the packets a
//! Ruyi client would have got, so the shapes, the payload (send time, sender, counter),
//! the pacing and the accounting (lost, duplicated, reordered) are the same.
//!
//! | Ruyi | redis (RESP3, one connection) | NATS core (`verbose`) |
//! |---|---|---|
//! | CONNECT → CONNACK | `HELLO 3`, `SUBSCRIBE uid [group]` → the last subscribe push | `CONNECT`, `SUB uid`, `SUB group`, `PING` → `PONG` |
//! | SEND → SENDACK | `PUBLISH channel payload` → its integer reply | `PUB channel n` → `+OK` |
//! | RECV (→ RECVACK) | a `message` push (nothing acknowledged) | `MSG` (nothing acknowledged) |
//!
//! What the peers do not do, and Ruyi does: store the message, number it per channel,
//! check the sender's rights, track each delivery until its RECVACK, keep an offline
//! queue. What they do that Ruyi does not: a group's sender, a subscriber of the group,
//! gets its own message back; the worker drops it uncounted. Replies come back in command
//! order on both, so each answers the oldest SEND in flight.
//!
//! The tool and the two servers are hand-spoken here rather than through the `redis` and
//! `async-nats` crates: the workers multiplex thousands of connections on one `mio::Poll`
//! each, and both wire formats are a few lines for the four commands used.

use bytes::{BufMut, Bytes, BytesMut};
use clap::ValueEnum;
use ruyi_proto::{ConnackPacket, Flags, Packet, RecvPacket, SendackPacket};
use serde::Serialize;
use std::collections::VecDeque;
use std::io;

/// Which server the IM workloads drive.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Peer {
    /// Ruyi (or WuKongIM): the binary protocol.
    #[default]
    Ruyi,
    /// redis pub/sub, RESP3.
    Redis,
    /// NATS core.
    Nats,
}

/// Where one connection stands with its peer.
#[derive(Debug, Default)]
pub struct PeerState {
    /// Subscriptions asked for, not yet confirmed; CONNACK when the last one is.
    subscribing: usize,
    logged_in: bool,
    /// client_seq of each SEND not yet answered, oldest first.
    sent: VecDeque<u32>,
}

/// Writes the login: the connection's own channel (`uid`), and its group's if it is a
/// member.
pub fn connect(
    peer: Peer,
    state: &mut PeerState,
    uid: &str,
    group: Option<&str>,
    out: &mut BytesMut,
) {
    *state = PeerState::default();
    let channels: Vec<&str> = std::iter::once(uid).chain(group).collect();
    state.subscribing = channels.len();
    match peer {
        Peer::Ruyi => {}
        Peer::Redis => {
            command(out, &[b"HELLO", b"3"]);
            let mut args: Vec<&[u8]> = vec![b"SUBSCRIBE"];
            args.extend(channels.iter().map(|c| c.as_bytes()));
            command(out, &args);
        }
        Peer::Nats => {
            out.put_slice(b"CONNECT {\"verbose\":true,\"pedantic\":false,\"lang\":\"rust\",\"version\":\"ruyi-load\"}\r\n");
            for (sid, channel) in channels.iter().enumerate() {
                out.put_slice(format!("SUB {channel} {}\r\n", sid + 1).as_bytes());
            }
            out.put_slice(b"PING\r\n");
        }
    }
}

/// Writes a SEND of `payload` to `channel` as a publication.
pub fn publish(
    peer: Peer,
    state: &mut PeerState,
    client_seq: u32,
    channel: &str,
    payload: &[u8],
    out: &mut BytesMut,
) {
    state.sent.push_back(client_seq);
    match peer {
        Peer::Ruyi => {}
        Peer::Redis => command(out, &[b"PUBLISH", channel.as_bytes(), payload]),
        Peer::Nats => {
            out.put_slice(format!("PUB {channel} {}\r\n", payload.len()).as_bytes());
            out.put_slice(payload);
            out.put_slice(b"\r\n");
        }
    }
}

/// One RESP command: an array of bulk strings.
fn command(out: &mut BytesMut, args: &[&[u8]]) {
    out.put_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.put_slice(format!("${}\r\n", a.len()).as_bytes());
        out.put_slice(a);
        out.put_slice(b"\r\n");
    }
}

/// The next answer at the start of `input` as a packet, and the bytes it took; `None`
/// while incomplete. An answer a Ruyi client has no packet for comes back as a PONG,
/// which the workers ignore: it is consumed once, so the state it changed (a subscription
/// confirmed) is never counted twice.
pub fn next_packet(
    peer: Peer,
    state: &mut PeerState,
    input: &[u8],
) -> io::Result<Option<(Packet, usize)>> {
    let step = match peer {
        Peer::Ruyi => return Err(io::Error::other("not a peer")),
        Peer::Redis => redis_next(state, input)?,
        Peer::Nats => nats_next(state, input)?,
    };
    Ok(step.map(|(packet, used)| (packet.unwrap_or(Packet::Pong), used)))
}

/// What one parsed answer becomes: a packet or nothing, and the bytes it took.
type Step = Option<(Option<Packet>, usize)>;

fn connack() -> Packet {
    Packet::Connack(ConnackPacket {
        server_version: 5,
        reason_code: 1,
        ..ConnackPacket::default()
    })
}

fn sendack(state: &mut PeerState) -> io::Result<Packet> {
    let client_seq = state
        .sent
        .pop_front()
        .ok_or_else(|| io::Error::other("an answer with no SEND in flight"))?;
    Ok(Packet::Sendack(SendackPacket {
        flags: Flags(0),
        client_seq,
        message_id: 0,
        message_seq: 0,
        reason_code: 1,
    }))
}

fn recv(channel: &[u8], payload: Bytes) -> Packet {
    Packet::Recv(RecvPacket {
        channel_id: String::from_utf8_lossy(channel).into_owned(),
        payload,
        ..RecvPacket::default()
    })
}

/// A RESP3 value, as far as the answers to the commands above need.
enum Resp {
    /// A bulk or simple string, or a verbatim one.
    Text(Bytes),
    Int,
    /// An array, a set or a push.
    List(Vec<Resp>),
    /// A map, `HELLO`'s answer; a null; a double; anything else not needed.
    Other,
}

/// The RESP3 value at the start of `input` and its length; `None` while incomplete.
fn resp(input: &[u8]) -> io::Result<Option<(Resp, usize)>> {
    let Some(eol) = input.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    if eol == 0 {
        return Err(io::Error::other("redis sent an empty line"));
    }
    let (kind, head) = (input[0], &input[1..eol]);
    let number = || -> io::Result<i64> {
        std::str::from_utf8(head)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::other("redis sent a bad length"))
    };
    let body = eol + 2;
    Ok(match kind {
        b'+' => Some((Resp::Text(Bytes::copy_from_slice(head)), body)),
        b'-' | b'!' => {
            return Err(io::Error::other(format!(
                "redis: {}",
                String::from_utf8_lossy(head)
            )))
        }
        b':' => Some((Resp::Int, body)),
        b'$' | b'=' => {
            let n = number()?;
            if n < 0 {
                return Ok(Some((Resp::Other, body)));
            }
            let end = body + n as usize;
            if input.len() < end + 2 {
                return Ok(None);
            }
            Some((
                Resp::Text(Bytes::copy_from_slice(&input[body..end])),
                end + 2,
            ))
        }
        b'*' | b'~' | b'>' | b'%' | b'|' => {
            let n = number()?.max(0) as usize;
            let items = if matches!(kind, b'%' | b'|') {
                n * 2
            } else {
                n
            };
            let (mut at, mut list) = (body, Vec::with_capacity(items.min(16)));
            for _ in 0..items {
                match resp(&input[at..])? {
                    None => return Ok(None),
                    Some((v, used)) => {
                        list.push(v);
                        at += used;
                    }
                }
            }
            let value = if matches!(kind, b'%' | b'|') {
                Resp::Other
            } else {
                Resp::List(list)
            };
            Some((value, at))
        }
        _ => Some((Resp::Other, body)), // null, boolean, double, big number
    })
}

fn redis_next(state: &mut PeerState, input: &[u8]) -> io::Result<Step> {
    if input.is_empty() {
        return Ok(None);
    }
    let Some((value, used)) = resp(input)? else {
        return Ok(None);
    };
    let packet = match value {
        Resp::Int if state.logged_in => Some(sendack(state)?),
        Resp::List(items) => match items.as_slice() {
            [Resp::Text(kind), Resp::Text(channel), Resp::Text(payload)]
                if &kind[..] == b"message" =>
            {
                Some(recv(channel, payload.clone()))
            }
            [Resp::Text(kind), ..] if &kind[..] == b"subscribe" => {
                state.subscribing = state.subscribing.saturating_sub(1);
                (state.subscribing == 0 && !state.logged_in).then(|| {
                    state.logged_in = true;
                    connack()
                })
            }
            _ => None,
        },
        _ => None,
    };
    Ok(Some((packet, used)))
}

fn nats_next(state: &mut PeerState, input: &[u8]) -> io::Result<Step> {
    let Some(eol) = input.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let line = &input[..eol];
    let after = eol + 2;
    let packet = if line.starts_with(b"MSG ") {
        // MSG <subject> <sid> [reply-to] <#bytes>
        let words: Vec<&[u8]> = line
            .split(|&b| b == b' ')
            .filter(|w| !w.is_empty())
            .collect();
        let n: usize = words
            .last()
            .and_then(|w| std::str::from_utf8(w).ok())
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::other("nats sent a bad MSG"))?;
        if input.len() < after + n + 2 {
            return Ok(None);
        }
        let payload = Bytes::copy_from_slice(&input[after..after + n]);
        return Ok(Some((Some(recv(words[1], payload)), after + n + 2)));
    } else if line == b"+OK" {
        if state.logged_in {
            Some(sendack(state)?)
        } else {
            None // CONNECT's and each SUB's
        }
    } else if line == b"PONG" && !state.logged_in {
        state.logged_in = true;
        Some(connack())
    } else if line.starts_with(b"-ERR") {
        return Err(io::Error::other(format!(
            "nats: {}",
            String::from_utf8_lossy(line)
        )));
    } else {
        // INFO, and the server's PING: not answered, so a run must stay under the two
        // unanswered pings (two minutes apart by default) after which NATS closes a client.
        None
    };
    Ok(Some((packet, after)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(peer: Peer, state: &mut PeerState, input: &[u8]) -> Vec<Packet> {
        let mut out = Vec::new();
        let mut at = 0;
        while let Some((p, used)) = next_packet(peer, state, &input[at..]).unwrap() {
            if !matches!(p, Packet::Pong) {
                out.push(p);
            }
            at += used;
        }
        assert_eq!(at, input.len(), "everything parsed");
        out
    }

    #[test]
    fn redis_answers_become_packets() {
        let mut state = PeerState::default();
        let mut out = BytesMut::new();
        connect(Peer::Redis, &mut state, "u1", Some("g1"), &mut out);
        assert_eq!(
            &out[..],
            b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n*3\r\n$9\r\nSUBSCRIBE\r\n$2\r\nu1\r\n$2\r\ng1\r\n"
        );
        out.clear();
        publish(Peer::Redis, &mut state, 7, "g1", b"hi", &mut out);
        let input = b"%2\r\n$6\r\nserver\r\n$5\r\nredis\r\n$5\r\nproto\r\n:3\r\n\
            >3\r\n$9\r\nsubscribe\r\n$2\r\nu1\r\n:1\r\n>3\r\n$9\r\nsubscribe\r\n$2\r\ng1\r\n:2\r\n\
            >3\r\n$7\r\nmessage\r\n$2\r\ng1\r\n$2\r\nhi\r\n:1\r\n";
        let packets = all(Peer::Redis, &mut state, input);
        assert!(
            matches!(packets[0], Packet::Connack(_)),
            "one CONNACK, after both"
        );
        assert!(matches!(&packets[1], Packet::Recv(r) if &r.payload[..] == b"hi"));
        assert!(matches!(&packets[2], Packet::Sendack(a) if a.client_seq == 7));
        assert_eq!(packets.len(), 3);
        // Incomplete input waits.
        assert!(next_packet(Peer::Redis, &mut state, b">3\r\n$7\r\nmess")
            .unwrap()
            .is_none());
        assert!(next_packet(Peer::Redis, &mut state, b"\r\n").is_err());
        // A subscription confirmed in pieces counts once.
        let mut state = PeerState::default();
        connect(
            Peer::Redis,
            &mut state,
            "u1",
            Some("g1"),
            &mut BytesMut::new(),
        );
        let first = b">3\r\n$9\r\nsubscribe\r\n$2\r\nu1\r\n:1\r\n";
        let (p, used) = next_packet(Peer::Redis, &mut state, first)
            .unwrap()
            .unwrap();
        assert!(matches!(p, Packet::Pong) && used == first.len());
        let partial = b">3\r\n$9\r\nsubsc";
        assert!(next_packet(Peer::Redis, &mut state, partial)
            .unwrap()
            .is_none());
        let second = b">3\r\n$9\r\nsubscribe\r\n$2\r\ng1\r\n:2\r\n";
        let (p, _) = next_packet(Peer::Redis, &mut state, second)
            .unwrap()
            .unwrap();
        assert!(
            matches!(p, Packet::Connack(_)),
            "CONNACK after both, not before"
        );
    }

    #[test]
    fn nats_answers_become_packets() {
        let mut state = PeerState::default();
        let mut out = BytesMut::new();
        connect(Peer::Nats, &mut state, "u1", None, &mut out);
        assert!(out.ends_with(b"SUB u1 1\r\nPING\r\n"));
        publish(Peer::Nats, &mut state, 3, "u2", b"xyz", &mut out);
        let input = b"INFO {}\r\n+OK\r\n+OK\r\nPONG\r\nMSG u1 1 5\r\nhello\r\n+OK\r\n";
        let packets = all(Peer::Nats, &mut state, input);
        assert!(matches!(packets[0], Packet::Connack(_)));
        assert!(
            matches!(&packets[1], Packet::Recv(r) if &r.payload[..] == b"hello" && r.channel_id == "u1")
        );
        assert!(matches!(&packets[2], Packet::Sendack(a) if a.client_seq == 3));
        assert!(next_packet(Peer::Nats, &mut state, b"MSG u1 1 5\r\nhel")
            .unwrap()
            .is_none());
        assert!(next_packet(
            Peer::Nats,
            &mut state,
            b"-ERR 'Authorization Violation'\r\n"
        )
        .is_err());
    }
}
