//! Closing: `reap` removes the connections marked for close this turn, and shutdown closes
//! the rest.
//!
//! # How a close ends on the wire
//! - **Graceful** (the peer closed, the handler, another thread, the idle timer, a
//!   shutdown): one last non-blocking write of what is queued (`last_words`). If it all
//!   went out: `shutdown(Write)` (a FIN after the last byte) and a bounded read to drain
//!   input, so the close does not become a reset that destroys the last frame before the
//!   peer reads it.
//! - **Output left unwritten** after that last write, or dropped by the slow-consumer cap:
//!   a reset (linger 0), never a FIN. A FIN would tell the peer the stream ended cleanly
//!   when its end is missing; a reset says it did not (counted in `unwritten_resets`).
//! - **A hard stop**: no last write; a reset if output is left, else a plain close.
//! - **An I/O error or input overflow**: the socket is dropped as it is.

use super::{live, EventLoop};
use crate::config::EngineConfig;
use crate::conn::{ConnIo, Flags};
use crate::conn_id::ConnId;
use crate::core::Core;
use crate::handler::Handler;
use crate::inbox::Command;
use crate::stats::{CloseReason, LoopStats};
use std::io::Read;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Bytes we read and discard from a socket we are about to close gracefully. Closing a
/// socket with unread input makes the kernel send RST, which can destroy the last frame we
/// wrote (a refusal CONNACK, say) before the peer reads it.
const DISCARD_ON_CLOSE_BYTES: usize = 64 << 10;

impl<H: Handler> EventLoop<H> {
    /// Removes connections marked for close: the close on the wire (module docs),
    /// deregister, the counts, and `Handler::on_close` with the state.
    pub(super) fn reap(&mut self) {
        while let Some((id, reason)) = self.core.closing.pop() {
            if live(&mut self.slab, self.core.loop_index, id).is_none() {
                continue;
            }
            let mut conn = self.slab.remove(id.slot());
            match reason {
                CloseReason::Io(_) | CloseReason::InputOverflow => {}
                CloseReason::SlowConsumer => reset(&mut self.core, &mut conn.io),
                // A hard stop writes nothing more; a cut stream still ends in a reset.
                CloseReason::Shutdown if self.hard_stop() => {
                    if conn.io.has_output() {
                        reset(&mut self.core, &mut conn.io);
                    }
                }
                _ => last_words(&mut self.core, &self.config, id, &mut conn.io),
            }
            if let Err(e) = self.poll.registry().deregister(&mut conn.io.stream) {
                log::debug!("loop={} conn={id} deregister: {e}", self.core.loop_index);
            }
            // Counted before the socket closes: whoever sees the close also sees the count.
            let stats = &self.core.shared.stats;
            LoopStats::add(&stats.closed[reason.index()], 1);
            drop(conn.io); // The socket, and its admission: the global counts drop here.
            stats.connections.fetch_sub(1, Ordering::Relaxed);
            log::debug!(
                "loop={} conn={id} closed: {}",
                self.core.loop_index,
                reason.name()
            );
            self.handler.on_close(id, conn.state, reason);
        }
    }

    pub(super) fn close_all(&mut self) {
        let ids: Vec<ConnId> = self
            .slab
            .iter()
            .map(|(slot, c)| ConnId::new(self.core.loop_index, slot, c.io.generation))
            .collect();
        for id in ids {
            if let Some(conn) = live(&mut self.slab, self.core.loop_index, id) {
                self.core
                    .mark_close(id, &mut conn.io, CloseReason::Shutdown);
            }
        }
        self.reap();
    }

    /// Sockets handed over but never registered are dropped with their admissions, and
    /// the inbox is drained for the last time: handler messages still go to the handler,
    /// which finds their connections gone and can account for them (a delivery that
    /// missed); frames and closes have nothing left to act on.
    pub(super) fn drop_undelivered(&mut self) {
        self.last_drain(true);
    }

