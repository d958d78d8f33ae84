//! `deephardway up` and `deephardway serve`.

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context;
use clap::{Args, builder::TypedValueParser};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use deephardway_service::{
    artifacts::ArtifactStore,
    config::{ServiceConfig, defaults, limits},
    connections::ConnectionLimits,
    server,
    store::{SharedStore, embedded::EmbeddedStore, etcd::EtcdStore},
    web::{Cors, DEFAULT_CLIENT_DIR, Web},
};

use crate::{signal::shutdown_signal, worker};

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
    /// Origins allowed to call through grpc-web, comma-separated; `*` allows any.
    #[arg(long, env = "DEEPHARDWAY_CORS_ORIGINS", default_value = "*")]
    cors_origins: String,
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
    /// Open connections at most; a new one beyond it is closed at once. Keep it below the
    /// process's file limit (`ulimit -n`).
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
}

impl ServiceFlags {
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
                max_connections: self.max_connections,
                start_timeout: Duration::from_millis(self.connection_start_timeout_ms),
            },
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
    /// The job store: `embedded` (on this machine, in --data-dir) or `etcd:URL[,URL…]`.
    #[arg(long, env = "DEEPHARDWAY_STORE", default_value = "embedded")]
    store: String,
}

#[derive(Args)]
pub struct UpArgs {
    #[command(flatten)]
    service: ServiceFlags,
    #[command(flatten)]
    pub worker: worker::LocalWorkerFlags,
}

async fn open_store(spec: &str, data_dir: PathBuf) -> anyhow::Result<SharedStore> {
    if spec == "embedded" {
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
        let store = EtcdStore::connect(&endpoints).await.context("cannot connect to etcd")?;
        return Ok(Arc::new(store));
    }
    anyhow::bail!("--store {spec}: expected `embedded` or `etcd:URL[,URL…]`")
}

/// Resolves on Ctrl-C or SIGTERM.
async fn bind(listen: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))
}

pub async fn serve(args: ServeArgs) -> anyhow::Result<std::process::ExitCode> {
    let store = open_store(&args.store, args.service.data_dir()).await?;
    let listener = bind(&args.service.listen).await?;
    server::serve(listener, store, args.service.config()?, args.service.web(), shutdown_signal()).await?;
    Ok(std::process::ExitCode::SUCCESS)
}

pub async fn up(args: UpArgs) -> anyhow::Result<std::process::ExitCode> {
    let store = open_store("embedded", args.service.data_dir()).await?;
    let listener = bind(&args.service.listen).await?;
    let addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    let worker_stop = stop.clone();
    let url = format!("http://{addr}");
    let worker_options = args.worker.options(url.clone())?;
    eprintln!("deephardway is up on {url} (embedded store in {})", args.service.data_dir().display());
    use deephardway::v1::JobKind;
    let serves = |kind: JobKind| worker_options.runners.iter().flat_map(|r| r.models()).any(|m| m.kind == kind as i32);
    let example = if serves(JobKind::Generate) {
        r#"{"generate":{"prompt":"The capital of France is","max_tokens":16}}"#
    } else {
        r#"{"diagnostic":{"steps":5,"step_ms":200}}"#
    };
    eprintln!("  try: grpcurl -plaintext -d '{example}' {addr} deephardway.v1.Jobs/Run");
    let web = args.service.web();
    match &web.client_dir {
        Some(_) => eprintln!("  or open {url}/ in a browser"),
        None => eprintln!(
            "  (the browser client is not built: npm --prefix client-web ci && npm --prefix client-web run build)"
        ),
    }
    let worker = tokio::spawn(async move { deephardway_worker::run(worker_options, worker_stop).await });
    let signal = stop.clone();
    let config = args.service.config()?;
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
