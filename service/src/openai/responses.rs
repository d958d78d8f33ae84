//! The Responses API over generate jobs: a response id is `resp_` and the job id.
//!
//! - `POST /v1/responses` runs one; with `background: true` it answers at once (status
//!   `queued`) and the job runs whether or not anyone stays connected; without, the
//!   answer (or stream) waits for the job, which a disconnect cancels.
//! - `GET /v1/responses/{id}` is the job's state as a response object (`queued`,
//!   `in_progress`, `completed`, `incomplete` at `max_output_tokens`, `failed`,
//!   `cancelled`), with its place in line while queued (`deephardway.queue_status`).
//! - `GET /v1/responses/{id}?stream=true&starting_after=N` streams the job's events after
//!   seq N: an event's `sequence_number` is the job event's seq, so resuming is exactly
//!   `WatchJob`'s `after_seq`. `response.queued` events with the place in line are live
//!   only: they repeat the last seq and are never replayed.
//! - `POST /v1/responses/{id}/cancel` cancels the job.
//!
//! Events: `response.created` (the job queued), `response.queued` (back in line, or a new
//! place in line), `response.in_progress` (started), `response.output_text.delta`,
//! then `response.completed`, `response.incomplete`, `response.failed`, or
//! `response.cancelled` (not an OpenAI event name: OpenAI's stream has none for it).

use std::sync::Arc;

use axum::{
    body::Bytes,
    extract::{Path, Request, State},
    response::{IntoResponse, Response},
};
use deephardway::v1::{
    ChatMessage, FinishReason, GenerateInput, GenerateResult, Job, JobEvent, JobKind, JobSpec, JobState, QueueStatus,
    chat_message::Role, job_event::Event, job_result, job_spec::Input,
};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{
    Api, CancelOnDrop,
    errors::ApiError,
    final_event, json_answer, json_body, queue_json, sse_answer, sse_frame, unix_seconds,
    wire::{self, HARMLESS, ResponseRequest},
};
use crate::{auth::Caller, rpc::jobs::Update};

pub async fn create(State(api): State<Arc<Api>>, request: Request) -> Response {
    create_answer(&api, request).await.unwrap_or_else(IntoResponse::into_response)
}

pub async fn retrieve(State(api): State<Arc<Api>>, Path(id): Path<String>, request: Request) -> Response {
    retrieve_answer(&api, &id, request).await.unwrap_or_else(IntoResponse::into_response)
}

pub async fn cancel(State(api): State<Arc<Api>>, Path(id): Path<String>, request: Request) -> Response {
    cancel_answer(&api, &id, request).await.unwrap_or_else(IntoResponse::into_response)
}

/// What a response object shows of its job besides its state.
struct View {
    job_id: String,
    model: String,
    created_at: i64,
    background: bool,
}

impl View {
    fn of(job: &Job, background: bool) -> View {
        View {
            job_id: job.id.clone(),
            model: job.model.clone(),
            created_at: unix_seconds(&job.create_time),
            background,
        }
    }

    /// The response object in `status`, with the generated text once there is a result,
    /// the failure of a failed job, and the place in line of a queued one.
    fn object(
        &self,
        state: JobState,
        result: Option<&GenerateResult>,
        error: Option<Value>,
        queue: Option<&QueueStatus>,
    ) -> Value {
        let length = result.is_some_and(|r| r.finish_reason() == FinishReason::Length);
        let status = match state {
            JobState::Queued | JobState::Unspecified => "queued",
            JobState::Running => "in_progress",
            JobState::Succeeded if length => "incomplete",
            JobState::Succeeded => "completed",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        };
        let output = match result {
            Some(result) => json!([{
                "type": "message",
                "id": format!("msg_{}", self.job_id),
                "status": if length { "incomplete" } else { "completed" },
                "role": "assistant",
                "content": [{"type": "output_text", "text": result.text, "annotations": [], "logprobs": []}],
            }]),
            None => json!([]),
        };
        let usage = result.map(|r| {
            json!({
                "input_tokens": r.prompt_tokens,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": r.completion_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": r.prompt_tokens + r.completion_tokens,
            })
        });
        json!({
            "id": format!("resp_{}", self.job_id),
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "background": self.background,
            "model": self.model,
            "output": output,
            "usage": usage,
            "error": error,
            "incomplete_details": if length { json!({"reason": "max_output_tokens"}) } else { Value::Null },
            "parallel_tool_calls": false,
            "tool_choice": "none",
            "tools": [],
            "deephardway": {"job_id": self.job_id, "queue_status": queue.map(queue_json)},
        })
    }

