//! Shared harness for the service library's tests: real stores, no mocks.
//!
//! - [`Backend`]: a fresh embedded store (temp dir) or a real etcd ([`etcd`]).
//! - [`hooked::Hooked`]: a real store whose transactions a test can fail.
//! - [`test_config`]: service settings that make tests quick.
//! - [`diagnostic`], [`assert_contiguous`]: job specs and event checks.
//! - [`diagnostic_worker`], [`connect_worker`], [`queue_head`]: a worker as the store
//!   knows it, for tests that claim jobs through the lifecycle itself.
//!
//! The end-to-end tests of the `deephardway` binary (cli/tests) include this module too.
#![allow(dead_code)]

pub mod etcd;
pub mod hooked;

use std::{sync::Arc, time::Duration};

use deephardway::v1::{DiagnosticInput, JobEvent, JobSpec, job_spec::Input};
use deephardway_service::{
    ServiceConfig,
    jobs::{ServedModel, WorkerRecord},
    keys,
    store::{KeyValue, Op, SharedStore, Txn, embedded::EmbeddedStore, etcd::EtcdStore},
};

/// Where a test's store lives.
pub enum Backend {
    Embedded(tempfile::TempDir),
    Etcd(etcd::EtcdServer),
}

impl Backend {
    pub async fn embedded() -> Backend {
        Backend::Embedded(tempfile::tempdir().expect("temp dir"))
    }

    pub async fn etcd() -> Backend {
        Backend::Etcd(etcd::EtcdServer::start().await)
    }

    pub async fn open(&self) -> SharedStore {
        match self {
            Backend::Embedded(dir) => Arc::new(EmbeddedStore::open(dir.path()).await.expect("open embedded store")),
            Backend::Etcd(server) => Arc::new(EtcdStore::connect(&[server.endpoint()]).await.expect("connect to etcd")),
        }
    }
}

/// Service settings that make tests quick: short leases, quick reaper.
pub fn test_config() -> ServiceConfig {
    ServiceConfig {
        worker_lease_ttl: Duration::from_secs(2),
        cancel_grace: Duration::from_secs(3),
        ..ServiceConfig::default()
    }
}

/// A diagnostic job's spec.
pub fn diagnostic(steps: u32, step_ms: u32) -> JobSpec {
    JobSpec {
        input: Some(Input::Diagnostic(DiagnosticInput { steps, step_ms, ..Default::default() })),
        ..Default::default()
    }
}

/// A worker serving the diagnostic model, one slot.
pub fn diagnostic_worker(id: &str) -> WorkerRecord {
    WorkerRecord {
        worker_id: id.into(),
        name: id.into(),
        device: "cpu".into(),
        slots: 1,
        models: vec![ServedModel { name: "diagnostic".into(), kind: 1, description: String::new(), context_length: 0 }],
        key: String::new(),
    }
}

/// Registers a worker under a fresh 30 s lease, as a worker session does; returns the lease.
pub async fn connect_worker(store: &SharedStore, record: &WorkerRecord) -> i64 {
    let lease = store.lease_grant(Duration::from_secs(30)).await.unwrap();
    let put = Op::put_with_lease(keys::worker(&record.worker_id), serde_json::to_vec(record).unwrap(), lease);
    store.txn(Txn::new().then(put)).await.unwrap();
    lease
}

/// The first queued diagnostic job's queue entry.
pub async fn queue_head(store: &SharedStore) -> KeyValue {
    store.range(&keys::queue("diagnostic"), 1).await.unwrap().kvs.pop().expect("a queued job")
}

/// Asserts that events are numbered 1.. (or from `first`) with no gap or repeat.
pub fn assert_contiguous(events: &[JobEvent], first: u64) {
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.seq, first + i as u64, "event {i} has seq {} (expected {}): {events:?}", e.seq, first + i as u64);
    }
}
