//! The job store: the few key-value operations the queue needs, behind one trait with
//! two implementations that pass one conformance suite (`service/tests/store_conformance.rs`).
//!
//! - [`embedded`]: the single-machine default, durable on local disk (redb), with group
//!   commit so concurrent writers share one fsync.
//! - [`etcd`]: a real etcd cluster, so many service replicas share one queue.
//!
//! The semantics are etcd's, so the code above this trait is written once:
//! - every write bumps one global **revision**; each key remembers the revision that
//!   created it and the one that last modified it;
//! - a **transaction** applies its operations only if all its comparisons hold, atomically;
//! - a **watch** on a prefix delivers every change from a given revision on, in revision
//!   order, including changes made before the watch was opened (history is kept for a
//!   while; a start older than what is kept fails with [`StoreError::Compacted`]);
//! - a **lease** expires unless kept alive; its keys are then deleted and watchers see
//!   the deletes.

pub mod embedded;
pub mod etcd;

use std::{fmt, sync::Arc, time::Duration};

use async_trait::async_trait;
use futures::stream::BoxStream;

/// A shared handle to a store.
pub type SharedStore = Arc<dyn Store>;

/// A lease id. Keys put with a lease are deleted when it expires or is revoked.
pub type LeaseId = i64;

/// A key with its value and revisions.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// Revision of the write that created the key (since it last did not exist).
    pub create_revision: i64,
    /// Revision of the write that last changed the key.
    pub mod_revision: i64,
    /// The lease the key is attached to; 0 for none.
    pub lease: LeaseId,
}

impl fmt::Debug for KeyValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyValue")
            .field("key", &self.key)
            .field("value_len", &self.value.len())
            .field("create_revision", &self.create_revision)
            .field("mod_revision", &self.mod_revision)
            .field("lease", &self.lease)
            .finish()
    }
}

/// The keys under a prefix, read at one revision.
#[derive(Debug, Clone, Default)]
pub struct RangeResult {
    /// Matching keys in key order (at most the requested limit).
    pub kvs: Vec<KeyValue>,
    /// The store's revision when the range was read.
    pub revision: i64,
}

/// A condition a transaction checks before applying its operations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key's mod revision equals this; 0 means the key does not exist.
    ModRevision(String, i64),
    /// The key's create revision equals this; 0 means the key does not exist.
    CreateRevision(String, i64),
}

impl Compare {
    /// The key does not exist.
    pub fn absent(key: impl Into<String>) -> Self {
        Compare::CreateRevision(key.into(), 0)
    }
}

/// A write inside a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Set a key's value, attached to a lease (0 for none).
    Put { key: String, value: Vec<u8>, lease: LeaseId },
    /// Delete a key; deleting a missing key is not an error.
    Delete { key: String },
}

impl Op {
    pub fn put(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        Op::Put { key: key.into(), value: value.into(), lease: 0 }
    }
    pub fn put_with_lease(key: impl Into<String>, value: impl Into<Vec<u8>>, lease: LeaseId) -> Self {
        Op::Put { key: key.into(), value: value.into(), lease }
    }
    pub fn delete(key: impl Into<String>) -> Self {
        Op::Delete { key: key.into() }
    }
}

/// The most operations one transaction may carry: etcd refuses more (its
/// `--max-txn-ops`, 128 by default), so writes that could grow past it are split.
pub const MAX_TXN_OPS: usize = 128;

/// An atomic compare-and-swap: if every comparison holds, every operation is applied
/// at one new revision; otherwise nothing changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub ops: Vec<Op>,
}

impl Txn {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn when(mut self, compare: Compare) -> Self {
        self.compares.push(compare);
        self
    }
    pub fn then(mut self, op: Op) -> Self {
        self.ops.push(op);
        self
    }
}

/// A transaction's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnOutcome {
    /// True if the comparisons held and the operations were applied.
    pub succeeded: bool,
    /// The store's revision after the transaction (the new one if it wrote).
    pub revision: i64,
}

/// What a watch reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change to one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    pub kind: EventKind,
    /// The key after a put; for a delete, the key with an empty value and
    /// `mod_revision` set to the delete's revision.
    pub kv: KeyValue,
}

/// A stream of changes, in revision order. It ends with an error if the store fails.
pub type WatchStream = BoxStream<'static, Result<WatchEvent, StoreError>>;

