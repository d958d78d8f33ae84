//! Traces over OTLP/gRPC (`--otlp-endpoint URL`, or the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT`), for `serve`, `up` and `worker`; off without it.
//!
//! The spans are the `tracing` spans the service and the worker already log with
//! (`submit`, `run`, …; see `deephardway_service::traces` and `deephardway_worker::traces`),
//! bridged by tracing-opentelemetry, plus the few the service records after the fact
//! (`queued`, `dispatch`) through the global tracer provider set here. Spans go out in
//! batches from the SDK's own thread; `OTEL_BSP_SCHEDULE_DELAY` (milliseconds, default
//! 5000) sets how long a batch waits, and [`Traces::shutdown`] sends what is left when
//! the process stops.

use std::time::Duration;

use anyhow::Context;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
use tracing_subscriber::{Layer, filter::Targets, registry::LookupSpan};

/// How long one export may take before it is given up.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(clap::Args, Clone, Debug, Default)]
pub struct OtlpArgs {
    /// Export traces over OTLP/gRPC to this collector, e.g. http://127.0.0.1:4317: a
    /// trace per job, from the client's request (its `traceparent` metadata, if sent)
    /// through the queue to the worker's run. Off when not given.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,
}

/// The exporting tracer provider, to flush on shutdown.
pub struct Traces {
    provider: SdkTracerProvider,
}

impl Traces {
    /// Starts exporting to `endpoint` as the service `service_name` (the OpenTelemetry
    /// resource's `service.name`). Needs the tokio runtime (the tonic client's).
    pub fn start(endpoint: &str, service_name: &'static str) -> anyhow::Result<Traces> {
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_timeout(EXPORT_TIMEOUT);
        if endpoint.starts_with("https://") {
            // A collector over TLS, checked against the system's roots.
            exporter = exporter.with_tls_config(tonic::transport::ClientTlsConfig::new().with_native_roots());
        }
        let exporter = exporter.build().with_context(|| format!("--otlp-endpoint {endpoint}"))?;
        let resource = Resource::builder().with_service_name(service_name).build();
        let provider = SdkTracerProvider::builder().with_resource(resource).with_batch_exporter(exporter).build();
        opentelemetry::global::set_tracer_provider(provider.clone());
        deephardway::traces::enable();
        Ok(Traces { provider })
    }

    /// The layer that turns `tracing` spans into exported ones: deephardway's own spans
    /// only, at info and above whatever `RUST_LOG` says (it filters the logs, not
    /// traces), so that `RUST_LOG=warn` still exports every job's spans, and the
    /// libraries' own spans (h2, tonic, …) do not.
    pub fn layer<S>(&self) -> impl Layer<S> + Send + Sync
    where
        S: tracing::Subscriber + for<'span> LookupSpan<'span> + Send + Sync,
    {
        let ours = Targets::new().with_target("deephardway", tracing::Level::INFO);
        tracing_opentelemetry::layer().with_tracer(self.provider.tracer("deephardway")).with_filter(ours)
    }

    /// Sends the spans not yet exported and stops the exporter. The SDK blocks while it
    /// flushes, so it does so off the async threads (which the export itself needs).
    pub async fn shutdown(self) {
        let provider = self.provider;
        let flushed = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        if let Ok(Err(e)) = flushed {
            eprintln!("warning: could not export the last traces: {e}");
        }
    }
}
