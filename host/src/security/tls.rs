//! TLS material of a node: its certificate (whose DNS name
//! `node-<id>.synod` binds its node id), its key and the cluster's CA
//! bundle, turned into rustls configurations for the peer port (mutual
//! TLS) and the API port (server certificate only; clients carry tokens).
//!
//! Everything uses rustls' ring provider.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use synod_guest_sdk::NodeId;

/// The DNS name a node's certificate carries; peers check it.
pub fn node_name(id: NodeId) -> String {
    format!("node-{id}.synod")
}

/// Why TLS material could not be loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {message}")]
    Read { path: String, message: String },
    #[error("{path} holds no {what}")]
    Empty { path: String, what: &'static str },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("TLS client verifier: {0}")]
    Verifier(String),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Certificates of a PEM file (a bundle may hold several).
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(|e| TlsError::Read {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    certificates_from_pem(&bytes, &path.display().to_string())
}

fn certificates_from_pem(
    pem: &[u8],
    origin: &str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Read {
            path: origin.to_string(),
            message: e.to_string(),
        })?;
    if certificates.is_empty() {
        return Err(TlsError::Empty {
            path: origin.to_string(),
            what: "certificate",
        });
    }
    Ok(certificates)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Read {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// A root store of every certificate in a CA bundle (PEM bytes).
pub fn roots_from_pem(pem: &[u8], origin: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for certificate in certificates_from_pem(pem, origin)? {
        roots.add(certificate)?;
    }
    Ok(roots)
}

/// A client configuration trusting the CA bundle `ca_pem`, for API
/// clients (HTTP and wire).
pub fn client_config(ca_pem: &[u8]) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let roots = roots_from_pem(ca_pem, "the CA bundle")?;
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Whether `certificate` (already verified against the CA) names node `id`.
pub fn certificate_names_node(certificate: &CertificateDer<'_>, id: NodeId) -> bool {
    let Ok(name) = ServerName::try_from(node_name(id)) else {
        return false;
    };
    webpki::EndEntityCert::try_from(certificate)
        .is_ok_and(|cert| cert.verify_is_valid_for_subject_name(&name).is_ok())
}

/// A node's TLS configurations.
pub struct NodeTls {
    peer_server: Arc<rustls::ServerConfig>,
    peer_client: Arc<rustls::ClientConfig>,
    api_server: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeTls { .. }")
    }
}

impl NodeTls {
    /// Loads the CA bundle, this node's certificate chain and its key.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let ca_pem = std::fs::read(ca).map_err(|e| TlsError::Read {
            path: ca.display().to_string(),
            message: e.to_string(),
        })?;
        let roots = Arc::new(roots_from_pem(&ca_pem, &ca.display().to_string())?);
        let chain = read_certificates(cert)?;
        let key = read_key(key)?;
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
        let peer_server = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())?;
        let peer_client = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain.clone(), key.clone_key())?;
        let mut api_server = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        api_server.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            peer_server: Arc::new(peer_server),
            peer_client: Arc::new(peer_client),
            api_server: Arc::new(api_server),
        })
    }

    /// Accepts peers: a client certificate from the CA is required.
    pub fn peer_acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.peer_server.clone())
    }

    /// Dials peers, presenting this node's certificate.
    pub fn peer_connector(&self) -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(self.peer_client.clone())
    }

    /// Accepts API clients (HTTP and wire).
    pub fn api_acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.api_server.clone())
    }
}
