//! The OpenAI-compatible HTTP API, on the service's one port beside gRPC: what OpenAI's
//! client libraries call, each request a real job in the queue (a job id, a priority, a
//! place in `ListJobs`, `WatchJobs` and the browser's Jobs page, the same checks, limits
//! and keys as the gRPC API).
//!
//! - [`models`]: `GET /v1/models`, the generate and embed models connected workers serve;
//! - [`generate`]: `POST /v1/chat/completions` and `POST /v1/completions`, whole or as
//!   server-sent events; a client that disconnects cancels its job;
//! - [`embeddings`]: `POST /v1/embeddings`, floats or base64;
//! - [`responses`]: `POST /v1/responses` (with `background: true`, the response outlives
//!   the connection), `GET /v1/responses/{id}` (`?stream=true&starting_after=N` replays
//!   the job's event log after seq N), `POST /v1/responses/{id}/cancel`;
//! - [`errors`]: OpenAI's error shape and HTTP statuses, from the job API's refusals;
//! - [`wire`]: the requests as serde reads them, and what is refused by name.
//!
//! Extensions, named so that OpenAI's clients ignore them: `x-deephardway-priority` (the
//! job's priority) and `Idempotency-Key` (its request id: a retry with the same key
//! follows the same job) on requests; `x-deephardway-job-id` on every answer that made a
//! job; and while a streamed job waits, its place in line, as SSE comments in chat and
//! completion streams and as `response.queued` events in Responses streams.

pub mod embeddings;
pub mod errors;
pub mod generate;
pub mod models;
pub mod responses;
pub mod wire;

use std::sync::Arc;

use axum::{
    Router,
    body::{Body, Bytes},
    extract::Request,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use deephardway::v1::{JobEvent, JobSpec, QueueStatus, job_event::Event};
use futures::StreamExt;
use http::{HeaderMap, HeaderValue, header};
use serde::de::DeserializeOwned;

use self::errors::{ApiError, FieldNames};
use crate::{
    auth::{Caller, layer::Auth},
    rpc::{
        SharedContext,
        jobs::{EventStream, Update, follow},
    },
};

/// The largest request body read; larger ones are refused (413) before they are read.
/// Above the job API's own limits (1 MiB of texts to embed, 64 KiB prompts), so that they
/// answer first, naming the parameter.
pub const MAX_BODY: usize = 8 * 1024 * 1024;

/// The request header with the job's priority, and the answer header with its id.
pub const PRIORITY_HEADER: &str = "x-deephardway-priority";
pub const JOB_ID_HEADER: &str = "x-deephardway-job-id";

/// What every handler gets.
#[derive(Clone)]
pub struct Api {
    ctx: SharedContext,
    auth: Auth,
}

/// Adds the API's routes to `router` (after the gRPC layers, which they must not pass
/// through: these are plain HTTP).
pub fn route(router: Router, ctx: SharedContext, auth: Auth) -> Router {
    let api = Arc::new(Api { ctx, auth });
    let routes = Router::new()
        .route("/v1/models", get(models::list))
        .route("/v1/chat/completions", post(generate::chat))
        .route("/v1/completions", post(generate::completions))
        .route("/v1/embeddings", post(embeddings::create))
        .route("/v1/responses", post(responses::create))
        .route("/v1/responses/{id}", get(responses::retrieve))
        .route("/v1/responses/{id}/cancel", post(responses::cancel))
        .with_state(api);
    router.merge(routes)
}

impl Api {
    /// The caller, if its key (`Authorization: Bearer …`) may use `path`.
    fn caller(&self, path: &str, headers: &HeaderMap) -> Result<Caller, ApiError> {
        match self.auth.admit(path, headers) {
            Ok(caller) => Ok(caller.unwrap_or_else(Caller::anonymous)),
            Err(status) => Err(ApiError::from(status)),
        }
    }

    /// Submits `spec` for `caller` with the request's extensions (priority, idempotency
    /// key). Returns the job id.
    async fn submit(
        &self,
        caller: &Caller,
        headers: &HeaderMap,
        mut spec: JobSpec,
        names: FieldNames,
    ) -> Result<String, ApiError> {
        if let Some(priority) = headers.get(PRIORITY_HEADER) {
            spec.priority = priority.to_str().ok().and_then(|p| p.trim().parse().ok()).ok_or_else(|| {
                ApiError::invalid(PRIORITY_HEADER, format!("{PRIORITY_HEADER} must be an integer, got {priority:?}"))
            })?;
        }
        let request_id = match headers.get("idempotency-key") {
            Some(key) => key.to_str().map_err(|_| ApiError::invalid("Idempotency-Key", "must be ASCII"))?,
            None => "",
        };
        let model = spec.model.clone();
        match self.ctx.lifecycle.submit(spec, request_id, caller).await {
            Ok((job, _)) => Ok(job.id),
            // No worker serves it: a model nobody has (404), or nobody at all (503).
            Err(status) if status.code() == tonic::Code::FailedPrecondition => {
                match self.ctx.lifecycle.workers().await {
                    Ok(workers) if workers.is_empty() => Err(ApiError {
                        status: http::StatusCode::SERVICE_UNAVAILABLE,
                        message: format!("no worker is connected to run {model:?}; retry later"),
                        kind: "server_error",
                        param: None,
                        code: Some("no_worker"),
                    }),
                    _ => Err(ApiError::unknown_model(status.message())),
                }
            }
            Err(status) => Err(ApiError::from_status(&status, names)),
        }
    }

    /// The job's updates after `after_seq` (see `rpc::jobs::follow`).
    fn follow(&self, caller: Caller, job_id: &str, after_seq: u64) -> EventStream {
        follow(self.ctx.clone(), "openai", caller, job_id.to_string(), after_seq)
    }
}

/// The request's body as `T`: refused with 413 before it is read when its declared size
/// is over [`MAX_BODY`], and with 400 when it is not the JSON `T` expects.
async fn json_body<T: DeserializeOwned>(request: Request) -> Result<(HeaderMap, T), ApiError> {
    let (parts, body) = request.into_parts();
    let declared = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|size| size > MAX_BODY) {
        return Err(ApiError::too_large(MAX_BODY));
    }
    let bytes = axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| ApiError::too_large(MAX_BODY))?;
    let value = serde_json::from_slice(&bytes).map_err(|e| {
        // "invalid type: string "x", expected u32 at line 1 column 30" names no field:
        // serde_path_to_error would, but the message already says where.
        ApiError::invalid("body", format!("the request body is not valid JSON for this endpoint: {e}"))
    })?;
    Ok((parts.headers, value))
}

