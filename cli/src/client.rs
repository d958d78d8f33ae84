//! The client commands: `submit`, `watch`, `cancel`, `jobs`, `models`, `datasets`.

use std::{io::Write, process::ExitCode};

use anyhow::Context;
use clap::{Args, Subcommand};
use deephardway::v1::{
    Architecture, CancelJobRequest, ChatMessage, ClassifyInput, CreateDatasetRequest, CreateJobRequest,
    DeleteDatasetRequest, DiagnosticInput, EmbedInput, GenerateInput, Job, JobKind, JobResult, JobSpec, JobState,
    LearningRateSchedule, ListDatasetsRequest, ListJobsRequest, ListModelsRequest, Optimizer, QueueStatus, TrainInput,
    WatchJobRequest, chat_message::Role, dataset_service_client::DatasetServiceClient, job_event::Event, job_result,
    job_service_client::JobServiceClient, job_spec::Input, model_service_client::ModelServiceClient,
};
use deephardway::{ApiKey, Authorized};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Args)]
pub struct ServerArg {
    /// The service's URL.
    #[arg(long, env = "DEEPHARDWAY_SERVER", default_value = "http://127.0.0.1:50051", global = true)]
    server: String,
    /// The API key to call with (sent as `authorization: Bearer <key>`); not needed by a
    /// service with auth off.
    #[arg(long, env = "DEEPHARDWAY_KEY", global = true, hide_env_values = true)]
    key: Option<String>,
    #[command(flatten)]
    tls: crate::tls::ClientTlsArgs,
}

impl ServerArg {
    pub async fn channel(&self) -> anyhow::Result<Authorized> {
        let channel =
            self.tls.remote(&self.server)?.connect().await.with_context(|| format!("cannot reach {}", self.server))?;
        Ok(ApiKey::new(self.key.as_deref())?.attach(channel))
    }
}

#[derive(Args)]
pub struct SubmitArgs {
    #[command(flatten)]
    server: ServerArg,
    /// Model to run it with (default: the kind's default model).
    #[arg(long, global = true, default_value = "")]
    model: String,
    /// Higher runs first, -100 to 100.
    #[arg(long, global = true, default_value_t = 0, allow_negative_numbers = true,
          value_parser = clap::value_parser!(i32).range(-100..=100))]
    priority: i32,
    /// Idempotency key: submitting again with it returns the same job.
    #[arg(long, global = true, default_value = "")]
    request_id: String,
    /// Running-time limit in seconds, 1 to 86400 (default: the server's).
    #[arg(long, global = true, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    timeout: Option<u64>,
    /// Watch the job until it ends.
    #[arg(long, short, global = true)]
    watch: bool,
    #[command(subcommand)]
    input: InputArgs,
}

#[derive(Subcommand)]
enum InputArgs {
    /// The built-in test job: timed steps with progress.
    Diagnostic {
        #[arg(long, default_value_t = 5)]
        steps: u32,
        #[arg(long, default_value_t = 200)]
        step_ms: u32,
        /// Fail at this step (0: never).
        #[arg(long, default_value_t = 0)]
        fail_at_step: u32,
        /// Text returned in the result.
        #[arg(long, default_value = "")]
        echo: String,
    },
    /// Generate text from a prompt.
    Generate(GenerateArgs),
    /// Embed sentences.
    Embed { texts: Vec<String> },
    /// Train an image classifier on an uploaded dataset (see `datasets upload`).
    Train(TrainArgs),
    /// Classify image files (PNG or JPEG) with a trained model (--model NAME[@VERSION]).
    #[allow(rustdoc::broken_intra_doc_links)] // clap's help text, not a link
    Classify {
        #[arg(required = true)]
        images: Vec<std::path::PathBuf>,
    },
}

