//! Usage accounting: what each API key's finished jobs used, added to the key's counters
//! (`/dhw/usage/<tenant>/<key>`, a protobuf `Usage`) when the job finishes.
//!
//! Every replica sees every finished job through its hub and tries to count it; one
//! transaction writes the new counters together with the job's `/dhw/counted/<id>`
//! marker, on the condition that the marker is absent and the counters unchanged since
//! read, so each job is counted exactly once however many replicas race. (A job that
//! finishes while its replica's hub lags behind is not counted; the lag is logged.)
//!
//! Jobs that finish within [`BATCH_WINDOW`] of each other are counted together: one
//! read and one transaction per key for all of them (up to [`MAX_BATCH`]), not per job.
//! At a few hundred jobs a second, counting one at a time cost a store read and a write
//! per job, on one hot record; usage shows a fraction of a second later instead.

use std::collections::{BTreeMap, HashSet};

use deephardway::v1::Job;
use deephardway::v1::{JobState, Usage, job_result, job_spec::Input};
use prost::Message;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::{
    auth::tenant_of,
    hub::{Change, Hub},
    keys,
    store::{Compare, Op, SharedStore, Txn},
};

/// The name usage is kept under for jobs submitted with auth off.
pub const ANONYMOUS: &str = "anonymous";

/// Counts the jobs that finish from now on, until `shutdown`.
pub fn start(store: SharedStore, hub: &Hub, shutdown: CancellationToken) {
    let mut changes = hub.changes();
    tokio::spawn(async move {
        loop {
            let mut finished = Vec::new();
            let change = tokio::select! {
                change = changes.recv() => change,
                _ = shutdown.cancelled() => return,
            };
            if !collect(change, &mut finished) {
                return;
            }
            if finished.is_empty() {
                continue;
            }
            // The jobs that finish within the window are counted with this one.
            let window = tokio::time::Instant::now() + BATCH_WINDOW;
            while finished.len() < MAX_BATCH {
                let Ok(change) = tokio::time::timeout_at(window, changes.recv()).await else { break };
                if !collect(change, &mut finished) {
                    return;
                }
            }
            count(&store, finished).await;
        }
    });
}

/// Keeps `change`'s job if it finished. False once the hub has stopped.
fn collect(change: Result<Change, RecvError>, finished: &mut Vec<std::sync::Arc<Job>>) -> bool {
    match change {
        Ok(Change::JobUpdated(job)) if deephardway::is_finished(job.state) => finished.push(job),
        Ok(_) => {}
        Err(RecvError::Lagged(missed)) => {
            tracing::warn!(missed, "usage accounting lagged; some finished jobs may not be counted")
        }
        Err(RecvError::Closed) => return false,
    }
    true
}

/// Counts finished jobs: their requests are read where the counters need them, then
/// each key's jobs are recorded together.
async fn count(store: &SharedStore, finished: Vec<std::sync::Arc<Job>>) {
    let mut by_key: BTreeMap<String, Vec<Job>> = BTreeMap::new();
    let mut seen = HashSet::new();
    // A job updated again after it finished appears twice; its marker makes it count once.
    for job in finished.into_iter().filter(|job| seen.insert(job.id.clone())) {
        let mut job = Job::clone(&job);
        if counts_input(&job)
            && let Err(e) = crate::jobs::join_spec(store.as_ref(), &mut job).await
        {
            tracing::warn!(job = %job.id, error = %e, "could not read the job's request to count its usage");
            continue;
        }
        by_key.entry(usage_key(&job)).or_default().push(job);
    }
    for jobs in by_key.into_values() {
        if let Err(e) = record_all(store, jobs).await {
            tracing::warn!(error = %e, "could not count jobs' usage");
        }
    }
}

/// Whether [`add`] counts items of the job's input (texts, images, epochs), which the
/// record the hub carries leaves out (see `jobs::specs`): only then is it read.
fn counts_input(job: &Job) -> bool {
    matches!(
        job.result.as_ref().and_then(|r| r.value.as_ref()),
        Some(job_result::Value::Embed(_) | job_result::Value::Classify(_) | job_result::Value::Train(_))
    )
}

