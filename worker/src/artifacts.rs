//! Files the service keeps for jobs (dataset archives, trained models), fetched through
//! `WorkerService.FetchArtifact` and cached on the worker's disk. A fetch names the job
//! whose assignment names the file, with the assignment's fence: the service serves a
//! worker only the files of the jobs it is running.
//!
//! Artifact paths never change meaning (a dataset's path holds its SHA-256, a trained
//! model's its version), so a cached file is valid forever. A download goes to a
//! temporary file that is renamed into place when complete: a worker killed mid-download
//! never leaves a partial file behind, and two jobs fetching the same file both succeed.

use std::path::{Component, Path, PathBuf};

use anyhow::{Context, bail};
use deephardway::Authorized;
use deephardway::worker::v1::{FetchArtifactRequest, worker_service_client::WorkerServiceClient};
use tokio::io::AsyncWriteExt;

use crate::runner::JobContext;

/// deephardway's cache on this machine, for artifacts and model weights alike:
/// `$DEEPHARDWAY_CACHE`, else `~/.cache/deephardway`.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("DEEPHARDWAY_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/deephardway"))
}

/// A worker's local copy of the artifacts its jobs used.
#[derive(Debug, Clone)]
pub struct ArtifactCache {
    dir: PathBuf,
}

impl ArtifactCache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        ArtifactCache { dir: dir.into() }
    }

    /// `artifacts` in deephardway's cache (default `~/.cache/deephardway/artifacts`).
    pub fn default_dir() -> PathBuf {
        cache_dir().join("artifacts")
    }

    /// The local file holding the artifact at `path`, which `job`'s assignment names,
    /// fetched from the service for that job if it is not cached yet.
    pub async fn get(&self, job: &JobContext, path: &str) -> anyhow::Result<PathBuf> {
        let local = self.local_path(path)?;
        if local.is_file() {
            return Ok(local);
        }
        let parent = local.parent().expect("artifact paths have a parent");
        tokio::fs::create_dir_all(parent).await.with_context(|| format!("cannot create {}", parent.display()))?;
        let partial = parent.join(format!(".{}.{}.partial", std::process::id(), rand::random::<u64>()));
        let request = FetchArtifactRequest {
            path: path.to_string(),
            job_id: job.assignment.job_id.clone(),
            fence: job.assignment.fence,
        };
        let fetched = fetch_into(job.service.clone(), request, &partial).await;
        if let Err(e) = fetched {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(e);
        }
        tokio::fs::rename(&partial, &local).await.with_context(|| format!("cannot write {}", local.display()))?;
        Ok(local)
    }

    /// The cache file for an artifact path, refusing paths that would leave the cache.
    fn local_path(&self, path: &str) -> anyhow::Result<PathBuf> {
        let relative = Path::new(path);
        if path.is_empty() || !relative.components().all(|c| matches!(c, Component::Normal(_))) {
            bail!("artifact path {path:?} is not a plain relative path");
        }
        Ok(self.dir.join(relative))
    }
}

async fn fetch_into(
    mut service: WorkerServiceClient<Authorized>,
    request: FetchArtifactRequest,
    file: &Path,
) -> anyhow::Result<()> {
    let path = request.path.clone();
    let mut chunks = service
        .fetch_artifact(request)
        .await
        .map_err(|s| anyhow::anyhow!("cannot fetch {path}: {} ({:?})", s.message(), s.code()))?
        .into_inner();
    let mut out = tokio::fs::File::create(file).await.with_context(|| format!("cannot create {}", file.display()))?;
    let (mut received, mut expected) = (0u64, None);
    while let Some(chunk) =
        chunks.message().await.map_err(|s| anyhow::anyhow!("fetching {path} broke off: {}", s.message()))?
    {
        expected = expected.or(Some(chunk.total_bytes));
        received += chunk.data.len() as u64;
        out.write_all(&chunk.data).await?;
    }
    out.sync_all().await?;
    if expected.is_some_and(|e| e != received) {
        bail!("fetching {path}: got {received} bytes of {}", expected.unwrap_or_default());
    }
    Ok(())
}
