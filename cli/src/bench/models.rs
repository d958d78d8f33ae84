//! `deephardway bench --embed` and `--generate`: real models through the whole job path
//! (in-process service on the embedded store, in-process worker, gRPC clients), on the CPU
//! or (`--device cuda`, in scripts/gpu-check) a GPU.
//! Their baselines (sentence-transformers, llama.cpp) run in the scripts that call these:
//! `scripts/bench-embed` and `scripts/bench-generate`.

use std::{
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use deephardway::v1::{
    EmbedInput, GenerateInput, JobSpec, RunJobRequest, job_event::Event, job_result,
    job_service_client::JobServiceClient, job_spec::Input,
};
use deephardway_worker::{Runner, WorkerOptions, runners::default_models_dir};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use super::{BenchArgs, tempfile_dir};
use deephardway_service::{ServiceConfig, server, store::SharedStore, store::embedded::EmbeddedStore, web::Web};

/// A service and a worker serving one model, in this process.
struct Bench {
    url: String,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl Bench {
    /// `device` names where the runner computes, as the worker announces it.
    async fn start(runner: Arc<dyn Runner>, slots: u32, device: String) -> anyhow::Result<Self> {
        let model = runner.models().remove(0).name;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let stop = CancellationToken::new();
        let server_stop = stop.clone();
        let store: SharedStore = Arc::new(EmbeddedStore::open(tempfile_dir()?).await?);
        let server =
            tokio::spawn(server::serve(listener, store, ServiceConfig::default(), Web::default(), async move {
                server_stop.cancelled().await
            }));
        let options = WorkerOptions {
            server: url.clone().into(),
            key: Default::default(),
            name: "bench".into(),
            slots,
            device,
            runners: vec![runner],
        };
        let worker = tokio::spawn(deephardway_worker::run(options, stop.clone()));
        wait_for_model(&url, &model).await?;
        Ok(Bench { url, stop, tasks: vec![server, worker] })
    }

    async fn client(&self) -> anyhow::Result<JobServiceClient<Channel>> {
        Ok(JobServiceClient::new(deephardway::connect(&self.url).await?))
    }

    async fn stop(self) {
        self.stop.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

async fn wait_for_model(url: &str, model: &str) -> anyhow::Result<()> {
    use deephardway::v1::{ListModelsRequest, model_service_client::ModelServiceClient};
    for _ in 0..400 {
        if let Ok(channel) = deephardway::connect(url).await {
            let list = ModelServiceClient::new(channel).list_models(ListModelsRequest::default()).await?.into_inner();
            if list.models.iter().any(|m| m.name == model) {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("the bench worker did not serve {model}")
}

pub async fn embed(args: &BenchArgs) -> anyhow::Result<ExitCode> {
    use deephardway_worker::runners::embed::EmbedRunner;

    let dir = args.models_dir.clone().unwrap_or_else(default_models_dir).join("all-minilm-l6-v2");
    let device = deephardway_worker::device::select(&args.device)?;
    let runner = EmbedRunner::load("all-minilm-l6-v2", &dir, &device)
        .with_context(|| format!("cannot load {} (run scripts/fetch-models)", dir.display()))?;
    let bench = Bench::start(Arc::new(runner), 32, deephardway_worker::device::name(&device)).await?;
    let request = |texts: Vec<String>| {
        let spec = JobSpec {
            input: Some(Input::Embed(EmbedInput { texts })),
            model: "all-minilm-l6-v2".into(),
            ..Default::default()
        };
        RunJobRequest { spec: Some(spec), request_id: String::new() }
    };
    let run_job = |client: JobServiceClient<Channel>, texts: Vec<String>| async move {
        let mut client = client;
        let mut stream = client.run_job(request(texts)).await?.into_inner();
        while stream.message().await?.is_some() {}
        Ok::<_, tonic::Status>(())
    };
    let total = args.jobs.max(64);
    let texts = deephardway_worker::runners::embed::benchmark_texts(total);
    let client = bench.client().await?;
    run_job(client.clone(), texts[..8].to_vec()).await?; // warm up

    println!("deephardway embed bench: all-MiniLM-L6-v2 on {}, {total} sentences per row", args.device);
    println!("{:<34} {:>12}", "mode", "sentences/s");
    let started = Instant::now();
    for text in &texts {
        run_job(client.clone(), vec![text.clone()]).await?;
    }
    println!("{:<34} {:>12.1}", "batch 1 (one job per sentence)", total as f64 / started.elapsed().as_secs_f64());
    let started = Instant::now();
    for chunk in texts.chunks(32) {
        run_job(client.clone(), chunk.to_vec()).await?;
    }
    println!("{:<34} {:>12.1}", "batch 32 (32 sentences per job)", total as f64 / started.elapsed().as_secs_f64());
    let started = Instant::now();
    for wave in texts.chunks(32) {
        let jobs: Vec<_> = wave.iter().map(|t| tokio::spawn(run_job(client.clone(), vec![t.clone()]))).collect();
        for job in jobs {
            job.await??;
        }
    }
    println!("{:<34} {:>12.1}", "32 concurrent single-sentence jobs", total as f64 / started.elapsed().as_secs_f64());
    bench.stop().await;
    Ok(ExitCode::SUCCESS)
}

/// The prompt of every generation in the benchmark (llama.cpp's baseline uses it too).
pub const GENERATE_PROMPT: &str = "Once upon a time, in a small village,";

/// What one generation measured.
struct Generation {
    /// Submit to the first streamed text.
    first_token: Duration,
    /// First streamed text to the result.
    decoding: Duration,
    tokens: u32,
}

async fn generation(mut client: JobServiceClient<Channel>, max_tokens: u32) -> anyhow::Result<Generation> {
    let spec = JobSpec {
        input: Some(Input::Generate(GenerateInput {
            prompt: GENERATE_PROMPT.into(),
            max_tokens,
            ..Default::default()
        })),
        ..Default::default()
    };
    let submitted = Instant::now();
    let mut stream = client.run_job(RunJobRequest { spec: Some(spec), request_id: String::new() }).await?.into_inner();
    let mut first = None;
    while let Some(response) = stream.message().await? {
        match response.event.and_then(|e| e.event) {
            Some(Event::Output(_)) => {
                first.get_or_insert_with(Instant::now);
            }
            Some(Event::Result(result)) => {
                let Some(job_result::Value::Generate(g)) = result.value else { anyhow::bail!("not a generate result") };
                let first = first.context("no text was streamed")?;
                return Ok(Generation {
                    first_token: first - submitted,
                    decoding: first.elapsed(),
                    tokens: g.completion_tokens,
                });
            }
            Some(Event::Failed(f)) => anyhow::bail!("generation failed: {}", f.message),
            _ => {}
        }
    }
    anyhow::bail!("the stream ended without a result")
}

pub async fn generate(args: &BenchArgs) -> anyhow::Result<ExitCode> {
    use deephardway_worker::runners::generate::GenerateRunner;

    let dir = args.models_dir.clone().unwrap_or_else(default_models_dir).join("smollm2-135m-instruct");
    let device = deephardway_worker::device::select(&args.device)?;
    let max_concurrency = 16;
    let runner = GenerateRunner::load("smollm2-135m-instruct", &dir, &device, max_concurrency)
        .with_context(|| format!("cannot load {} (run scripts/fetch-models)", dir.display()))?;
    let bench =
        Bench::start(Arc::new(runner), max_concurrency as u32, deephardway_worker::device::name(&device)).await?;
    let client = bench.client().await?;
    let tokens = args.tokens;
    generation(client.clone(), 8).await?; // warm up

    let on = match args.device.as_str() {
        "cpu" => format!("cpu ({} threads)", deephardway_worker::device::cpu_threads()),
        gpu => gpu.to_string(),
    };
    println!("deephardway generate bench: SmolLM2-135M-Instruct Q4_1 on {on}, greedy, {tokens} tokens per job");
    println!(
        "{:<22} {:>16} {:>22} {:>22}",
        "concurrent jobs", "first token ms", "tokens/s per stream", "aggregate tokens/s"
    );
    for concurrency in [1, 4, 16] {
        let rounds = if concurrency == 1 { 3 } else { 1 };
        let (mut first_token, mut per_stream, mut aggregate) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            let started = Instant::now();
            let jobs: Vec<_> = (0..concurrency).map(|_| tokio::spawn(generation(client.clone(), tokens))).collect();
            let mut total = 0;
            for job in jobs {
                let g = job.await??;
                first_token.push(g.first_token.as_secs_f64() * 1e3);
                per_stream.push(g.tokens.saturating_sub(1) as f64 / g.decoding.as_secs_f64());
                total += g.tokens;
            }
            aggregate.push(total as f64 / started.elapsed().as_secs_f64());
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        println!(
            "{:<22} {:>16.1} {:>22.1} {:>22.1}",
            concurrency,
            mean(&first_token),
            mean(&per_stream),
            mean(&aggregate)
        );
    }
    bench.stop().await;
    Ok(ExitCode::SUCCESS)
}
