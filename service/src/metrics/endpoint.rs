//! `GET /metrics` on the service's port. With auth on it needs an admin or viewer key
//! (`Authorization: Bearer …`, which Prometheus sends from its scrape config's
//! `authorization.credentials`), unless the operator made it public (`--metrics-public`).

use std::sync::Arc;

use axum::{
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};

use crate::{auth::layer::Auth, jobs::JobLifecycle};

#[derive(Clone)]
struct Endpoint {
    lifecycle: JobLifecycle,
    auth: Auth,
    public: bool,
}

/// Adds the route to `router` (after the gRPC layers, which it must not pass through).
pub fn route(router: axum::Router, lifecycle: JobLifecycle, auth: Auth, public: bool) -> axum::Router {
    let endpoint = Arc::new(Endpoint { lifecycle, auth, public });
    router.route("/metrics", get(scrape).with_state(endpoint))
}

async fn scrape(State(endpoint): State<Arc<Endpoint>>, headers: HeaderMap) -> Response {
    if !endpoint.public
        && let Err(status) = endpoint.auth.admit("/metrics", &headers)
    {
        let code = match status.code() {
            tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
            _ => StatusCode::UNAUTHORIZED,
        };
        return (code, format!("{}\n", status.message())).into_response();
    }
    let metrics = endpoint.lifecycle.metrics();
    let store = endpoint.lifecycle.store();
    metrics.observe_store(store.name(), store.watch_restarts());
    match store_job_counts(&endpoint.lifecycle).await {
        Ok(counts) => metrics.set_job_counts(&counts),
        // The rest is still worth serving; the gauges keep their last values.
        Err(e) => tracing::warn!(error = %e, "metrics: cannot read the job counts from the store"),
    }
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    ([(header::CONTENT_TYPE, content_type)], metrics.encode()).into_response()
}

/// Job counts per (state, model) as the store holds them: the queue entries
/// (`/dhw/queue/<model>/…`) and the running index joined with the job records.
async fn store_job_counts(
    lifecycle: &crate::jobs::JobLifecycle,
) -> Result<std::collections::BTreeMap<(String, String), i64>, tonic::Status> {
    use crate::keys;
    let store = lifecycle.store();
    let mut counts = std::collections::BTreeMap::new();
    for kv in store.range(keys::QUEUE, 0).await?.kvs {
        let model = kv.key[keys::QUEUE.len()..].split('/').next().unwrap_or_default().to_string();
        *counts.entry(("queued".to_string(), model)).or_insert(0) += 1;
    }
    for kv in store.range(keys::RUNNING, 0).await?.kvs {
        if let Some((job, _)) = lifecycle.find(keys::last_segment(&kv.key)).await? {
            let model = deephardway::served_model(job.kind(), &job.model).to_string();
            *counts.entry(("running".to_string(), model)).or_insert(0) += 1;
        }
    }
    Ok(counts)
}
