//! JSON-RPC sessions (PROTOCOL.md §10.4, EASYSDK.md): the EasySDK clients' dialect on the
//! WebSocket listener, picked by a connection's first byte (`websocket.rs`). The codec is
//! `crate::jsonrpc`; here its requests run through the same session as binary packets
//! (login, SEND, RECVACK: `binary.rs`), and the packets the session answers with are
//! turned into JSON-RPC answers and notifications ([`RpcState::answer`]).
//!
//! # Invariants
//! - A SEND's request id is found again by the `client_seq` the session gave the SEND
//!   (`sends`): every SENDACK, from here or from the pools, answers exactly one request.
//! - At most [`MAX_SENDS_IN_FLIGHT`] SENDs wait for their answer; a client past it is
//!   closed (the EasySDK itself stops at 1,024).
//! - Before the login is decided nothing but the `connect` answer is sent (EASYSDK.md).

use super::session::{Flow, ImSession, Phase};
use super::{emit_slice, Gateway, Wire};
use crate::jsonrpc::{self, Next, Request};
use ruyi_proto::Packet;
use ruyi_reactor::ConnCtx;

/// SENDs of one connection waiting for their answer, at most.
pub const MAX_SENDS_IN_FLIGHT: usize = 4096;

/// What a JSON-RPC session keeps beyond the binary one.
#[derive(Debug, Default)]
pub struct RpcState {
    /// The `connect` request's id, until it is answered.
    connect_id: Option<String>,
    /// SENDs waiting for their answer: (the `client_seq` given, the request id).
    sends: Vec<(u32, String)>,
    next_seq: u32,
    /// Where the next request ends, found as its bytes arrive.
    scanner: jsonrpc::Scanner,
}

/// How a request was handled, where a binary packet's `Flow` is not enough: a close is
/// either the client's fault (1008: the EasySDK stops for good) or the server's (1001:
/// a drain, a full queue; the EasySDK reconnects).
enum Outcome {
    Flow(Flow),
    ProtocolError,
}

impl RpcState {
    /// `packet`, which the session would send a binary client, as JSON-RPC text; `None`
    /// for a packet this dialect has no word for (SUBACK, PONG).
    pub(super) fn answer(&mut self, packet: &Packet) -> Option<String> {
        match packet {
            Packet::Connack(ack) => {
                let id = self.connect_id.take()?;
                Some(jsonrpc::connect_answer(&id, ack))
            }
            Packet::Sendack(ack) => {
                let at = self
                    .sends
                    .iter()
                    .position(|(seq, _)| *seq == ack.client_seq)?;
                let (_, id) = self.sends.swap_remove(at);
                Some(jsonrpc::send_answer(&id, ack))
            }
            Packet::Disconnect(d) => Some(jsonrpc::disconnect(d.reason_code, &d.reason)),
            _ => None,
        }
    }
}

impl Gateway {
    /// Runs the JSON-RPC messages at the start of `input` (a WebSocket connection's
    /// stream) and returns the bytes consumed, as `on_im_data` does for binary frames.
    pub(super) fn on_rpc_data(
        &mut self,
        conn: &mut ConnCtx<'_>,
        s: &mut ImSession,
        input: &[u8],
    ) -> usize {
        let mut consumed = 0;
        while !conn.is_closing() {
            let rest = &input[consumed..];
            let Some(rpc) = s.rpc() else { return 0 };
            let end = match rpc.scanner.scan(rest) {
                jsonrpc::Scan::Partial { blank: true } => {
                    // Whitespace between messages: nothing to keep.
                    rpc.scanner = jsonrpc::Scanner::default();
                    consumed = input.len();
                    break;
                }
                jsonrpc::Scan::Partial { blank: false } => break,
                jsonrpc::Scan::End(end) => end,
                jsonrpc::Scan::Broken => return self.parse_error(conn, s, input.len()),
            };
            let request = match jsonrpc::next(&rest[..end]) {
                Next::Message { request, .. } => request,
                Next::Partial | Next::Broken(_) => return self.parse_error(conn, s, input.len()),
            };
            match self.on_request(conn, s, request) {
                Outcome::Flow(Flow::Next) => consumed += end,
                Outcome::Flow(Flow::Pause) => {
                    consumed += end;
                    conn.pause_reading();
                    break;
                }
                Outcome::Flow(Flow::Stall) => {
                    conn.pause_reading();
                    self.stalled.push(conn.id());
                    break;
                }
                Outcome::Flow(Flow::Close) => {
                    return close_rpc(conn, crate::ws::close_code::GOING_AWAY, input.len())
                }
                Outcome::ProtocolError => {
                    return close_rpc(conn, crate::ws::close_code::POLICY, input.len())
                }
            }
        }
        consumed
    }

