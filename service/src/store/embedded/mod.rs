//! The single-machine store: etcd's semantics on one redb file, durable across restarts.
//!
//! - **One writer, group commit.** A dedicated thread owns every write. It takes all the
//!   requests waiting in its channel, applies them in one redb write transaction (each
//!   store transaction still gets its own revision) and commits once, so concurrent
//!   writers share one fsync. Reads go straight to redb snapshots from any task.
//! - **History for watches.** Every revision's changes are also written to a log table.
//!   A watch from an old revision replays the log, then receives live changes; the
//!   writer thread does both hand-offs, so nothing falls between them. The log keeps the
//!   last [`HISTORY`] revisions and at most [`HISTORY_BYTES`] of them ([`history`]);
//!   older starts fail with `Compacted`.
//! - **Leases** are stored with their deadline (wall clock), so after a crash and restart
//!   the leases of processes that are gone still expire and their keys are deleted.
//! - A watcher that falls [`WATCH_BUFFER`] events behind is dropped; its stream ends with
//!   an error and it resumes from its next revision (the service's hub does).
//!
//! - **A bounded file.** redb never gives freed pages back to the file system; the
//!   writer compacts the file when it is large and mostly free ([`file`](mod@file)).
//!
//! Files: this one is the handle and the reads; [`writer`] the thread that owns every
//! write; [`encoding`] the bytes of entries and log records; [`history`] what of the
//! log is kept; [`file`](mod@file) when the file is compacted.

mod encoding;
mod file;
mod history;
mod writer;

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock, mpsc as std_mpsc},
    thread::JoinHandle,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, TableDefinition};

use encoding::Entry;
pub use file::FileLimits;
use file::SharedDb;
pub use history::{HISTORY, HISTORY_BYTES, HistoryLimits};
use tokio::sync::{mpsc, oneshot};
use writer::{Request, Writer};

use super::{KeyValue, LeaseId, MAX_TXN_OPS, RangeResult, Store, StoreError, Txn, TxnOutcome, WatchStream};

/// Events buffered per watcher before it is dropped as too slow.
const WATCH_BUFFER: usize = 8192;
/// How often the writer looks for expired leases.
const LEASE_TICK: Duration = Duration::from_millis(100);

/// key → encoded [`Entry`].
const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
/// revision → encoded changes made at that revision.
const LOG: TableDefinition<i64, &[u8]> = TableDefinition::new("log");
/// lease id → (ttl in ms, deadline in ms since the epoch).
const LEASES: TableDefinition<i64, (u64, i64)> = TableDefinition::new("leases");
/// (lease id, key) for every key attached to a lease.
const LEASE_KEYS: TableDefinition<(i64, &str), ()> = TableDefinition::new("lease_keys");
/// "revision", "compacted", "next_lease".
const META: TableDefinition<&str, i64> = TableDefinition::new("meta");

