//! Where a service is and how to reach it: [`Remote`] is its URL and, for `https://`, the
//! TLS settings to check it with ([`ClientTls`]: a CA, else the system's roots, and a
//! client certificate where the service asks for one). [`Remote::endpoint`] is the one
//! place a connection to the service is configured; the CLI, the worker and the tests all
//! go through it.

use std::{fmt, path::Path, sync::Arc, time::Duration};

use anyhow::Context;
use tokio_rustls::rustls::{
    self, DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{CryptoProvider, ring, verify_tls12_signature, verify_tls13_signature},
    pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject},
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// How long to wait for the service to accept a connection (and finish the TLS handshake).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// TLS settings for `https://` services, as PEM.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// The CA that signed the service's certificate; none: the system's roots.
    ca: Option<Vec<u8>>,
    /// A client certificate (chain) and its key, for services that require one.
    identity: Option<(Vec<u8>, Vec<u8>)>,
    /// Trust exactly this certificate (DER), whatever signed it and whatever names it holds.
    pinned: Option<Vec<u8>>,
}

impl ClientTls {
    /// From PEM contents.
    pub fn from_pem(ca: Option<Vec<u8>>, identity: Option<(Vec<u8>, Vec<u8>)>) -> ClientTls {
        ClientTls { ca, identity, pinned: None }
    }

    /// Trusts exactly the first certificate in `cert_pem` instead of a CA: for `up`, whose
    /// in-process worker connects to the certificate its own service serves (which may
    /// be signed by anyone, and name the host rather than localhost).
    pub fn pin(self, cert_pem: &[u8]) -> anyhow::Result<ClientTls> {
        let cert = CertificateDer::pem_slice_iter(cert_pem)
            .next()
            .context("no PEM certificate to pin")?
            .map_err(|e| anyhow::anyhow!("cannot read the certificate to pin: {e}"))?;
        Ok(ClientTls { pinned: Some(cert.to_vec()), ..self })
    }

    /// Reads the PEM files; a client certificate needs its key and the key its certificate.
    pub fn load(ca_cert: Option<&Path>, client_cert: Option<&Path>, client_key: Option<&Path>) -> anyhow::Result<Self> {
        let read = |path: &Path, what: &str| -> anyhow::Result<Vec<u8>> {
            let pem = std::fs::read(path).with_context(|| format!("cannot read the {what} {}", path.display()))?;
            anyhow::ensure!(
                String::from_utf8_lossy(&pem).contains("-----BEGIN "),
                "{}: the {what} is not PEM",
                path.display()
            );
            Ok(pem)
        };
        let ca = ca_cert.map(|path| read(path, "CA certificate")).transpose()?;
        let identity = match (client_cert, client_key) {
            (Some(cert), Some(key)) => Some((read(cert, "client certificate")?, read(key, "client key")?)),
            (None, None) => None,
            (Some(_), None) => anyhow::bail!("a client certificate needs its key (--client-key)"),
            (None, Some(_)) => anyhow::bail!("a client key needs its certificate (--client-cert)"),
        };
        Ok(ClientTls { ca, identity, pinned: None })
    }

    /// True when nothing is set: `https://` then trusts the system's roots.
    pub fn is_default(&self) -> bool {
        self.ca.is_none() && self.identity.is_none() && self.pinned.is_none()
    }

    /// Whether a client certificate is set.
    pub fn has_identity(&self) -> bool {
        self.identity.is_some()
    }

    /// As tonic (and etcd-client) take it; a pinned certificate is not in it.
    pub fn config(&self) -> ClientTlsConfig {
        let config = match &self.ca {
            Some(ca) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)),
            None => ClientTlsConfig::new().with_native_roots(),
        };
        match &self.identity {
            Some((cert, key)) => config.identity(Identity::from_pem(cert, key)),
            None => config,
        }
    }
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("ca", &if self.ca.is_some() { "given" } else { "system roots" })
            .field("client_certificate", &self.identity.is_some())
            .field("pinned", &self.pinned.is_some())
            .finish()
    }
}

/// A service to connect to: `http://host:port`, or `https://host:port` checked with `tls`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Remote {
    pub url: String,
    pub tls: ClientTls,
}

impl Remote {
    /// The service at `url`; for `https://`, checked against the system's roots until
    /// [`Remote::with_tls`] says otherwise.
    pub fn new(url: impl Into<String>) -> Remote {
        Remote { url: url.into(), tls: ClientTls::default() }
    }

    pub fn with_tls(self, tls: ClientTls) -> Remote {
        Remote { tls, ..self }
    }

    /// True for `https://` URLs.
    pub fn is_https(&self) -> bool {
        self.url.get(..8).is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"))
    }

    /// The endpoint, with TLS for `https://`; callers may add settings (the worker adds
    /// HTTP/2 keepalive) before connecting.
    pub fn endpoint(&self) -> Result<Endpoint, tonic::transport::Error> {
        let endpoint = Endpoint::from_shared(self.url.clone())?.connect_timeout(CONNECT_TIMEOUT).tcp_nodelay(true);
        if !self.is_https() {
            return Ok(endpoint);
        }
        match &self.tls.pinned {
            None => endpoint.tls_config(self.tls.config()),
            Some(cert) => {
                let identity = self.tls.identity.as_ref().map(|(cert, key)| Identity::from_pem(cert, key));
                let config = identity.into_iter().fold(ClientTlsConfig::new(), ClientTlsConfig::identity);
                let provider = Arc::new(ring::default_provider());
                endpoint.tls_config_with_verifier(config, Arc::new(Pinned { cert: cert.clone(), provider }))
            }
        }
    }

    /// Opens a channel, for any of the generated clients.
    pub async fn connect(&self) -> Result<Channel, tonic::transport::Error> {
        self.endpoint()?.connect().await
    }
}

impl fmt::Display for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

impl From<&str> for Remote {
    fn from(url: &str) -> Remote {
        Remote::new(url)
    }
}

impl From<String> for Remote {
    fn from(url: String) -> Remote {
        Remote::new(url)
    }
}

/// Accepts exactly one certificate as the server's; the handshake's signatures are still
/// checked against it, so only the holder of its key passes.
#[derive(Debug)]
struct Pinned {
    cert: Vec<u8>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.cert.as_slice() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General("the service presented another certificate than the pinned one".into()))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