    /// The object of a job as its record has it.
    fn of_record(&self, job: &Job, queue: Option<&QueueStatus>) -> Value {
        let result = match job.result.as_ref().and_then(|r| r.value.as_ref()) {
            Some(job_result::Value::Generate(generated)) => Some(generated),
            _ => None,
        };
        let error = job.error.as_ref().map(|e| error_json(e.code, &e.message));
        self.object(job.state(), result, error, queue)
    }
}

fn error_json(code: i32, message: &str) -> Value {
    json!({"code": format!("{:?}", tonic::Code::from(code)).to_lowercase(), "message": message})
}

async fn create_answer(api: &Api, request: Request) -> Result<Response, ApiError> {
    let caller = api.caller("/v1/responses", request.headers())?;
    let (headers, body) = json_body::<ResponseRequest>(request).await?;
    wire::check_unknown(&body.extra, &[HARMLESS, &["truncation", "include"]].concat())?;
    let model = wire::model(body.model)?;
    let mut messages = Vec::new();
    if let Some(instructions) = body.instructions.filter(|i| !i.is_empty()) {
        messages.push(ChatMessage { role: Role::System as i32, content: instructions });
    }
    match body.input {
        Some(Value::String(text)) => messages.push(ChatMessage { role: Role::User as i32, content: text }),
        Some(Value::Array(items)) => messages.extend(wire::messages(&items, "input")?),
        Some(other) => {
            return Err(ApiError::invalid("input", format!("input: expected a string or messages, got {other}")));
        }
        None => return Err(ApiError::invalid("input", "input is required")),
    }
    let input = GenerateInput {
        messages,
        max_tokens: body.max_output_tokens.unwrap_or(0),
        temperature: body.temperature.unwrap_or(1.0),
        top_p: body.top_p.unwrap_or(1.0),
        ..Default::default()
    };
    let spec = JobSpec { input: Some(Input::Generate(input)), model, ..Default::default() };
    let job_id = api.submit(&caller, &headers, spec, param).await?;
    let job = api.ctx.lifecycle.get_for(&caller, &job_id).await.map_err(ApiError::from)?;
    let view = View::of(&job, body.background);
    // Only a response that is not in the background belongs to its connection.
    let guard = (!body.background).then(|| CancelOnDrop::new(api, &job_id));
    if body.stream {
        return Ok(streamed(api, caller, view, 0, guard));
    }
    if body.background {
        let queue = api.ctx.hub.queues().status(&job.id);
        return Ok(json_answer(&job_id, &view.of_record(&job, queue.as_ref())));
    }
    let mut guard = guard;
    let mut events = api.follow(caller.clone(), &job_id, 0);
    final_event(&mut events, |_| {}).await?;
    if let Some(guard) = guard.as_mut() {
        guard.disarm();
    }
    let job = api.ctx.lifecycle.get_for(&caller, &job_id).await.map_err(ApiError::from)?;
    Ok(json_answer(&job_id, &view.of_record(&job, None)))
}

/// A refused field of the generate job, in the Responses API's terms.
fn param(field: &str) -> Option<String> {
    wire::generate_param(field).map(|p| match p.as_str() {
        "max_tokens" => "max_output_tokens".to_string(),
        "messages" | "prompt" => "input".to_string(),
        _ => p,
    })
}

/// The generate job a response id names, for `caller`.
async fn job_of(api: &Api, caller: &Caller, id: &str) -> Result<Job, ApiError> {
    let not_found = || ApiError::not_found(format!("no response with id {id:?}"));
    let job_id = id.strip_prefix("resp_").ok_or_else(not_found)?;
    let job = api.ctx.lifecycle.get_for(caller, job_id).await.map_err(|s| match s.code() {
        tonic::Code::NotFound | tonic::Code::InvalidArgument => not_found(),
        _ => ApiError::from(s),
    })?;
    if job.kind() != JobKind::Generate {
        return Err(not_found());
    }
    Ok(job)
}

async fn retrieve_answer(api: &Api, id: &str, request: Request) -> Result<Response, ApiError> {
    let caller = api.caller(request.uri().path(), request.headers())?;
    let job = job_of(api, &caller, id).await?;
    let (mut stream, mut starting_after) = (false, 0u64);
    for (name, value) in url::form_urlencoded::parse(request.uri().query().unwrap_or_default().as_bytes()) {
        match name.as_ref() {
            "stream" => stream = value == "true",
            "starting_after" => {
                starting_after = value.parse().map_err(|_| {
                    ApiError::invalid(
                        "starting_after",
                        format!("starting_after must be a sequence number, got {value:?}"),
                    )
                })?;
            }
            _ => {}
        }
    }
    if starting_after > job.last_seq && deephardway::is_finished(job.state) {
        return Err(ApiError::invalid(
            "starting_after",
            format!("starting_after is {starting_after}, past the response's last event ({})", job.last_seq),
        ));
    }
    // The background flag is not kept with the job; a response one can retrieve by id
    // behaves as a background one (nothing cancels it but a cancel).
    let view = View::of(&job, true);
    if stream {
        return Ok(streamed(api, caller, view, starting_after, None));
    }
    let queue = api.ctx.hub.queues().status(&job.id);
    Ok(json_answer(&job.id, &view.of_record(&job, queue.as_ref())))
}

