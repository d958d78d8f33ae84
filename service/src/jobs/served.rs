//! Models that workers served lately, remembered so that a job for one is accepted (and
//! waits in its queue, with its position) while no worker serving it is connected: during
//! a rolling restart of the workers, or while they scale up from zero.
//!
//! When a worker connects, each model it serves is written under `/dhw/served/<kind>/<name>`
//! with its context length and the time, and rewritten every [`REFRESH`] while the worker
//! stays connected. A model last served more than [`SERVED_MEMORY`] ago is forgotten: a
//! job for it is FAILED_PRECONDITION again, as for a model never served, and its record
//! is deleted with the finished jobs past their retention
//! ([`JobLifecycle::forget_unserved`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tonic::Status;

use super::{JobLifecycle, ServedModel, WorkerRecord};
use crate::{
    keys,
    store::{Compare, Op, Txn},
};

/// How long after a worker last served a model its jobs are still accepted: a day.
pub const SERVED_MEMORY: Duration = Duration::from_secs(24 * 3600);
/// How often a connected worker's models are marked as served again.
const REFRESH: Duration = Duration::from_secs(600);

/// A model as remembered under [`keys::SERVED`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RememberedModel {
    pub model: ServedModel,
    /// When a connected worker last served it, in seconds since the epoch.
    pub last_served: u64,
}

fn epoch_seconds() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl JobLifecycle {
    /// Remembers the models of a worker that just connected, and keeps remembering them
    /// (a background task, every [`REFRESH`]) while its record stays in the store.
    pub async fn remember_served(&self, worker: &WorkerRecord) -> Result<(), Status> {
        self.write_served(worker).await?;
        let (lifecycle, worker) = (self.clone(), worker.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(REFRESH).await;
                match lifecycle.store.get(&keys::worker(&worker.worker_id)).await {
                    Ok(Some(_)) => {}
                    Ok(None) => return,
                    Err(e) => {
                        tracing::debug!(worker = %worker.worker_id, error = %e, "cannot check a worker; retrying");
                        continue;
                    }
                }
                if let Err(e) = lifecycle.write_served(&worker).await {
                    tracing::debug!(worker = %worker.worker_id, error = %e, "cannot remember served models");
                }
            }
        });
        Ok(())
    }

    async fn write_served(&self, worker: &WorkerRecord) -> Result<(), Status> {
        let last_served = epoch_seconds();
        // A few per transaction: etcd caps the operations in one.
        for models in worker.models.chunks(64) {
            let ops = models
                .iter()
                .map(|m| {
                    let record = RememberedModel { model: m.clone(), last_served };
                    Op::put(keys::served(m.kind, &m.name), serde_json::to_vec(&record).expect("serialisable"))
                })
                .collect();
            self.store.txn(Txn { compares: vec![], ops }).await?;
        }
        Ok(())
    }

    /// Deletes the records of models no worker served within [`SERVED_MEMORY`] (each only
    /// if it was not refreshed meanwhile). Returns how many.
    pub async fn forget_unserved(&self) -> Result<usize, Status> {
        let range = self.store.range(keys::SERVED, 0).await?;
        let now = epoch_seconds();
        let mut forgotten = 0;
        for kv in range.kvs {
            let stale = serde_json::from_slice::<RememberedModel>(&kv.value)
                .map_or(true, |r| now.saturating_sub(r.last_served) > SERVED_MEMORY.as_secs());
            if !stale {
                continue;
            }
            let txn = Txn::new().when(Compare::ModRevision(kv.key.clone(), kv.mod_revision)).then(Op::delete(&kv.key));
            if self.store.txn(txn).await?.succeeded {
                forgotten += 1;
            }
        }
        Ok(forgotten)
    }

    /// `model` for jobs of `kind`, if a worker served it within [`SERVED_MEMORY`].
    pub async fn recently_served(&self, kind: i32, model: &str) -> Result<Option<ServedModel>, Status> {
        let Some(kv) = self.store.get(&keys::served(kind, model)).await? else { return Ok(None) };
        let Ok(record) = serde_json::from_slice::<RememberedModel>(&kv.value) else { return Ok(None) };
        let age = epoch_seconds().saturating_sub(record.last_served);
        Ok((age <= SERVED_MEMORY.as_secs()).then_some(record.model))
    }
}
