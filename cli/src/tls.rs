//! The client side's TLS flags, shared by the client commands (`--server`) and workers.

use std::path::PathBuf;

use clap::Args;
use deephardway::{ClientTls, Remote};

/// How to check an `https://` service, and the certificate to show it.
#[derive(Args, Clone, Default)]
pub struct ClientTlsArgs {
    /// For an https:// service: the CA certificate (PEM) that signed its certificate
    /// (default: the system's roots).
    #[arg(long, env = "DEEPHARDWAY_CA_CERT", value_name = "FILE", global = true)]
    pub ca_cert: Option<PathBuf>,
    #[command(flatten)]
    pub identity: ClientIdentityArgs,
}

/// A client certificate, for services that require one (mutual TLS).
#[derive(Args, Clone, Default)]
pub struct ClientIdentityArgs {
    /// A client certificate (PEM) to present, for a service that requires one (mutual TLS).
    #[arg(long, env = "DEEPHARDWAY_CLIENT_CERT", value_name = "FILE", global = true)]
    pub client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "DEEPHARDWAY_CLIENT_KEY", value_name = "FILE", global = true)]
    pub client_key: Option<PathBuf>,
}

impl ClientIdentityArgs {
    /// Whether a certificate was given.
    pub fn is_given(&self) -> bool {
        self.client_cert.is_some() || self.client_key.is_some()
    }

    /// The certificate and key, read, with no CA: for `up`'s local worker, which pins the
    /// certificate its own service serves.
    pub fn load(&self) -> anyhow::Result<ClientTls> {
        ClientTls::load(None, self.client_cert.as_deref(), self.client_key.as_deref())
    }
}

impl ClientTlsArgs {
    /// The files, read.
    pub fn load(&self) -> anyhow::Result<ClientTls> {
        ClientTls::load(
            self.ca_cert.as_deref(),
            self.identity.client_cert.as_deref(),
            self.identity.client_key.as_deref(),
        )
    }

    /// The service at `url` with these settings. They only make sense for `https://`: with a
    /// plain `http://` URL they are refused rather than silently ignored.
    pub fn remote(&self, url: &str) -> anyhow::Result<Remote> {
        let tls = self.load()?;
        let remote = Remote::new(url).with_tls(tls);
        anyhow::ensure!(
            remote.is_https() || remote.tls.is_default(),
            "{url} is not https://, but TLS files were given (--ca-cert, --client-cert, --client-key or their \
             DEEPHARDWAY_* variables): use https://, or drop them"
        );
        Ok(remote)
    }
}
