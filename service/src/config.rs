//! The service's tunables, with defaults fit for one machine. `deephardway serve --help`
//! documents each as a flag; the flags take their defaults and bounds from [`defaults`]
//! and [`limits`], so each is stated once.

use std::time::Duration;

use crate::{artifacts::ArtifactStore, auth::AuthConfig, connections::ConnectionLimits, tls::ServerTls};

#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Most jobs waiting in line across all models; more → RESOURCE_EXHAUSTED.
    pub max_queue_depth: usize,
    /// Attempts when a request does not say; a job whose worker is lost this many times fails.
    pub default_max_attempts: u32,
    /// Running-time limit when a request does not say.
    pub default_timeout: Duration,
    /// How long finished jobs (and their events) are kept.
    pub retention: Duration,
    /// A worker's lease: if its service replica stops renewing it for this long, its
    /// jobs go back in line.
    pub worker_lease_ttl: Duration,
    /// How often a worker must prove it is alive itself (a heartbeat or a report): the
    /// welcome tells it, and a session that hears nothing for five intervals is ended,
    /// so a hung worker's jobs go back in line within seconds, not at their timeout.
    pub worker_heartbeat: Duration,
    /// Output chunks arriving within this window are written as one event.
    pub output_coalesce: Duration,
    /// How long a cancelled job's worker gets to stop before the job is ended anyway.
    pub cancel_grace: Duration,
    /// Where dataset archives and trained models are kept (in memory unless told).
    pub artifacts: ArtifactStore,
    /// The largest dataset archive `CreateDataset` accepts.
    pub max_upload_bytes: usize,
    /// Open connections at most (set it below the process's file limit, `ulimit -n`),
    /// and how soon a new connection must send its first bytes.
    pub connections: ConnectionLimits,
    /// TLS on the port (and mutual TLS if it names a client CA); none: plain HTTP/2 and
    /// HTTP/1.1.
    pub tls: Option<ServerTls>,
    /// Whether callers need an API key, and the keys given to the process (see `auth`).
    pub auth: AuthConfig,
    /// Serve `/metrics` without a key even with auth on.
    pub metrics_public: bool,
}

/// The default of each tunable, in the units its flag takes.
pub mod defaults {
    pub const MAX_QUEUE_DEPTH: usize = 10_000;
    pub const MAX_ATTEMPTS: u32 = 3;
    pub const JOB_TIMEOUT_SECONDS: u64 = 3600;
    pub const RETENTION_SECONDS: u64 = 24 * 3600;
    pub const WORKER_LEASE_SECONDS: u64 = 10;
    pub const WORKER_HEARTBEAT_MS: u64 = 2000;
    pub const MAX_UPLOAD_MB: usize = 64;
    pub const MAX_CONNECTIONS: usize = 10_000;
    pub const CONNECTION_START_TIMEOUT_MS: u64 = 10_000;
}

/// The range each flag accepts; a value outside is refused at start, not clamped.
pub mod limits {
    use std::ops::RangeInclusive;

    pub const MAX_QUEUE_DEPTH: RangeInclusive<u64> = 1..=10_000_000;
    /// As a job's own `max_attempts` (see `validate`).
    pub const MAX_ATTEMPTS: RangeInclusive<u64> = 1..=10;
    /// As a job's own `timeout`: at most a day.
    pub const JOB_TIMEOUT_SECONDS: RangeInclusive<u64> = 1..=86_400;
    pub const RETENTION_SECONDS: RangeInclusive<u64> = 1..=10 * 365 * 86_400;
    pub const WORKER_LEASE_SECONDS: RangeInclusive<u64> = 1..=3600;
    pub const WORKER_HEARTBEAT_MS: RangeInclusive<u64> = 50..=600_000;
    pub const MAX_UPLOAD_MB: RangeInclusive<u64> = 1..=1024;
    pub const MAX_CONNECTIONS: RangeInclusive<u64> = 1..=1_000_000;
    pub const CONNECTION_START_TIMEOUT_MS: RangeInclusive<u64> = 100..=600_000;
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            max_queue_depth: defaults::MAX_QUEUE_DEPTH,
            default_max_attempts: defaults::MAX_ATTEMPTS,
            default_timeout: Duration::from_secs(defaults::JOB_TIMEOUT_SECONDS),
            retention: Duration::from_secs(defaults::RETENTION_SECONDS),
            worker_lease_ttl: Duration::from_secs(defaults::WORKER_LEASE_SECONDS),
            worker_heartbeat: Duration::from_millis(defaults::WORKER_HEARTBEAT_MS),
            output_coalesce: Duration::from_millis(30),
            cancel_grace: Duration::from_secs(10),
            artifacts: ArtifactStore::in_memory(),
            max_upload_bytes: defaults::MAX_UPLOAD_MB << 20,
            connections: ConnectionLimits {
                max_connections: defaults::MAX_CONNECTIONS,
                start_timeout: Duration::from_millis(defaults::CONNECTION_START_TIMEOUT_MS),
            },
            tls: None,
            auth: AuthConfig::default(),
            metrics_public: false,
        }
    }
}
