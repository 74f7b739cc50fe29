//! WebSocket (RFC 6455) for the binary protocol, on the same engine: the HTTP upgrade,
//! then client frames (masked, possibly fragmented, with ping/pong/close control frames)
//! whose data payloads form one byte stream of protocol frames (PROTOCOL.md §10.2).
//!
//! Sans-io: [`parse_handshake`] and [`Decoder`] turn bytes into events, [`frame_header`]
//! writes a server frame header. The gateway owns the socket side.
//!
//! Outbound, every protocol packet travels in **one binary message** of its own: the
//! official JS SDK's splitter breaks on a message holding several packets (JSSDK.md §6).
//! Several messages may still leave in one `writev`.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use sha1::{Digest, Sha1};

/// RFC 6455 §1.3: appended to the client's key before hashing.
const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Largest request head accepted for the upgrade.
pub const MAX_HANDSHAKE_BYTES: usize = 16 << 10;

/// Opcodes (RFC 6455 §5.2).
pub const OP_CONTINUATION: u8 = 0x0;
/// Text frame.
pub const OP_TEXT: u8 = 0x1;
/// Binary frame.
pub const OP_BINARY: u8 = 0x2;
/// Close.
pub const OP_CLOSE: u8 = 0x8;
/// Ping.
pub const OP_PING: u8 = 0x9;
/// Pong.
pub const OP_PONG: u8 = 0xA;

/// Close codes we send.
pub mod close_code {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// Going away: the server is stopping.
    pub const GOING_AWAY: u16 = 1001;
    /// Protocol error (unmasked frame, bad opcode, bad fragmentation).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// Policy violation: a JSON-RPC client that broke the protocol (the EasySDK does not
    /// reconnect after it).
    pub const POLICY: u16 = 1008;
    /// Message too big.
    pub const TOO_BIG: u16 = 1009;
}

/// The result of reading an upgrade request.
#[derive(Debug, PartialEq, Eq)]
pub enum Handshake {
    /// More bytes needed.
    Partial,
    /// A valid upgrade: the 101 response to send, and the head's length.
    Accept {
        /// The complete `101 Switching Protocols` response.
        response: String,
        /// Bytes of the request head.
        consumed: usize,
        /// The client a trusted proxy named in `X-Forwarded-For` or `X-Real-Ip`
        /// (`forwarded.rs`); read only when the caller passed the trust to read it by.
        client: Option<std::net::IpAddr>,
    },
    /// Not a WebSocket upgrade: the HTTP status and reason to answer before closing.
    Reject(u16, &'static str),
}

/// Reads the HTTP upgrade request (the path is not checked, as in WuKongIM). `proxy`: the
/// connection's peer is a trusted proxy, and these are the ranges trusted and the header
/// that names the client (`forwarded.rs`).
pub fn parse_handshake(
    input: &[u8],
    proxy: Option<(&ruyi_reactor::ProxyTrust, crate::forwarded::ClientHeader)>,
) -> Handshake {
    let mut headers = [httparse::EMPTY_HEADER; 48];
    let mut req = httparse::Request::new(&mut headers);
    let consumed = match req.parse(input) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if input.len() > MAX_HANDSHAKE_BYTES => {
            return Handshake::Reject(431, "request head too large")
        }
        Ok(httparse::Status::Partial) => return Handshake::Partial,
        Err(_) => return Handshake::Reject(400, "malformed upgrade request"),
    };
    if req.method != Some("GET") {
        return Handshake::Reject(405, "WebSocket upgrades use GET");
    }
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::trim)
    };
    let has_token = |name: &str, token: &str| {
        header(name).is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if !has_token("upgrade", "websocket") || !has_token("connection", "upgrade") {
        return Handshake::Reject(400, "not a WebSocket upgrade");
    }
    if header("sec-websocket-version") != Some("13") {
        return Handshake::Reject(426, "WebSocket version 13 required");
    }
    let Some(key) = header("sec-websocket-key").filter(|k| !k.is_empty()) else {
        return Handshake::Reject(400, "missing Sec-WebSocket-Key");
    };
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        accept_key(key)
    );
    let client =
        proxy.and_then(|(trust, which)| crate::forwarded::client(req.headers, which, trust));
    Handshake::Accept {
        response,
        consumed,
        client,
    }
}

/// `base64(SHA-1(key ++ GUID))` (RFC 6455 §4.2.2).
pub fn accept_key(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(ACCEPT_GUID.as_bytes());
    BASE64.encode(h.finalize())
}