/// Adds what `job` used to `usage`; `job` must hold its whole request.
pub fn add(usage: &mut Usage, job: &Job) {
    let (kind, outcome) = (deephardway::kind_name(job.kind), deephardway::state_name(job.state));
    *usage.jobs.entry(format!("{kind}/{outcome}")).or_default() += 1;
    if let (Some(start), Some(end)) = (&job.start_time, &job.end_time) {
        let seconds = (end.seconds - start.seconds) as f64 + f64::from(end.nanos - start.nanos) / 1e9;
        usage.worker_seconds += seconds.max(0.0);
    }
    let succeeded = job.state == JobState::Succeeded as i32;
    let input = job.spec.as_ref().and_then(|s| s.input.as_ref());
    match (job.result.as_ref().and_then(|r| r.value.as_ref()), input) {
        (Some(job_result::Value::Generate(g)), _) => {
            usage.prompt_tokens += u64::from(g.prompt_tokens);
            usage.generated_tokens += u64::from(g.completion_tokens);
        }
        (Some(job_result::Value::Embed(_)), Some(Input::Embed(e))) if succeeded => {
            usage.embedded_texts += e.texts.len() as u64
        }
        (Some(job_result::Value::Classify(_)), Some(Input::Classify(c))) if succeeded => {
            usage.classified_images += c.images.len() as u64
        }
        (Some(job_result::Value::Train(t)), Some(Input::Train(input))) => {
            usage.training_image_epochs += u64::from(t.train_images) * u64::from(input.epochs.max(1))
        }
        _ => {}
    }
}

/// Finished jobs counted in one transaction at most: a marker each, and the counters.
pub const MAX_BATCH: usize = 64;
/// How long the first finished job of a batch waits for others.
const BATCH_WINDOW: std::time::Duration = std::time::Duration::from_millis(200);

/// The name a job's usage is kept under: its key's, or [`ANONYMOUS`].
fn key_name(job: &Job) -> &str {
    if job.key.is_empty() { ANONYMOUS } else { job.key.as_str() }
}

/// The record a job's usage is added to.
fn usage_key(job: &Job) -> String {
    keys::usage(tenant_of(&job.tenant), key_name(job))
}

/// Counts one finished job, once.
pub async fn record(store: &SharedStore, job: &Job) -> Result<(), Status> {
    record_all(store, vec![job.clone()]).await
}

/// Counts finished jobs of one key, each once, in transactions of up to [`MAX_BATCH`]
/// jobs. A transaction that fails because another replica counted some of them
/// meanwhile is tried again without those.
async fn record_all(store: &SharedStore, jobs: Vec<Job>) -> Result<(), Status> {
    let Some(first) = jobs.first() else { return Ok(()) };
    let (tenant, name, key) = (tenant_of(&first.tenant).to_string(), key_name(first).to_string(), usage_key(first));
    for mut batch in jobs.chunks(MAX_BATCH).map(<[Job]>::to_vec) {
        let mut tries = 0;
        while !batch.is_empty() {
            tries += 1;
            if tries > 32 {
                return Err(Status::aborted(format!("usage of {name}: too many concurrent updates")));
            }
            let current = store.get(&key).await?;
            let (mut usage, revision) = match &current {
                Some(kv) => (
                    Usage::decode(kv.value.as_slice())
                        .map_err(|e| Status::internal(format!("usage record {key}: {e}")))?,
                    kv.mod_revision,
                ),
                None => (Usage { tenant: tenant.clone(), key: name.clone(), ..Default::default() }, 0),
            };
            let mut txn = Txn::new().when(Compare::ModRevision(key.clone(), revision));
            for job in &batch {
                add(&mut usage, job);
                txn =
                    txn.when(Compare::absent(keys::counted(&job.id))).then(Op::put(keys::counted(&job.id), Vec::new()));
            }
            if store.txn(txn.then(Op::put(&key, usage.encode_to_vec()))).await?.succeeded {
                break;
            }
            // Another replica counted some of them (or other jobs of the key): drop the
            // counted ones and read the counters again.
            let mut uncounted = Vec::with_capacity(batch.len());
            for job in batch {
                if store.get(&keys::counted(&job.id)).await?.is_none() {
                    uncounted.push(job);
                }
            }
            batch = uncounted;
        }
    }
    Ok(())
}

/// Every key's usage in `tenant`, or in every tenant; by tenant, then key.
pub async fn list(store: &SharedStore, tenant: Option<&str>) -> Result<Vec<Usage>, Status> {
    let prefix = tenant.map_or_else(|| keys::USAGE.to_string(), keys::tenant_usage);
    let range = store.range(&prefix, 0).await?;
    range
        .kvs
        .iter()
        .map(|kv| {
            Usage::decode(kv.value.as_slice()).map_err(|e| Status::internal(format!("usage record {}: {e}", kv.key)))
        })
        .collect()
}
