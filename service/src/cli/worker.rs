//! `deephardway worker`, and the local worker that `up` starts.

use std::sync::Arc;

use clap::Args;
use deephardway_worker::{
    Runner, WorkerOptions, device,
    runners::{default_models_dir, diagnostic::DiagnosticRunner, embed::EmbedRunner},
};
use tokio_util::sync::CancellationToken;

#[derive(Args, Clone)]
pub struct LocalWorkerFlags {
    /// Device to run models on: auto, cpu, cuda or cuda:N.
    #[arg(long, env = "DEEPHARDWAY_DEVICE", default_value = "auto")]
    device: String,
    /// Jobs the worker runs at once.
    #[arg(long, env = "DEEPHARDWAY_SLOTS", default_value_t = 4)]
    slots: u32,
    /// The worker's name (default: the host name).
    #[arg(long)]
    name: Option<String>,
    /// Where model weights are (scripts/fetch-models puts them in
    /// ~/.cache/deephardway/models); each model found there is served.
    #[arg(long, env = "DEEPHARDWAY_MODELS")]
    models_dir: Option<std::path::PathBuf>,
}

impl LocalWorkerFlags {
    pub fn options(&self, server: String) -> anyhow::Result<WorkerOptions> {
        let device = device::select(&self.device)?;
        let mut runners: Vec<Arc<dyn Runner>> = vec![Arc::new(DiagnosticRunner)];
        let models = self.models_dir.clone().unwrap_or_else(default_models_dir);
        let minilm = models.join("all-minilm-l6-v2");
        if minilm.join("model.safetensors").is_file() {
            let runner = EmbedRunner::load("all-minilm-l6-v2", &minilm, &device)?;
            tracing::info!(model = "all-minilm-l6-v2", dir = %minilm.display(), "serving embed model");
            runners.push(Arc::new(runner));
        } else {
            tracing::info!(dir = %models.display(), "no embed model found; run scripts/fetch-models to serve one");
        }
        let name = self.name.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "worker".into())
        });
        Ok(WorkerOptions { server, name, slots: self.slots, device: device::name(&device), runners })
    }
}

#[derive(Args)]
pub struct WorkerArgs {
    /// The service to pull jobs from.
    #[arg(long, env = "DEEPHARDWAY_SERVER", default_value = "http://127.0.0.1:50051")]
    server: String,
    #[command(flatten)]
    flags: LocalWorkerFlags,
}

pub async fn run(args: WorkerArgs) -> anyhow::Result<std::process::ExitCode> {
    let options = args.flags.options(args.server)?;
    let stop = CancellationToken::new();
    let signal = stop.clone();
    tokio::spawn(async move {
        super::server::shutdown_signal().await;
        signal.cancel();
    });
    deephardway_worker::run(options, stop).await?;
    Ok(std::process::ExitCode::SUCCESS)
}
