//! The service's tunables, with defaults fit for one machine. `deephardway serve --help`
//! documents each as a flag.

use std::time::Duration;

use crate::artifacts::ArtifactStore;

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
    /// Output chunks arriving within this window are written as one event.
    pub output_coalesce: Duration,
    /// How long a cancelled job's worker gets to stop before the job is ended anyway.
    pub cancel_grace: Duration,
    /// Where dataset archives and trained models are kept (in memory unless told).
    pub artifacts: ArtifactStore,
    /// The largest dataset archive `Datasets.Upload` accepts.
    pub max_upload_bytes: usize,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            max_queue_depth: 10_000,
            default_max_attempts: 3,
            default_timeout: Duration::from_secs(3600),
            retention: Duration::from_secs(24 * 3600),
            worker_lease_ttl: Duration::from_secs(10),
            output_coalesce: Duration::from_millis(30),
            cancel_grace: Duration::from_secs(10),
            artifacts: ArtifactStore::in_memory(),
            max_upload_bytes: 64 << 20,
        }
    }
}