/// A plain HTTP error response for a refused upgrade.
pub fn reject_response(status: u16, reason: &str) -> String {
    format!("HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
}

/// Writes a server (unmasked, FIN) frame header for `len` payload bytes into `out`;
/// returns its length (2, 4 or 10).
pub fn frame_header(opcode: u8, len: usize, out: &mut [u8; 10]) -> usize {
    out[0] = 0x80 | opcode;
    if len < 126 {
        out[1] = len as u8;
        2
    } else if len <= u16::MAX as usize {
        out[1] = 126;
        out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

/// A whole server frame (header and payload), for control frames.
pub fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut header = [0u8; 10];
    let n = frame_header(opcode, payload.len(), &mut header);
    let mut out = Vec::with_capacity(n + payload.len());
    out.extend_from_slice(&header[..n]);
    out.extend_from_slice(payload);
    out
}

/// What one client frame means to the server.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// Data bytes (binary or text, any fragment): append to the protocol stream.
    Data(Vec<u8>),
    /// A ping: answer with a pong carrying this payload.
    Ping(Vec<u8>),
    /// A pong: nothing to do (it counts as activity).
    Pong,
    /// The client is closing, with its close code (if any).
    Close(Option<u16>),
}

/// Why a frame was refused; the connection is closed with the code.
#[derive(Debug, PartialEq, Eq)]
pub struct FrameError {
    /// The close code to send.
    pub code: u16,
    /// For logs.
    pub why: &'static str,
}

/// Client-frame decoder for one connection: tracks fragmentation and enforces limits.
#[derive(Debug, Default)]
pub struct Decoder {
    /// Inside a fragmented data message.
    in_message: bool,
    /// Bytes of the current fragmented message so far.
    message_bytes: usize,
}

impl Decoder {
    /// Decodes the first frame of `input`: `Ok(None)` when incomplete, else the event and
    /// the bytes used. `max_message` bounds a data message (all its fragments) and is
    /// checked from the header, before the payload is buffered.
    ///
    /// # Errors
    /// A [`FrameError`] for an unmasked frame, a reserved bit or opcode, a control frame
    /// that is fragmented or longer than 125 bytes, broken fragmentation, or a message
    /// over `max_message`.
    pub fn decode(
        &mut self,
        input: &[u8],
        max_message: usize,
    ) -> Result<Option<(Event, usize)>, FrameError> {
        let protocol = |why| FrameError {
            code: close_code::PROTOCOL_ERROR,
            why,
        };
        if input.len() < 2 {
            return Ok(None);
        }
        let (b0, b1) = (input[0], input[1]);
        let fin = b0 & 0x80 != 0;
        if b0 & 0x70 != 0 {
            return Err(protocol("reserved bits set"));
        }
        let opcode = b0 & 0x0F;
        if b1 & 0x80 == 0 {
            return Err(protocol("client frames must be masked"));
        }
        let (len, mut at) = match b1 & 0x7F {
            126 => {
                let Some(b) = input.get(2..4) else {
                    return Ok(None);
                };
                (u64::from(u16::from_be_bytes([b[0], b[1]])), 4)
            }
            127 => {
                let Some(b) = input.get(2..10) else {
                    return Ok(None);
                };
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                (u64::from_be_bytes(a), 10)
            }
            n => (u64::from(n), 2),
        };
        let is_control = opcode & 0x08 != 0;
        if is_control && (!fin || len > 125) {
            return Err(protocol("control frames are short and unfragmented"));
        }
        if len >> 63 != 0 {
            return Err(protocol("64-bit length with the top bit set")); // RFC 6455 §5.2
        }
        if !is_control {
            let total = (self.message_bytes as u64).saturating_add(len);
            if total > max_message as u64 {
                return Err(FrameError {
                    code: close_code::TOO_BIG,
                    why: "message too big",
                });
            }
        }
        let Some(mask) = input.get(at..at + 4) else {
            return Ok(None);
        };
        let mask = [mask[0], mask[1], mask[2], mask[3]];
        at += 4;
        let len = len as usize; // ≤ max_message or ≤ 125: fits.
        let Some(payload) = input.get(at..at + len) else {
            return Ok(None);
        };
        let data: Vec<u8> = payload
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect();
        let used = at + len;
        let event = match opcode {
            OP_CONTINUATION => {
                if !self.in_message {
                    return Err(protocol("continuation without a message"));
                }
                self.advance(fin, len);
                Event::Data(data)
            }
            OP_TEXT | OP_BINARY => {
                if self.in_message {
                    return Err(protocol("new message inside a fragmented one"));
                }
                self.in_message = true;
                self.advance(fin, len);
                Event::Data(data)
            }
            OP_PING => Event::Ping(data),
            OP_PONG => Event::Pong,
            OP_CLOSE => {
                Event::Close((data.len() >= 2).then(|| u16::from_be_bytes([data[0], data[1]])))
            }
            _ => return Err(protocol("unknown opcode")),
        };
        Ok(Some((event, used)))
    }

    fn advance(&mut self, fin: bool, len: usize) {
        if fin {
            self.in_message = false;
            self.message_bytes = 0;
        } else {
            self.message_bytes += len;
        }
    }
}

/// Masks a client frame (for tests and the load tool): FIN, `opcode`, the given mask.
pub fn client_frame(opcode: u8, fin: bool, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= u16::MAX as usize => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rfc_accept_key() {
        // RFC 6455 §1.3.
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn a_valid_upgrade_is_accepted_and_others_refused() {
        let req = b"GET /anything HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
        match parse_handshake(req, None) {
            Handshake::Accept {
                response, consumed, ..
            } => {
                assert_eq!(consumed, req.len());
                assert!(response.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(parse_handshake(&req[..20], None), Handshake::Partial);
        assert!(matches!(
            parse_handshake(b"GET / HTTP/1.1\r\n\r\n", None),
            Handshake::Reject(400, _)
        ));
    }

    #[test]
    fn fragments_pings_and_close() {
        let mut d = Decoder::default();
        let mut stream = client_frame(OP_BINARY, false, b"he", [1, 2, 3, 4]);
        stream.extend(client_frame(OP_PING, true, b"p", [9, 9, 9, 9]));
        stream.extend(client_frame(OP_CONTINUATION, true, b"llo", [5, 6, 7, 8]));
        stream.extend(client_frame(
            OP_CLOSE,
            true,
            &1000u16.to_be_bytes(),
            [0, 0, 0, 1],
        ));
        let mut events = Vec::new();
        let mut rest = &stream[..];
        while let Some((e, used)) = d.decode(rest, 1 << 20).unwrap() {
            events.push(e);
            rest = &rest[used..];
        }
        assert_eq!(
            events,
            [
                Event::Data(b"he".to_vec()),
                Event::Ping(b"p".to_vec()),
                Event::Data(b"llo".to_vec()),
                Event::Close(Some(1000))
            ]
        );
    }

    #[test]
    fn violations_are_refused_before_buffering() {
        let mut d = Decoder::default();
        let unmasked = [0x82u8, 0x01, 0x00];
        assert_eq!(
            d.decode(&unmasked, 100).unwrap_err().code,
            close_code::PROTOCOL_ERROR
        );
        // A header claiming 1 GiB: refused from the first 10 bytes.
        let mut huge = vec![0x82u8, 0x80 | 127];
        huge.extend_from_slice(&(1u64 << 30).to_be_bytes());
        assert_eq!(
            Decoder::default().decode(&huge, 1 << 20).unwrap_err().code,
            close_code::TOO_BIG
        );
        let bad_cont = client_frame(OP_CONTINUATION, true, b"x", [0; 4]);
        assert!(Decoder::default().decode(&bad_cont, 100).is_err());
    }

    #[test]
    fn a_continuation_claiming_almost_2_64_bytes_is_refused() {
        let mut d = Decoder::default();
        let first = client_frame(OP_BINARY, false, b"ab", [1, 2, 3, 4]);
        let (_, used) = d.decode(&first, 1 << 20).unwrap().unwrap();
        assert_eq!(used, first.len());
        let mut evil = vec![OP_CONTINUATION, 0x80 | 127];
        evil.extend_from_slice(&0x7FFF_FFFF_FFFF_FFF0u64.to_be_bytes());
        assert_eq!(
            d.decode(&evil, 1 << 20).unwrap_err().code,
            close_code::TOO_BIG
        );
        let mut top_bit = vec![OP_BINARY | 0x80, 0x80 | 127];
        top_bit.extend_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(
            Decoder::default()
                .decode(&top_bit, 1 << 20)
                .unwrap_err()
                .code,
            close_code::PROTOCOL_ERROR
        );
    }

    #[test]
    fn server_headers_use_the_shortest_length() {
        let mut h = [0u8; 10];
        assert_eq!(frame_header(OP_BINARY, 125, &mut h), 2);
        assert_eq!(frame_header(OP_BINARY, 126, &mut h), 4);
        assert_eq!(frame_header(OP_BINARY, 70_000, &mut h), 10);
        assert_eq!(h[0], 0x82);
    }
}
