//! TLS on a listener ([`crate::EngineBuilder::tls`]), driven sans-io by the loop that owns
//! the connection: the socket carries records, the handler sees plaintext, and no other
//! thread or network stack takes part.
//!
//! # Reading
//! Bytes read from the socket (after a PROXY header, which comes before TLS) go into the
//! connection's `rustls::ServerConnection`; each batch of records is processed (the
//! handshake included: its key exchange and signature run here, on the loop) and the
//! plaintext it opens is offered to the handler exactly as a plain connection's bytes are.
//! A close_notify from the peer is its EOF (after the input the handler has not taken
//! yet: a paused connection serves it first, as a plain one does before its FIN). Records
//! that cannot be read (plain bytes on a TLS port, a failed handshake, a bad MAC) queue
//! an alert and close the connection as [`CloseReason::Tls`] once the alert is out; the
//! plaintext of the records before them is offered first.
//!
//! # The handshake's cost (R4, R5)
//! A ClientHello costs its sender nothing and the loop a key exchange and a signature.
//! A loop processes at most [`HANDSHAKES_PER_TURN`] handshake steps per turn; the records
//! of the others wait in their sessions (`Extra::deferred`) and the backlog pass takes
//! them up next turn. A client may send at most [`MAX_HANDSHAKE_BYTES`] before its
//! handshake completes, so a handshake that never ends holds little until the handler's
//! login deadline closes it.
//!
//! # Writing
//! Handlers queue plaintext in `outbound`, as on any connection. A flush moves it into
//! the session in the order it was queued (rustls seals it into records and holds at most
//! 64 KiB of them) and writes the records out, until the queue is empty, the socket would
//! block, or the write budget is spent.
//!
//! # Memory
//! A TLS connection is not as small as a plain one: its session keeps its state and a
//! read buffer of at least 4 KiB between reads (`scripts/bench-tls.sh` measures ~7-8 KB
//! more per held connection than plain). Written records leave the session as soon as
//! the socket takes them.
//!
//! Until the handshake completes, plaintext waits in the session (up to its limit) or in
//! `outbound`; the flush that finds nothing else to do reports the queue drained, and the
//! handshake's completion marks the connection dirty again. A connection closed before its
//! handshake completes may lose that plaintext: its peer never proved it could read it.
//!
//! # Closing
//! A graceful close ends the stream with a close_notify after the last byte of data
//! (`close.rs`), so the peer can tell the end from a cut.

use super::{live, EventLoop};
use crate::conn::Flags;
use crate::conn_id::ConnId;
use crate::handler::Handler;
use crate::outbound::{FlushOutcome, FlushStatus, Outbound};
use crate::stats::CloseReason;
use std::io::{self, IoSlice, Read, Write};

/// Plaintext taken from a session per read: one TLS record's worth.
const PLAIN_CHUNK: usize = 16 << 10;

/// Handshake steps (a ClientHello's key exchange and signature, a Finished) a loop
/// processes per turn; the rest wait in their sessions for the next turns, so a storm of
/// ClientHellos (they cost the sender nothing) delays other connections by at most this
/// many signatures per turn: ~3 ms with an ECDSA P-256 key, ~50 ms with RSA-2048.
pub(crate) const HANDSHAKES_PER_TURN: u32 = 32;

/// Bytes a client may send before its handshake completes. A real client's flight (a
/// ClientHello, post-quantum key shares included, then its Finished) is a few KiB; the
/// cap bounds what a connection that never finishes holds in its session until the
/// handler's login deadline closes it.
pub(crate) const MAX_HANDSHAKE_BYTES: u32 = 16 << 10;

/// What the session's plaintext side said.
enum Plain {
    Opened(usize),
    /// The peer's close_notify: its EOF.
    Ended,
    Empty,
    Broken(io::Error),
}

