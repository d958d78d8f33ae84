//! Assembles the service on one port: gRPC, grpc-web and the web client (see [`web`]), server
//! reflection in both v1 and v1alpha (grpcurl 1.8 asks v1alpha), and `grpc.health.v1`.
//!
//! [`serve`] takes a bound listener and a shutdown future, so tests run a real server
//! on port 0. On shutdown, long streams end with UNAVAILABLE and the `after_seq` to
//! resume from, worker sessions release their jobs, and the server drains.

use std::{future::Future, sync::Arc, time::Duration};

use deephardway::{
    v1::{
        dataset_service_server::DatasetServiceServer, job_service_server::JobServiceServer,
        key_service_server::KeyServiceServer, model_service_server::ModelServiceServer,
        usage_service_server::UsageServiceServer,
    },
    worker::v1::worker_service_server::WorkerServiceServer,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    auth::{KeyRing, layer::Auth},
    config::ServiceConfig,
    connections,
    dispatch::Dispatcher,
    health,
    hub::Hub,
    jobs::JobLifecycle,
    metrics::{self, Metrics},
    reaper,
    rpc::{
        Context,
        access::{KeysRpc, UsageRpc},
        datasets::DatasetsRpc,
        jobs::JobsRpc,
        models::ModelsRpc,
        workers::WorkersRpc,
    },
    store::SharedStore,
    usage,
    web::{self, Web},
};

/// Largest request decoded. Every field's own limit (see `validate`) is well
/// below it, so oversized inputs get INVALID_ARGUMENT naming the field; only a message
/// beyond this gets tonic's OUT_OF_RANGE, before any of it is decoded.
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// Most concurrent streams one connection may open; a client needing more opens another
/// connection.
const MAX_STREAMS_PER_CONNECTION: u32 = 1024;
/// HTTP/2 pings on every connection: a peer that does not answer one within the timeout
/// (a hung process, a vanished host) is disconnected, ending its streams and, for a
/// worker, its session. Workers also prove themselves with heartbeats (`rpc::workers`).
const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Serves until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    store: SharedStore,
    config: ServiceConfig,
    web: Web,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let token = CancellationToken::new();
    let metrics = Arc::new(Metrics::new());
    let store = metrics::store::metered(store, metrics.clone());
    let hub = Hub::start(store.clone(), token.clone()).await?;
    // An upload is one message. Up to twice the archive limit it is decoded, so that the
    // handler can refuse an archive too large with INVALID_ARGUMENT and the limit; beyond
    // that tonic refuses it (OUT_OF_RANGE) before reading it.
    let max_upload_message = 2 * config.max_upload_bytes + (1 << 20);
    let connection_limits = config.connections;
    let tls = config.tls.clone();
    let keyring = match config.auth.enabled {
        false => None,
        true => Some(KeyRing::start(store.clone(), &hub, &config.auth.fixed_keys, token.clone()).await?),
    };
    let auth = keyring.clone().map_or_else(Auth::off, Auth::with);
    let metrics_public = config.metrics_public;
    let lifecycle = JobLifecycle::new(store.clone(), config).with_metrics(metrics).with_queues(hub.queues().clone());
    usage::start(store.clone(), &hub, token.clone());
    let dispatcher = Dispatcher::start(lifecycle.clone(), &hub, token.clone());
    // The lifecycle the RPCs use starts a submitted job at once where a worker has room.
    let lifecycle = lifecycle.with_free_slots(Arc::new(dispatcher.clone()));
    reaper::start(lifecycle.clone(), &hub, token.clone());
    let reporter = tonic_health::server::HealthReporter::new();
    let health_service = health::service(reporter.clone(), token.clone());
    health::start(store.clone(), reporter, token.clone()).await;

    // tonic-types' set adds google.rpc.BadRequest and the other error details, so that
    // grpcurl can print the details of an error.
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(deephardway::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(deephardway::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let ctx = Arc::new(Context { lifecycle, hub, dispatcher, keyring, shutdown: token.clone() });
    let addr = listener.local_addr()?;
    match &tls {
        None => tracing::info!(%addr, store = store.name(), "serving gRPC, grpc-web, reflection and health"),
        Some(tls) => tracing::info!(
            %addr,
            store = store.name(),
            client_certificates = if tls.requires_client_certificates() { "required" } else { "not asked" },
            "serving gRPC, grpc-web, reflection and health over TLS"
        ),
    }
    let stop = token.clone();
    let mut grpc = tonic::service::Routes::builder();
    grpc.add_service(JobServiceServer::new(JobsRpc::new(ctx.clone())).max_decoding_message_size(MAX_MESSAGE))
        .add_service(ModelServiceServer::new(ModelsRpc::new(ctx.clone())))
        .add_service(KeyServiceServer::new(KeysRpc::new(ctx.clone())))
        .add_service(UsageServiceServer::new(UsageRpc::new(ctx.clone())))
        .add_service(
            DatasetServiceServer::new(DatasetsRpc::new(ctx.clone())).max_decoding_message_size(max_upload_message),
        )
        .add_service(
            WorkerServiceServer::new(WorkersRpc::new(ctx.clone()))
                .max_decoding_message_size(deephardway::MAX_ARTIFACT_MESSAGE)
                .max_encoding_message_size(deephardway::MAX_ARTIFACT_MESSAGE),
        )
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    // grpc-web translation wraps the gRPC routes only: it refuses other HTTP/1 requests,
    // and the web client's files are plain HTTP/1 GETs.
    // Authentication wraps the gRPC routes inside grpc-web's translation, so both reach it
    // as gRPC; so does the answer to a request that does not decode (`decode_errors`).
    let grpc = grpc
        .routes()
        .into_axum_router()
        // The calls that create jobs run in a span continuing the client's trace (`traces`).
        .layer(axum::middleware::from_fn(crate::traces::request_span))
        .layer(axum::middleware::from_fn(crate::decode_errors::invalid_argument))
        .layer(axum::middleware::from_fn_with_state(auth.clone(), crate::auth::layer::authenticate))
        .layer(tonic_web::GrpcWebLayer::new());
    let grpc = metrics::endpoint::route(grpc, ctx.lifecycle.clone(), auth.clone(), metrics_public);
    let grpc = crate::openai::route(grpc, ctx.clone(), auth);
    let routes = tonic::service::Routes::from(web::with_client(grpc, &web));
    let router = tonic::transport::Server::builder()
        .accept_http1(true)
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .http2_keepalive_interval(Some(HTTP2_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE_TIMEOUT))
        .layer(web::cors_layer(&web.cors)?)
        .add_routes(routes);
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down: ending streams");
        stop.cancel();
    };
    // TLS is done in `connections` (not by tonic's `tls_config`), so that the handshake
    // counts against the connection limits and the start timeout, and ALPN offers
    // HTTP/1.1 beside h2.
    match tls {
        None => {
            router
                .serve_with_incoming_shutdown(connections::accept(listener, connection_limits, token.clone()), signal)
                .await?
        }
        Some(tls) => {
            let incoming = connections::accept_tls(listener, connection_limits, tls.acceptor(), token.clone());
            router.serve_with_incoming_shutdown(incoming, signal).await?
        }
    }
    token.cancel();
    Ok(())
}
