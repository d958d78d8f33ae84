//! The command line's shape: one subcommand per role or client action, parsed by clap.
//! `deephardway --help` lists them; each has its own `--help`.

use clap::{Parser, Subcommand};

use crate::{access, bench, client, logging, server, telemetry::Traces, worker};

#[derive(Parser)]
#[command(name = "deephardway", version, about = "Run deep-learning jobs and watch them live over gRPC")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format: text or json. RUST_LOG sets the level (default: info).
    #[arg(long, global = true, env = "DEEPHARDWAY_LOG_FORMAT", default_value = "text")]
    log_format: logging::Format,
}

#[derive(Subcommand)]
enum Command {
    /// Everything on one machine: the service on an embedded store plus a local worker.
    Up(server::UpArgs),
    /// The service alone (workers connect to it), on the embedded store or etcd.
    Serve(server::ServeArgs),
    /// A worker that connects to a service and runs jobs.
    Worker(worker::WorkerArgs),
    /// Submit a job (and optionally watch it).
    Submit(client::SubmitArgs),
    /// Watch a job's events until it ends, with a progress bar.
    Watch(client::WatchArgs),
    /// Cancel a job.
    Cancel(client::CancelArgs),
    /// List jobs.
    Jobs(client::JobsArgs),
    /// List the models the connected workers serve, and the trained ones.
    Models(client::ServerArg),
    /// Upload, list and delete datasets for train jobs.
    Datasets(client::DatasetsArgs),
    /// Create, list and revoke API keys (admin keys only).
    Keys(access::KeysArgs),
    /// What each API key's jobs used: jobs, tokens, texts, images, worker time.
    Usage(access::UsageArgs),
    /// Measure job throughput and latency on each store against raw etcd puts.
    Bench(bench::BenchArgs),
}

impl Cli {
    /// The CPU thread count asked for with `--threads`, by the commands that run models.
    /// It must reach candle (as `RAYON_NUM_THREADS`) before any thread starts, which is
    /// why `main` reads it before starting the async runtime.
    pub fn threads(&self) -> Option<usize> {
        match &self.command {
            Command::Up(args) => args.worker.threads,
            Command::Worker(args) => args.flags.threads,
            Command::Bench(args) => args.threads,
            _ => None,
        }
    }

    /// The OTLP endpoint to export traces to, and the service name they go under: the
    /// service's for `serve` and `up` (whose worker shares the process, and so the
    /// resource), the worker's for `worker`.
    fn traces(&self) -> Option<(&str, &'static str)> {
        let (args, name) = match &self.command {
            Command::Serve(args) => (&args.otlp, "deephardway-service"),
            Command::Up(args) => (&args.otlp, "deephardway-service"),
            Command::Worker(args) => (&args.otlp, "deephardway-worker"),
            _ => return None,
        };
        args.otlp_endpoint.as_deref().filter(|e| !e.is_empty()).map(|e| (e, name))
    }

    /// Whether the command runs models in this process (`up`, `worker`, `bench`).
    pub fn runs_models(&self) -> bool {
        matches!(self.command, Command::Up(_) | Command::Worker(_) | Command::Bench(_))
    }
}

/// Parses the command line.
pub fn parse() -> Cli {
    Cli::parse()
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    let client_command = !matches!(cli.command, Command::Up(_) | Command::Serve(_) | Command::Worker(_));
    let traces = cli.traces().map(|(endpoint, name)| Traces::start(endpoint, name)).transpose()?;
    // The benchmark's own server and worker would otherwise log every job.
    logging::init(cli.log_format, if client_command { "warn" } else { "info" }, traces.as_ref())?;
    let outcome = match cli.command {
        Command::Up(args) => server::up(args).await,
        Command::Serve(args) => server::serve(args).await,
        Command::Worker(args) => worker::run(args).await,
        Command::Submit(args) => client::submit(args).await,
        Command::Watch(args) => client::watch(args).await,
        Command::Cancel(args) => client::cancel(args).await,
        Command::Jobs(args) => client::jobs(args).await,
        Command::Models(args) => client::models(args).await,
        Command::Datasets(args) => client::datasets(args).await,
        Command::Keys(args) => access::keys(args).await,
        Command::Usage(args) => access::usage(args).await,
        Command::Bench(args) => bench::run(args).await,
    };
    if let Some(traces) = traces {
        traces.shutdown().await;
    }
    outcome
}