impl<H: Handler> EventLoop<H> {
    /// Processes `records` (bytes just read from `id`'s socket; none to resume a deferred
    /// handshake) and offers the plaintext they open to the handler (module docs:
    /// reading).
    pub(super) fn open_records(&mut self, id: ConnId, mut records: &[u8]) {
        let loop_index = self.core.loop_index;
        let mut plain = std::mem::take(&mut self.plain);
        if plain.is_empty() {
            plain = vec![0; PLAIN_CHUNK]; // Allocated on the first TLS connection only.
        }
        let mut failure: Option<String> = None;
        while let Some(conn) = live(&mut self.slab, loop_index, id) {
            let io = &mut conn.io;
            if io.flags.contains(Flags::CLOSING) {
                break;
            }
            let Some(extra) = io.extra.as_deref_mut() else {
                break;
            };
            let Some(tls) = extra.tls.as_mut() else { break };
            // What the records so far opened goes first, so the session's plaintext
            // buffer never fills while there are records left to read.
            let opened = match tls.reader().read(&mut plain) {
                Ok(0) => Plain::Ended,
                Ok(n) => Plain::Opened(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Plain::Empty,
                Err(e) => Plain::Broken(e),
            };
            match opened {
                Plain::Opened(n) => {
                    self.feed(id, &plain[..n]);
                    continue;
                }
                Plain::Ended => {
                    // Like a socket's EOF. A paused connection serves the input it holds
                    // first: the resume closes it (`read.rs`, the backlog pass).
                    if io.flags.contains(Flags::READ_PAUSED) {
                        extra.peer_ended = true;
                    } else {
                        log::debug!("loop={loop_index} conn={id} peer sent close_notify");
                        self.core.close_after_flush(id, io, CloseReason::PeerClosed);
                    }
                    break;
                }
                Plain::Broken(e) => {
                    // Only a socket EOF fed to the session could say this; we never feed one.
                    log::debug!("loop={loop_index} conn={id} TLS read: {e}");
                    self.core.mark_close(id, io, CloseReason::Tls);
                    break;
                }
                Plain::Empty => {}
            }
            if let Some(why) = failure.take() {
                // Every frame before the bad record was offered, as on a plain socket.
                log::debug!("loop={loop_index} conn={id} TLS: {why}; closing");
                // The alert rustls queued is the last record; no close_notify after it.
                io.flags.insert(Flags::TLS_FAILED);
                self.core.close_after_flush(id, io, CloseReason::Tls);
                break;
            }
            if records.is_empty() && !extra.deferred {
                break;
            }
            if tls.is_handshaking() {
                if self.handshakes_left == 0 {
                    // Kept in the session (within the handshake cap) for a later turn.
                    while !records.is_empty() && failure.is_none() {
                        failure = take(tls, &mut records, &mut extra.handshake_bytes).err();
                    }
                    if failure.is_none() {
                        extra.deferred = true;
                        self.core.mark_backlog(id, io);
                        break;
                    }
                    continue;
                }
                self.handshakes_left -= 1;
            }
            extra.deferred = false;
            if !records.is_empty() {
                if let Err(why) = take(tls, &mut records, &mut extra.handshake_bytes) {
                    failure = Some(why);
                    continue;
                }
            }
            if let Err(e) = tls.process_new_packets() {
                failure = Some(e.to_string());
            }
        }
        self.plain = plain;
        // Handshake messages, an alert, or plaintext the handshake's end releases.
        if let Some(conn) = live(&mut self.slab, loop_index, id) {
            if conn.io.has_output() {
                self.core.mark_dirty(id, &mut conn.io);
            }
        }
    }
}

/// One `read_tls` from the front of `records`. What it takes before the handshake has
/// completed counts against [`MAX_HANDSHAKE_BYTES`] (only what it takes: data a client
/// sends right behind its Finished is not handshake).
fn take(
    tls: &mut rustls::ServerConnection,
    records: &mut &[u8],
    handshake_bytes: &mut u32,
) -> Result<(), String> {
    let before = records.len();
    tls.read_tls(records).map_err(|e| e.to_string())?;
    if tls.is_handshaking() {
        let taken = u32::try_from(before - records.len()).unwrap_or(u32::MAX);
        *handshake_bytes = handshake_bytes.saturating_add(taken);
        if *handshake_bytes > MAX_HANDSHAKE_BYTES {
            return Err(format!(
                "more than {MAX_HANDSHAKE_BYTES} bytes of handshake"
            ));
        }
    }
    Ok(())
}

/// Writes `outbound` through `tls` to `stream` (module docs: writing), within `budget`
/// bytes of records. Counts one syscall per `write_tls`.
pub(super) fn flush(
    tls: &mut rustls::ServerConnection,
    outbound: &mut Outbound,
    stream: &mut mio::net::TcpStream,
    budget: usize,
) -> FlushOutcome {
    let mut out = FlushOutcome {
        written: 0,
        status: FlushStatus::Drained,
        syscalls: 0,
    };
    loop {
        while tls.wants_write() {
            out.syscalls += 1;
            match tls.write_tls(stream) {
                Ok(0) => {
                    out.status = FlushStatus::Failed(io::ErrorKind::WriteZero.into());
                    return out;
                }
                Ok(n) => out.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    out.status = FlushStatus::WouldBlock;
                    return out;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    out.status = FlushStatus::Failed(e);
                    return out;
                }
            }
        }
        if outbound.is_empty() {
            return out;
        }
        if out.written >= budget {
            out.status = FlushStatus::BudgetSpent;
            return out;
        }
        let sealed = outbound.flush_to(&mut Seal(tls), budget - out.written);
        if let FlushStatus::Failed(e) = sealed.status {
            out.status = FlushStatus::Failed(e);
            return out;
        }
        if sealed.written == 0 && !tls.wants_write() {
            // The handshake is not done and the session holds all it takes until it is
            // (module docs); the queue stays and the handshake's end marks it dirty.
            return out;
        }
    }
}

/// `io::Write` into a session's plaintext side. A full session says `WouldBlock` (rustls
/// says `Ok(0)`), so `Outbound::flush_to` stops there and keeps the rest queued.
struct Seal<'a>(&'a mut rustls::ServerConnection);

impl Write for Seal<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self.0.writer().write_vectored(bufs)? {
            0 if bufs.iter().any(|b| !b.is_empty()) => Err(io::ErrorKind::WouldBlock.into()),
            n => Ok(n),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
