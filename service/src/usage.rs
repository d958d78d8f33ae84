//! Usage accounting: what each API key's finished jobs used, added to the key's counters
//! (`/dhw/usage/<tenant>/<key>`, a protobuf `Usage`) when the job finishes.
//!
//! Every replica sees every finished job through its hub and tries to count it; one
//! transaction writes the new counters together with the job's `/dhw/counted/<id>`
//! marker, on the condition that the marker is absent and the counters unchanged since
//! read, so each job is counted exactly once however many replicas race. (A job that
//! finishes while its replica's hub lags behind is not counted; the lag is logged.)

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
            let change = tokio::select! {
                change = changes.recv() => change,
                _ = shutdown.cancelled() => return,
            };
            match change {
                Ok(Change::JobUpdated(job)) if deephardway::is_finished(job.state) => {
                    let counted = async {
                        let mut job = Job::clone(&job);
                        if counts_input(&job) {
                            crate::jobs::join_spec(store.as_ref(), &mut job).await?;
                        }
                        record(&store, &job).await
                    };
                    if let Err(e) = counted.await {
                        tracing::warn!(job = %job.id, error = %e, "could not count the job's usage");
                    }
                }
                Ok(_) => {}
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "usage accounting lagged; some finished jobs may not be counted")
                }
                Err(RecvError::Closed) => return,
            }
        }
    });
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

/// Counts one finished job, once.
pub async fn record(store: &SharedStore, job: &Job) -> Result<(), Status> {
    let tenant = tenant_of(&job.tenant);
    let key_name = if job.key.is_empty() { ANONYMOUS } else { job.key.as_str() };
    let key = keys::usage(tenant, key_name);
    let marker = keys::counted(&job.id);
    for _ in 0..32 {
        let current = store.get(&key).await?;
        let (mut usage, revision) = match &current {
            Some(kv) => (
                Usage::decode(kv.value.as_slice()).map_err(|e| Status::internal(format!("usage record {key}: {e}")))?,
                kv.mod_revision,
            ),
            None => (Usage { tenant: tenant.to_string(), key: key_name.to_string(), ..Default::default() }, 0),
        };
        add(&mut usage, job);
        let txn = Txn::new()
            .when(Compare::absent(&marker))
            .when(Compare::ModRevision(key.clone(), revision))
            .then(Op::put(&key, usage.encode_to_vec()))
            .then(Op::put(&marker, Vec::new()));
        if store.txn(txn).await?.succeeded {
            return Ok(());
        }
        if store.get(&marker).await?.is_some() {
            return Ok(()); // another replica counted it
        }
    }
    Err(Status::aborted(format!("usage of {key_name}: too many concurrent updates")))
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
