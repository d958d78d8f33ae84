//! The single-machine store: etcd's semantics on one redb file, durable across restarts.
//!
//! - **One writer, group commit.** A dedicated thread owns every write. It takes all the
//!   requests waiting in its channel, applies them in one redb write transaction (each
//!   store transaction still gets its own revision) and commits once, so concurrent
//!   writers share one fsync. Reads go straight to redb snapshots from any task.
//! - **History for watches.** Every revision's changes are also written to a log table.
//!   A watch from an old revision replays the log, then receives live changes; the
//!   writer thread does both hand-offs, so nothing falls between them. The log keeps the
//!   last [`HISTORY`] revisions; older starts fail with `Compacted`.
//! - **Leases** are stored with their deadline (wall clock), so after a crash and restart
//!   the leases of processes that are gone still expire and their keys are deleted.
//! - A watcher that falls [`WATCH_BUFFER`] events behind is dropped; its stream ends with
//!   an error and it resumes from its next revision (the service's hub does).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, mpsc as std_mpsc},
    thread::JoinHandle,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{mpsc, oneshot};

use super::{
    Compare, EventKind, KeyValue, LeaseId, Op, RangeResult, Store, StoreError, Txn, TxnOutcome, WatchEvent, WatchStream,
};

/// Revisions of history kept for watches, by default.
pub const HISTORY: i64 = 100_000;
/// History is compacted in steps of at most this many revisions per commit.
const COMPACTION_STEP: i64 = 10_000;
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

/// A stored key's metadata and value.
struct Entry {
    create_revision: i64,
    mod_revision: i64,
    lease: i64,
    value: Vec<u8>,
}

impl Entry {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24 + self.value.len());
        out.extend_from_slice(&self.create_revision.to_le_bytes());
        out.extend_from_slice(&self.mod_revision.to_le_bytes());
        out.extend_from_slice(&self.lease.to_le_bytes());
        out.extend_from_slice(&self.value);
        out
    }

    fn decode(bytes: &[u8]) -> Result<Entry, StoreError> {
        if bytes.len() < 24 {
            return Err(internal("corrupt entry"));
        }
        let int = |i: usize| i64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
        Ok(Entry { create_revision: int(0), mod_revision: int(8), lease: int(16), value: bytes[24..].to_vec() })
    }

    fn into_kv(self, key: String) -> KeyValue {
        KeyValue {
            key,
            value: self.value,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            lease: self.lease,
        }
    }
}

/// Encodes one revision's changes: per change, kind, key, and for puts the entry.
fn encode_changes(changes: &[WatchEvent]) -> Vec<u8> {
    let mut out = Vec::new();
    for change in changes {
        out.push(if change.kind == EventKind::Put { 1 } else { 0 });
        out.extend_from_slice(&(change.kv.key.len() as u32).to_le_bytes());
        out.extend_from_slice(change.kv.key.as_bytes());
        let entry = Entry {
            create_revision: change.kv.create_revision,
            mod_revision: change.kv.mod_revision,
            lease: change.kv.lease,
            value: change.kv.value.clone(),
        }
        .encode();
        out.extend_from_slice(&(entry.len() as u32).to_le_bytes());
        out.extend_from_slice(&entry);
    }
    out
}

fn decode_changes(mut bytes: &[u8]) -> Result<Vec<WatchEvent>, StoreError> {
    let mut changes = Vec::new();
    let take = |bytes: &mut &[u8], n: usize| -> Result<Vec<u8>, StoreError> {
        if bytes.len() < n {
            return Err(internal("corrupt log"));
        }
        let (head, tail) = bytes.split_at(n);
        *bytes = tail;
        Ok(head.to_vec())
    };
    while !bytes.is_empty() {
        let kind = if take(&mut bytes, 1)?[0] == 1 { EventKind::Put } else { EventKind::Delete };
        let len = u32::from_le_bytes(take(&mut bytes, 4)?.try_into().expect("4 bytes")) as usize;
        let key = String::from_utf8(take(&mut bytes, len)?).map_err(internal)?;
        let len = u32::from_le_bytes(take(&mut bytes, 4)?.try_into().expect("4 bytes")) as usize;
        let entry = Entry::decode(&take(&mut bytes, len)?)?;
        changes.push(WatchEvent { kind, kv: entry.into_kv(key) });
    }
    Ok(changes)
}

