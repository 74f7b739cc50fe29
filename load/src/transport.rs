//! A client connection's byte stream: the socket itself, or TLS over it (`--tls`), as a
//! non-blocking `Read` + `Write` the workers use unchanged.
//!
//! TLS is rustls driven by hand over the mio socket: a read feeds records in and takes
//! plaintext out (the handshake advances there), a write seals plaintext (buffered by the
//! session while the handshake runs) and pushes records, and `flush` pushes records a
//! full socket held back. Plaintext a write accepted is never reported unwritten, so the
//! caller never sends it twice; a socket error it meets surfaces on the next read.

use mio::net::TcpStream;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;

/// The CA file `--tls-ca` names, as a client configuration (TLS 1.2/1.3, ring).
///
/// # Errors
/// The file cannot be read or holds no certificate.
pub fn client_config(ca: &std::path::Path) -> io::Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca)
        .map_err(|e| io::Error::other(format!("{}: {e}", ca.display())))?
    {
        let cert = cert.map_err(|e| io::Error::other(format!("{}: {e}", ca.display())))?;
        roots.add(cert).map_err(io::Error::other)?;
    }
    if roots.is_empty() {
        return Err(io::Error::other(format!(
            "{}: no PEM certificate in it",
            ca.display()
        )));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(io::Error::other)?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

/// One connection's stream (module docs).
#[derive(Debug)]
pub enum Transport {
    Plain(TcpStream),
    Tls(Box<(rustls::ClientConnection, TcpStream)>),
}

impl Transport {
    /// `socket`, inside TLS to `server` (named by its IP address) when `tls` is given.
    pub fn new(
        socket: TcpStream,
        server: SocketAddr,
        tls: Option<&Arc<rustls::ClientConfig>>,
    ) -> io::Result<Transport> {
        let Some(config) = tls else {
            return Ok(Transport::Plain(socket));
        };
        let name = rustls::pki_types::ServerName::IpAddress(server.ip().into());
        let session =
            rustls::ClientConnection::new(Arc::clone(config), name).map_err(io::Error::other)?;
        Ok(Transport::Tls(Box::new((session, socket))))
    }

    /// The socket, for registration with a poll.
    pub fn socket(&mut self) -> &mut TcpStream {
        match self {
            Transport::Plain(s) => s,
            Transport::Tls(t) => &mut t.1,
        }
    }
}

/// Writes the session's records until none are left or the socket would block.
fn push(session: &mut rustls::ClientConnection, socket: &mut TcpStream) -> io::Result<()> {
    while session.wants_write() {
        match session.write_tls(socket) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A socket that is full or still connecting: its writable event calls again.
fn later(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::NotConnected
    )
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let (session, socket) = match self {
            Transport::Plain(s) => return s.read(buf),
            Transport::Tls(t) => (&mut t.0, &mut t.1),
        };
        loop {
            match session.reader().read(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                done => return done, // Ok(0): the server's close_notify
            }
            if session.read_tls(socket)? == 0 {
                return Ok(0); // The socket's EOF.
            }
            session
                .process_new_packets()
                .map_err(|e| io::Error::other(format!("TLS: {e}")))?;
            // Handshake messages, and plaintext the handshake held.
            match push(session, socket) {
                Err(e) if !later(&e) => return Err(e),
                _ => {}
            }
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let (session, socket) = match self {
            Transport::Plain(s) => return s.write(buf),
            Transport::Tls(t) => (&mut t.0, &mut t.1),
        };
        match push(session, socket) {
            Err(e) if !later(&e) => return Err(e),
            _ => {}
        }
        let n = session.writer().write(buf)?;
        if n == 0 && !buf.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into()); // The session is full.
        }
        // Accepted: a socket that is full now is pushed by `flush` on its writable event.
        let _ = push(session, socket);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(_) => Ok(()),
            Transport::Tls(t) => match push(&mut t.0, &mut t.1) {
                Err(e) if later(&e) => Ok(()),
                other => other,
            },
        }
    }
}