fn internal(e: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(format!("embedded store: {e}"))
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// The embedded store. Dropping the last handle stops the writer and closes the file.
pub struct EmbeddedStore {
    db: SharedDb,
    requests: Mutex<Option<std_mpsc::Sender<Request>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    path: PathBuf,
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir`, in the file `store.redb`.
    pub async fn open(dir: impl AsRef<Path>) -> Result<EmbeddedStore, StoreError> {
        Self::open_with_limits(dir, HistoryLimits::default()).await
    }

    /// Like [`open`](Self::open), keeping `history` revisions for watches.
    pub async fn open_with_history(dir: impl AsRef<Path>, history: i64) -> Result<EmbeddedStore, StoreError> {
        Self::open_with_limits(dir, HistoryLimits { revisions: history, ..HistoryLimits::default() }).await
    }

    /// Like [`open`](Self::open), keeping history for watches within `limits`.
    pub async fn open_with_limits(dir: impl AsRef<Path>, limits: HistoryLimits) -> Result<EmbeddedStore, StoreError> {
        Self::open_with_file_limits(dir, limits, FileLimits::default()).await
    }

    /// Like [`open_with_limits`](Self::open_with_limits), compacting the file by `file`.
    pub async fn open_with_file_limits(
        dir: impl AsRef<Path>,
        limits: HistoryLimits,
        file: FileLimits,
    ) -> Result<EmbeddedStore, StoreError> {
        let dir = dir.as_ref().to_path_buf();
        tokio::task::spawn_blocking(move || Self::open_blocking(&dir, limits, file)).await.map_err(internal)?
    }

    fn open_blocking(dir: &Path, history: HistoryLimits, file_limits: FileLimits) -> Result<EmbeddedStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| internal(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join("store.redb");
        let mut db = Database::create(&path).map_err(|e| internal(format!("cannot open {}: {e}", path.display())))?;
        // Nothing else has the file yet: the one moment compaction waits for no one.
        if file::worth_compacting(&db, &path, file_limits)? {
            file::compact(&mut db, &path)?;
        }
        let db = Arc::new(RwLock::new(db));
        {
            let txn = file::hold(&db).begin_write().map_err(internal)?;
            {
                txn.open_table(KV).map_err(internal)?;
                txn.open_table(LOG).map_err(internal)?;
                txn.open_table(LEASES).map_err(internal)?;
                txn.open_table(LEASE_KEYS).map_err(internal)?;
                txn.open_table(META).map_err(internal)?;
            }
            txn.commit().map_err(internal)?;
        }
        let (tx, rx) = std_mpsc::channel();
        let writer = Writer::new(db.clone(), path.clone(), history, file_limits)?;
        let handle = std::thread::Builder::new()
            .name("embedded-store-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(internal)?;
        Ok(EmbeddedStore { db, requests: Mutex::new(Some(tx)), writer: Mutex::new(Some(handle)), path })
    }

    /// Where the data lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Request) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        {
            let requests = self.requests.lock().expect("not poisoned");
            let sender = requests.as_ref().ok_or_else(|| StoreError::Unavailable("store closed".into()))?;
            sender.send(make(tx)).map_err(|_| StoreError::Unavailable("store writer stopped".into()))?;
        }
        rx.await.map_err(|_| StoreError::Unavailable("store writer stopped".into()))
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            // Held for the whole read: compaction waits for no transaction to be open.
            let held = file::hold(&db);
            let txn = held.begin_read().map_err(internal)?;
            f(&txn)
        })
        .await
        .map_err(internal)?
    }

    /// Stops the writer and waits until the file is closed (so it can be reopened).
    pub fn close(&self) {
        self.requests.lock().expect("not poisoned").take();
        if let Some(handle) = self.writer.lock().expect("not poisoned").take() {
            let _ = handle.join();
        }
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        self.close();
    }
}

fn read_revision(txn: &redb::ReadTransaction) -> Result<i64, StoreError> {
    let meta = txn.open_table(META).map_err(internal)?;
    Ok(meta.get("revision").map_err(internal)?.map_or(0, |v| v.value()))
}

/// The end of a prefix range: the prefix with its last byte incremented.
fn prefix_end(prefix: &str) -> Option<String> {
    let mut bytes = prefix.as_bytes().to_vec();
    while let Some(last) = bytes.pop() {
        if last < 0x7f {
            bytes.push(last + 1);
            return String::from_utf8(bytes).ok();
        }
    }
    None
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let key = key.to_string();
        self.read(move |txn| {
            let kv = txn.open_table(KV).map_err(internal)?;
            match kv.get(key.as_str()).map_err(internal)? {
                Some(v) => Ok(Some(Entry::decode(v.value())?.into_kv(key))),
                None => Ok(None),
            }
        })
        .await
    }

    async fn range(&self, prefix: &str, limit: usize) -> Result<RangeResult, StoreError> {
        let prefix = prefix.to_string();
        self.read(move |txn| {
            let revision = read_revision(txn)?;
            let kv = txn.open_table(KV).map_err(internal)?;
            let mut kvs = Vec::new();
            let iter = match prefix_end(&prefix) {
                Some(end) => kv.range(prefix.as_str()..end.as_str()).map_err(internal)?,
                None => kv.range(prefix.as_str()..).map_err(internal)?,
            };
            for item in iter {
                let (k, v) = item.map_err(internal)?;
                let key = k.value().to_string();
                if !key.starts_with(&prefix) {
                    break;
                }
                kvs.push(Entry::decode(v.value())?.into_kv(key));
                if limit > 0 && kvs.len() == limit {
                    break;
                }
            }
            Ok(RangeResult { kvs, revision })
        })
        .await
    }

    async fn range_rev(&self, prefix: &str, before: Option<&str>, limit: usize) -> Result<RangeResult, StoreError> {
        let prefix = prefix.to_string();
        let before = before.map(str::to_string);
        self.read(move |txn| {
            let revision = read_revision(txn)?;
            let kv = txn.open_table(KV).map_err(internal)?;
            let end = match before {
                Some(before) => Some(before),
                None => prefix_end(&prefix),
            };
            let iter = match &end {
                Some(end) => kv.range(prefix.as_str()..end.as_str()).map_err(internal)?,
                None => kv.range(prefix.as_str()..).map_err(internal)?,
            };
            let mut kvs = Vec::new();
            for item in iter.rev() {
                let (k, v) = item.map_err(internal)?;
                let key = k.value().to_string();
                if !key.starts_with(&prefix) {
                    continue;
                }
                kvs.push(Entry::decode(v.value())?.into_kv(key));
                if limit > 0 && kvs.len() == limit {
                    break;
                }
            }
            Ok(RangeResult { kvs, revision })
        })
        .await
    }

    async fn count(&self, prefix: &str) -> Result<usize, StoreError> {
        let prefix = prefix.to_string();
        self.read(move |txn| {
            let kv = txn.open_table(KV).map_err(internal)?;
            let iter = match prefix_end(&prefix) {
                Some(end) => kv.range(prefix.as_str()..end.as_str()).map_err(internal)?,
                None => kv.range(prefix.as_str()..).map_err(internal)?,
            };
            let mut n = 0;
            for item in iter {
                let (k, _) = item.map_err(internal)?;
                if !k.value().starts_with(&prefix) {
                    break;
                }
                n += 1;
            }
            Ok(n)
        })
        .await
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        // The same bound as etcd's, so that a write that would fail on a cluster fails in
        // development and in the tests on this store too.
        if txn.ops.len() > MAX_TXN_OPS || txn.compares.len() > MAX_TXN_OPS {
            return Err(StoreError::Internal(format!(
                "a transaction of {} operations and {} comparisons; at most {MAX_TXN_OPS} of each",
                txn.ops.len(),
                txn.compares.len()
            )));
        }
        self.ask(|tx| Request::Txn(txn, tx)).await?
    }

    async fn watch(&self, prefix: &str, start_revision: i64) -> Result<WatchStream, StoreError> {
        let (events, rx) = mpsc::channel(WATCH_BUFFER);
        let prefix = prefix.to_string();
        self.ask(|ack| Request::Watch { prefix, start_revision, events, ack }).await??;
        // The channel closes only when the watcher was dropped as too slow or the store
        // closed; either way the stream ends with an error so the caller resumes.
        let stream = futures::stream::unfold(Some(rx), |state| async move {
            let mut rx = state?;
            match rx.recv().await {
                Some(event) => Some((Ok(event), Some(rx))),
                None => Some((
                    Err(StoreError::Unavailable("watch ended: the watcher fell behind or the store closed".into())),
                    None,
                )),
            }
        });
        Ok(Box::pin(stream))
    }

    async fn lease_grant(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        self.ask(|tx| Request::LeaseGrant(ttl, tx)).await?
    }

    async fn lease_keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.ask(|tx| Request::LeaseKeepAlive(lease, tx)).await?
    }

    async fn lease_revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.ask(|tx| Request::LeaseRevoke(lease, tx)).await?
    }

    async fn revision(&self) -> Result<i64, StoreError> {
        self.read(read_revision).await
    }

    fn name(&self) -> &'static str {
        "embedded"
    }
}
