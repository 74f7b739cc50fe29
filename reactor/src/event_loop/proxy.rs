//! The first bytes of a connection on a PROXY listener (`crate::proxy`): a header from a
//! trusted proxy is taken off the stream and names the client; one from anywhere else, or
//! one that cannot be read, closes the connection. Runs before the handler sees a byte.

use super::{live, EventLoop};
use crate::conn::Flags;
use crate::conn_id::ConnId;
use crate::handler::Handler;
use crate::proxy::{inspect, signed, Header};
use crate::stats::CloseReason;

impl<H: Handler> EventLoop<H> {
    /// Reads the PROXY header at the start of `id`'s buffered input, if there is one.
    /// True when the input that is left goes to the handler now; false while more bytes
    /// are needed to tell, or once the connection is closing.
    pub(super) fn take_proxy_header(&mut self, id: ConnId) -> bool {
        let loop_index = self.core.loop_index;
        let Some(conn) = live(&mut self.slab, loop_index, id) else {
            return false;
        };
        let io = &mut conn.io;
        let trusted = io.flags.contains(Flags::VIA_PROXY);
        if !trusted && signed(&io.input) {
            log::debug!(
                "loop={loop_index} conn={id} sent a PROXY header from an untrusted source; closing"
            );
            self.core.mark_close(id, io, CloseReason::ProxyHeader);
            return false;
        }
        let (len, client) = match inspect(&io.input) {
            Header::Absent if io.flags.contains(Flags::PROXY_REQUIRED) => {
                log::debug!(
                    "loop={loop_index} conn={id} came from a proxy that must send a PROXY header and sent none; closing"
                );
                self.core.mark_close(id, io, CloseReason::ProxyHeader);
                return false;
            }
            Header::Absent => {
                io.flags.remove(Flags::PROXY_CHECK);
                return true;
            }
            Header::Partial => return false,
            Header::Invalid(why) => {
                log::debug!("loop={loop_index} conn={id} {why}; closing");
                self.core.mark_close(id, io, CloseReason::ProxyHeader);
                return false;
            }
            Header::Complete { len, client } => (len, client),
        };
        io.flags.remove(Flags::PROXY_CHECK);
        io.input.drain(..len);
        if io.input.is_empty() {
            io.input = Vec::new(); // An idle connection holds no input memory.
        }
        let Some(client) = client else {
            return true; // LOCAL or UNKNOWN: the proxy speaks for itself.
        };
        if !io.admission.readmit(client.ip()) {
            io.admission.count_refusal();
            log::debug!(
                "loop={loop_index} conn={id} client {client} is at max_connections_per_ip; closing"
            );
            self.core.mark_close(id, io, CloseReason::OverIpLimit);
            return false;
        }
        log::trace!("loop={loop_index} conn={id} is client {client} via a proxy");
        io.set_client(client);
        true
    }
}
