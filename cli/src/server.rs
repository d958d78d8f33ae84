//! `deephardway up` and `deephardway serve`.

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context;
use clap::{Args, builder::TypedValueParser};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use deephardway_service::{
    artifacts::ArtifactStore,
    auth::{AuthConfig, DEFAULT_TENANT, FixedKey, Role, secret},
    config::{ServiceConfig, defaults, limits},
    connections::ConnectionLimits,
    server,
    store::{
        SharedStore,
        embedded::EmbeddedStore,
        etcd::{EtcdAccess, EtcdStore},
    },
    tls::{ServerTls, TlsFiles},
    web::{Cors, DEFAULT_CLIENT_DIR, Web},
};

use crate::{file_limit, signal::shutdown_signal, tls::ClientIdentityArgs, worker};

#[derive(Args, Clone)]
pub struct ServiceFlags {
    /// Address to serve gRPC, grpc-web and reflection on.
    #[arg(long, env = "DEEPHARDWAY_LISTEN", default_value = "127.0.0.1:50051")]
    listen: String,
    /// Directory of the embedded store (default: ~/.local/share/deephardway).
    #[arg(long, env = "DEEPHARDWAY_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The built web client to serve on the same port (default: client-web/dist, if it
    /// exists under the current directory).
    #[arg(long, env = "DEEPHARDWAY_WEB_DIR")]
    web_dir: Option<PathBuf>,
    /// Other origins allowed to call through grpc-web, comma-separated (e.g. a dev server,
    /// `http://localhost:5173`); `*` allows any, and is refused with --auth on. Default:
    /// none, so only pages served from this port can call it.
    #[arg(long, env = "DEEPHARDWAY_CORS_ORIGINS", default_value = "")]
    cors_origins: String,
    /// Whether callers need an API key (`authorization: Bearer <key>`): `on` or `off`.
    /// Off is for development on a loopback address; elsewhere it needs --insecure.
    #[arg(long, env = "DEEPHARDWAY_AUTH", value_enum, default_value = "off")]
    auth: AuthMode,
    /// A file holding the secret of the bootstrap admin key (else the environment's
    /// DEEPHARDWAY_ADMIN_KEY): with it, scripts create the other keys.
    #[arg(long, env = "DEEPHARDWAY_ADMIN_KEY_FILE")]
    admin_key_file: Option<PathBuf>,
    /// Serve a non-loopback address without TLS or without auth. Anyone who reaches the
    /// port can then connect as a worker, read every job and forge results.
    #[arg(long)]
    insecure: bool,
    /// Serve `/metrics` without a key even with --auth on (for a Prometheus that cannot
    /// send one; the numbers show queue sizes and model names).
    #[arg(long, env = "DEEPHARDWAY_METRICS_PUBLIC")]
    metrics_public: bool,
    /// Most jobs waiting in line; more are refused with RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = defaults::MAX_QUEUE_DEPTH,
          value_parser = clap::value_parser!(u64).range(limits::MAX_QUEUE_DEPTH).map(|v| v as usize))]
    max_queue_depth: usize,
    /// Attempts per job when the request does not say, 1 to 10.
    #[arg(long, default_value_t = defaults::MAX_ATTEMPTS,
          value_parser = clap::value_parser!(u64).range(limits::MAX_ATTEMPTS).map(|v| v as u32))]
    max_attempts: u32,
    /// Running-time limit per job when the request does not say, in seconds (at most a day).
    #[arg(long, default_value_t = defaults::JOB_TIMEOUT_SECONDS,
          value_parser = clap::value_parser!(u64).range(limits::JOB_TIMEOUT_SECONDS))]
    job_timeout_s: u64,
    /// How long finished jobs are kept, in seconds.
    #[arg(long, default_value_t = defaults::RETENTION_SECONDS,
          value_parser = clap::value_parser!(u64).range(limits::RETENTION_SECONDS))]
    retention_s: u64,
    /// Seconds a worker's jobs stay claimed after its replica stops renewing its lease.
    #[arg(long, default_value_t = defaults::WORKER_LEASE_SECONDS,
          value_parser = clap::value_parser!(u64).range(limits::WORKER_LEASE_SECONDS))]
    worker_lease_s: u64,
    /// How often each worker must send a heartbeat, in milliseconds; a worker silent for
    /// five intervals (hung, stopped, or no longer reading) loses its session and its jobs.
    #[arg(long, default_value_t = defaults::WORKER_HEARTBEAT_MS,
          value_parser = clap::value_parser!(u64).range(limits::WORKER_HEARTBEAT_MS))]
    worker_heartbeat_ms: u64,
    /// Open connections at most; a new one beyond it is closed at once. The service raises
    /// its file limit (`ulimit -n`) to the hard limit and keeps this 256 below it.
    #[arg(long, env = "DEEPHARDWAY_MAX_CONNECTIONS", default_value_t = defaults::MAX_CONNECTIONS,
          value_parser = clap::value_parser!(u64).range(limits::MAX_CONNECTIONS).map(|v| v as usize))]
    max_connections: usize,
    /// How soon a new connection must send its first bytes, in milliseconds; one that
    /// says nothing is closed.
    #[arg(long, default_value_t = defaults::CONNECTION_START_TIMEOUT_MS,
          value_parser = clap::value_parser!(u64).range(limits::CONNECTION_START_TIMEOUT_MS))]
    connection_start_timeout_ms: u64,
    /// Where dataset archives and trained models are stored: a directory, or
    /// `s3://bucket/prefix` (with the `s3` build feature; every replica of a cluster must
    /// use the same one). Default: `artifacts` in the data directory.
    #[arg(long, env = "DEEPHARDWAY_ARTIFACTS")]
    artifacts: Option<String>,
    /// The largest dataset archive accepted by DatasetService.CreateDataset, in MiB (1 to 1024).
    #[arg(long, env = "DEEPHARDWAY_MAX_UPLOAD_MB", default_value_t = defaults::MAX_UPLOAD_MB,
          value_parser = clap::value_parser!(u64).range(limits::MAX_UPLOAD_MB).map(|v| v as usize))]
    max_upload_mb: usize,
    /// Serve TLS with this certificate chain (PEM, the server's certificate first), on the
    /// same port for gRPC, grpc-web and the web client. Needs --tls-key.
    #[arg(long, env = "DEEPHARDWAY_TLS_CERT", value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "DEEPHARDWAY_TLS_KEY", value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Mutual TLS: every connection must present a client certificate signed by this CA
    /// (PEM). Needs --tls-cert.
    #[arg(long, env = "DEEPHARDWAY_TLS_CLIENT_CA", value_name = "FILE", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum AuthMode {
    On,
    Off,
}

