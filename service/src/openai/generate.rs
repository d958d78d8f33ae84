//! `POST /v1/chat/completions` and `POST /v1/completions`: a generate job each (messages
//! through the model's chat template, or a raw prompt), answered whole or streamed as
//! server-sent events of `chat.completion.chunk` / `text_completion` objects ending with
//! `data: [DONE]`. A client that goes away before the end cancels its job ("client
//! disconnected"): when a streamed token cannot be written, or when the handler of a
//! whole answer is dropped.

use std::{sync::Arc, time::Duration};

use axum::{
    body::Bytes,
    extract::{Request, State},
    response::{IntoResponse, Response},
};
use deephardway::v1::{
    FinishReason, GenerateInput, GenerateResult, JobEvent, JobSpec, job_event::Event, job_result, job_spec::Input,
};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{
    Api, CancelOnDrop,
    errors::ApiError,
    final_event, job_error, json_answer, json_body, now_seconds, queue_json, sse_answer, sse_frame,
    wire::{self, ChatRequest, CompletionRequest, HARMLESS},
};
use crate::{auth::Caller, rpc::jobs::Update};

/// An SSE comment at least this often while nothing else is sent: proves the client is
/// still there (a write to a closed connection fails) while the job waits in line.
const KEEP_ALIVE: Duration = Duration::from_secs(5);

/// Which endpoint: the shapes of its objects.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Flavor {
    Chat,
    Completion,
}

/// What the answer needs besides the job's events.
struct Answer {
    flavor: Flavor,
    id: String,
    job_id: String,
    model: String,
    created: i64,
    include_usage: bool,
}

pub async fn chat(State(api): State<Arc<Api>>, request: Request) -> Response {
    chat_answer(&api, request).await.unwrap_or_else(IntoResponse::into_response)
}

pub async fn completions(State(api): State<Arc<Api>>, request: Request) -> Response {
    completion_answer(&api, request).await.unwrap_or_else(IntoResponse::into_response)
}

async fn chat_answer(api: &Api, request: Request) -> Result<Response, ApiError> {
    let caller = api.caller("/v1/chat/completions", request.headers())?;
    let (headers, body) = json_body::<ChatRequest>(request).await?;
    wire::check_unknown(&body.extra, HARMLESS)?;
    let model = wire::model(body.model)?;
    let items = body.messages.ok_or_else(|| ApiError::invalid("messages", "messages is required"))?;
    let input = GenerateInput { messages: wire::messages(&items, "messages")?, ..Default::default() };
    run(api, caller, &headers, Generation::new(Flavor::Chat, model, input, body.sampling)?).await
}

async fn completion_answer(api: &Api, request: Request) -> Result<Response, ApiError> {
    let caller = api.caller("/v1/completions", request.headers())?;
    let (headers, body) = json_body::<CompletionRequest>(request).await?;
    wire::check_unknown(&body.extra, &[HARMLESS, &["suffix"]].concat())?;
    if body.extra.get("suffix").is_some_and(|s| !s.is_null() && s != "") {
        return Err(ApiError::invalid("suffix", "suffix is not supported by this server"));
    }
    let model = wire::model(body.model)?;
    let prompts = body.prompt.ok_or_else(|| ApiError::invalid("prompt", "prompt is required"))?.strings("prompt")?;
    let [prompt] = <[String; 1]>::try_from(prompts)
        .map_err(|p| ApiError::invalid("prompt", format!("one prompt per request is supported, got {}", p.len())))?;
    let input = GenerateInput { prompt, ..Default::default() };
    run(api, caller, &headers, Generation::new(Flavor::Completion, model, input, body.sampling)?).await
}

/// What a request asks to generate, and how it wants the answer.
struct Generation {
    flavor: Flavor,
    model: String,
    input: GenerateInput,
    stream: bool,
    include_usage: bool,
}

impl Generation {
    /// `input` with the request's sampling applied.
    fn new(
        flavor: Flavor,
        model: String,
        mut input: GenerateInput,
        sampling: wire::Sampling,
    ) -> Result<Self, ApiError> {
        let (stream, include_usage) =
            (sampling.stream, sampling.stream_options.as_ref().is_some_and(|o| o.include_usage));
        sampling.apply(&mut input)?;
        Ok(Generation { flavor, model, input, stream, include_usage })
    }
}

async fn run(
    api: &Api,
    caller: Caller,
    headers: &http::HeaderMap,
    generation: Generation,
) -> Result<Response, ApiError> {
    let Generation { flavor, model, input, stream, include_usage } = generation;
    let spec = JobSpec { input: Some(Input::Generate(input)), model: model.clone(), ..Default::default() };
    let job_id = api.submit(&caller, headers, spec, wire::generate_param).await?;
    let prefix = if flavor == Flavor::Chat { "chatcmpl" } else { "cmpl" };
    let answer =
        Answer { flavor, id: format!("{prefix}-{job_id}"), job_id, model, created: now_seconds(), include_usage };
    if stream { Ok(streamed(api, caller, answer)) } else { whole(api, caller, answer).await }
}

