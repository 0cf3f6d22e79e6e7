//! TLS for the HTTPS listeners: rustls with the ring provider, PEM cert chain and key loaded
//! with rustls-pki-types, ALPN `h2` + `http/1.1`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot load certificate chain {0}: {1}")]
    Cert(PathBuf, String),
    #[error("cannot load private key {0}: {1}")]
    Key(PathBuf, String),
    #[error("certificate and key do not form a valid TLS config: {0}")]
    Rustls(String),
}

/// The crypto provider every rustls config in caracal uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the server config; `http2` adds `h2` to ALPN.
pub fn server_config(
    cert: &Path,
    key: &Path,
    http2: bool,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| TlsError::Cert(cert.to_path_buf(), e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Cert(cert.to_path_buf(), e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::Cert(
            cert.to_path_buf(),
            "no CERTIFICATE block in the file".into(),
        ));
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| TlsError::Key(key.to_path_buf(), e.to_string()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    cfg.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(Arc::new(cfg))
}
