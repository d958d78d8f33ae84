//! A store that times every operation it passes on (`deephardway_store_operation_seconds`)
//! and counts the bytes transactions write (`deephardway_store_write_bytes_total`).

use std::{sync::Arc, time::Duration, time::Instant};

use async_trait::async_trait;

use super::{BackendLabels, Metrics, StoreLabels};
use crate::store::{KeyValue, LeaseId, Op, RangeResult, SharedStore, Store, StoreError, Txn, TxnOutcome, WatchStream};

/// Wraps `inner` so that its operations are measured into `metrics`.
pub fn metered(inner: SharedStore, metrics: Arc<Metrics>) -> SharedStore {
    Arc::new(Metered { inner, metrics })
}

struct Metered {
    inner: SharedStore,
    metrics: Arc<Metrics>,
}

impl Metered {
    fn observe(&self, operation: &str, started: Instant) {
        let labels = StoreLabels { operation: operation.to_string(), backend: self.inner.name().to_string() };
        self.metrics.store_seconds.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
    }
}

#[async_trait]
impl Store for Metered {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let started = Instant::now();
        let out = self.inner.get(key).await;
        self.observe("get", started);
        out
    }

    async fn range(&self, prefix: &str, limit: usize) -> Result<RangeResult, StoreError> {
        let started = Instant::now();
        let out = self.inner.range(prefix, limit).await;
        self.observe("range", started);
        out
    }

    async fn range_rev(&self, prefix: &str, before: Option<&str>, limit: usize) -> Result<RangeResult, StoreError> {
        let started = Instant::now();
        let out = self.inner.range_rev(prefix, before, limit).await;
        self.observe("range", started);
        out
    }

    async fn count(&self, prefix: &str) -> Result<usize, StoreError> {
        let started = Instant::now();
        let out = self.inner.count(prefix).await;
        self.observe("count", started);
        out
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        let bytes: usize = txn
            .ops
            .iter()
            .map(|op| match op {
                Op::Put { key, value, .. } => key.len() + value.len(),
                Op::Delete { key } => key.len(),
            })
            .sum();
        let labels = BackendLabels { backend: self.inner.name().to_string() };
        self.metrics.store_write_bytes.get_or_create(&labels).inc_by(bytes as u64);
        let started = Instant::now();
        let out = self.inner.txn(txn).await;
        self.observe("txn", started);
        out
    }

    async fn watch(&self, prefix: &str, start_revision: i64) -> Result<WatchStream, StoreError> {
        self.inner.watch(prefix, start_revision).await
    }

    async fn lease_grant(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let started = Instant::now();
        let out = self.inner.lease_grant(ttl).await;
        self.observe("lease_grant", started);
        out
    }

    async fn lease_keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        let started = Instant::now();
        let out = self.inner.lease_keep_alive(lease).await;
        self.observe("lease_keep_alive", started);
        out
    }

    async fn lease_revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        let started = Instant::now();
        let out = self.inner.lease_revoke(lease).await;
        self.observe("lease_revoke", started);
        out
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

    fn watch_restarts(&self) -> u64 {
        self.inner.watch_restarts()
    }
}
