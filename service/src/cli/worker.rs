//! `deephardway worker`, and the local worker that `up` starts.

use std::sync::Arc;

use clap::Args;
use deephardway_worker::{Runner, WorkerOptions, device, runners::diagnostic::DiagnosticRunner};
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
}

impl LocalWorkerFlags {
    pub fn options(&self, server: String) -> anyhow::Result<WorkerOptions> {
        let device = device::select(&self.device)?;
        let runners: Vec<Arc<dyn Runner>> = vec![Arc::new(DiagnosticRunner)];
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
