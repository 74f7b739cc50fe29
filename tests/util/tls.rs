//! TLS for tests: a private CA and a 127.0.0.1 server certificate it signed, written as PEM
//! files (for the server's `--tls-cert`/`--tls-key`, Node's `NODE_EXTRA_CA_CERTS`, the
//! EasySDK's `ca_file`), a rustls client that trusts the CA, and a relay that lets the
//! plain test clients (`Client`, `RpcClient`) speak through TLS unchanged.

use rustls::pki_types::ServerName;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// PEM files of one CA and one server certificate for 127.0.0.1 and `localhost`.
pub struct Pki {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    /// A fresh CA and server certificate in `dir`, under names starting with `prefix`.
    pub fn new(dir: &Path, prefix: &str) -> Pki {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("ruyi test CA {prefix}"));
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.subject_alt_names.push(rcgen::SanType::IpAddress(
            std::net::Ipv4Addr::LOCALHOST.into(),
        ));
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        let pki = Pki {
            ca: dir.join(format!("{prefix}-ca.pem")),
            cert: dir.join(format!("{prefix}-cert.pem")),
            key: dir.join(format!("{prefix}-key.pem")),
        };
        std::fs::write(&pki.ca, ca.pem()).unwrap();
        std::fs::write(&pki.cert, cert.pem()).unwrap();
        std::fs::write(&pki.key, key.serialize_pem()).unwrap();
        pki
    }

    /// A client configuration that trusts this CA only.
    pub fn client(&self) -> Arc<rustls::ClientConfig> {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_file_iter(&self.ca).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }
}

/// [`super::start`] with TLS on: this certificate, WebSocket over TLS on a free loopback
/// port; `tweak` may change the rest (add `tls_addr`, say).
pub fn start_tls(
    name: &str,
    pki: &Pki,
    tweak: impl FnOnce(&mut ruyi::config::Config),
) -> ruyi::server::Server {
    let (cert, key) = (pki.cert.clone(), pki.key.clone());
    super::start(name, move |c| {
        c.tls_cert = Some(cert);
        c.tls_key = Some(key);
        tweak(c);
    })
}

/// A TLS session to `server` as 127.0.0.1, handshake done. Err: the handshake failed
/// (an untrusted certificate, say).
pub fn connect(
    server: SocketAddr,
    client: &Arc<rustls::ClientConfig>,
) -> std::io::Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
    let stream = TcpStream::connect(server)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    let session = rustls::ClientConnection::new(Arc::clone(client), name)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut tls = rustls::StreamOwned::new(session, stream);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(tls)
}

/// A loopback port whose connections are carried over TLS to `server` (one relay thread
/// per connection, until either side closes): plain clients pointed at it talk TLS.
pub fn relay(server: SocketAddr, client: Arc<rustls::ClientConfig>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for plain in listener.incoming() {
            let Ok(plain) = plain else { return };
            let client = Arc::clone(&client);
            std::thread::spawn(move || {
                if let Ok(tls) = connect(server, &client) {
                    pump(plain, tls);
                }
            });
        }
    });
    addr
}

/// Moves bytes both ways between `plain` and `tls` until either ends; then ends the other.
fn pump(mut plain: TcpStream, mut tls: rustls::StreamOwned<rustls::ClientConnection, TcpStream>) {
    let tick = Some(Duration::from_millis(2));
    plain.set_read_timeout(tick).unwrap();
    tls.sock.set_read_timeout(tick).unwrap();
    let mut buf = vec![0u8; 64 << 10];
    let quiet =
        |e: &std::io::Error| matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut);
    loop {
        match plain.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if tls.write_all(&buf[..n]).and_then(|()| tls.flush()).is_err() {
                    break;
                }
            }
            Err(e) if quiet(&e) => {}
            Err(_) => break,
        }
        match tls.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if plain.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if quiet(&e) => {}
            Err(_) => break,
        }
    }
    let _ = plain.shutdown(std::net::Shutdown::Both);
    tls.conn.send_close_notify();
    let _ = tls.flush();
    let _ = tls.sock.shutdown(std::net::Shutdown::Both);
}