/// The whole answer once the job ends; the job is cancelled if this is dropped first.
async fn whole(api: &Api, caller: Caller, answer: Answer) -> Result<Response, ApiError> {
    let mut guard = CancelOnDrop::new(api, &answer.job_id);
    let mut events = api.follow(caller, &answer.job_id, 0);
    let last = final_event(&mut events, |_| {}).await?;
    guard.disarm();
    if let Some(error) = job_error(&last) {
        return Err(error);
    }
    let result = generated(&last)?;
    let finish = finish_reason(result);
    let choice = match answer.flavor {
        Flavor::Chat => json!({
            "index": 0,
            "message": {"role": "assistant", "content": result.text, "refusal": null},
            "logprobs": null,
            "finish_reason": finish,
        }),
        Flavor::Completion => json!({"index": 0, "text": result.text, "logprobs": null, "finish_reason": finish}),
    };
    let body = json!({
        "id": answer.id,
        "object": if answer.flavor == Flavor::Chat { "chat.completion" } else { "text_completion" },
        "created": answer.created,
        "model": answer.model,
        "choices": [choice],
        "usage": usage(result),
        "system_fingerprint": null,
    });
    Ok(json_answer(&answer.job_id, &body))
}

/// Streams the job's text as it is generated.
fn streamed(api: &Api, caller: Caller, answer: Answer) -> Response {
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let guard = CancelOnDrop::new(api, &answer.job_id);
    let events = api.follow(caller, &answer.job_id, 0);
    let job_id = answer.job_id.clone();
    tokio::spawn(stream_job(answer, events, tx, guard));
    sse_answer(&job_id, rx)
}

async fn stream_job(
    answer: Answer,
    mut events: crate::rpc::jobs::EventStream,
    tx: mpsc::Sender<Bytes>,
    mut guard: CancelOnDrop,
) {
    // A send that fails means the client went away: return, and the guard cancels the job.
    macro_rules! send {
        ($frame:expr) => {
            if tx.send($frame).await.is_err() {
                return;
            }
        };
    }
    if answer.flavor == Flavor::Chat {
        send!(sse_frame(None, &chunk(&answer, json!({"role": "assistant", "content": ""}), Value::Null)));
    }
    let mut keep_alive = tokio::time::interval(KEEP_ALIVE);
    keep_alive.tick().await;
    loop {
        let update = tokio::select! {
            update = events.next() => update,
            _ = keep_alive.tick() => {
                send!(Bytes::from_static(b": keep-alive\n\n"));
                continue;
            }
            () = tx.closed() => return,
        };
        let event = match update {
            Some(Ok(Update::Event(event))) => event,
            Some(Ok(Update::Queue(status))) => {
                // A comment: OpenAI's clients skip it; curl users see their place in line.
                send!(Bytes::from(format!(": deephardway.queue_status {}\n\n", queue_json(&status))));
                continue;
            }
            Some(Err(status)) => {
                send!(sse_frame(None, &ApiError::from(status).body()));
                return;
            }
            None => return,
        };
        keep_alive.reset();
        match &event.event {
            Some(Event::Output(output)) if !output.text.is_empty() => {
                let delta = match answer.flavor {
                    Flavor::Chat => json!({"content": output.text}),
                    Flavor::Completion => Value::String(output.text.clone()),
                };
                send!(sse_frame(None, &chunk(&answer, delta, Value::Null)));
            }
            Some(Event::Result(_)) => {
                guard.disarm();
                let Ok(result) = generated(&event) else { return };
                let end = match answer.flavor {
                    Flavor::Chat => json!({}),
                    Flavor::Completion => Value::String(String::new()),
                };
                send!(sse_frame(None, &chunk(&answer, end, json!(finish_reason(result)))));
                if answer.include_usage {
                    let mut last = chunk(&answer, Value::Null, Value::Null);
                    last["choices"] = json!([]);
                    last["usage"] = usage(result);
                    send!(sse_frame(None, &last));
                }
                send!(Bytes::from_static(b"data: [DONE]\n\n"));
                return;
            }
            Some(Event::Failed(_) | Event::Cancelled(_)) => {
                guard.disarm();
                if let Some(error) = job_error(&event) {
                    send!(sse_frame(None, &error.body()));
                }
                return;
            }
            _ => {}
        }
    }
}

/// One chunk of a streamed answer: `delta` is a chat delta object, or a completion's text.
fn chunk(answer: &Answer, delta: Value, finish_reason: Value) -> Value {
    let choice = match answer.flavor {
        Flavor::Chat => json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}),
        Flavor::Completion => json!({"index": 0, "text": delta, "logprobs": null, "finish_reason": finish_reason}),
    };
    json!({
        "id": answer.id,
        "object": if answer.flavor == Flavor::Chat { "chat.completion.chunk" } else { "text_completion" },
        "created": answer.created,
        "model": answer.model,
        "choices": [choice],
        "system_fingerprint": null,
    })
}

/// The generate result a final event carries.
pub(super) fn generated(event: &JobEvent) -> Result<&GenerateResult, ApiError> {
    match &event.event {
        Some(Event::Result(result)) => match &result.value {
            Some(job_result::Value::Generate(generated)) => Ok(generated),
            _ => Err(ApiError::from(tonic::Status::internal("the job's result is not generated text"))),
        },
        _ => Err(ApiError::from(tonic::Status::internal("the job ended without a result"))),
    }
}

/// `stop` when the model ended or a stop string appeared, `length` at the token limit.
pub(super) fn finish_reason(result: &GenerateResult) -> &'static str {
    match result.finish_reason() {
        FinishReason::Length => "length",
        _ => "stop",
    }
}

fn usage(result: &GenerateResult) -> Value {
    json!({
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
    })
}
