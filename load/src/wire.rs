//! How protocol packets travel: straight over TCP, or inside WebSocket binary messages as
//! the JS SDK sends them (PROTOCOL.md §10: client frames masked, one packet or more per
//! message; the server sends one packet per message, unmasked).
//!
//! Sans-io: `wrap` appends to the output buffer, `unwrap` moves received protocol bytes
//! from the raw input into the packet stream.

use bytes::{BufMut, BytesMut};
use std::io::{self, Read, Write};
use std::net::SocketAddr;

/// A fixed key, as the WebSocket handshake only checks its echo (RFC 6455 §4.1).
const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// The framing of one connection.
#[derive(Debug)]
pub enum Framing {
    Tcp,
    Ws {
        /// The server's `101 Switching Protocols` has been read.
        upgraded: bool,
        /// Mask for our frames; any value works, the server only has to unmask.
        mask: [u8; 4],
    },
}

impl Framing {
    /// The framing for `--ws` or plain TCP.
    pub fn new(ws: bool, seed: u32) -> Framing {
        if ws {
            Framing::Ws {
                upgraded: false,
                mask: seed.to_be_bytes(),
            }
        } else {
            Framing::Tcp
        }
    }

    /// Bytes to send before the first packet (the upgrade request on WebSocket).
    pub fn start(&self, server: SocketAddr, out: &mut BytesMut) {
        if let Framing::Ws { .. } = self {
            out.put_slice(
                format!(
                    "GET / HTTP/1.1\r\nHost: {server}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                )
                .as_bytes(),
            );
        }
    }

    /// Appends the encoded packet bytes `packet` to `out`, framed.
    pub fn wrap(&self, packet: &[u8], out: &mut BytesMut) {
        self.wrap_as(0x2, packet, out);
    }

    /// Appends `text` (a JSON-RPC request) to `out` as one text message.
    pub fn wrap_text(&self, text: &[u8], out: &mut BytesMut) {
        self.wrap_as(0x1, text, out);
    }

    fn wrap_as(&self, opcode: u8, packet: &[u8], out: &mut BytesMut) {
        let Framing::Ws { mask, .. } = self else {
            out.put_slice(packet);
            return;
        };
        out.put_u8(0x80 | opcode); // FIN + the opcode
        let len = packet.len();
        if len < 126 {
            out.put_u8(0x80 | len as u8);
        } else if len <= usize::from(u16::MAX) {
            out.put_u8(0x80 | 126);
            out.put_u16(len as u16);
        } else {
            out.put_u8(0x80 | 127);
            out.put_u64(len as u64);
        }
        out.put_slice(mask);
        out.extend(packet.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    }

    /// Moves the protocol bytes of whole frames from `raw` (bytes read from the socket)
    /// to `stream`, leaving any incomplete frame in `raw`.
    pub fn unwrap(&mut self, raw: &mut Vec<u8>, stream: &mut Vec<u8>) -> io::Result<()> {
        let Framing::Ws { upgraded, .. } = self else {
            stream.append(raw);
            return Ok(());
        };
        let mut at = 0;
        if !*upgraded {
            let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
                return Ok(());
            };
            if !raw.starts_with(b"HTTP/1.1 101") {
                let line = String::from_utf8_lossy(&raw[..end]);
                return Err(io::Error::other(format!(
                    "WebSocket upgrade refused: {line}"
                )));
            }
            *upgraded = true;
            at = end + 4;
        }
        while let Some((opcode, payload, used)) = frame_at(&raw[at..])? {
            match opcode {
                // Text: JSON-RPC (`--jsonrpc`); a binary-protocol server never sends it.
                0x0..=0x2 => stream.extend_from_slice(payload),
                0x8 => return Err(io::Error::other("WebSocket closed by the server")),
                _ => {} // ping/pong: not part of the packet stream
            }
            at += used;
        }
        raw.drain(..at);
        Ok(())
    }
}

/// The server frame at the start of `b`: (opcode, payload, bytes used), or `None` if
/// incomplete. Server frames are never masked.
fn frame_at(b: &[u8]) -> io::Result<Option<(u8, &[u8], usize)>> {
    if b.len() < 2 {
        return Ok(None);
    }
    if b[1] & 0x80 != 0 {
        return Err(io::Error::other("the server sent a masked frame"));
    }
    let (len, head) = match b[1] & 0x7F {
        126 if b.len() >= 4 => (usize::from(u16::from_be_bytes([b[2], b[3]])), 4),
        127 if b.len() >= 10 => {
            let mut n = [0u8; 8];
            n.copy_from_slice(&b[2..10]);
            (
                usize::try_from(u64::from_be_bytes(n)).map_err(io::Error::other)?,
                10,
            )
        }
        126 | 127 => return Ok(None),
        n => (usize::from(n), 2),
    };
    if b.len() < head + len {
        return Ok(None);
    }
    Ok(Some((b[0] & 0x0F, &b[head..head + len], head + len)))
}

/// Writes what `output` holds until the socket would block; what is written leaves the
/// buffer. A socket still connecting (`NotConnected`) is not an error: it is written when
/// it reports writable. Then flushes: a TLS stream (`transport.rs`) pushes the records a
/// full socket held back, even when `output` was empty.
pub fn write_pending(stream: &mut impl Write, output: &mut BytesMut) -> io::Result<()> {
    while !output.is_empty() {
        match stream.write(output) {
            Ok(n) => {
                let _ = output.split_to(n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    stream.flush()
}

/// Reads everything the socket has into `raw` (through the scratch `buf`) until it would
/// block; `Ok(true)` when the peer closed (what came before the close is in `raw`).
pub fn read_available(
    stream: &mut impl Read,
    buf: &mut [u8],
    raw: &mut Vec<u8>,
) -> io::Result<bool> {
    loop {
        match stream.read(buf) {
            Ok(0) => return Ok(true),
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_masked_out_and_read_back_across_splits() {
        let ws = Framing::new(true, 0x0102_0304);
        let mut out = BytesMut::new();
        ws.wrap(&[0x70; 300], &mut out);
        assert_eq!(&out[..4], &[0x82, 0x80 | 126, 1, 44]);
        assert_eq!(
            out[8] ^ 1,
            0x70,
            "first payload byte masked with the first mask byte"
        );

        let mut rx = Framing::new(true, 0);
        let mut raw = b"HTTP/1.1 101 Switching Protocols\r\n\r\n".to_vec();
        raw.extend_from_slice(&[0x82, 3, 0x20, 0x01, 0x02, 0x82, 1]);
        let mut stream = Vec::new();
        rx.unwrap(&mut raw, &mut stream).unwrap();
        assert_eq!(stream, [0x20, 0x01, 0x02]);
        assert_eq!(raw, [0x82, 1], "the incomplete frame stays");
        raw.push(0x40);
        rx.unwrap(&mut raw, &mut stream).unwrap();
        assert_eq!(stream, [0x20, 0x01, 0x02, 0x40]);
        assert!(raw.is_empty());
    }

    #[test]
    fn a_refused_upgrade_is_an_error() {
        let mut rx = Framing::new(true, 0);
        let mut raw = b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec();
        assert!(rx.unwrap(&mut raw, &mut Vec::new()).is_err());
    }
}
