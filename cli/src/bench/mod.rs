//! `deephardway bench`: end-to-end throughput and latency of the job path, per store;
//! with `--embed` or `--generate`, of a real model (see [`models`]); with `--watchers`,
//! watch fan-out: delivery delay and memory per stream (see [`watch`]).
//!
//! For each store it starts the service on a free port with an in-process worker, then
//! N concurrent clients each run diagnostic jobs back to back through `Jobs.Run`. It
//! prints jobs/s and the p50/p99 of submit→first event and submit→done, the store
//! writes each job costs, and — as baselines measured in the same run — each store's raw
//! put rate with the same concurrency (single-key transactions through the same `Store`
//! trait, on etcd the same as `etcdctl put`; measured before and after the jobs, and the
//! mean of the two taken), with the ratio of job throughput to it.

mod models;
mod watch;

use std::{
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::Args;
use deephardway::v1::{DiagnosticInput, JobSpec, RunJobRequest, job_service_client::JobServiceClient, job_spec::Input};
use deephardway_worker::{WorkerOptions, runners::diagnostic::DiagnosticRunner};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use deephardway_service::{
    ServiceConfig,
    local_etcd::LocalEtcd,
    server,
    store::{Op, SharedStore, Txn, embedded::EmbeddedStore, etcd::EtcdStore},
    web::Web,
};

#[derive(Args)]
pub struct BenchArgs {
    /// Concurrent clients, each running jobs back to back.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Jobs in total, per store.
    #[arg(long, default_value_t = 400)]
    jobs: usize,
    /// Steps per diagnostic job (each reports progress).
    #[arg(long, default_value_t = 1)]
    steps: u32,
    /// Milliseconds per step.
    #[arg(long, default_value_t = 0)]
    step_ms: u32,
    /// Stores to measure: embedded, etcd, or both (comma-separated).
    #[arg(long, default_value = "embedded,etcd")]
    stores: String,
    /// Use this etcd instead of starting a throwaway one.
    #[arg(long)]
    etcd: Option<String>,
    /// Measure embedding instead: sentences/s at batch 1 and 32 and under 32 concurrent
    /// single-text jobs, with the model in --models-dir (embedded store).
    #[arg(long)]
    embed: bool,
    /// Measure text generation instead: time to first token and tokens/s for 1, 4 and 16
    /// concurrent jobs, with SmolLM2 in --models-dir (embedded store).
    #[arg(long, conflicts_with = "embed")]
    generate: bool,
    /// Tokens per generation job.
    #[arg(long, default_value_t = 128)]
    tokens: u32,
    /// CPU threads for model arithmetic (default: one per physical core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Where --embed and --generate run the model: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Where the models are (default: the model cache).
    #[arg(long)]
    models_dir: Option<std::path::PathBuf>,
    /// Keep finished jobs this long (seconds; default: the service's default). With a
    /// short retention, a long run shows the store's size staying bounded.
    #[arg(long)]
    retention_s: Option<u64>,
    /// Measure watch fan-out instead: this many concurrent WatchJob streams on one
    /// `serve` process, over 100 jobs and then one (see --spreads; steps at least 10 of
    /// 100 ms).
    #[arg(long, conflicts_with_all = ["embed", "generate"])]
    watchers: Option<usize>,
    /// With --watchers: the numbers of jobs to spread the streams over, one measurement
    /// each. The in-process worker runs 128 jobs at a time, so with more jobs than that
    /// the rest wait in line, their streams following their places.
    #[arg(long, value_delimiter = ',', default_values_t = [100, 1], requires = "watchers")]
    spreads: Vec<usize>,
}

struct Latencies {
    first_event: Vec<Duration>,
    done: Vec<Duration>,
    /// Where each job's time went, by the times its events carry (see [`Stages`]).
    stages: Vec<Stages>,
}

/// One job's time split at its events' commit times (`JobEvent.time`, written just before
/// each event's transaction; the clients share the service's clock): submit received to
/// `queued` written, `queued` to `started` (its commit, the watch hop, the dispatcher's
/// claim), `started` to the final event (the claim's commit, the worker's run and its
/// reports), and the final event to its arrival at the client.
#[derive(Clone, Copy, Default)]
struct Stages([Duration; 4]);

impl Stages {
    const NAMES: [&str; 4] = ["to queued", "queued→started", "started→final", "final→client"];

    /// From the client's send time, its events' times and the final event's arrival.
    fn of(
        sent: std::time::SystemTime,
        times: &[std::time::SystemTime],
        arrived: std::time::SystemTime,
    ) -> Option<Stages> {
        let [queued, started, .., last] = times else { return None };
        let gap = |a: &std::time::SystemTime, b: &std::time::SystemTime| b.duration_since(*a).unwrap_or_default();
        Some(Stages([gap(&sent, queued), gap(queued, started), gap(started, last), gap(last, &arrived)]))
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    if args.embed {
        return models::embed(&args).await;
    }
    if args.generate {
        return models::generate(&args).await;
    }
    if let Some(watchers) = args.watchers {
        return watch::run(&args, watchers).await;
    }
    let stores: Vec<&str> = args.stores.split(',').map(str::trim).collect();
    let mut local_etcd = None;
    let etcd_url = if stores.contains(&"etcd") {
        Some(match &args.etcd {
            Some(url) => url.clone(),
            None => {
                let etcd = LocalEtcd::start().await.context("cannot start a throwaway etcd (is etcd installed?)")?;
                let url = etcd.endpoint();
                local_etcd = Some(etcd);
                url
            }
        })
    } else {
        None
    };

    println!(
        "deephardway bench: {} jobs per store, {} concurrent clients, diagnostic {}×{} ms",
        args.jobs, args.clients, args.steps, args.step_ms
    );
    println!();
    println!(
        "{:<9} {:>9} {:>13} {:>13} {:>12} {:>12} {:>11} {:>12} {:>10}",
        "store",
        "jobs/s",
        "first p50 ms",
        "first p99 ms",
        "done p50 ms",
        "done p99 ms",
        "writes/job",
        "raw puts/s",
        "jobs/puts"
    );
    let mut etcd_jobs_per_s = None;
    let mut per_job_operations = Vec::new();
    let mut goals = Vec::new();
    let mut stage_lines = Vec::new();
    let (mut embedded_dir, mut embedded_bytes) = (None, None);
    for store_name in &stores {
        let store: SharedStore = match *store_name {
            "embedded" => {
                let dir = tempfile_dir()?;
                embedded_dir = Some(dir.clone());
                Arc::new(EmbeddedStore::open(&dir).await?)
            }
            "etcd" => Arc::new(EtcdStore::connect(&[etcd_url.clone().expect("set above")]).await?),
            other => anyhow::bail!("--stores: unknown store {other:?}"),
        };
        let puts = (args.jobs * 10).clamp(2000, 200_000);
        // The baseline before and after the jobs: on this machine's disk the raw put
        // rate moves by a third from minute to minute, so one measurement beside the
        // jobs could flatter or sink them; the goal takes the mean of the two.
        let put_rate_before = raw_put_rate(store.clone(), args.clients, puts).await?;
        let (jobs_per_s, latencies, writes_per_job, operations) =
            measure(store.clone(), &args, embedded_dir.as_deref()).await?;
        // Its size after the jobs, before the raw puts below add to it.
        let dir = embedded_dir.take();
        if let Some(dir) = &dir {
            embedded_bytes = Some(size_on_disk(dir));
        }
        per_job_operations.push((store_name.to_string(), operations));
        let put_rate_after = raw_put_rate(store, args.clients, puts).await?;
        let put_rate = (put_rate_before + put_rate_after) / 2.0;
        // The store is closed (its last handle went with the raw puts): its files go too.
        if let Some(dir) = dir {
            let _ = std::fs::remove_dir_all(dir);
        }
        let (mut first, mut done) = (latencies.first_event, latencies.done);
        first.sort();
        done.sort();
        println!(
            "{:<9} {:>9.1} {:>13.2} {:>13.2} {:>12.2} {:>12.2} {:>11.1} {:>12.0} {:>10.4}",
            store_name,
            jobs_per_s,
            ms(percentile(&first, 50.0)),
            ms(percentile(&first, 99.0)),
            ms(percentile(&done, 50.0)),
            ms(percentile(&done, 99.0)),
            writes_per_job,
            put_rate,
            jobs_per_s / put_rate
        );
        stage_lines.push(format!("where a job's time goes, {store_name}: {}", stage_medians(&latencies.stages)));
        if *store_name == "etcd" {
            etcd_jobs_per_s = Some(jobs_per_s);
        }
        // The goal: half the rate the store's own writes allow a job (issue 12's scale goal).
        let goal_at = |put_rate: f64| 0.5 * put_rate / writes_per_job.max(1.0);
        let goal = goal_at(put_rate);
        goals.push(format!(
            "goal, {store_name}: jobs/s >= 0.5 x raw puts/s / writes per job = {goal:.0} (raw puts/s {put_rate_before:.0} \
             before the jobs, {put_rate_after:.0} after; the goal from either alone: {:.0}-{:.0}); measured {jobs_per_s:.0} \
             ({:.2} of the goal{})",
            goal_at(put_rate_before.min(put_rate_after)),
            goal_at(put_rate_before.max(put_rate_after)),
            jobs_per_s / goal,
            if jobs_per_s >= goal { ", met" } else { ", not met" }
        ));
    }
    println!();
    for goal in &goals {
        println!("{goal}");
    }
    println!();
    for line in &stage_lines {
        println!("{line}");
    }

    if let Some(bytes) = embedded_bytes {
        println!();
        println!(
            "embedded store after the jobs: {:.1} MiB on disk (retention {})",
            bytes as f64 / (1024.0 * 1024.0),
            args.retention_s.map_or("the default".to_string(), |s| format!("{s} s"))
        );
    }
    println!();
    for (store_name, operations) in &per_job_operations {
        let listed: Vec<String> = operations.iter().map(|(op, n)| format!("{op} {n:.1}")).collect();
        let total: f64 = operations.values().sum();
        println!("store calls per job, {store_name}: {total:.1} ({})", listed.join(", "));
    }
    if let Some(url) = etcd_url {
        let store = EtcdStore::connect(&[url]).await?;
        let puts = (args.jobs * 10).clamp(2000, 200_000);
        let put_rate = raw_put_rate(Arc::new(store), args.clients, puts).await?;
        println!();
        println!("baseline: raw etcd puts, {} concurrent writers, {puts} puts: {put_rate:.0} puts/s", args.clients);
        if let Some(jobs_per_s) = etcd_jobs_per_s {
            println!(
                "ratio: etcd-backed jobs/s ÷ raw put rate = {:.4} ({:.1} puts' worth of time per job)",
                jobs_per_s / put_rate,
                put_rate / jobs_per_s
            );
        }
    }
    drop(local_etcd);
    Ok(ExitCode::SUCCESS)
}

/// Each stage's median, in milliseconds.
fn stage_medians(stages: &[Stages]) -> String {
    let parts: Vec<String> = Stages::NAMES
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let mut times: Vec<Duration> = stages.iter().map(|s| s.0[i]).collect();
            times.sort();
            format!("{name} p50 {:.2} ms", ms(percentile(&times, 50.0)))
        })
        .collect();
    parts.join(", ")
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("deephardway-bench-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Jobs/s, latencies, store revisions per job, and store calls per job by operation.
type Measured = (f64, Latencies, f64, std::collections::BTreeMap<String, f64>);

/// How often a long run prints the embedded store's size on disk.
const SIZE_EVERY: Duration = Duration::from_secs(10);

/// The bytes of the files in `dir`.
fn size_on_disk(dir: &std::path::Path) -> u64 {
    let files = std::fs::read_dir(dir).into_iter().flatten().flatten().filter_map(|e| e.metadata().ok());
    files.map(|m| m.len()).sum()
}

/// Runs the jobs and measures them. With the embedded store's folder, prints its size on
/// disk every [`SIZE_EVERY`] while the jobs run, so that a long run with a short
/// retention shows whether it stays bounded.
async fn measure(store: SharedStore, args: &BenchArgs, dir: Option<&std::path::Path>) -> anyhow::Result<Measured> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let stop = CancellationToken::new();
    let server_stop = stop.clone();
    let mut config = ServiceConfig { max_queue_depth: args.jobs * 2 + 100, ..ServiceConfig::default() };
    if let Some(seconds) = args.retention_s {
        config.retention = Duration::from_secs(seconds);
    }
    let server = tokio::spawn(server::serve(listener, store.clone(), config, Web::default(), async move {
        server_stop.cancelled().await
    }));
    let worker = tokio::spawn(deephardway_worker::run(
        WorkerOptions {
            server: url.clone().into(),
            key: Default::default(),
            name: "bench".into(),
            slots: u32::try_from(args.clients).unwrap_or(256).clamp(1, 256),
            device: "cpu".into(),
            runners: vec![Arc::new(DiagnosticRunner)],
        },
        stop.clone(),
    ));
    wait_for_worker(&url).await?;

    let spec = JobSpec {
        input: Some(Input::Diagnostic(DiagnosticInput {
            steps: args.steps,
            step_ms: args.step_ms,
            ..Default::default()
        })),
        ..Default::default()
    };
    let request = RunJobRequest { spec: Some(spec), request_id: String::new() };
    let revision_before = store.revision().await?;
    let operations_before = store_operations(&url).await?;
    let started = Instant::now();
    let per_client = args.jobs.div_ceil(args.clients.max(1));
    let finished = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sizes = dir.map(|dir| {
        let (dir, finished) = (dir.to_path_buf(), finished.clone());
        tokio::spawn(async move {
            let mut every = tokio::time::interval_at(tokio::time::Instant::now() + SIZE_EVERY, SIZE_EVERY);
            loop {
                every.tick().await;
                println!(
                    "  after {:>4.0} s: {:>7} jobs done, store {:.1} MiB on disk",
                    started.elapsed().as_secs_f64(),
                    finished.load(std::sync::atomic::Ordering::Relaxed),
                    size_on_disk(&dir) as f64 / (1024.0 * 1024.0)
                );
            }
        })
    });
    let mut clients = Vec::new();
    for _ in 0..args.clients {
        let mut client = JobServiceClient::new(deephardway::connect(&url).await?);
        let (request, finished) = (request.clone(), finished.clone());
        clients.push(tokio::spawn(async move {
            let mut latencies = Latencies { first_event: Vec::new(), done: Vec::new(), stages: Vec::new() };
            for _ in 0..per_client {
                let (t0, sent) = (Instant::now(), std::time::SystemTime::now());
                let mut stream = client.run_job(request.clone()).await?.into_inner();
                let mut first = None;
                let mut times = Vec::new();
                while let Some(message) = stream.message().await? {
                    first.get_or_insert_with(|| t0.elapsed());
                    let time = message.event.and_then(|e| e.time).and_then(|t| std::time::SystemTime::try_from(t).ok());
                    times.extend(time);
                }
                latencies.first_event.push(first.unwrap_or_default());
                latencies.done.push(t0.elapsed());
                latencies.stages.extend(Stages::of(sent, &times, std::time::SystemTime::now()));
                finished.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Ok::<_, tonic::Status>(latencies)
        }));
    }
    let mut all = Latencies { first_event: Vec::new(), done: Vec::new(), stages: Vec::new() };
    for client in clients {
        let latencies = client.await??;
        all.first_event.extend(latencies.first_event);
        all.done.extend(latencies.done);
        all.stages.extend(latencies.stages);
    }
    let elapsed = started.elapsed();
    if let Some(sizes) = sizes {
        sizes.abort();
    }
    let jobs = all.done.len();
    let writes = (store.revision().await? - revision_before) as f64 / jobs as f64;
    let mut operations = store_operations(&url).await?;
    for (operation, count) in operations.iter_mut() {
        *count = (*count - operations_before.get(operation).copied().unwrap_or(0.0)) / jobs as f64;
    }
    stop.cancel();
    let _ = worker.await;
    let _ = server.await;
    Ok((jobs as f64 / elapsed.as_secs_f64(), all, writes, operations))
}

/// The service's store calls so far, by operation, from its `/metrics`
/// (`deephardway_store_operation_seconds_count`): where a job's store time goes.
async fn store_operations(url: &str) -> anyhow::Result<std::collections::BTreeMap<String, f64>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = url.trim_start_matches("http://");
    let mut socket = tokio::net::TcpStream::connect(addr).await?;
    socket.write_all(format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut text = String::new();
    socket.read_to_string(&mut text).await?;
    let mut operations = std::collections::BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("deephardway_store_operation_seconds_count{") else { continue };
        let operation = rest.split("operation=\"").nth(1).and_then(|r| r.split('"').next()).unwrap_or_default();
        let count: f64 = line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
        *operations.entry(operation.to_string()).or_insert(0.0) += count;
    }
    Ok(operations)
}

async fn wait_for_worker(url: &str) -> anyhow::Result<()> {
    use deephardway::v1::{ListModelsRequest, model_service_client::ModelServiceClient};
    for _ in 0..200 {
        if let Ok(channel) = deephardway::connect(url).await {
            let list = ModelServiceClient::new(channel).list_models(ListModelsRequest::default()).await?.into_inner();
            if list.models.iter().any(|m| m.name == "diagnostic") {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("the bench worker did not connect")
}

/// Small puts from `writers` concurrent tasks; returns puts per second.
async fn raw_put_rate(store: SharedStore, writers: usize, puts: usize) -> anyhow::Result<f64> {
    let per_writer = puts.div_ceil(writers.max(1));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per_writer {
                let txn = Txn::new().then(Op::put(format!("/bench/{w}/{i}"), vec![0u8; 64]));
                store.txn(txn).await?;
            }
            Ok::<_, deephardway_service::store::StoreError>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok((per_writer * writers.max(1)) as f64 / started.elapsed().as_secs_f64())
}