    fn parse_error(&mut self, conn: &mut ConnCtx<'_>, s: &ImSession, all: usize) -> usize {
        log::debug!(
            "conn={} uid={} sent what is not JSON-RPC; closing",
            conn.id(),
            s.uid
        );
        let text = jsonrpc::error(None, -32700, "parse error");
        emit_slice(conn, Wire::WsText, text.as_bytes());
        close_rpc(conn, crate::ws::close_code::POLICY, all)
    }

    fn on_request(
        &mut self,
        conn: &mut ConnCtx<'_>,
        s: &mut ImSession,
        request: Request,
    ) -> Outcome {
        let flow = match (s.phase, request) {
            (Phase::AwaitConnect, Request::Connect { id, connect }) => {
                if let Some(rpc) = s.rpc() {
                    rpc.connect_id = Some(id);
                }
                self.on_connect(conn, s, connect)
            }
            (Phase::AwaitConnect, Request::Refused { id, code, message }) => {
                log::debug!("conn={} refused connect: {message}", conn.id());
                if let Some(id) = id {
                    let text = jsonrpc::error(Some(&id), code, &message);
                    emit_slice(conn, Wire::WsText, text.as_bytes());
                }
                return Outcome::ProtocolError;
            }
            (Phase::AwaitConnect, other) => {
                log::debug!("conn={} first request is not connect: {other:?}", conn.id());
                return Outcome::ProtocolError;
            }
            (Phase::Authenticating, _) => Flow::Stall, // Not reached: reading is paused.
            (Phase::Ready, Request::Send { id, mut send }) => {
                let Some(rpc) = s.rpc() else {
                    return Outcome::ProtocolError;
                };
                if rpc.sends.len() >= MAX_SENDS_IN_FLIGHT {
                    log::debug!(
                        "conn={} has {MAX_SENDS_IN_FLIGHT} sends unanswered; closing",
                        conn.id()
                    );
                    return Outcome::ProtocolError;
                }
                rpc.next_seq = rpc.next_seq.wrapping_add(1);
                send.client_seq = rpc.next_seq;
                rpc.sends.push((send.client_seq, id));
                let flow = self.on_send(conn, s, send);
                if matches!(flow, Flow::Stall) {
                    // Read again once the queue drains, and numbered again then.
                    if let Some(rpc) = s.rpc() {
                        rpc.sends.pop();
                    }
                }
                flow
            }
            (Phase::Ready, Request::Recvack { message_id }) => {
                self.on_recvack(s, message_id);
                Flow::Next
            }
            (Phase::Ready, Request::Ping { id }) => {
                if let Some(id) = id {
                    emit_slice(conn, Wire::WsText, jsonrpc::pong(&id).as_bytes());
                }
                Flow::Next
            }
            (Phase::Ready, Request::Connect { id, .. }) => {
                let text = jsonrpc::error(Some(&id), jsonrpc::INVALID_REQUEST, "already connected");
                emit_slice(conn, Wire::WsText, text.as_bytes());
                Flow::Next
            }
            (Phase::Ready, Request::Refused { id, code, message }) => {
                log::debug!(
                    "conn={} uid={} refused a request: {message}",
                    conn.id(),
                    s.uid
                );
                if let Some(id) = id {
                    let text = jsonrpc::error(Some(&id), code, &message);
                    emit_slice(conn, Wire::WsText, text.as_bytes());
                }
                Flow::Next
            }
        };
        Outcome::Flow(flow)
    }
}

/// Closes a JSON-RPC connection with a WebSocket close frame carrying `code` (module docs
/// of [`Outcome`]) after what is queued; returns `all`, the input taken.
fn close_rpc(conn: &mut ConnCtx<'_>, code: u16, all: usize) -> usize {
    conn.queue_slice(&crate::ws::frame(crate::ws::OP_CLOSE, &code.to_be_bytes()));
    conn.close_after_flush();
    all
}