async fn cancel_answer(api: &Api, id: &str, request: Request) -> Result<Response, ApiError> {
    let caller = api.caller(request.uri().path(), request.headers())?;
    let job = job_of(api, &caller, id).await?;
    let cancelled =
        api.ctx.lifecycle.cancel(&job.id, "cancelled through the Responses API").await.map_err(ApiError::from)?;
    Ok(json_answer(&job.id, &View::of(&job, true).of_record(&cancelled, None)))
}

/// Streams the job's events after `after_seq` as Responses events; `guard` cancels the
/// job if the client leaves first (a response not in the background).
fn streamed(api: &Api, caller: Caller, view: View, after_seq: u64, guard: Option<CancelOnDrop>) -> Response {
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let events = api.follow(caller, &view.job_id, after_seq);
    let job_id = view.job_id.clone();
    tokio::spawn(stream_job(view, events, tx, guard, after_seq));
    sse_answer(&job_id, rx)
}

async fn stream_job(
    view: View,
    mut events: crate::rpc::jobs::EventStream,
    tx: mpsc::Sender<Bytes>,
    mut guard: Option<CancelOnDrop>,
    mut last_seq: u64,
) {
    while let Some(update) = events.next().await {
        let frame = match update {
            Ok(Update::Event(event)) => {
                last_seq = event.seq;
                let Some((name, data)) = event_json(&view, &event) else { continue };
                if event.event.as_ref().is_some_and(deephardway::is_final)
                    && let Some(guard) = guard.as_mut()
                {
                    guard.disarm();
                }
                sse_frame(Some(name), &data)
            }
            Ok(Update::Queue(status)) => {
                let response = view.object(JobState::Queued, None, None, Some(&status));
                let data = json!({"type": "response.queued", "sequence_number": last_seq, "response": response});
                sse_frame(Some("response.queued"), &data)
            }
            Err(status) => {
                let data = json!({
                    "type": "error",
                    "sequence_number": last_seq,
                    "code": format!("{:?}", status.code()).to_lowercase(),
                    "message": status.message(),
                    "param": null,
                });
                let _ = tx.send(sse_frame(Some("error"), &data)).await;
                return;
            }
        };
        if tx.send(frame).await.is_err() {
            return; // the client left; an armed guard cancels the job
        }
    }
}

/// One job event as a Responses event (name, data), or `None` for events it does not
/// show (progress).
fn event_json(view: &View, event: &JobEvent) -> Option<(&'static str, Value)> {
    let seq = event.seq;
    let with_response = |name: &'static str, response: Value| {
        Some((name, json!({"type": name, "sequence_number": seq, "response": response})))
    };
    match event.event.as_ref()? {
        Event::Queued(queued) => {
            let response = view.object(JobState::Queued, None, None, None);
            with_response(if queued.attempt <= 1 { "response.created" } else { "response.queued" }, response)
        }
        Event::Started(_) => with_response("response.in_progress", view.object(JobState::Running, None, None, None)),
        Event::Output(output) => Some((
            "response.output_text.delta",
            json!({
                "type": "response.output_text.delta",
                "sequence_number": seq,
                "item_id": format!("msg_{}", view.job_id),
                "output_index": 0,
                "content_index": 0,
                "delta": output.text,
                "logprobs": [],
            }),
        )),
        Event::Result(result) => {
            let generated = match &result.value {
                Some(job_result::Value::Generate(generated)) => Some(generated),
                _ => None,
            };
            let response = view.object(JobState::Succeeded, generated, None, None);
            let name = if response["status"] == "incomplete" { "response.incomplete" } else { "response.completed" };
            with_response(name, response)
        }
        Event::Failed(failed) => {
            let error = error_json(failed.code, &failed.message);
            with_response("response.failed", view.object(JobState::Failed, None, Some(error), None))
        }
        Event::Cancelled(_) => with_response("response.cancelled", view.object(JobState::Cancelled, None, None, None)),
        Event::Progress(_) => None,
    }
}