/// The environment variable holding the bootstrap admin key's secret.
const ADMIN_KEY_ENV: &str = "DEEPHARDWAY_ADMIN_KEY";

impl ServiceFlags {
    /// Whether and how callers authenticate: the stored keys plus the bootstrap admin key.
    fn auth(&self) -> anyhow::Result<AuthConfig> {
        let from_file = match &self.admin_key_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read the admin key file {}", path.display()))?
                    .trim()
                    .to_string(),
            ),
            None => None,
        };
        let admin = from_file.or_else(|| std::env::var(ADMIN_KEY_ENV).ok().map(|k| k.trim().to_string()));
        let mut fixed_keys = Vec::new();
        if let Some(secret) = admin.filter(|s| !s.is_empty()) {
            anyhow::ensure!(
                secret.len() >= secret::MIN_OPERATOR_SECRET,
                "the bootstrap admin key is {} characters; use at least {} random ones (e.g. `openssl rand -hex 32`)",
                secret.len(),
                secret::MIN_OPERATOR_SECRET
            );
            anyhow::ensure!(self.auth == AuthMode::On, "an admin key is given but auth is off: add --auth on");
            fixed_keys.push(FixedKey {
                name: "bootstrap".into(),
                role: Role::Admin,
                tenant: DEFAULT_TENANT.into(),
                secret,
            });
        }
        if self.auth == AuthMode::On && matches!(self.cors(), Cors::Any) {
            anyhow::bail!(
                "--cors-origins '*' lets any web page call the service with its visitors' keys: name the origins"
            );
        }
        Ok(AuthConfig { enabled: self.auth == AuthMode::On, fixed_keys })
    }

    /// Refuses to expose the service beyond this machine without TLS and auth, unless the
    /// operator said --insecure.
    fn check_exposure(&self, listener: &TcpListener, config: &ServiceConfig) -> anyhow::Result<()> {
        let addr = listener.local_addr()?;
        if addr.ip().is_loopback() {
            return Ok(());
        }
        let mut missing = Vec::new();
        if config.tls.is_none() {
            missing.push("TLS (--tls-cert, --tls-key)");
        }
        if !config.auth.enabled {
            missing.push("auth (--auth on)");
        }
        if missing.is_empty() {
            return Ok(());
        }
        let missing = missing.join(" and ");
        anyhow::ensure!(
            self.insecure,
            "refusing to serve {addr} without {missing}: anyone who reaches it could run jobs, read every \
             prompt and result, and connect as a worker. Listen on 127.0.0.1 for development, add {missing}, \
             or pass --insecure to accept the risk."
        );
        tracing::warn!(%addr, "serving without {missing} (--insecure): anyone who reaches this port controls the service");
        Ok(())
    }

    /// TLS on the port, if asked for; the files are read and checked now.
    fn tls(&self) -> anyhow::Result<Option<ServerTls>> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else { return Ok(None) };
        let files = TlsFiles { cert: cert.clone(), key: key.clone(), client_ca: self.tls_client_ca.clone() };
        Ok(Some(ServerTls::load(files).context("cannot set up TLS")?))
    }

    /// `--max-connections`, within the file limit (raised to its hard limit first).
    fn connection_limit(&self) -> usize {
        let files = file_limit::raise();
        let limit = file_limit::connections_within(self.max_connections, files);
        if limit < self.max_connections {
            tracing::warn!(
                asked = self.max_connections,
                limit,
                file_limit = files,
                "--max-connections is above what the file limit allows (ulimit -n); using {limit}"
            );
        }
        limit
    }

    fn config(&self) -> anyhow::Result<ServiceConfig> {
        let artifacts = match &self.artifacts {
            Some(location) => ArtifactStore::open(location)?,
            None => ArtifactStore::open(&self.data_dir().join("artifacts").to_string_lossy())?,
        };
        tracing::info!(location = artifacts.location(), "artifact store open");
        Ok(ServiceConfig {
            max_queue_depth: self.max_queue_depth,
            default_max_attempts: self.max_attempts,
            default_timeout: Duration::from_secs(self.job_timeout_s),
            retention: Duration::from_secs(self.retention_s),
            worker_lease_ttl: Duration::from_secs(self.worker_lease_s),
            worker_heartbeat: Duration::from_millis(self.worker_heartbeat_ms),
            artifacts,
            max_upload_bytes: self.max_upload_mb << 20,
            connections: ConnectionLimits {
                max_connections: self.connection_limit(),
                start_timeout: Duration::from_millis(self.connection_start_timeout_ms),
            },
            auth: self.auth()?,
            metrics_public: self.metrics_public,
            tls: self.tls()?,
            ..ServiceConfig::default()
        })
    }

    fn web(&self) -> Web {
        let client_dir = self.web_dir.clone().or_else(|| {
            let default = PathBuf::from(DEFAULT_CLIENT_DIR);
            if default.join("index.html").is_file() {
                Some(default)
            } else {
                tracing::info!("no built web client in {DEFAULT_CLIENT_DIR}; `/` explains how to build it");
                None
            }
        });
        Web { cors: self.cors(), client_dir }
    }

    fn cors(&self) -> Cors {
        // Pages served from this port are same-origin and need no CORS at all.
        if self.cors_origins.trim() == "*" {
            Cors::Any
        } else {
            Cors::Origins(
                self.cors_origins.split(',').map(|o| o.trim().to_string()).filter(|o| !o.is_empty()).collect(),
            )
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(|| {
            std::env::var_os("HOME")
                .map(|home| PathBuf::from(home).join(".local/share/deephardway"))
                .unwrap_or_else(|| PathBuf::from("deephardway-data"))
        })
    }
}

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    service: ServiceFlags,
    #[command(flatten)]
    pub otlp: crate::telemetry::OtlpArgs,
    /// The job store: `embedded` (on this machine, in --data-dir) or `etcd:URL[,URL…]`.
    #[arg(long, env = "DEEPHARDWAY_STORE", default_value = "embedded")]
    store: String,
    #[command(flatten)]
    etcd: EtcdFlags,
}