pub async fn submit(args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let input = match args.input {
        InputArgs::Diagnostic { steps, step_ms, fail_at_step, echo } => {
            Input::Diagnostic(DiagnosticInput { steps, step_ms, fail_at_step, echo, ..Default::default() })
        }
        InputArgs::Generate(generate) => Input::Generate(generate.into()),
        InputArgs::Embed { texts } => Input::Embed(EmbedInput { texts }),
        InputArgs::Train(train) => Input::Train(train.into()),
        InputArgs::Classify { images } => Input::Classify(ClassifyInput {
            images: images
                .iter()
                .map(|p| std::fs::read(p).with_context(|| format!("cannot read {}", p.display())))
                .collect::<anyhow::Result<_>>()?,
        }),
    };
    let spec = JobSpec {
        input: Some(input),
        model: args.model,
        priority: args.priority,
        timeout: args.timeout.map(|seconds| prost_types::Duration { seconds: seconds as i64, nanos: 0 }),
        ..Default::default()
    };
    let mut client = JobServiceClient::new(args.server.channel().await?);
    let request = CreateJobRequest { spec: Some(spec), request_id: args.request_id };
    let response = client.create_job(request).await.map_err(status_error)?.into_inner();
    let job = response.job.context("the service returned no job")?;
    if response.deduplicated {
        eprintln!("request id seen before: returning the existing job");
    }
    println!("{}", job.id);
    if args.watch {
        return follow(&mut client, &job.id, 0).await;
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct WatchArgs {
    #[command(flatten)]
    server: ServerArg,
    /// The job to watch.
    job_id: String,
    /// Show only events after this sequence number.
    #[arg(long, default_value_t = 0)]
    after_seq: u64,
}

pub async fn watch(args: WatchArgs) -> anyhow::Result<ExitCode> {
    let mut client = JobServiceClient::new(args.server.channel().await?);
    follow(&mut client, &args.job_id, args.after_seq).await
}

/// Streams a job's events with a progress bar, resuming after a dropped connection.
async fn follow(client: &mut JobServiceClient<Authorized>, job_id: &str, after_seq: u64) -> anyhow::Result<ExitCode> {
    let bar = ProgressBar::new(1000);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {percent:>3}% {msg}")
            .expect("valid template"),
    );
    let mut last = after_seq;
    let mut retries = 0;
    loop {
        let stream = client.watch_job(WatchJobRequest { job_id: job_id.to_string(), after_seq: last }).await;
        let mut stream = match stream {
            Ok(s) => s.into_inner(),
            Err(status) if status.code() == tonic::Code::Unavailable && retries < 10 => {
                retries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                continue;
            }
            Err(status) => return Err(status_error(status)),
        };
        loop {
            match stream.message().await {
                Ok(Some(response)) => {
                    if let Some(status) = &response.queue_status {
                        bar.set_message(queue_message(status, std::time::SystemTime::now()));
                    }
                    let Some(event) = response.event else { continue };
                    last = event.seq;
                    retries = 0;
                    let Some(event) = event.event else { continue };
                    match event {
                        Event::Queued(q) => {
                            bar.set_message(format!("queued, position {} (attempt {})", q.position, q.attempt))
                        }
                        Event::Started(s) => bar.set_message(format!("running on {} ({})", s.worker_name, s.device)),
                        Event::Progress(p) => {
                            bar.set_position((p.fraction * 1000.0) as u64);
                            bar.set_message(p.message);
                        }
                        Event::Output(o) => bar.suspend(|| {
                            print!("{}", o.text);
                            let _ = std::io::stdout().flush();
                        }),
                        Event::Result(r) => {
                            bar.finish_and_clear();
                            print_result(&r);
                            return Ok(ExitCode::SUCCESS);
                        }
                        Event::Failed(f) => {
                            bar.abandon();
                            eprintln!("job failed ({:?}): {}", tonic::Code::from_i32(f.code), f.message);
                            return Ok(ExitCode::from(2));
                        }
                        Event::Cancelled(c) => {
                            bar.abandon();
                            eprintln!("job cancelled: {}", c.reason);
                            return Ok(ExitCode::from(3));
                        }
                    }
                }
                Ok(None) => return Ok(ExitCode::SUCCESS),
                Err(status) if status.code() == tonic::Code::Unavailable && retries < 10 => {
                    retries += 1;
                    bar.set_message("connection lost; resuming");
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    break;
                }
                Err(status) => return Err(status_error(status)),
            }
        }
    }
}

/// "queued, position 3, starts in ~12s" from a live queue status (the estimate left
/// out while the service has not seen the line move yet).
fn queue_message(status: &QueueStatus, now: std::time::SystemTime) -> String {
    let start = status.estimated_start_time.and_then(|t| std::time::SystemTime::try_from(t).ok());
    match start {
        Some(start) => match start.duration_since(now).unwrap_or_default().as_secs_f64().round() as u64 {
            0 => format!("queued, position {}, starts in <1s", status.position),
            secs => format!("queued, position {}, starts in ~{}", status.position, human_seconds(secs)),
        },
        None => format!("queued, position {}", status.position),
    }
}

/// "45s", "3m20s", "2h05m".
fn human_seconds(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
    }
}

