//! `deephardway worker`, and the local worker that `up` starts.

use std::{path::PathBuf, sync::Arc};

use anyhow::Context;
use clap::{Args, builder::TypedValueParser};
use deephardway_worker::{
    Runner, WorkerOptions,
    artifacts::ArtifactCache,
    device,
    runners::{self, classify::ClassifyRunner, default_models_dir, diagnostic::DiagnosticRunner, train::TrainRunner},
};
use tokio_util::sync::CancellationToken;

#[derive(Args, Clone)]
pub struct LocalWorkerFlags {
    /// Device to run models on: auto, cpu, cuda or cuda:N.
    #[arg(long, env = "DEEPHARDWAY_DEVICE", default_value = "auto")]
    device: String,
    /// Jobs the worker runs at once, 1 to 256.
    #[arg(long, env = "DEEPHARDWAY_SLOTS", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    slots: u32,
    /// The worker's name (default: the host name).
    #[arg(long)]
    name: Option<String>,
    /// Where model weights are (scripts/fetch-models puts them in
    /// ~/.cache/deephardway/models); each model found there is served under its folder's
    /// name.
    #[arg(long, env = "DEEPHARDWAY_MODELS")]
    models_dir: Option<std::path::PathBuf>,
    /// Also serve the model at PATH under NAME: a .gguf file (or a folder holding one)
    /// for generate, a Hugging Face BERT folder for embed. Repeatable.
    #[arg(long = "model", value_name = "NAME=PATH", value_parser = parse_model)]
    models: Vec<(String, PathBuf)>,
    /// The most texts one embedding forward pass takes from concurrent embed jobs, 1 to 4096.
    #[arg(long, env = "DEEPHARDWAY_EMBED_BATCH", default_value_t = 64,
          value_parser = clap::value_parser!(u64).range(1..=4096).map(|v| v as usize))]
    embed_batch: usize,
    /// How long an embedding batch waits for concurrent jobs still handing over texts, 0 to 1000.
    #[arg(long, env = "DEEPHARDWAY_EMBED_WAIT_MS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=1000))]
    embed_wait_ms: u64,
    /// CPU threads for model arithmetic, 1 to 1024 (default: one per physical core).
    #[arg(long, env = "DEEPHARDWAY_THREADS", value_parser = clap::value_parser!(u64).range(1..=1024).map(|v| v as usize))]
    pub threads: Option<usize>,
    /// Where the worker keeps datasets and trained models fetched from the service
    /// (default: ~/.cache/deephardway/artifacts).
    #[arg(long, env = "DEEPHARDWAY_ARTIFACT_CACHE")]
    pub artifact_cache: Option<PathBuf>,
    /// Let train jobs read datasets from folders under DIR on this machine
    /// (`train.dataset_path`); without it, only uploaded datasets.
    #[arg(long, env = "DEEPHARDWAY_LOCAL_DATASETS", value_name = "DIR")]
    pub local_datasets: Option<PathBuf>,
}

fn parse_model(value: &str) -> Result<(String, PathBuf), String> {
    match value.split_once('=') {
        Some((name, path)) if !name.is_empty() && !path.is_empty() => Ok((name.to_string(), PathBuf::from(path))),
        _ => Err("expected NAME=PATH".into()),
    }
}

impl LocalWorkerFlags {
    /// The folders of the models directory that hold a complete model
    /// (scripts/fetch-models marks each one `.verified` once its checksums pass).
    fn discovered_models(&self) -> Vec<(String, PathBuf)> {
        let dir = self.models_dir.clone().unwrap_or_else(default_models_dir);
        let Ok(entries) = std::fs::read_dir(&dir) else { return Vec::new() };
        let mut found: Vec<(String, PathBuf)> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join(".verified").is_file())
            .filter_map(|p| Some((p.file_name()?.to_str()?.to_string(), p)))
            .collect();
        found.sort();
        found
    }

    pub fn options(&self, server: deephardway::Remote, key: deephardway::ApiKey) -> anyhow::Result<WorkerOptions> {
        let device = device::select(&self.device)?;
        // Every worker trains and classifies: those need no files of their own, only what
        // the service hands out (datasets, trained models), cached here.
        let cache = ArtifactCache::new(self.artifact_cache.clone().unwrap_or_else(ArtifactCache::default_dir));
        let mut runners: Vec<Arc<dyn Runner>> = vec![
            Arc::new(DiagnosticRunner),
            Arc::new(TrainRunner::new(device.clone(), cache.clone(), self.local_datasets.clone())),
            Arc::new(ClassifyRunner::new(device.clone(), cache)),
        ];
        let built_in = runners.len();
        let model_options = runners::ModelOptions {
            concurrency: self.slots.max(1) as usize,
            embed_batch: runners::embed::BatchOptions {
                max_texts: self.embed_batch.max(1),
                max_wait: std::time::Duration::from_millis(self.embed_wait_ms),
            },
        };
        for (name, path) in self.discovered_models().into_iter().chain(self.models.iter().cloned()) {
            let runner = runners::open(&name, &path, &device, &model_options)
                .with_context(|| format!("cannot serve model {name} from {}", path.display()))?;
            tracing::info!(model = %name, path = %path.display(), "serving model");
            runners.push(runner);
        }
        if runners.len() == built_in {
            tracing::info!("no models found; run scripts/fetch-models (or pass --model NAME=PATH) to serve some");
        }
        let name = self.name.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "worker".into())
        });
        Ok(WorkerOptions { server, key, name, slots: self.slots, device: device::name(&device), runners })
    }
}

#[derive(Args)]
pub struct WorkerArgs {
    /// The service to pull jobs from.
    #[arg(long, env = "DEEPHARDWAY_SERVER", default_value = "http://127.0.0.1:50051")]
    server: String,
    /// The worker key to connect with (`deephardway keys create --role worker`); a
    /// service with auth off needs none.
    #[arg(long, env = "DEEPHARDWAY_KEY", hide_env_values = true)]
    key: Option<String>,
    #[command(flatten)]
    tls: crate::tls::ClientTlsArgs,
    #[command(flatten)]
    pub flags: LocalWorkerFlags,
    #[command(flatten)]
    pub otlp: crate::telemetry::OtlpArgs,
}

pub async fn run(args: WorkerArgs) -> anyhow::Result<std::process::ExitCode> {
    let options = args.flags.options(args.tls.remote(&args.server)?, deephardway::ApiKey::new(args.key.as_deref())?)?;
    let stop = CancellationToken::new();
    let signal = stop.clone();
    tokio::spawn(async move {
        crate::signal::shutdown_signal().await;
        signal.cancel();
    });
    deephardway_worker::run(options, stop).await?;
    Ok(std::process::ExitCode::SUCCESS)
}