/// A JSON answer for the job `job_id`.
fn json_answer(job_id: &str, value: &serde_json::Value) -> Response {
    let mut response = ([(header::CONTENT_TYPE, "application/json")], value.to_string()).into_response();
    with_job_id(&mut response, job_id);
    response
}

fn with_job_id(response: &mut Response, job_id: &str) {
    if let Ok(value) = HeaderValue::from_str(job_id) {
        response.headers_mut().insert(JOB_ID_HEADER, value);
    }
}

/// Seconds since the epoch of a timestamp (0 if unset), as OpenAI's `created` fields.
fn unix_seconds(time: &Option<prost_types::Timestamp>) -> i64 {
    time.as_ref().map_or(0, |t| t.seconds)
}

fn now_seconds() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// Cancels its job when dropped while armed: a client that goes away before the answer
/// (the handler's future, or the stream's task, is dropped) does not leave the job
/// running for nobody.
struct CancelOnDrop {
    ctx: SharedContext,
    job_id: String,
    armed: bool,
}

impl CancelOnDrop {
    fn new(api: &Api, job_id: &str) -> Self {
        CancelOnDrop { ctx: api.ctx.clone(), job_id: job_id.to_string(), armed: true }
    }

    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (ctx, job_id) = (self.ctx.clone(), std::mem::take(&mut self.job_id));
        tokio::spawn(async move {
            match ctx.lifecycle.cancel(&job_id, "client disconnected").await {
                Ok(_) => tracing::info!(job = %job_id, "cancelled: its HTTP client disconnected"),
                Err(e) => tracing::debug!(job = %job_id, error = %e, "could not cancel after a disconnect"),
            }
        });
    }
}

/// The job's events until its final one; queue statuses are left out. Ends with the
/// stream's error if it breaks.
async fn final_event(events: &mut EventStream, mut on_event: impl FnMut(&JobEvent)) -> Result<JobEvent, ApiError> {
    while let Some(update) = events.next().await {
        match update {
            Ok(Update::Event(event)) => {
                on_event(&event);
                if event.event.as_ref().is_some_and(deephardway::is_final) {
                    return Ok(*event);
                }
            }
            Ok(Update::Queue(_)) => {}
            Err(status) => return Err(ApiError::from(status)),
        }
    }
    Err(ApiError::from(tonic::Status::unavailable("the job's stream ended early")))
}

/// A failed or cancelled job's final event as an error answer; `None` for a result.
fn job_error(event: &JobEvent) -> Option<ApiError> {
    match event.event.as_ref()? {
        Event::Failed(failed) => {
            let status = tonic::Status::with_details(
                tonic::Code::from(failed.code),
                failed.message.clone(),
                Bytes::from(prost::Message::encode_to_vec(failed)),
            );
            Some(ApiError::from(status))
        }
        Event::Cancelled(cancelled) => Some(ApiError {
            status: http::StatusCode::from_u16(499).expect("a valid status"),
            message: format!("the job was cancelled: {}", cancelled.reason),
            kind: "server_error",
            param: None,
            code: Some("cancelled"),
        }),
        _ => None,
    }
}

/// A queue status as JSON (position, and the estimate when there is one).
fn queue_json(status: &QueueStatus) -> serde_json::Value {
    let estimate = status.estimated_start_time.as_ref().map(|t| t.seconds as f64 + f64::from(t.nanos) / 1e9);
    serde_json::json!({ "position": status.position, "estimated_start_time": estimate })
}

/// A server-sent event stream answer, fed by `sse` (already formatted frames).
fn sse_answer(job_id: &str, frames: tokio::sync::mpsc::Receiver<Bytes>) -> Response {
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(frames).map(Ok::<_, std::io::Error>));
    let mut response =
        ([(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")], body).into_response();
    with_job_id(&mut response, job_id);
    response
}

/// `data: <json>\n\n`, with `event: <name>` first when named.
fn sse_frame(event: Option<&str>, data: &serde_json::Value) -> Bytes {
    match event {
        Some(name) => Bytes::from(format!("event: {name}\ndata: {data}\n\n")),
        None => Bytes::from(format!("data: {data}\n\n")),
    }
}