/// How to get into etcd (`--store etcd:https://…`).
#[derive(Args)]
struct EtcdFlags {
    /// The CA certificate (PEM) that signed etcd's certificate, for https:// endpoints
    /// (default: the system's roots).
    #[arg(long, env = "DEEPHARDWAY_ETCD_CA_CERT", value_name = "FILE")]
    etcd_ca_cert: Option<PathBuf>,
    /// A client certificate (PEM) for etcd run with --client-cert-auth.
    #[arg(long, env = "DEEPHARDWAY_ETCD_CLIENT_CERT", value_name = "FILE", requires = "etcd_client_key")]
    etcd_client_cert: Option<PathBuf>,
    /// The private key of --etcd-client-cert (PEM).
    #[arg(long, env = "DEEPHARDWAY_ETCD_CLIENT_KEY", value_name = "FILE", requires = "etcd_client_cert")]
    etcd_client_key: Option<PathBuf>,
    /// The etcd user, for etcd with auth enabled; its password is read from the
    /// environment variable DEEPHARDWAY_ETCD_PASSWORD (never from a flag, which `ps` shows).
    #[arg(long, env = "DEEPHARDWAY_ETCD_USER")]
    etcd_user: Option<String>,
}

/// The environment variable holding the etcd user's password.
const ETCD_PASSWORD_ENV: &str = "DEEPHARDWAY_ETCD_PASSWORD";

