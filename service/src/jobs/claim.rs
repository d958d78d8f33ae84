//! Claiming a queued job for a worker, and starting a job on a worker (which a claim and
//! a submit that starts its job at once share); a claim whose outcome is unknown is read
//! back, never dropped.

use deephardway::v1::{Job, JobEvent, JobStarted, JobState, job_event::Event};
use prost::Message;
use tonic::Status;

use super::*;
use crate::{
    auth::tenant_of,
    keys,
    store::{Compare, KeyValue, Op, StoreError, Txn},
    time::now,
};

/// What starting a job writes besides its record (see [`JobLifecycle::start`]).
pub(super) struct Started {
    pub(super) event: JobEvent,
    /// The claim's secret, the worker's fence.
    pub(super) secret: u64,
    /// The claim and the keys that count the job as running.
    pub(super) ops: Vec<Op>,
}

/// How one try at a claim ended.
#[allow(clippy::large_enum_variant)] // one a claim, returned at once
enum Attempt {
    /// Claimed, or found not claimable (the job is gone, not queued, or over its key's
    /// running limit).
    Made(Option<Claimed>),
    /// The copy the try started from was not the record as stored.
    StaleCopy,
}

impl JobLifecycle {
    /// Starts `job` on `worker`: its record's new state, and what the transition writes
    /// besides the record: the `started` event, and the claim under the worker's `lease`
    /// with the keys that count the job as running.
    pub(super) fn start(&self, job: &mut Job, worker: &WorkerRecord, lease: i64) -> Started {
        job.state = JobState::Running as i32;
        job.attempts += 1;
        job.worker_id = worker.worker_id.clone();
        job.worker_name = worker.name.clone();
        job.device = worker.device.clone();
        job.start_time = Some(now());
        job.progress = 0.0;
        job.last_seq += 1;
        let event = self.event(
            &job.id,
            job.last_seq,
            Event::Started(JobStarted {
                worker_id: worker.worker_id.clone(),
                worker_name: worker.name.clone(),
                device: worker.device.clone(),
                attempt: job.attempts,
            }),
        );
        let secret = fence::new_secret();
        let claim =
            ClaimRecord { worker_id: worker.worker_id.clone(), attempt: job.attempts, secret, key: worker.key.clone() };
        let mut ops = vec![
            Op::put_with_lease(keys::claim(&job.id), serde_json::to_vec(&claim).expect("serialisable"), lease),
            Op::put(keys::running(&job.id), job.id.clone()),
        ];
        if !job.key.is_empty() {
            ops.push(Op::put(keys::running_of(tenant_of(&job.tenant), &job.key, &job.id), Vec::new()));
        }
        Started { event, secret, ops }
    }

    /// Claims a queued job for a worker in one transaction: the queue entry must still
    /// exist; it is replaced by a claim on the worker's lease and the job starts.
    ///
    /// A job this replica queued is claimed as its submit wrote it (see [`submitted`]);
    /// if that copy turns out stale (the transaction's comparison of the record fails),
    /// the claim is tried again as for any other job, from the store.
    pub async fn claim(&self, entry: &KeyValue, worker: &WorkerRecord, lease: i64) -> Result<Option<Claimed>, Status> {
        let id = keys::last_segment(&entry.key);
        if let Some(copy) = self.submitted.take(id)
            && let Attempt::Made(claimed) = self.claim_from(entry, worker, lease, Some(copy)).await?
        {
            return Ok(claimed);
        }
        match self.claim_from(entry, worker, lease, None).await? {
            Attempt::Made(claimed) => Ok(claimed),
            Attempt::StaleCopy => unreachable!("no copy was used"),
        }
    }