fn print_result(result: &JobResult) {
    match &result.value {
        Some(job_result::Value::Diagnostic(d)) => println!("done: {} steps, echo {:?}", d.steps, d.echo),
        Some(job_result::Value::Generate(g)) => println!(
            "\n[{} prompt + {} completion tokens, finished: {}, seed {}]",
            g.prompt_tokens,
            g.completion_tokens,
            enum_name(g.finish_reason().as_str_name(), "FINISH_REASON_"),
            g.seed
        ),
        Some(job_result::Value::Embed(e)) => {
            for (i, v) in e.embeddings.iter().enumerate() {
                let head: Vec<String> = v.values.iter().take(4).map(|x| format!("{x:.4}")).collect();
                println!("{i}: [{} …] ({} dims)", head.join(", "), v.values.len());
            }
        }
        Some(job_result::Value::Classify(c)) => {
            for (i, p) in c.predictions.iter().enumerate() {
                println!("{i}: {} ({:.1}%)", p.label, 100.0 * p.probabilities.get(&p.label).copied().unwrap_or(0.0));
            }
        }
        Some(job_result::Value::Train(t)) => println!(
            "trained {}@{}: loss {:.4}, train accuracy {:.3}, validation accuracy {:.3} on {} images, \
             {:.1} ms per epoch, seed {}",
            t.model,
            t.version,
            t.loss,
            t.train_accuracy,
            t.validation_accuracy,
            t.validation_images,
            t.epoch_ms,
            t.seed
        ),
        None => println!("done"),
    }
}

#[derive(Args)]
pub struct CancelArgs {
    #[command(flatten)]
    server: ServerArg,
    job_id: String,
    #[arg(long, default_value = "")]
    reason: String,
}

