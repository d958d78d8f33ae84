//! A real store whose calls pass through a test's hook: to make the store refuse writes
//! for a while, lose the answer to one that committed, or count the reads of some keys.
//! Everything else goes straight to the real store.

use std::{future::Future, pin::Pin, time::Duration};

use async_trait::async_trait;
use deephardway_service::store::{
    KeyValue, LeaseId, RangeResult, SharedStore, Store, StoreError, Txn, TxnOutcome, WatchStream,
};

/// What a test does to store calls.
pub trait TxnHook: Send + Sync + 'static {
    /// Before a read (`get`, `range`, `range_rev` or `count`) of `key` (or prefix).
    fn read(&self, _operation: &'static str, _key: &str) {}

    /// Before the transaction, a wait to hold it for (a slow write): `None` goes on at once.
    fn hold(&self, _txn: &Txn) -> Option<Pin<Box<dyn Future<Output = ()> + Send>>> {
        None
    }

    /// Before the transaction: `Some(error)` answers it without committing anything.
    fn before(&self, _txn: &Txn) -> Option<StoreError> {
        None
    }

    /// After it committed: `Some(error)` is answered instead of its outcome.
    fn after(&self, _txn: &Txn, _outcome: &TxnOutcome) -> Option<StoreError> {
        None
    }
}

pub struct Hooked<H> {
    pub inner: SharedStore,
    pub hook: H,
}

#[async_trait]
impl<H: TxnHook> Store for Hooked<H> {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.hook.read("get", key);
        self.inner.get(key).await
    }
    async fn range(&self, prefix: &str, limit: usize) -> Result<RangeResult, StoreError> {
        self.hook.read("range", prefix);
        self.inner.range(prefix, limit).await
    }
    async fn range_rev(&self, prefix: &str, before: Option<&str>, limit: usize) -> Result<RangeResult, StoreError> {
        self.hook.read("range_rev", prefix);
        self.inner.range_rev(prefix, before, limit).await
    }
    async fn count(&self, prefix: &str) -> Result<usize, StoreError> {
        self.hook.read("count", prefix);
        self.inner.count(prefix).await
    }
    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        if let Some(held) = self.hook.hold(&txn) {
            held.await;
        }
        if let Some(error) = self.hook.before(&txn) {
            return Err(error);
        }
        let checked = txn.clone();
        let outcome = self.inner.txn(txn).await?;
        match self.hook.after(&checked, &outcome) {
            Some(error) => Err(error),
            None => Ok(outcome),
        }
    }
    async fn watch(&self, prefix: &str, start_revision: i64) -> Result<WatchStream, StoreError> {
        self.inner.watch(prefix, start_revision).await
    }
    async fn lease_grant(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        self.inner.lease_grant(ttl).await
    }
    async fn lease_keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.inner.lease_keep_alive(lease).await
    }
    async fn lease_revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.inner.lease_revoke(lease).await
    }
    async fn revision(&self) -> Result<i64, StoreError> {
        self.inner.revision().await
    }
    async fn health(&self) -> Result<(), StoreError> {
        self.inner.health().await
    }
    fn name(&self) -> &'static str {
        self.inner.name()
    }
}

/// Counts the reads of keys under any of its prefixes (a test's check that a path reads
/// nothing of some kind).
pub struct CountsReads {
    prefixes: Vec<&'static str>,
    reads: std::sync::atomic::AtomicUsize,
}

impl CountsReads {
    pub fn under(prefixes: &[&'static str]) -> Self {
        CountsReads { prefixes: prefixes.to_vec(), reads: Default::default() }
    }

    pub fn reads(&self) -> usize {
        self.reads.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl TxnHook for CountsReads {
    fn read(&self, _operation: &'static str, key: &str) {
        if self.prefixes.iter().any(|p| key.starts_with(p)) {
            self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}