/// What can go wrong talking to a store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The requested watch start revision has been compacted away.
    #[error("revision {requested} has been compacted (oldest kept: {oldest})")]
    Compacted { requested: i64, oldest: i64 },
    /// The lease does not exist (it expired or was revoked).
    #[error("lease {0} not found")]
    LeaseNotFound(LeaseId),
    /// The store could not be reached or failed.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store refused a request for its size (etcd's `--max-request-bytes`, 1.5 MiB
    /// by default): sending it again will not help.
    #[error("the request is larger than the job store accepts ({0})")]
    TooLarge(String),
    /// Any other failure, e.g. a corrupt file.
    #[error("store error: {0}")]
    Internal(String),
}

/// How a store failure reaches a client: UNAVAILABLE when the store cannot be reached
/// (worth retrying), INVALID_ARGUMENT for a request too large for it, INTERNAL otherwise.
impl From<StoreError> for tonic::Status {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Unavailable(m) => tonic::Status::unavailable(format!("job store unavailable: {m}")),
            e @ StoreError::TooLarge(_) => tonic::Status::invalid_argument(format!(
                "{e}; an etcd cluster takes requests up to its --max-request-bytes (see the README's cluster section)"
            )),
            other => tonic::Status::internal(other.to_string()),
        }
    }
}

/// The operations deephardway needs from a key-value store with etcd's semantics.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// One key, or `None`.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;

    /// Keys starting with `prefix`, in key order, at most `limit` of them (0 = all),
    /// with the revision they were read at.
    async fn range(&self, prefix: &str, limit: usize) -> Result<RangeResult, StoreError>;

    /// Keys starting with `prefix` and sorting before `before` (or all of them), in
    /// reverse key order, at most `limit` (0 = all): with time-ordered keys, the newest
    /// first; pass the last key returned as the next `before` to page backwards.
    async fn range_rev(&self, prefix: &str, before: Option<&str>, limit: usize) -> Result<RangeResult, StoreError>;

    /// How many keys start with `prefix`.
    async fn count(&self, prefix: &str) -> Result<usize, StoreError>;

    /// Applies a transaction atomically.
    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError>;

    /// Changes to keys starting with `prefix` at revisions ≥ `start_revision`
    /// (0 = from the next write on).
    async fn watch(&self, prefix: &str, start_revision: i64) -> Result<WatchStream, StoreError>;

    /// Creates a lease that expires after `ttl` unless kept alive.
    async fn lease_grant(&self, ttl: Duration) -> Result<LeaseId, StoreError>;

    /// Restarts a lease's time to live. Fails with `LeaseNotFound` once it expired.
    async fn lease_keep_alive(&self, lease: LeaseId) -> Result<(), StoreError>;

    /// Ends a lease now, deleting its keys. Revoking a missing lease is not an error.
    async fn lease_revoke(&self, lease: LeaseId) -> Result<(), StoreError>;

    /// The current revision.
    async fn revision(&self) -> Result<i64, StoreError>;

    /// Whether the store can commit writes now, for `grpc.health.v1`: `Unavailable` if
    /// not. The default reads the revision; a store that tracks its health in the
    /// background (etcd: which members can serve) answers from that, without waiting.
    async fn health(&self) -> Result<(), StoreError> {
        self.revision().await.map(|_| ())
    }

    /// A name for logs: "embedded" or "etcd".
    fn name(&self) -> &'static str;

    /// How many times watches had to be reopened since the store was opened (etcd: a
    /// member died or froze under them); 0 for a store whose watches never break.
    fn watch_restarts(&self) -> u64 {
        0
    }
}

/// The smallest key greater than every key starting with `prefix` (the end of its range).
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0] // every key: etcd's convention for "to the end"
}

/// Puts one key with no conditions, for callers that need no transaction.
pub async fn put(store: &dyn Store, key: &str, value: Vec<u8>) -> Result<i64, StoreError> {
    Ok(store.txn(Txn::new().then(Op::put(key, value))).await?.revision)
}

/// Deletes one key with no conditions.
pub async fn delete(store: &dyn Store, key: &str) -> Result<i64, StoreError> {
    Ok(store.txn(Txn::new().then(Op::delete(key))).await?.revision)
}