impl EtcdFlags {
    fn none() -> EtcdFlags {
        EtcdFlags { etcd_ca_cert: None, etcd_client_cert: None, etcd_client_key: None, etcd_user: None }
    }

    fn given(&self) -> bool {
        self.etcd_ca_cert.is_some() || self.etcd_client_cert.is_some() || self.etcd_user.is_some()
    }

    fn access(&self) -> anyhow::Result<EtcdAccess> {
        let tls = deephardway::ClientTls::load(
            self.etcd_ca_cert.as_deref(),
            self.etcd_client_cert.as_deref(),
            self.etcd_client_key.as_deref(),
        )
        .context("etcd TLS")?;
        let user = match &self.etcd_user {
            None => None,
            Some(user) => {
                let password = std::env::var(ETCD_PASSWORD_ENV)
                    .with_context(|| format!("--etcd-user {user} needs its password in {ETCD_PASSWORD_ENV}"))?;
                Some((user.clone(), password))
            }
        };
        Ok(EtcdAccess { tls, user })
    }
}

#[derive(Args)]
pub struct UpArgs {
    #[command(flatten)]
    service: ServiceFlags,
    #[command(flatten)]
    pub otlp: crate::telemetry::OtlpArgs,
    #[command(flatten)]
    pub worker: worker::LocalWorkerFlags,
    /// The local worker's client certificate, when --tls-client-ca requires one.
    #[command(flatten)]
    client_identity: ClientIdentityArgs,
}

/// How `up`'s in-process worker reaches its own service: over TLS it trusts exactly the
/// certificate served (whoever signed it, whatever name it holds), and with mutual TLS it
/// presents --client-cert.
fn local_worker_remote(
    url: &str,
    config: &ServiceConfig,
    identity: &ClientIdentityArgs,
) -> anyhow::Result<deephardway::Remote> {
    let Some(tls) = &config.tls else {
        anyhow::ensure!(!identity.is_given(), "--client-cert and --client-key are for a service with --tls-client-ca");
        return Ok(deephardway::Remote::new(url));
    };
    anyhow::ensure!(
        !tls.requires_client_certificates() || identity.is_given(),
        "--tls-client-ca requires a client certificate on every connection, the local worker's too: \
         pass --client-cert and --client-key (signed by that CA)"
    );
    let served =
        std::fs::read(&tls.files().cert).with_context(|| format!("cannot read {}", tls.files().cert.display()))?;
    Ok(deephardway::Remote::new(url).with_tls(identity.load()?.pin(&served)?))
}

