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
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The HTTPS listeners' certificate, replaceable while they serve (a reload rotates it:
/// handshakes after the swap get the new one, connections already open keep theirs).
#[derive(Debug)]
pub struct Rotating {
    current: std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>,
}

impl Rotating {
    /// The certificate now.
    pub fn current(&self) -> Arc<rustls::sign::CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Installs `ck`; `true` if its chain differs from the one it replaces.
    pub fn set(&self, ck: Arc<rustls::sign::CertifiedKey>) -> bool {
        let mut cur = self.current.write().unwrap_or_else(|p| p.into_inner());
        let changed = cur.cert != ck.cert;
        *cur = ck;
        changed
    }
}

impl rustls::server::ResolvesServerCert for Rotating {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.current())
    }
}

/// Builds the server config around a [`Rotating`] certificate; `http2` adds `h2` to ALPN.
pub(crate) fn server_config(
    cert: &Path,
    key: &Path,
    http2: bool,
) -> Result<(Arc<rustls::ServerConfig>, Arc<Rotating>), TlsError> {
    let certs = load_certs(cert)?;
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| TlsError::Key(key.to_path_buf(), e.to_string()))?;
    let ck = rustls::sign::CertifiedKey::from_der(certs, key_der, &provider())
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let rotating = Arc::new(Rotating {
        current: std::sync::RwLock::new(Arc::new(ck)),
    });
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(rotating.clone());
    cfg.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok((Arc::new(cfg), rotating))
}

/// The name every mesh connection verifies the member's certificate for (`caracal certs`
/// puts it in every node certificate, next to the node's jvm_route).
pub const MESH_NAME: &str = "mesh.caracal";

/// Mutual TLS for the mesh (`[cluster.tls]`, REFERENCE 4.10): both ends present a certificate
/// that chains to the cluster CA; the server's must be valid for [`MESH_NAME`].
#[derive(Clone)]
pub struct MeshTls {
    pub server: Arc<rustls::ServerConfig>,
    pub client: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for MeshTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MeshTls")
    }
}

/// Loads the node's certificate and key and the cluster CA into both halves of [`MeshTls`].
pub fn mesh_tls(cert: &Path, key: &Path, ca: &Path) -> Result<MeshTls, TlsError> {
    let certs = load_certs(cert)?;
    let roots = {
        let mut r = rustls::RootCertStore::empty();
        for c in load_certs(ca)? {
            r.add(c)
                .map_err(|e| TlsError::Cert(ca.to_path_buf(), e.to_string()))?;
        }
        Arc::new(r)
    };
    let key_der = |k: &Path| {
        PrivateKeyDer::from_pem_file(k).map_err(|e| TlsError::Key(k.to_path_buf(), e.to_string()))
    };
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let server = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs.clone(), key_der(key)?)
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let client = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key_der(key)?)
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    Ok(MeshTls {
        server: Arc::new(server),
        client: Arc::new(client),
    })
}

/// The certificate (already verified against the CA) names `route` (a DNS SAN): a member
/// may speak only for its own jvm_route.
pub(crate) fn names_route(cert: &CertificateDer<'_>, route: &str) -> bool {
    let Ok(name) = rustls::pki_types::ServerName::try_from(route) else {
        return false;
    };
    webpki::EndEntityCert::try_from(cert)
        .is_ok_and(|c| c.verify_is_valid_for_subject_name(&name).is_ok())
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| TlsError::Cert(path.to_path_buf(), e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Cert(path.to_path_buf(), e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::Cert(
            path.to_path_buf(),
            "no CERTIFICATE block in the file".into(),
        ));
    }
    Ok(certs)
}

/// `caracal certs`: a cluster CA and one certificate per node (SANs: the node's name, which
/// is its jvm_route, and [`MESH_NAME`]; usable as server and as client), PEM files in
/// `out`: `ca.pem`, `ca-key.pem`, `<node>.pem`, `<node>-key.pem`.
pub(crate) fn write_cluster_certs(out: &Path, nodes: &[String]) -> Result<Vec<PathBuf>, String> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let ca_key = KeyPair::generate().map_err(|e| e.to_string())?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, "caracal cluster CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).map_err(|e| e.to_string())?;
    let mut written = Vec::new();
    let mut write = |name: String, text: String| -> Result<(), String> {
        let p = out.join(name);
        std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))?;
        written.push(p);
        Ok(())
    };
    write("ca.pem".into(), ca_cert.pem())?;
    write("ca-key.pem".into(), ca_key.serialize_pem())?;
    let issuer = Issuer::new(ca, ca_key);
    for node in nodes {
        if rustls::pki_types::ServerName::try_from(node.as_str()).is_err() {
            return Err(format!(
                "{node:?} is not a DNS name: it must be usable as a SAN"
            ));
        }
        let key = KeyPair::generate().map_err(|e| e.to_string())?;
        let mut p = CertificateParams::new(vec![node.clone(), MESH_NAME.to_string()])
            .map_err(|e| e.to_string())?;
        p.distinguished_name.push(DnType::CommonName, node.as_str());
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = p.signed_by(&key, &issuer).map_err(|e| e.to_string())?;
        write(format!("{node}.pem"), cert.pem())?;
        write(format!("{node}-key.pem"), key.serialize_pem())?;
    }
    Ok(written)
}