pub async fn cancel(args: CancelArgs) -> anyhow::Result<ExitCode> {
    let mut client = JobServiceClient::new(args.server.channel().await?);
    let response = client
        .cancel_job(CancelJobRequest { job_id: args.job_id, reason: args.reason })
        .await
        .map_err(status_error)?
        .into_inner();
    let job = response.job.context("the service returned no job")?;
    println!("{} {}", job.id, state_name(&job));
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct JobsArgs {
    #[command(flatten)]
    server: ServerArg,
    /// Only jobs in this state: queued, running, succeeded, failed, cancelled.
    #[arg(long)]
    state: Option<String>,
    /// How many of the most recent jobs to show.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    limit: u32,
}

pub async fn jobs(args: JobsArgs) -> anyhow::Result<ExitCode> {
    let state = match &args.state {
        None => JobState::Unspecified,
        Some(s) => JobState::from_str_name(&format!("JOB_STATE_{}", s.to_uppercase()))
            .with_context(|| format!("--state {s}: expected queued, running, succeeded, failed or cancelled"))?,
    };
    let mut client = JobServiceClient::new(args.server.channel().await?);
    let mut jobs = Vec::new();
    let mut page_token = String::new();
    while jobs.len() < args.limit as usize {
        let page_size = (args.limit as usize - jobs.len()).min(1000) as u32;
        let request = ListJobsRequest { state: state as i32, page_size, page_token, ..Default::default() };
        let page = client.list_jobs(request).await.map_err(status_error)?.into_inner();
        jobs.extend(page.jobs);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    println!("{:<36}  {:<10}  {:<24}  {:>5}  {:>8}", "ID", "STATE", "MODEL", "TRIES", "PROGRESS");
    for job in jobs {
        println!(
            "{:<36}  {:<10}  {:<24}  {:>5}  {:>7.0}%",
            job.id,
            state_name(&job),
            job.model,
            job.attempts,
            job.progress * 100.0
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn models(args: ServerArg) -> anyhow::Result<ExitCode> {
    let mut client = ModelServiceClient::new(args.channel().await?);
    let mut models = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = ListModelsRequest { page_size: 1000, page_token, ..Default::default() };
        let page = client.list_models(request).await.map_err(status_error)?.into_inner();
        models.extend(page.models);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    println!("{:<28}  {:<10}  {:>7}  DEVICES", "MODEL", "KIND", "WORKERS");
    for m in models {
        let kind = JobKind::try_from(m.kind).map_or("?".into(), |k| enum_name(k.as_str_name(), "JOB_KIND_"));
        println!("{:<28}  {:<10}  {:>7}  {}", m.name, kind, m.workers, m.devices.join(","));
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct DatasetsArgs {
    #[command(flatten)]
    server: ServerArg,
    #[command(subcommand)]
    command: DatasetsCommand,
}

#[derive(Subcommand)]
enum DatasetsCommand {
    /// Upload a dataset: a folder (one subfolder per class, or train/ and test/ each
    /// holding them), or a zip, tar or tar.gz archive of one.
    Upload { name: String, path: std::path::PathBuf },
    /// List the uploaded datasets.
    List,
    /// Delete a dataset (models trained on it stay).
    Delete { name: String },
}

pub async fn datasets(args: DatasetsArgs) -> anyhow::Result<ExitCode> {
    let mut client = DatasetServiceClient::new(args.server.channel().await?).max_encoding_message_size(usize::MAX);
    let print = |d: &deephardway::v1::Dataset| {
        println!(
            "{:<24}  {:>7}  {:>6}  {:>9}  {}",
            d.name,
            d.train_images,
            d.test_images,
            d.archive_bytes,
            d.classes.join(",")
        )
    };
    let header = || println!("{:<24}  {:>7}  {:>6}  {:>9}  CLASSES", "DATASET", "TRAIN", "TEST", "BYTES");
    match args.command {
        DatasetsCommand::Upload { name, path } => {
            let archive = if path.is_dir() {
                deephardway::datasets::tar_folder(&path)?
            } else {
                std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?
            };
            let request = CreateDatasetRequest { name, archive };
            let response = client.create_dataset(request).await.map_err(status_error)?.into_inner();
            header();
            print(&response.dataset.context("the service returned no dataset")?);
        }
        DatasetsCommand::List => {
            header();
            let mut page_token = String::new();
            loop {
                let request = ListDatasetsRequest { page_size: 1000, page_token };
                let page = client.list_datasets(request).await.map_err(status_error)?.into_inner();
                page.datasets.iter().for_each(print);
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
        }
        DatasetsCommand::Delete { name } => {
            let response = client.delete_dataset(DeleteDatasetRequest { name }).await.map_err(status_error)?;
            let dataset = response.into_inner().dataset.context("the service returned no dataset")?;
            println!("deleted {}", dataset.name);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn state_name(job: &Job) -> String {
    JobState::try_from(job.state).map_or("?".into(), |s| enum_name(s.as_str_name(), "JOB_STATE_"))
}

/// An enum value as people write it: `JOB_STATE_RUNNING` → `running`.
fn enum_name(name: &str, prefix: &str) -> String {
    name.trim_start_matches(prefix).to_lowercase()
}

#[derive(Args)]
struct GenerateArgs {
    prompt: String,
    /// Send the prompt as a user message through the model's chat template.
    #[arg(long)]
    chat: bool,
    /// With --chat: a system message first.
    #[arg(long, requires = "chat")]
    system: Option<String>,
    /// Tokens to generate at most (0: the worker's default, 256).
    #[arg(long, default_value_t = 0)]
    max_tokens: u32,
    /// 0 picks the likeliest token every time (greedy).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 0.0)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    top_k: u32,
    #[arg(long, default_value_t = 0.0)]
    repetition_penalty: f32,
    #[arg(long)]
    seed: Option<u64>,
    /// Stop before this text (repeatable).
    #[arg(long)]
    stop: Vec<String>,
}

impl From<GenerateArgs> for GenerateInput {
    fn from(a: GenerateArgs) -> Self {
        let (prompt, messages) = if a.chat {
            let message = |role: Role, content: String| ChatMessage { role: role as i32, content };
            let system = a.system.map(|s| message(Role::System, s));
            (String::new(), system.into_iter().chain([message(Role::User, a.prompt)]).collect())
        } else {
            (a.prompt, Vec::new())
        };
        GenerateInput {
            prompt,
            messages,
            max_tokens: a.max_tokens,
            temperature: a.temperature,
            top_p: a.top_p,
            top_k: a.top_k,
            repetition_penalty: a.repetition_penalty,
            seed: a.seed,
            stop: a.stop,
        }
    }
}

/// Network architectures, as `submit train --architecture` takes them.
#[derive(Clone, Copy, clap::ValueEnum)]
enum ArchitectureArg {
    /// Fully connected layers (--hidden).
    Mlp,
    /// Two 3×3 convolutions with max-pooling, then a hidden layer of 64.
    Cnn,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum OptimizerArg {
    Sgd,
    Adamw,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ScheduleArg {
    /// The same learning rate throughout.
    Constant,
    /// Decay along a half cosine to 0 by the last step.
    Cosine,
}

#[derive(Args)]
struct TrainArgs {
    /// The dataset's name.
    #[arg(required_unless_present = "dataset_path", default_value = "")]
    dataset: String,
    /// Instead: a folder on the worker's machine (under its --local-datasets).
    #[arg(long, default_value = "")]
    dataset_path: String,
    #[arg(long, value_enum, default_value = "mlp")]
    architecture: ArchitectureArg,
    /// Hidden layer sizes of an mlp, e.g. 20,7,5 (the default).
    #[arg(long, value_delimiter = ',')]
    hidden: Vec<u32>,
    /// Images are resized to this many pixels square (0: the first image's size).
    #[arg(long, default_value_t = 0)]
    input_size: u32,
    #[arg(long, default_value_t = 10)]
    epochs: u32,
    /// Images per step (0: the whole training set).
    #[arg(long, default_value_t = 0)]
    batch_size: u32,
    #[arg(long, value_enum, default_value = "sgd")]
    optimizer: OptimizerArg,
    /// 0: 0.0075 for sgd, 0.001 for adamw.
    #[arg(long, default_value_t = 0.0)]
    learning_rate: f32,
    /// Fraction of the training images held out (0: validate on the dataset's test/).
    #[arg(long, default_value_t = 0.0)]
    validation_split: f32,
    /// Random seed (default: one picked by the worker, shown in the result).
    #[arg(long)]
    seed: Option<u64>,
    /// Random shifts of up to this many pixels (data augmentation).
    #[arg(long, default_value_t = 0)]
    augment_shift: u32,
    #[arg(long, value_enum, default_value = "constant")]
    schedule: ScheduleArg,
    /// The trained model's name (default: the dataset's).
    #[arg(long, default_value = "")]
    output: String,
}

impl From<TrainArgs> for TrainInput {
    fn from(a: TrainArgs) -> Self {
        TrainInput {
            dataset: a.dataset,
            architecture: match a.architecture {
                ArchitectureArg::Mlp => Architecture::Mlp,
                ArchitectureArg::Cnn => Architecture::Cnn,
            } as i32,
            hidden_sizes: a.hidden,
            input_size: a.input_size,
            epochs: a.epochs,
            batch_size: a.batch_size,
            optimizer: match a.optimizer {
                OptimizerArg::Sgd => Optimizer::Sgd,
                OptimizerArg::Adamw => Optimizer::Adamw,
            } as i32,
            learning_rate: a.learning_rate,
            validation_split: a.validation_split,
            seed: a.seed,
            output_model: a.output,
            augment_shift: a.augment_shift,
            learning_rate_schedule: match a.schedule {
                ScheduleArg::Constant => LearningRateSchedule::Constant,
                ScheduleArg::Cosine => LearningRateSchedule::Cosine,
            } as i32,
            dataset_path: a.dataset_path,
        }
    }
}

fn status_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", status.code(), status.message())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;

    #[test]
    fn queue_message_shows_position_and_estimate() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let at = |secs: u64| Some(prost_types::Timestamp::from(now + Duration::from_secs(secs)));
        let status =
            |position, estimated_start_time| QueueStatus { position, estimated_start_time, dispatch_rate: 0.5 };
        assert_eq!(queue_message(&status(3, None), now), "queued, position 3");
        assert_eq!(queue_message(&status(0, at(12)), now), "queued, position 0, starts in ~12s");
        assert_eq!(queue_message(&status(19, at(200)), now), "queued, position 19, starts in ~3m20s");
        assert_eq!(queue_message(&status(900, at(7500)), now), "queued, position 900, starts in ~2h05m");
        // An estimate already past reads as any moment now.
        let past = Some(prost_types::Timestamp::from(now - Duration::from_secs(5)));
        assert_eq!(queue_message(&status(1, past), now), "queued, position 1, starts in <1s");
    }
}