async fn open_store(spec: &str, data_dir: PathBuf, etcd: &EtcdFlags) -> anyhow::Result<SharedStore> {
    if spec == "embedded" {
        anyhow::ensure!(!etcd.given(), "the --etcd-* flags are for --store etcd:URL");
        let store = EmbeddedStore::open(&data_dir)
            .await
            .with_context(|| format!("cannot open the embedded store in {}", data_dir.display()))?;
        tracing::info!(dir = %data_dir.display(), "embedded store open");
        return Ok(Arc::new(store));
    }
    if let Some(urls) = spec.strip_prefix("etcd:") {
        let endpoints: Vec<String> =
            urls.split(',').map(str::trim).filter(|u| !u.is_empty()).map(String::from).collect();
        anyhow::ensure!(!endpoints.is_empty(), "--store etcd: needs at least one URL, e.g. etcd:http://127.0.0.1:2379");
        let access = etcd.access()?;
        anyhow::ensure!(
            access.tls.is_default() || endpoints.iter().all(|e| e.starts_with("https://")),
            "--etcd-ca-cert and --etcd-client-cert are for https:// endpoints; --store names {urls}"
        );
        let hint = if access.tls.has_identity() || !endpoints.iter().any(|e| e.starts_with("https://")) {
            ""
        } else {
            " (if it requires client certificates, pass --etcd-client-cert and --etcd-client-key)"
        };
        let store = EtcdStore::connect_with(&endpoints, &access)
            .await
            .with_context(|| format!("cannot connect to etcd{hint}"))?;
        return Ok(Arc::new(store));
    }
    anyhow::bail!("--store {spec}: expected `embedded` or `etcd:URL[,URL…]`")
}

/// Resolves on Ctrl-C or SIGTERM.
async fn bind(listen: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))
}

pub async fn serve(args: ServeArgs) -> anyhow::Result<std::process::ExitCode> {
    let store = open_store(&args.store, args.service.data_dir(), &args.etcd).await?;
    let listener = bind(&args.service.listen).await?;
    let config = args.service.config()?;
    args.service.check_exposure(&listener, &config)?;
    crate::memory::give_back_periodically();
    server::serve(listener, store, config, args.service.web(), shutdown_signal()).await?;
    Ok(std::process::ExitCode::SUCCESS)
}

pub async fn up(args: UpArgs) -> anyhow::Result<std::process::ExitCode> {
    let store = open_store("embedded", args.service.data_dir(), &EtcdFlags::none()).await?;
    let listener = bind(&args.service.listen).await?;
    let addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    let worker_stop = stop.clone();
    let mut config = args.service.config()?;
    let url = format!("{}://{addr}", if config.tls.is_some() { "https" } else { "http" });
    args.service.check_exposure(&listener, &config)?;
    // With auth on, the in-process worker gets a worker key of its own, known only to this
    // process (never stored), so that it connects like any other worker.
    let worker_key = match config.auth.enabled {
        false => None,
        true => {
            let secret = secret::generate();
            config.auth.fixed_keys.push(FixedKey {
                name: "local-worker".into(),
                role: Role::Worker,
                tenant: DEFAULT_TENANT.into(),
                secret: secret.clone(),
            });
            Some(secret)
        }
    };
    let worker_options = args.worker.options(
        local_worker_remote(&url, &config, &args.client_identity)?,
        deephardway::ApiKey::new(worker_key.as_deref())?,
    )?;
    eprintln!("deephardway is up on {url} (embedded store in {})", args.service.data_dir().display());
    use deephardway::v1::JobKind;
    let serves = |kind: JobKind| worker_options.runners.iter().flat_map(|r| r.models()).any(|m| m.kind == kind as i32);
    let example = if serves(JobKind::Generate) {
        r#"{"generate":{"prompt":"The capital of France is","max_tokens":16}}"#
    } else {
        r#"{"diagnostic":{"steps":5,"step_ms":200}}"#
    };
    // Over TLS, CA.pem stands for the CA that signed --tls-cert.
    let grpcurl_tls = match &config.tls {
        None => "-plaintext",
        Some(tls) if tls.requires_client_certificates() => "-cacert CA.pem -cert CLIENT.pem -key CLIENT.key",
        Some(_) => "-cacert CA.pem",
    };
    eprintln!("  try: grpcurl {grpcurl_tls} -d '{{\"spec\":{example}}}' {addr} deephardway.v1.JobService/RunJob");
    if serves(JobKind::Generate) || serves(JobKind::Embed) {
        eprintln!("  or OpenAI's client libraries with base_url={url}/v1");
    }
    let web = args.service.web();
    match &web.client_dir {
        Some(_) => eprintln!("  or open {url}/ in a browser"),
        None => eprintln!(
            "  (the browser client is not built: npm --prefix client-web ci && npm --prefix client-web run build)"
        ),
    }
    let worker = tokio::spawn(async move { deephardway_worker::run(worker_options, worker_stop).await });
    let signal = stop.clone();
    let served = server::serve(listener, store, config, web, async move {
        shutdown_signal().await;
        signal.cancel();
    })
    .await;
    stop.cancel();
    let _ = worker.await;
    served?;
    Ok(std::process::ExitCode::SUCCESS)
}
