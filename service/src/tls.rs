//! TLS on the service's one port, with rustls (ring; no OpenSSL): [`ServerTls`] loads a
//! PEM certificate chain and key, and optionally a client CA that every connection's
//! certificate must be signed by (mutual TLS). [`connections::accept_tls`] does the
//! handshake on each accepted connection, within the connection's start timeout, before
//! the server sees it.
//!
//! ALPN offers `h2` and `http/1.1`, in that order: gRPC clients get HTTP/2, while
//! browsers' grpc-web over HTTP/1.1 and plain HTTP/1.1 clients (`curl --http1.1`) can
//! still fetch the web client's files; the server tells the two apart by what the
//! connection sends, as it does without TLS.
//!
//! [`connections::accept_tls`]: crate::connections::accept_tls

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::Context;
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        RootCertStore, ServerConfig,
        crypto::ring,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
        server::WebPkiClientVerifier,
    },
};

/// Where the service's TLS material is: PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, the service's own certificate first.
    pub cert: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// With it, every connection must present a client certificate signed by this CA.
    pub client_ca: Option<PathBuf>,
}

/// The service's TLS settings, loaded and checked.
#[derive(Clone)]
pub struct ServerTls {
    files: TlsFiles,
    config: Arc<ServerConfig>,
}

impl ServerTls {
    /// Reads and checks the files: each must hold what it should, and the key must
    /// belong to the certificate. The errors name the file.
    pub fn load(files: TlsFiles) -> anyhow::Result<ServerTls> {
        let chain = certificates(&files.cert)?;
        let key = PrivateKeyDer::from_pem_file(&files.key)
            .map_err(|e| anyhow::anyhow!("cannot read a private key from {}: {e}", files.key.display()))?;
        let builder = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .context("the TLS provider")?;
        let builder = match &files.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for cert in certificates(ca)? {
                    roots.add(cert).with_context(|| format!("{}: not a usable CA certificate", ca.display()))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::new(ring::default_provider()))
                        .build()
                        .with_context(|| format!("{}: cannot verify client certificates with it", ca.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_single_cert(chain, key).with_context(|| {
            format!("the key in {} does not fit the certificate in {}", files.key.display(), files.cert.display())
        })?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(ServerTls { files, config: Arc::new(config) })
    }

    /// Where it was loaded from.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// True when clients must present a certificate (mutual TLS).
    pub fn requires_client_certificates(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// Does the handshake on accepted connections.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config.clone())
    }
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls").field("files", &self.files).finish_non_exhaustive()
    }
}

/// The certificates in a PEM file; at least one.
fn certificates(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("cannot read certificates from {}: {e}", path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "{}: no PEM certificate in it", path.display());
    Ok(certs)
}
