//! WebSocket connections: the upgrade, then client frames, whose data payloads form one
//! byte stream the binary-protocol path reads as it reads TCP (PROTOCOL.md §10.2).

use super::session::{ImSession, Phase};
use super::Gateway;
use crate::ws;
use ruyi_reactor::ConnCtx;

impl Gateway {
    /// WebSocket input: the upgrade, then client frames; data payloads join the protocol
    /// stream, which the binary-protocol path consumes as from TCP.
    pub(super) fn on_ws_data(
        &mut self,
        conn: &mut ConnCtx<'_>,
        s: &mut ImSession,
        input: &[u8],
    ) -> usize {
        let Some(state) = s.ws.as_mut() else { return 0 };
        let mut consumed = 0;
        if !state.open {
            // A trusted proxy (or a chain of them, the last one named by a PROXY header)
            // may say whom it relays (`forwarded.rs`).
            let proxy = conn.via_trusted_proxy()
                && conn.peer_addr().is_ok_and(|a| self.proxies.trusts(a.ip()));
            let proxy = proxy.then_some((&self.proxies, self.client_header));
            match ws::parse_handshake(input, proxy) {
                ws::Handshake::Partial => return 0,
                ws::Handshake::Reject(status, why) => {
                    log::debug!("conn={} refused WebSocket upgrade: {why}", conn.id());
                    conn.queue_slice(ws::reject_response(status, why).as_bytes());
                    conn.close();
                    return input.len();
                }
                ws::Handshake::Accept {
                    response,
                    consumed: head,
                    client,
                } => {
                    let named = client.map(|ip| std::net::SocketAddr::new(ip, 0));
                    if named.is_some_and(|a| !conn.set_client_addr(a)) {
                        // Its client is at the per-IP limit: the engine is closing it.
                        return input.len();
                    }
                    conn.queue_slice(response.as_bytes());
                    state.open = true;
                    consumed = head;
                }
            }
        }
        // One maximal protocol frame plus its header may span several messages.
        let limit = self.frame_limit(s);
        let max_message = limit + 8;
        let Some(state) = s.ws.as_mut() else { return 0 };
        while consumed < input.len() {
            match state.decoder.decode(&input[consumed..], max_message) {
                Ok(None) => break,
                Err(e) => {
                    log::debug!("conn={} WebSocket protocol error: {}", conn.id(), e.why);
                    conn.queue_slice(&ws::frame(ws::OP_CLOSE, &e.code.to_be_bytes()));
                    conn.close();
                    return input.len();
                }
                Ok(Some((event, used))) => {
                    consumed += used;
                    match event {
                        ws::Event::Data(bytes) => state.stream.extend_from_slice(&bytes),
                        // Before login a ping gets no pong: a client that never reads
                        // could otherwise pile up output the pre-login budget does not see.
                        ws::Event::Ping(payload) if s.phase == Phase::Ready => {
                            conn.queue_slice(&ws::frame(ws::OP_PONG, &payload))
                        }
                        ws::Event::Ping(_) => {}
                        ws::Event::Pong => {}
                        ws::Event::Close(_) => {
                            // Packets that arrived before the close frame still count
                            // (a SEND then close() in one burst), as with TCP and FIN.
                            self.drain_ws_stream(conn, s);
                            conn.queue_slice(&ws::frame(
                                ws::OP_CLOSE,
                                &ws::close_code::NORMAL.to_be_bytes(),
                            ));
                            conn.close();
                            return input.len();
                        }
                    }
                }
            }
        }
        if state.stream.len() > limit + limit.min(64 << 10) {
            // The protocol side is paused (login, backpressure) and the client keeps
            // sending: same bound as the engine's input cap.
            conn.close();
            return input.len();
        }
        self.drain_ws_stream(conn, s);
        consumed
    }

    /// Runs the protocol stream of a WebSocket connection through the binary-protocol
    /// path. Called on new input and after the session resumes (login done, backpressure
    /// over), because the engine only re-offers raw socket bytes, not this stream.
    pub(super) fn drain_ws_stream(&mut self, conn: &mut ConnCtx<'_>, s: &mut ImSession) {
        let Some(mut stream) = s.ws.as_mut().map(|w| std::mem::take(&mut w.stream)) else {
            return;
        };
        if s.phase == Phase::AwaitConnect {
            // The dialect, from the first byte that is not whitespace (PROTOCOL.md §10.4).
            let first = stream.iter().find(|b| !b.is_ascii_whitespace());
            if let (Some(&b), Some(w)) = (first, s.ws.as_mut()) {
                if self.shared.config.jsonrpc && crate::jsonrpc::starts(b) && w.rpc.is_none() {
                    w.rpc = Some(Box::default());
                }
            }
        }
        if !stream.is_empty() && !conn.is_reading_paused() {
            let used = if s.ws.as_ref().is_some_and(|w| w.rpc.is_some()) {
                self.on_rpc_data(conn, s, &stream)
            } else {
                self.on_im_data(conn, s, &stream)
            };
            stream.drain(..used);
        }
        if stream.is_empty() {
            stream = Vec::new(); // An idle connection keeps no input buffer.
        } else if stream.capacity() > 4 * stream.len() && stream.capacity() > 4096 {
            stream.shrink_to_fit();
        }
        if let Some(w) = s.ws.as_mut() {
            w.stream = stream;
        }
    }
}
