//! `GET /v1/models`: the generate and embed models that connected workers serve, with a
//! generate model's context length (an extension field, as vLLM's `max_model_len`).

use std::{collections::BTreeMap, sync::Arc};

use axum::{
    extract::{Request, State},
    http::header,
    response::{IntoResponse, Response},
};
use deephardway::v1::JobKind;
use serde_json::json;

use super::{Api, errors::ApiError};

pub async fn list(State(api): State<Arc<Api>>, request: Request) -> Response {
    answer(&api, request).await.unwrap_or_else(IntoResponse::into_response)
}

async fn answer(api: &Api, request: Request) -> Result<Response, ApiError> {
    api.caller("/v1/models", request.headers())?;
    let workers = api.ctx.lifecycle.workers().await.map_err(ApiError::from)?;
    let mut models = BTreeMap::new();
    for worker in &workers {
        for model in &worker.models {
            let kind = match JobKind::try_from(model.kind) {
                Ok(JobKind::Generate) => "generate",
                Ok(JobKind::Embed) => "embed",
                _ => continue,
            };
            let entry = models.entry(model.name.clone()).or_insert_with(|| {
                json!({
                    "id": model.name,
                    "object": "model",
                    "created": 0,
                    "owned_by": "deephardway",
                    "kind": kind,
                    "description": model.description,
                    "workers": 0,
                })
            });
            entry["workers"] = json!(entry["workers"].as_u64().unwrap_or(0) + 1);
            if model.context_length > 0 {
                entry["context_length"] = json!(model.context_length);
            }
        }
    }
    let body = json!({"object": "list", "data": models.into_values().collect::<Vec<_>>()});
    Ok(([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response())
}
