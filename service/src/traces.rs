//! The service's part of a job's trace (see `deephardway::traces`; traces are exported
//! only when the binary was given `--otlp-endpoint`).
//!
//! - [`request_span`]: CreateJob and RunJob run inside a server span that continues the
//!   client's `traceparent` metadata, so the job's `submit` span (`jobs::submit`) joins
//!   the client's trace; without one, the job starts a trace of its own.
//! - The submit span's context is kept with the job, under `/dhw/traces/<id>`, written
//!   in the submit's own transaction: the job may start hours later, on another replica.
//! - When a worker's session hands the job over ([`handed_over`]), the time in line
//!   (`queued`: from submission, or for a rerun from when its worker was lost) and the
//!   claim up to the assignment (`dispatch`) are recorded as spans of that trace, and the assignment carries the dispatch span's context, which the
//!   worker's `run` span continues.
//!
//! Only these two methods get a span of their own: a span per call of every method
//! (watches, health checks, the worker streams) would make a trace of each.

use std::time::SystemTime;

use axum::{extract::Request, middleware::Next, response::Response};
use deephardway::{
    traces::{self, KeyValue},
    v1::Job,
};
use tracing::Instrument;

use crate::{keys, store::Store};

/// The methods whose calls create a job, and so start (or continue) its trace.
const TRACED: [&str; 2] = ["/deephardway.v1.JobService/CreateJob", "/deephardway.v1.JobService/RunJob"];

/// The axum middleware: see the module's comment.
pub async fn request_span(request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let Some(method) = TRACED.iter().find(|m| **m == path) else {
        return next.run(request).await;
    };
    let span = tracing::info_span!(
        "rpc",
        otel.name = method.trim_start_matches('/'),
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = "deephardway.v1.JobService",
        rpc.method = method.rsplit('/').next().unwrap_or_default(),
    );
    if let Some(parent) = request.headers().get(traces::TRACEPARENT).and_then(|v| v.to_str().ok()) {
        traces::continue_from(&span, parent);
    }
    next.run(request).instrument(span).await
}

/// The job's stored trace context (its submit span's), empty if it has none.
pub async fn stored(store: &dyn Store, job_id: &str) -> String {
    match store.get(&keys::trace(job_id)).await {
        Ok(Some(kv)) => String::from_utf8(kv.value).unwrap_or_default(),
        Ok(None) => String::new(),
        Err(e) => {
            // A job is never held back for its trace.
            tracing::debug!(job = %job_id, error = %e, "cannot read the job's trace context");
            String::new()
        }
    }
}

/// Records the job's `queued` and `dispatch` spans as its assignment is handed over to
/// `worker`, and returns the `traceparent` the assignment carries (empty while traces
/// are off).
pub async fn handed_over(store: &dyn Store, job: &Job, worker: &str) -> String {
    if !traces::enabled() {
        return String::new();
    }
    let parent = stored(store, &job.id).await;
    let time = |t: &Option<prost_types::Timestamp>| {
        t.and_then(|t| SystemTime::try_from(t).ok()).unwrap_or_else(SystemTime::now)
    };
    let started = time(&job.start_time);
    let attributes = || {
        vec![
            KeyValue::new("deephardway.job.id", job.id.clone()),
            KeyValue::new("deephardway.job.attempt", i64::from(job.attempts)),
            KeyValue::new("deephardway.model", job.model.clone()),
        ]
    };
    // A rerun waited from when its worker was lost, as its latest `queued` event says.
    let queued_since = if job.attempts <= 1 { Some(time(&job.create_time)) } else { requeued_at(store, job).await };
    if let Some(since) = queued_since {
        traces::record_span("queued", &parent, since, started, attributes());
    }
    let mut dispatch = attributes();
    dispatch.push(KeyValue::new("deephardway.worker.id", worker.to_string()));
    traces::record_span("dispatch", &parent, started, SystemTime::now(), dispatch).unwrap_or_default()
}

/// When a rerun went back in line: the time of the job's latest `queued` event, among
/// its last few (the `started` of this attempt, perhaps a progress or two, come after).
async fn requeued_at(store: &dyn Store, job: &Job) -> Option<SystemTime> {
    use deephardway::v1::{JobEvent, job_event::Event};
    use prost::Message;
    let recent = store.range_rev(&keys::events(&job.id), None, 8).await.ok()?;
    recent.kvs.iter().find_map(|kv| {
        let event = JobEvent::decode(kv.value.as_slice()).ok()?;
        match event.event {
            Some(Event::Queued(_)) => event.time.and_then(|t| SystemTime::try_from(t).ok()),
            _ => None,
        }
    })
}
