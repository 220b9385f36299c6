//! TLS: the server's certificate ([`TlsConfig`], for `wss://` clients) and
//! the roots a client or peer trusts ([`ClientTls`]). rustls with the ring
//! provider; PEM is read with `rustls-pki-types`.
//!
//! ```no_run
//! use camp_server::{server::Server, tls::TlsConfig};
//!
//! # fn demo() -> Result<(), camp_server::tls::TlsError> {
//! let tls = TlsConfig::from_pem_files("cert.pem", "key.pem")?;
//! let (server, incoming) = Server::builder().tokens(["secret"]).tls(tls).build();
//! # Ok(()) }
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Where a client looks for trusted roots when none were given:
/// `SSL_CERT_FILE`, else this bundle (Debian, Ubuntu, Alpine).
const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read (missing, unreadable).
    #[error("cannot read the {what} file {}: {source}", path.display())]
    Read {
        /// `certificate`, `private key` or `root certificate`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The PEM text is malformed, or holds none of the expected sections.
    #[error("no usable {what} in {origin}: {detail}")]
    Pem {
        /// `certificate`, `private key` or `root certificate`.
        what: &'static str,
        /// The file, or `PEM input`.
        origin: String,
        /// What the parser said.
        detail: String,
    },
    /// rustls refused the certificate and key, most often because the key
    /// does not belong to the certificate.
    #[error("certificate and private key do not match or cannot be used: {0}")]
    Rejected(rustls::Error),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn pem_error(what: &'static str, origin: &str, e: impl fmt::Display) -> TlsError {
    TlsError::Pem {
        what,
        origin: origin.to_string(),
        detail: e.to_string(),
    }
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

fn certificates(
    what: &'static str,
    pem: &[u8],
    origin: &str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(what, origin, e))?;
    if certs.is_empty() {
        return Err(pem_error(what, origin, "no CERTIFICATE section"));
    }
    Ok(certs)
}

/// The server's certificate chain and key: makes a server accept TLS
/// (`wss://`) connections (`ServerBuilder::tls`).
#[derive(Clone)]
pub struct TlsConfig {
    /// The configured acceptor (shares one `ServerConfig`).
    acceptor: TlsAcceptor,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TlsConfig")
    }
}

impl TlsConfig {
    /// Reads a PEM certificate chain (leaf first) and a PEM private key
    /// (PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem_files(
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<TlsConfig, TlsError> {
        let (cert, key) = (cert.as_ref(), key.as_ref());
        let cert_pem = read("certificate", cert)?;
        let key_pem = read("private key", key)?;
        TlsConfig::build(
            &cert_pem,
            &key_pem,
            &cert.display().to_string(),
            &key.display().to_string(),
        )
    }

    /// Like [`TlsConfig::from_pem_files`], from PEM text in memory.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<TlsConfig, TlsError> {
        TlsConfig::build(cert_pem, key_pem, "PEM input", "PEM input")
    }

    fn build(
        cert_pem: &[u8],
        key_pem: &[u8],
        cert_origin: &str,
        key_origin: &str,
    ) -> Result<TlsConfig, TlsError> {
        let certs = certificates("certificate", cert_pem, cert_origin)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| pem_error("private key", key_origin, e))?;
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Rejected)?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(TlsError::Rejected)?;
        Ok(TlsConfig {
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    pub(crate) fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }
}

/// The certificate authorities a client (or a server dialing a peer)
/// trusts for `wss://`.
#[derive(Clone)]
pub struct ClientTls {
    /// The configured connector (shares one `ClientConfig`).
    connector: TlsConnector,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientTls")
    }
}

impl ClientTls {
    /// Trusts exactly the certificates in this PEM text (for a private CA
    /// or a self-signed test certificate).
    pub fn with_root_pem(pem: &[u8]) -> Result<ClientTls, TlsError> {
        ClientTls::from_roots(certificates("root certificate", pem, "PEM input")?)
    }

    /// Trusts the certificates in this PEM file.
    pub fn with_root_file(path: impl AsRef<Path>) -> Result<ClientTls, TlsError> {
        let path = path.as_ref();
        let pem = read("root certificate", path)?;
        ClientTls::from_roots(certificates(
            "root certificate",
            &pem,
            &path.display().to_string(),
        )?)
    }

    /// Trusts the system's bundle: the file named by `SSL_CERT_FILE`, else
    /// `/etc/ssl/certs/ca-certificates.crt`.
    pub fn system() -> Result<ClientTls, TlsError> {
        let path = std::env::var_os("SSL_CERT_FILE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(SYSTEM_BUNDLE));
        ClientTls::with_root_file(path)
    }

    fn from_roots(certs: Vec<CertificateDer<'static>>) -> Result<ClientTls, TlsError> {
        let mut roots = RootCertStore::empty();
        let (added, _ignored) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(TlsError::Pem {
                what: "root certificate",
                origin: "the given roots".into(),
                detail: "no certificate could be used as a trust anchor".into(),
            });
        }
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Rejected)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(ClientTls {
            connector: TlsConnector::from(Arc::new(config)),
        })
    }

    pub(crate) fn connector(&self) -> &TlsConnector {
        &self.connector
    }
}