    /// [`JobLifecycle::claim`] from `copy` (the job as this replica's submit wrote it), or
    /// from the store without one.
    async fn claim_from(
        &self,
        entry: &KeyValue,
        worker: &WorkerRecord,
        lease: i64,
        copy: Option<submitted::Written>,
    ) -> Result<Attempt, Status> {
        let id = keys::last_segment(&entry.key).to_string();
        let from_copy = copy.is_some();
        let drop_stale_entry = || async {
            // A queue entry whose job is gone or not waiting cannot be run; drop it.
            let txn = Txn::new()
                .when(Compare::ModRevision(entry.key.clone(), entry.mod_revision))
                .then(Op::delete(&entry.key));
            self.store.txn(txn).await
        };
        // Without a copy, the request is read beside the record, not after the claim: it
        // never changes once submitted, and the worker's assignment needs it (one round
        // trip less).
        let (found, spec) = match copy {
            Some(written) => (Ok(Some((written.record, written.revision))), Ok(Some(written.spec))),
            None => {
                let (found, spec) = tokio::join!(self.find(&id), specs::read(self.store.as_ref(), &id));
                (found.map(|found| found.map(|(job, kv)| (job, kv.mod_revision))), spec)
            }
        };
        let Some((mut job, revision)) = found? else {
            drop_stale_entry().await?;
            return Ok(Attempt::Made(None));
        };
        if job.state != JobState::Queued as i32 {
            tracing::warn!(job = %id, "dropping a queue entry of a job that is not queued");
            drop_stale_entry().await?;
            return Ok(Attempt::Made(None));
        }
        // A key with a running limit is claimed for one job at a time on this replica, so
        // that its count cannot be read twice before either claim is written.
        let max_running = match job.key.is_empty() {
            true => 0,
            false => crate::auth::api_keys::max_running_jobs(&self.store, &job.key).await?,
        };
        let _one_at_a_time = match max_running {
            0 => None,
            _ => Some(self.quotas.claim_lock(&job.key).lock_owned().await),
        };
        if max_running > 0 {
            let running = self.store.count(&keys::running_jobs_of(tenant_of(&job.tenant), &job.key)).await?;
            if running >= max_running as usize {
                // It stays in line; the dispatcher tries the jobs behind it.
                return Ok(Attempt::Made(None));
            }
        }
        let started = self.start(&mut job, worker, lease);
        let move_spec = specs::split(&mut job);
        let mut txn = Txn::new()
            .when(Compare::ModRevision(entry.key.clone(), entry.mod_revision))
            .when(Compare::ModRevision(keys::job(&id), revision))
            .then(Op::delete(&entry.key))
            .then(Op::put(keys::job(&id), job.encode_to_vec()))
            .then(Op::put(keys::event(&id, job.last_seq), started.event.encode_to_vec()));
        txn.ops.extend(started.ops);
        txn.ops.extend(move_spec);
        let outcome = match self.store.txn(txn).await {
            Ok(outcome) => outcome,
            Err(StoreError::LeaseNotFound(_)) => {
                return Err(Status::unavailable("worker lease expired"));
            }
            Err(e) => return Err(e.into()),
        };
        if !outcome.succeeded {
            // The queue entry is gone (claimed or cancelled), or the record changed since
            // it was read or written here: only in the second case can a read do better.
            return Ok(if from_copy { Attempt::StaleCopy } else { Attempt::Made(None) });
        }
        self.wrote(outcome.revision);
        tracing::info!(job = %id, worker = %worker.worker_id, attempt = job.attempts, "job started");
        self.metrics.started(&job);
        let record = StoredRecord { job: job.clone(), revision: outcome.revision };
        // The worker's assignment carries the whole request (read again only for a
        // record from before requests were stored apart, or if that read failed).
        let job = match spec {
            Ok(Some(spec)) => Job { spec: Some(spec), ..job },
            _ => self.with_spec(job).await?,
        };
        Ok(Attempt::Made(Some(Claimed {
            job,
            fence: Fence { secret: started.secret, revision: outcome.revision },
            record,
        })))
    }

    /// Reads back the outcome of a claim whose transaction failed without a clear answer
    /// (the store may have committed it and lost the reply). The job was claimed if its
    /// claim names `worker` and the job is running there on that attempt: it is returned
    /// with the claim's fence, as [`JobLifecycle::claim`] would have.
    /// Otherwise the claim did not commit (the queue entry is still there, and a later
    /// round may claim it), or it committed and has since been released (the reaper puts
    /// the job back). Reads that fail are retried a few times with backoff; the error is
    /// returned only if the store stays unavailable.
    pub async fn resolve_claim(&self, entry: &KeyValue, worker: &WorkerRecord) -> Result<Option<Claimed>, Status> {
        self.resolve_claim_of(keys::last_segment(&entry.key), worker).await
    }

    /// [`JobLifecycle::resolve_claim`], of the job `id`.
    pub(super) async fn resolve_claim_of(&self, id: &str, worker: &WorkerRecord) -> Result<Option<Claimed>, Status> {
        let mut backoff = std::time::Duration::from_millis(50);
        let mut tries = 0;
        loop {
            match self.read_claim(id, worker).await {
                Err(e) if tries < 5 => {
                    tracing::debug!(job = %id, error = %e, "claim read-back failed; retrying");
                    tries += 1;
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
                outcome => return outcome,
            }
        }
    }

    async fn read_claim(&self, id: &str, worker: &WorkerRecord) -> Result<Option<Claimed>, Status> {
        let Some(claim) = self.store.get(&keys::claim(id)).await? else { return Ok(None) };
        let Ok(record) = serde_json::from_slice::<ClaimRecord>(&claim.value) else { return Ok(None) };
        if record.worker_id != worker.worker_id {
            return Ok(None);
        }
        let Some((job, kv)) = self.find(id).await? else { return Ok(None) };
        let ours = job.state == JobState::Running as i32
            && job.worker_id == worker.worker_id
            && job.attempts == record.attempt;
        if !ours {
            return Ok(None);
        }
        tracing::info!(job = %id, worker = %worker.worker_id, attempt = job.attempts, "job started (claim read back)");
        let stored = StoredRecord { job: job.clone(), revision: kv.mod_revision };
        let job = self.with_spec(job).await?;
        let fence = Fence { secret: record.secret, revision: claim.create_revision };
        Ok(Some(Claimed { job, fence, record: stored }))
    }
}