enum Request {
    Txn(Txn, oneshot::Sender<Result<TxnOutcome, StoreError>>),
    LeaseGrant(Duration, oneshot::Sender<Result<LeaseId, StoreError>>),
    LeaseKeepAlive(LeaseId, oneshot::Sender<Result<(), StoreError>>),
    LeaseRevoke(LeaseId, oneshot::Sender<Result<(), StoreError>>),
    Watch {
        prefix: String,
        start_revision: i64,
        events: mpsc::Sender<WatchEvent>,
        ack: oneshot::Sender<Result<(), StoreError>>,
    },
}

/// The embedded store. Dropping the last handle stops the writer and closes the file.
pub struct EmbeddedStore {
    db: Arc<Database>,
    requests: Mutex<Option<std_mpsc::Sender<Request>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    path: PathBuf,
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir`, in the file `store.redb`.
    pub async fn open(dir: impl AsRef<Path>) -> Result<EmbeddedStore, StoreError> {
        Self::open_with_history(dir, HISTORY).await
    }

    /// Like [`open`](Self::open), keeping `history` revisions for watches.
    pub async fn open_with_history(dir: impl AsRef<Path>, history: i64) -> Result<EmbeddedStore, StoreError> {
        let dir = dir.as_ref().to_path_buf();
        tokio::task::spawn_blocking(move || Self::open_blocking(&dir, history.max(1))).await.map_err(internal)?
    }

    fn open_blocking(dir: &Path, history: i64) -> Result<EmbeddedStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| internal(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join("store.redb");
        let db = Database::create(&path).map_err(|e| internal(format!("cannot open {}: {e}", path.display())))?;
        let db = Arc::new(db);
        {
            let txn = db.begin_write().map_err(internal)?;
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
        let writer = Writer::new(db.clone(), history)?;
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
            let txn = db.begin_read().map_err(internal)?;
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

struct Watcher {
    prefix: String,
    events: mpsc::Sender<WatchEvent>,
}

/// The writer thread's state.
struct Writer {
    db: Arc<Database>,
    revision: i64,
    compacted: i64,
    history: i64,
    next_lease: i64,
    /// Lease deadlines, mirrored in memory so expiry needs no scan.
    deadlines: HashMap<LeaseId, i64>,
    watchers: Vec<Watcher>,
}

/// What a batch produced, sent out after its commit.
enum Reply {
    Txn(oneshot::Sender<Result<TxnOutcome, StoreError>>, Result<TxnOutcome, StoreError>),
    Lease(oneshot::Sender<Result<LeaseId, StoreError>>, Result<LeaseId, StoreError>),
    Unit(oneshot::Sender<Result<(), StoreError>>, Result<(), StoreError>),
}

impl Writer {
    fn new(db: Arc<Database>, history: i64) -> Result<Writer, StoreError> {
        let txn = db.begin_read().map_err(internal)?;
        let meta = txn.open_table(META).map_err(internal)?;
        let get = |k: &str| -> Result<i64, StoreError> { Ok(meta.get(k).map_err(internal)?.map_or(0, |v| v.value())) };
        let (revision, compacted, next_lease) = (get("revision")?, get("compacted")?, get("next_lease")?);
        let leases = txn.open_table(LEASES).map_err(internal)?;
        let mut deadlines = HashMap::new();
        for item in leases.iter().map_err(internal)? {
            let (id, v) = item.map_err(internal)?;
            deadlines.insert(id.value(), v.value().1);
        }
        Ok(Writer { db, revision, compacted, history, next_lease: next_lease.max(1), deadlines, watchers: Vec::new() })
    }

    fn run(mut self, requests: std_mpsc::Receiver<Request>) {
        loop {
            let first = match requests.recv_timeout(LEASE_TICK) {
                Ok(request) => Some(request),
                Err(std_mpsc::RecvTimeoutError::Timeout) => None,
                Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
            };
            let mut batch: Vec<Request> = first.into_iter().collect();
            while let Ok(request) = requests.try_recv() {
                batch.push(request);
            }
            if let Err(e) = self.apply(batch) {
                tracing::error!(error = %e, "embedded store write failed");
            }
        }
    }

    /// Applies a batch in one write transaction (one fsync), then answers and notifies.
    fn apply(&mut self, batch: Vec<Request>) -> Result<(), StoreError> {
        let now = now_ms();
        let expired: Vec<LeaseId> = self.deadlines.iter().filter(|(_, d)| **d <= now).map(|(id, _)| *id).collect();
        let (writes, watches): (Vec<Request>, Vec<Request>) =
            batch.into_iter().partition(|r| !matches!(r, Request::Watch { .. }));
        if writes.is_empty() && expired.is_empty() {
            for watch in watches {
                self.register(watch);
            }
            return Ok(());
        }

        let start_revision = self.revision;
        let start_next_lease = self.next_lease;
        let start_deadlines = self.deadlines.clone();
        let mut replies = Vec::new();
        let mut changes_by_revision: Vec<(i64, Vec<WatchEvent>)> = Vec::new();
        let result = (|| -> Result<(), StoreError> {
            let txn = self.db.begin_write().map_err(internal)?;
            {
                let mut tables = Tables {
                    kv: txn.open_table(KV).map_err(internal)?,
                    log: txn.open_table(LOG).map_err(internal)?,
                    leases: txn.open_table(LEASES).map_err(internal)?,
                    lease_keys: txn.open_table(LEASE_KEYS).map_err(internal)?,
                };
                for id in expired {
                    let changes = self.revoke(&mut tables, id)?;
                    self.record(&mut tables, changes, &mut changes_by_revision)?;
                }
                for request in writes {
                    match request {
                        Request::Txn(t, reply) => {
                            let outcome = self.transaction(&mut tables, t);
                            let outcome = match outcome {
                                Ok((outcome, changes)) => {
                                    self.record(&mut tables, changes, &mut changes_by_revision)?;
                                    Ok(TxnOutcome { revision: self.revision, ..outcome })
                                }
                                Err(e) => Err(e),
                            };
                            replies.push(Reply::Txn(reply, outcome));
                        }
                        Request::LeaseGrant(ttl, reply) => {
                            let id = self.next_lease;
                            self.next_lease += 1;
                            let ttl_ms = ttl.as_millis().max(1) as u64;
                            let deadline = now + ttl_ms as i64;
                            tables.leases.insert(id, (ttl_ms, deadline)).map_err(internal)?;
                            self.deadlines.insert(id, deadline);
                            replies.push(Reply::Lease(reply, Ok(id)));
                        }
                        Request::LeaseKeepAlive(id, reply) => {
                            let ttl = tables.leases.get(id).map_err(internal)?.map(|v| v.value().0);
                            let result = match ttl {
                                Some(ttl_ms) => {
                                    let deadline = now + ttl_ms as i64;
                                    tables.leases.insert(id, (ttl_ms, deadline)).map_err(internal)?;
                                    self.deadlines.insert(id, deadline);
                                    Ok(())
                                }
                                None => Err(StoreError::LeaseNotFound(id)),
                            };
                            replies.push(Reply::Unit(reply, result));
                        }
                        Request::LeaseRevoke(id, reply) => {
                            let changes = self.revoke(&mut tables, id)?;
                            self.record(&mut tables, changes, &mut changes_by_revision)?;
                            replies.push(Reply::Unit(reply, Ok(())));
                        }
                        Request::Watch { .. } => unreachable!("partitioned out"),
                    }
                }
                self.compact(&mut tables)?;
            }
            let mut meta = txn.open_table(META).map_err(internal)?;
            meta.insert("revision", self.revision).map_err(internal)?;
            meta.insert("compacted", self.compacted).map_err(internal)?;
            meta.insert("next_lease", self.next_lease).map_err(internal)?;
            drop(meta);
            txn.commit().map_err(internal)
        })();

        if let Err(e) = result {
            // Nothing was committed: forget what this batch did in memory and fail it.
            self.revision = start_revision;
            self.next_lease = start_next_lease;
            self.deadlines = start_deadlines;
            for reply in replies {
                let err = || StoreError::Internal(format!("embedded store commit failed: {e}"));
                match reply {
                    Reply::Txn(tx, _) => drop(tx.send(Err(err()))),
                    Reply::Lease(tx, _) => drop(tx.send(Err(err()))),
                    Reply::Unit(tx, _) => drop(tx.send(Err(err()))),
                }
            }
            return Err(e);
        }
        for reply in replies {
            match reply {
                Reply::Txn(tx, r) => drop(tx.send(r)),
                Reply::Lease(tx, r) => drop(tx.send(r)),
                Reply::Unit(tx, r) => drop(tx.send(r)),
            }
        }
        for (_, changes) in &changes_by_revision {
            for change in changes {
                self.notify(change);
            }
        }
        for watch in watches {
            self.register(watch);
        }
        Ok(())
    }

    /// Gives a write its revision and logs it; a write that changed nothing gets none.
    fn record(
        &mut self,
        tables: &mut Tables<'_>,
        changes: Vec<WatchEvent>,
        out: &mut Vec<(i64, Vec<WatchEvent>)>,
    ) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        tables.log.insert(self.revision, encode_changes(&changes).as_slice()).map_err(internal)?;
        out.push((self.revision, changes));
        Ok(())
    }

    /// Checks and applies one transaction at revision `self.revision + 1`.
    fn transaction(&mut self, tables: &mut Tables<'_>, txn: Txn) -> Result<(TxnOutcome, Vec<WatchEvent>), StoreError> {
        for compare in &txn.compares {
            let (key, expected, field): (&str, i64, fn(&Entry) -> i64) = match compare {
                Compare::ModRevision(k, r) => (k, *r, |e| e.mod_revision),
                Compare::CreateRevision(k, r) => (k, *r, |e| e.create_revision),
            };
            let actual = match tables.kv.get(key).map_err(internal)? {
                Some(v) => field(&Entry::decode(v.value())?),
                None => 0,
            };
            if actual != expected {
                return Ok((TxnOutcome { succeeded: false, revision: self.revision }, Vec::new()));
            }
        }
        // Check leases before writing anything, so a failed txn changes nothing.
        for op in &txn.ops {
            if let Op::Put { lease, .. } = op
                && *lease != 0
                && tables.leases.get(*lease).map_err(internal)?.is_none()
            {
                return Err(StoreError::LeaseNotFound(*lease));
            }
        }
        let revision = self.revision + 1;
        let mut changes = Vec::new();
        for op in txn.ops {
            match op {
                Op::Put { key, value, lease } => {
                    let previous = match tables.kv.get(key.as_str()).map_err(internal)? {
                        Some(v) => Some(Entry::decode(v.value())?),
                        None => None,
                    };
                    if let Some(prev) = &previous
                        && prev.lease != 0
                        && prev.lease != lease
                    {
                        tables.lease_keys.remove((prev.lease, key.as_str())).map_err(internal)?;
                    }
                    if lease != 0 {
                        tables.lease_keys.insert((lease, key.as_str()), ()).map_err(internal)?;
                    }
                    let entry = Entry {
                        create_revision: previous.map_or(revision, |p| p.create_revision),
                        mod_revision: revision,
                        lease,
                        value,
                    };
                    tables.kv.insert(key.as_str(), entry.encode().as_slice()).map_err(internal)?;
                    changes.push(WatchEvent { kind: EventKind::Put, kv: entry.into_kv(key) });
                }
                Op::Delete { key } => {
                    if let Some(change) = delete_key(tables, &key, revision)? {
                        changes.push(change);
                    }
                }
            }
        }
        if !changes.is_empty() {
            self.revision = revision;
        }
        Ok((TxnOutcome { succeeded: true, revision: self.revision }, changes))
    }

    /// Deletes a lease and its keys at one new revision.
    fn revoke(&mut self, tables: &mut Tables<'_>, id: LeaseId) -> Result<Vec<WatchEvent>, StoreError> {
        self.deadlines.remove(&id);
        if tables.leases.remove(id).map_err(internal)?.is_none() {
            return Ok(Vec::new());
        }
        let mut keys = Vec::new();
        for item in tables.lease_keys.range((id, "")..).map_err(internal)? {
            let (k, _) = item.map_err(internal)?;
            let (lease, key) = k.value();
            if lease != id {
                break;
            }
            keys.push(key.to_string());
        }
        let revision = self.revision + 1;
        let mut changes = Vec::new();
        for key in keys {
            tables.lease_keys.remove((id, key.as_str())).map_err(internal)?;
            if let Some(change) = delete_key(tables, &key, revision)? {
                changes.push(change);
            }
        }
        if !changes.is_empty() {
            self.revision = revision;
        }
        Ok(changes)
    }

    fn compact(&mut self, tables: &mut Tables<'_>) -> Result<(), StoreError> {
        // Compact in steps, and only once there is a step's worth, so that no commit
        // deletes much and most delete nothing.
        let floor = self.revision - self.history;
        if floor > self.compacted + (self.history / 10).clamp(1, 1000) {
            let upto = floor.min(self.compacted + COMPACTION_STEP);
            let doomed: Vec<i64> = tables
                .log
                .range(..=upto)
                .map_err(internal)?
                .map(|item| item.map(|(k, _)| k.value()).map_err(internal))
                .collect::<Result<_, _>>()?;
            for revision in doomed {
                tables.log.remove(revision).map_err(internal)?;
            }
            self.compacted = upto;
        }
        Ok(())
    }

    fn notify(&mut self, change: &WatchEvent) {
        self.watchers.retain(|w| {
            if !change.kv.key.starts_with(&w.prefix) {
                return !w.events.is_closed();
            }
            w.events.try_send(change.clone()).is_ok()
        });
    }

    /// Replays history from the start revision, then adds the watcher for live changes.
    fn register(&mut self, request: Request) {
        let Request::Watch { prefix, start_revision, events, ack } = request else { return };
        if start_revision == 0 || start_revision > self.revision {
            self.watchers.push(Watcher { prefix, events });
            let _ = ack.send(Ok(()));
            return;
        }
        if start_revision <= self.compacted {
            let _ = ack.send(Err(StoreError::Compacted { requested: start_revision, oldest: self.compacted + 1 }));
            return;
        }
        let replay = (|| -> Result<Vec<WatchEvent>, StoreError> {
            let txn = self.db.begin_read().map_err(internal)?;
            let log = txn.open_table(LOG).map_err(internal)?;
            let mut out = Vec::new();
            for item in log.range(start_revision..).map_err(internal)? {
                let (_, v) = item.map_err(internal)?;
                out.extend(decode_changes(v.value())?.into_iter().filter(|c| c.kv.key.starts_with(&prefix)));
            }
            Ok(out)
        })();
        match replay {
            Ok(history) => {
                let _ = ack.send(Ok(()));
                for change in history {
                    if events.try_send(change).is_err() {
                        return; // too much history for the buffer: dropped, it resumes later
                    }
                }
                self.watchers.push(Watcher { prefix, events });
            }
            Err(e) => {
                let _ = ack.send(Err(e));
            }
        }
    }
}

struct Tables<'txn> {
    kv: redb::Table<'txn, &'static str, &'static [u8]>,
    log: redb::Table<'txn, i64, &'static [u8]>,
    leases: redb::Table<'txn, i64, (u64, i64)>,
    lease_keys: redb::Table<'txn, (i64, &'static str), ()>,
}

fn delete_key(tables: &mut Tables<'_>, key: &str, revision: i64) -> Result<Option<WatchEvent>, StoreError> {
    let previous = match tables.kv.remove(key).map_err(internal)? {
        Some(v) => Entry::decode(v.value())?,
        None => return Ok(None),
    };
    if previous.lease != 0 {
        tables.lease_keys.remove((previous.lease, key)).map_err(internal)?;
    }
    Ok(Some(WatchEvent {
        kind: EventKind::Delete,
        kv: KeyValue { key: key.to_string(), value: Vec::new(), create_revision: 0, mod_revision: revision, lease: 0 },
    }))
}
