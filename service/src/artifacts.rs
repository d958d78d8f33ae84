//! The artifact store: the files behind datasets and trained models, kept apart from the
//! job store (which holds only their descriptions), behind the `object_store` crate.
//!
//! On one machine it is a local directory (`<data-dir>/artifacts`). A cluster of service
//! replicas needs one store they all reach: an S3-compatible bucket (`s3://bucket/prefix`,
//! credentials from the usual `AWS_*` variables; build with the `s3` feature) or a shared
//! filesystem. Tests use an in-memory store. Workers never talk to it: they fetch
//! through `Workers.FetchArtifact`, so they need no credentials and can live anywhere.

use std::{fmt, sync::Arc};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, local::LocalFileSystem, memory::InMemory, path::Path};
use tonic::Status;

/// A handle to the artifact store; cheap to clone.
#[derive(Clone)]
pub struct ArtifactStore {
    inner: Arc<dyn ObjectStore>,
    prefix: Path,
    location: String,
}

impl fmt::Debug for ArtifactStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ArtifactStore({})", self.location)
    }
}

impl Default for ArtifactStore {
    fn default() -> Self {
        ArtifactStore::in_memory()
    }
}

/// The most characters of an artifact path an error quotes.
const QUOTED_PATH: usize = 128;

/// `path` as an error quotes it: at most [`QUOTED_PATH`] characters.
fn quoted(path: &str) -> String {
    match path.char_indices().nth(QUOTED_PATH) {
        Some((end, _)) => format!("{:?}… ({} bytes)", &path[..end], path.len()),
        None => format!("{path:?}"),
    }
}

/// A failure on the artifact at `path` (as the caller named it, not where the store keeps
/// it on disk) as a gRPC status. The store's own error names its disk path or bucket, so
/// it goes to the log, not to the caller.
fn status(path: &str) -> impl Fn(object_store::Error) -> Status + use<> {
    let path = quoted(path);
    move |e| match e {
        object_store::Error::NotFound { .. } => Status::not_found(format!("artifact {path} is missing")),
        other => {
            tracing::warn!(artifact = %path, error = %other, "artifact store failed");
            Status::unavailable(format!("artifact store: cannot reach artifact {path} (the service's log says why)"))
        }
    }
}

impl ArtifactStore {
    /// A store that lives as long as the process (tests, throwaway services).
    pub fn in_memory() -> Self {
        ArtifactStore { inner: Arc::new(InMemory::new()), prefix: Path::default(), location: "memory".into() }
    }

    /// Opens a directory (created if missing) or a URL such as `s3://bucket/prefix`.
    pub fn open(location: &str) -> anyhow::Result<Self> {
        if location.contains("://") && !location.starts_with("file://") {
            let url = url::Url::parse(location)?;
            let (store, prefix) = object_store::parse_url_opts(&url, std::env::vars()).map_err(|e| {
                anyhow::anyhow!("artifact store {location}: {e} (S3 needs a build with `--features s3`)")
            })?;
            return Ok(ArtifactStore { inner: Arc::from(store), prefix, location: location.into() });
        }
        let dir = location.strip_prefix("file://").unwrap_or(location);
        std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("cannot create {dir}: {e}"))?;
        // fsync: a put returns once the file and its directory entry are on disk, so a
        // record committed after it never points at a torn or missing file.
        let store = LocalFileSystem::new_with_prefix(dir)?.with_automatic_cleanup(true).with_fsync(true);
        Ok(ArtifactStore { inner: Arc::new(store), prefix: Path::default(), location: dir.into() })
    }

    /// Where it is, for logs.
    pub fn location(&self) -> &str {
        &self.location
    }

    fn path(&self, path: &str) -> Result<Path, Status> {
        let relative = Path::parse(path).map_err(|_| {
            Status::invalid_argument(format!(
                "artifact path {} is not a relative path of plain segments (no `..`, `.` or empty ones)",
                quoted(path)
            ))
        })?;
        if relative.as_ref().is_empty() {
            return Err(Status::invalid_argument("artifact path is empty"));
        }
        Ok(self.prefix.parts().chain(relative.parts()).collect())
    }

    /// Stores `bytes` at `path`, replacing what was there.
    pub async fn put(&self, path: &str, bytes: Bytes) -> Result<(), Status> {
        self.inner.put(&self.path(path)?, PutPayload::from_bytes(bytes)).await.map(|_| ()).map_err(status(path))
    }

    /// The artifact's size and its bytes as a stream of chunks.
    pub async fn get(&self, path: &str) -> Result<(u64, impl Stream<Item = Result<Bytes, Status>> + use<>), Status> {
        let result = self.inner.get(&self.path(path)?).await.map_err(status(path))?;
        let size = result.meta.size;
        let status = status(path);
        Ok((size, result.into_stream().map(move |chunk| chunk.map_err(&status))))
    }

    /// Removes the artifact at `path`; a missing one is not an error.
    pub async fn delete(&self, path: &str) -> Result<(), Status> {
        match self.inner.delete(&self.path(path)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(status(path)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(store: &ArtifactStore, path: &str) -> Vec<u8> {
        let (size, stream) = store.get(path).await.unwrap();
        let chunks: Vec<Bytes> = stream.map(|c| c.unwrap()).collect().await;
        let all = chunks.concat();
        assert_eq!(all.len() as u64, size);
        all
    }

    #[tokio::test]
    async fn local_and_memory_stores_keep_and_forget_files() {
        let dir = tempfile::tempdir().unwrap();
        for store in [ArtifactStore::in_memory(), ArtifactStore::open(dir.path().to_str().unwrap()).unwrap()] {
            store.put("datasets/cats/abc.tar", Bytes::from_static(b"archive")).await.unwrap();
            assert_eq!(read(&store, "datasets/cats/abc.tar").await, b"archive");
            store.delete("datasets/cats/abc.tar").await.unwrap();
            store.delete("datasets/cats/abc.tar").await.unwrap();
            let missing = store.get("datasets/cats/abc.tar").await.err().unwrap();
            assert_eq!(missing.code(), tonic::Code::NotFound);
            assert_eq!(store.put("../escape", Bytes::new()).await.unwrap_err().code(), tonic::Code::InvalidArgument);
        }
        assert!(dir.path().join("datasets").exists() || !dir.path().join("datasets/cats/abc.tar").exists());
    }

    #[tokio::test]
    async fn errors_quote_a_short_path_and_never_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().to_str().unwrap().to_string();
        let store = ArtifactStore::open(&disk).unwrap();
        let long = format!("datasets/{}", "x".repeat(10_000));
        for error in [
            store.put(&long, Bytes::from_static(b"a")).await.unwrap_err(),
            store.get(&long).await.err().unwrap(),
            store.put(&format!("../{long}"), Bytes::new()).await.unwrap_err(),
        ] {
            let message = error.message();
            assert!(message.len() < 400, "{} bytes: {message}", message.len());
            assert!(!message.contains(&disk), "{message}");
            assert!(!message.contains(&"x".repeat(200)), "{message}");
        }
    }
}
