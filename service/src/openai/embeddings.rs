//! `POST /v1/embeddings`: one embed job for the request's texts, answered with one vector
//! per text, as floats or (`encoding_format: "base64"`) as little-endian float32 bytes in
//! base64, which is what OpenAI's Python client asks for by default.

use std::sync::Arc;

use axum::{
    extract::{Request, State},
    response::{IntoResponse, Response},
};
use base64::Engine;
use deephardway::v1::{EmbedInput, JobSpec, job_event::Event, job_result, job_spec::Input};
use serde_json::{Value, json};

use super::{
    Api, CancelOnDrop,
    errors::ApiError,
    final_event, job_error, json_answer, json_body,
    wire::{self, EmbeddingRequest, HARMLESS},
};

pub async fn create(State(api): State<Arc<Api>>, request: Request) -> Response {
    answer(&api, request).await.unwrap_or_else(IntoResponse::into_response)
}

async fn answer(api: &Api, request: Request) -> Result<Response, ApiError> {
    let caller = api.caller("/v1/embeddings", request.headers())?;
    let (headers, body) = json_body::<EmbeddingRequest>(request).await?;
    wire::check_unknown(&body.extra, HARMLESS)?;
    let model = wire::model(body.model)?;
    let base64 = match body.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::invalid("encoding_format", format!("encoding_format is {other:?}; float or base64")));
        }
    };
    if body.dimensions.is_some() {
        return Err(ApiError::invalid("dimensions", "dimensions is not supported: the model's own size is returned"));
    }
    let texts = body.input.ok_or_else(|| ApiError::invalid("input", "input is required"))?.strings("input")?;
    if texts.is_empty() {
        return Err(ApiError::invalid("input", "input must not be empty"));
    }
    let spec = JobSpec { input: Some(Input::Embed(EmbedInput { texts })), model: model.clone(), ..Default::default() };
    let job_id = api.submit(&caller, &headers, spec, wire::embed_param).await?;

    let mut guard = CancelOnDrop::new(api, &job_id);
    let mut events = api.follow(caller, &job_id, 0);
    let last = final_event(&mut events, |_| {}).await?;
    guard.disarm();
    if let Some(error) = job_error(&last) {
        return Err(error);
    }
    let Some(Event::Result(result)) = &last.event else { unreachable!("final_event ends on a final event") };
    let Some(job_result::Value::Embed(embedded)) = &result.value else {
        return Err(ApiError::from(tonic::Status::internal("the job's result is not embeddings")));
    };
    let data: Vec<Value> = embedded
        .embeddings
        .iter()
        .enumerate()
        .map(|(index, embedding)| {
            let vector = if base64 {
                let bytes: Vec<u8> = embedding.values.iter().flat_map(|v| v.to_le_bytes()).collect();
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(embedding.values)
            };
            json!({"object": "embedding", "index": index, "embedding": vector})
        })
        .collect();
    let body = json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": embedded.prompt_tokens, "total_tokens": embedded.prompt_tokens},
    });
    Ok(json_answer(&job_id, &body))
}
