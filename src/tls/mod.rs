//! TLS, on rustls with the ring provider: the server's certificate for its own TLS
//! listeners (`server.rs`), and the client side of Ruyi's outgoing connections (https
//! webhooks, PostgreSQL with `sslmode=require`), which verify the server's certificate
//! against the Mozilla roots (webpki-roots) and, when the operator names one, a PEM file of
//! extra trusted certificates (an internal CA). No setting turns verification off: an
//! encrypted link to an unverified peer protects against nothing an attacker on the path
//! cannot undo.

use std::sync::Arc;

mod server;
pub use server::ServerCert;

/// Client TLS settings: the Mozilla roots, plus the certificates in `ca_file` (PEM) when
/// given.
///
/// # Errors
/// The file cannot be read, or holds something that is not a usable certificate.
pub fn client_config(
    ca_file: Option<&std::path::Path>,
) -> std::io::Result<Arc<rustls::ClientConfig>> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let invalid = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| invalid(format!("{}: {e}", path.display())))?;
        let mut added = 0;
        for cert in certs {
            let cert = cert.map_err(|e| invalid(format!("{}: {e}", path.display())))?;
            roots
                .add(cert)
                .map_err(|e| invalid(format!("{}: {e}", path.display())))?;
            added += 1;
        }
        // A file with no certificate in it is a mistake, not "trust nothing more".
        if added == 0 {
            return Err(invalid(format!(
                "{}: no PEM certificate in it",
                path.display()
            )));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