    /// Ends the inbox (module docs of `loop_shared.rs`: no command is left in a dead loop's
    /// inbox). Marks the loop gone, so new pushes fail and hand their command back, then
    /// drains until the inbox is empty and no sender is inside a push. With `to_handler`
    /// false (a loop unwinding from a panic: its handler may be broken) messages are
    /// dropped rather than handed over. Sockets drop with their admissions either way.
    pub(super) fn last_drain(&mut self, to_handler: bool) {
        if self.drained {
            return;
        }
        let shared = std::sync::Arc::clone(&self.core.shared);
        shared.mark_gone();
        for _ in self.pending_accepts.drain(..) {
            shared.stats.pending_sockets.fetch_sub(1, Ordering::Relaxed);
        }
        loop {
            while let Ok(cmd) = self.rx.try_recv() {
                shared.drained_bytes(cmd.frame_bytes());
                match cmd {
                    Command::Register { .. } => {
                        shared.stats.pending_sockets.fetch_sub(1, Ordering::Relaxed);
                    }
                    Command::Message(_) | Command::Messages(_) if to_handler => {
                        self.handle_command(cmd)
                    }
                    _ => {}
                }
            }
            if !shared.senders_inside() && self.rx.is_empty() {
                break;
            }
            std::thread::yield_now(); // A sender is between its check and its send.
        }
        // Only now: a handler that panics above leaves this unset, and `Drop` drains the
        // rest without it.
        self.drained = true;
    }
}

/// The last, non-blocking attempt to write what is queued before a graceful close; then a
/// FIN and a bounded read when it all went out, or a reset when it did not (module docs).
fn last_words(core: &mut Core, config: &EngineConfig, id: ConnId, io: &mut ConnIo) {
    // Try even if the last write hit WouldBlock: the buffer may have drained since, and a
    // write that would block just returns WouldBlock.
    io.flags.insert(Flags::WRITABLE);
    super::write::flush_conn(core, config, id, io);
    // A TLS stream ends with a close_notify after the last of its data, so the peer can
    // tell the end from a cut (`tls.rs`).
    if !io.has_output() && !io.flags.contains(Flags::TLS_FAILED) {
        if let Some(tls) = io.tls() {
            tls.send_close_notify();
            super::write::flush_conn(core, config, id, io);
        }
    }
    // The flush may have hit a cap and thrown the rest away: that is unwritten too.
    if io.has_output() || io.flags.contains(Flags::OUTPUT_DROPPED) {
        log::debug!(
            "loop={} conn={id} closing with {} bytes unwritten: reset",
            core.loop_index,
            io.outbound.queued_bytes()
        );
        reset(core, io);
        return;
    }
    let _ = io.stream.shutdown(std::net::Shutdown::Write);
    let mut sink = [0u8; 4096];
    let mut discarded = 0;
    while discarded < DISCARD_ON_CLOSE_BYTES {
        match io.stream.read(&mut sink) {
            Ok(n) if n > 0 => discarded += n,
            _ => break,
        }
    }
}

/// Makes the coming close a reset: the peer must not take a cut stream for a whole one.
fn reset(core: &mut Core, io: &mut ConnIo) {
    LoopStats::add(&core.shared.stats.unwritten_resets, 1);
    if let Err(e) = socket2::SockRef::from(&io.stream).set_linger(Some(Duration::ZERO)) {
        log::debug!("loop={} set SO_LINGER: {e}", core.loop_index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::testing::core_and_conn;

    #[test]
    fn a_last_write_that_hits_the_soft_cap_still_ends_in_a_reset() {
        let (mut core, mut io, mut client) = core_and_conn(); // soft cap 1 KiB
        let id = ConnId::new(0, 0, 1);
        // Far more than the socket buffers take, above the soft cap since tick 1, and the
        // window long gone: the last write's cap check throws the rest away.
        io.outbound.queue(bytes::Bytes::from(vec![9u8; 16 << 20]));
        io.soft_since_tick = 1;
        core.now_tick = 1_000_000;
        core.mark_close(id, &mut io, CloseReason::IdleTimeout);
        last_words(&mut core, &EngineConfig::default(), id, &mut io);
        assert!(io.outbound.is_empty(), "the cap did not apply");
        assert_eq!(
            core.shared.stats.unwritten_resets.load(Ordering::Relaxed),
            1
        );
        drop(io);
        let mut buf = vec![0u8; 1 << 20];
        let end = loop {
            match client.read(&mut buf) {
                Ok(0) => break None,
                Ok(_) => continue,
                Err(e) => break Some(e.kind()),
            }
        };
        assert_eq!(
            end,
            Some(std::io::ErrorKind::ConnectionReset),
            "a cut stream ended cleanly"
        );
    }
}
