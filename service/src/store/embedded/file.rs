//! How big the file may stay. redb reuses the pages a commit frees, but never gives them
//! back to the file system: after a burst, or a long run of small commits whose frees
//! readers held back, the file stays at its high-water mark, mostly free pages (a bench
//! of 100,000 jobs with a 10 s retention left a 229 MiB file around a few MiB of keys).
//!
//! So the writer compacts it (redb's `Database::compact`) when it is at least
//! [`FileLimits::compact_above`] and at least half of it is free, looking at most once per
//! [`FileLimits::check_every`], and once when the store opens. Compaction needs every
//! transaction closed: the writer takes the database's lock exclusively, so reads and
//! writes wait while it runs (a fraction of a second for tens of MiB; logged).

use std::{
    path::Path,
    sync::{Arc, PoisonError, RwLock, RwLockReadGuard},
    time::{Duration, Instant},
};

use redb::Database;

use super::internal;
use crate::store::StoreError;

/// The database, behind the lock compaction takes exclusively.
pub(super) type SharedDb = Arc<RwLock<Database>>;

/// A read hold on the database, for one transaction.
pub(super) fn hold(db: &SharedDb) -> RwLockReadGuard<'_, Database> {
    db.read().unwrap_or_else(PoisonError::into_inner)
}

/// When the file is compacted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileLimits {
    /// Files smaller than this are left as they are.
    pub compact_above: u64,
    /// How often the writer looks at the file's size.
    pub check_every: Duration,
}

impl Default for FileLimits {
    fn default() -> Self {
        FileLimits { compact_above: 64 << 20, check_every: Duration::from_secs(60) }
    }
}

/// Whether the file at `path` is at least `limits.compact_above` and at least half free.
pub(super) fn worth_compacting(db: &Database, path: &Path, limits: FileLimits) -> Result<bool, StoreError> {
    let size = std::fs::metadata(path).map_err(internal)?.len();
    if size < limits.compact_above {
        return Ok(false);
    }
    let txn = db.begin_write().map_err(internal)?;
    let free = txn.stats().map_err(internal)?.fragmented_bytes();
    txn.abort().map_err(internal)?;
    tracing::debug!(size_mib = size >> 20, free_mib = free >> 20, "the embedded store's file");
    Ok(free.saturating_mul(2) >= size)
}

/// Compacts the database (no transaction may be open) and logs what it gave back.
pub(super) fn compact(db: &mut Database, path: &Path) -> Result<(), StoreError> {
    let size = |path: &Path| std::fs::metadata(path).map_or(0, |m| m.len());
    let (before, started) = (size(path), Instant::now());
    // Each call moves what it can; a few more calls move the rest.
    for _ in 0..4 {
        if !db.compact().map_err(internal)? {
            break;
        }
    }
    let after = size(path);
    tracing::info!(
        before_mib = before >> 20,
        after_mib = after >> 20,
        took_ms = started.elapsed().as_millis() as u64,
        "compacted the embedded store's file"
    );
    Ok(())
}
