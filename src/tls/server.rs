//! The certificate of Ruyi's TLS listeners (`--tls-cert`, `--tls-key`): read from PEM
//! files at start, where anything wrong stops the start with the file and the reason, and
//! read again on SIGHUP (`ServerCert::reload`), where anything wrong keeps the certificate
//! in use and says why. The engine's TLS sessions ask for the certificate at each
//! handshake (`ResolvesServerCert`), so a reload takes effect for the next handshake and
//! drops no connection.

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// The listeners' certificate chain and key, replaceable while the server runs.
#[derive(Debug)]
pub struct ServerCert {
    cert: PathBuf,
    key: PathBuf,
    /// Read on every handshake, written on a reload; never held across I/O.
    current: RwLock<Arc<CertifiedKey>>,
}

impl ServerCert {
    /// Reads the chain in `cert` and the private key in `key` (PEM both).
    ///
    /// # Errors
    /// A file that cannot be read, holds no certificate or key, a key rustls cannot use,
    /// or a key that does not belong to the certificate; the message names the file.
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<ServerCert>, String> {
        Ok(Arc::new(ServerCert {
            current: RwLock::new(Arc::new(certified(cert, key)?)),
            cert: cert.to_owned(),
            key: key.to_owned(),
        }))
    }

    /// Reads both files again and uses them for every handshake from now on. On error the
    /// certificate in use stays.
    ///
    /// # Errors
    /// As [`ServerCert::load`].
    pub fn reload(&self) -> Result<(), String> {
        let fresh = Arc::new(certified(&self.cert, &self.key)?);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }

    /// The configuration of a TLS listener serving this certificate (TLS 1.2 and 1.3, no
    /// client certificates).
    ///
    /// # Errors
    /// The provider refuses the protocol versions (it does not, for ring).
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self.current.read().unwrap_or_else(|p| p.into_inner()),
        ))
    }
}

/// What is wrong with a key file, without its content: a PEM parser's error may quote the
/// line it stopped at, and in a key file that line can be the key itself (a PEM pasted
/// as one line, as secret stores hand them out).
fn withheld(e: rustls_pki_types::pem::Error) -> String {
    use rustls_pki_types::pem::Error;
    match e {
        Error::Io(e) => e.to_string(),
        Error::NoItemsFound => "no PEM private key in it".into(),
        _ => "not a readable PEM private key (the parser's details are withheld: they may quote the key)".into(),
    }
}

/// The chain in `cert` with the key in `key`, checked to belong together.
fn certified(cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
    let named = |path: &Path, e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| named(cert, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| named(cert, &e))?;
    if chain.is_empty() {
        return Err(named(cert, &"no PEM certificate in it"));
    }
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| named(key, &withheld(e)))?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(der)
        .map_err(|e| named(key, &e))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| {
        format!(
            "{} does not belong to the certificate in {}: {e}",
            key.display(),
            cert.display()
        )
    })?;
    Ok(certified)
}
