//! Structured logs through tracing-subscriber: `RUST_LOG` picks levels, `--log-format
//! json` emits one JSON object per line for log collectors. Log lines name the spans they
//! happen in, with their fields (a job's id: `run{deephardway.job.id=…}`), in both
//! formats. With `--otlp-endpoint` the same spans are also exported (see `telemetry`).

use tracing_subscriber::{EnvFilter, Layer, fmt, layer::SubscriberExt, util::SubscriberInitExt};

use crate::telemetry::Traces;

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

pub fn init(format: Format, default_level: &str, traces: Option<&Traces>) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let logs = fmt::layer().with_writer(std::io::stderr);
    // The level filter is the log layer's own, not the whole subscriber's: it must not
    // hide the spans that traces export.
    let logs = match format {
        Format::Text => logs.with_filter(filter).boxed(),
        Format::Json => logs.json().flatten_event(true).with_filter(filter).boxed(),
    };
    let result = tracing_subscriber::registry().with(logs).with(traces.map(|t| t.layer())).try_init();
    result.map_err(|e| anyhow::anyhow!("cannot set up logging: {e}"))
}
