//! `deephardway bench --watchers N`: watch fan-out. N concurrent `WatchJob` streams on one
//! `deephardway serve` process (a child, embedded store, so that its memory is its own),
//! spread over 100 jobs and then all on one job (or over the numbers of jobs `--spreads`
//! names). For each spread it prints the delivery delay of live events (from the event's
//! commit time, `JobEvent.time`, to its arrival at the watcher; same machine, same clock),
//! the service's memory per open stream, and how much of that memory it gives back once
//! the streams have closed — with the goals beside. With more jobs than the worker's 128
//! slots, the rest wait in line and their streams follow their places.
//!
//! The streams are opened while the jobs wait in line (the worker is away: submits are
//! accepted for a model served lately), so that every event measured is delivered live to
//! all N watchers; then the worker comes back and the jobs run.

use std::{
    process::{ExitCode, Stdio},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context;
use deephardway::v1::{
    CreateJobRequest, DiagnosticInput, JobSpec, WatchJobRequest, job_service_client::JobServiceClient, job_spec::Input,
};
use deephardway_worker::{WorkerOptions, runners::diagnostic::DiagnosticRunner};
use tokio_util::sync::CancellationToken;

use super::{BenchArgs, ms, percentile, wait_for_worker};

/// The goals of the reliability issue: delivery p99 and memory per stream.
const GOAL_P99: Duration = Duration::from_millis(100);
const GOAL_KIB_PER_STREAM: f64 = 16.0;
/// Streams per HTTP/2 connection (the service allows 1,024).
const STREAMS_PER_CONNECTION: usize = 500;

pub async fn run(args: &BenchArgs, watchers: usize) -> anyhow::Result<ExitCode> {
    let dir = super::tempfile_dir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let url = format!("http://127.0.0.1:{port}");
    let mut serve = tokio::process::Command::new(std::env::current_exe()?)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(&dir)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start deephardway serve")?;
    let pid = serve.id().context("serve exited")?;
    let mut channels = Vec::new();
    for _ in 0..watchers.div_ceil(STREAMS_PER_CONNECTION) {
        channels.push(connect_when_up(&url).await?);
    }
    // One worker session so that the diagnostic model counts as served lately.
    let worker = Worker::start(&url);
    wait_for_worker(&url).await?;
    worker.stop().await;

    let (steps, step_ms) = job_shape(args);
    println!(
        "deephardway bench --watchers {watchers}: one `serve` (embedded store), diagnostic jobs of {steps}×{step_ms} ms, \
         the clients in this process"
    );
    println!(
        "{:<22} {:>9} {:>9} {:>9} {:>11} {:>11} {:>9} {:>13} {:>13} {:>13} {:>11} {:>11} {:>12} {:>10}",
        "spread",
        "events",
        "p50 ms",
        "p99 ms",
        "others p99",
        "ending p99",
        "max ms",
        "CPU µs/event",
        "client µs/ev",
        "writes/event",
        "RSS MiB",
        "open MiB",
        "KiB/stream",
        "returned"
    );
    for &jobs in &args.spreads {
        let spread = Spread::measure(&url, &channels, pid, watchers, jobs, args).await?;
        println!(
            "{:<22} {:>9} {:>9.1} {:>9.1} {:>11.1} {:>11.1} {:>9.1} {:>13.1} {:>13.1} {:>13.3} {:>11.1} {:>11.1} {:>12.1} {:>10}",
            format!("{jobs} job(s) × {}", watchers / jobs),
            spread.delays.len(),
            ms(percentile(&spread.delays, 50.0)),
            ms(percentile(&spread.delays, 99.0)),
            ms(spread.others_p99),
            ms(spread.ending_p99),
            ms(spread.delays.last().copied().unwrap_or_default()),
            spread.cpu.as_secs_f64() * 1e6 / spread.delays.len().max(1) as f64,
            spread.client_cpu.as_secs_f64() * 1e6 / spread.delays.len().max(1) as f64,
            spread.writes as f64 / spread.delays.len().max(1) as f64,
            mib(spread.rss_before),
            mib(spread.rss_open),
            spread.kib_per_stream(watchers),
            spread.returned(),
        );
    }
    println!(
        "goals: delivery p99 < {} ms; < {GOAL_KIB_PER_STREAM} KiB per stream. \"ending p99\" is the p99 of the events \
         committed with a job's final one, whose delivery also ends the stream, \"others p99\" that of the rest. RSS is the service process's \
         (VmRSS); CPU µs/event is the service process's CPU time while the jobs ran, per event delivered to a stream, \
         client µs/ev this process's (the watchers' side); writes/event its write system calls (all sockets, and its threads waking each other) per event delivered; \"returned\" is the share of the growth while streams were open given back 12 s after they closed (serve trims every 10 s).",
        GOAL_P99.as_millis()
    );
    serve.kill().await.ok();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(ExitCode::SUCCESS)
}

/// What one spread measured.
struct Spread {
    /// Sorted delivery delays of live events.
    delays: Vec<Duration>,
    /// The p99 of the other events.
    others_p99: Duration,
    /// The p99 of the events committed with a job's final one: each of those deliveries
    /// also ends its stream (trailers, the stream's teardown on both sides).
    ending_p99: Duration,
    /// The service's CPU time (user and system) while the jobs ran and their events
    /// were delivered.
    cpu: Duration,
    /// This process's CPU time in the same span: the watchers' side (and the in-process
    /// worker, a small share), on the same cores as the service.
    client_cpu: Duration,
    /// The service's write system calls in the same time (`syscw`): with many streams on
    /// a connection, one write should carry many of their events.
    writes: u64,
    rss_before: u64,
    rss_open: u64,
    rss_after: u64,
}

impl Spread {
    async fn measure(
        url: &str,
        channels: &[tonic::transport::Channel],
        pid: u32,
        watchers: usize,
        jobs: usize,
        args: &BenchArgs,
    ) -> anyhow::Result<Spread> {
        let mut client = JobServiceClient::new(channels[0].clone());
        let spec = JobSpec {
            input: Some(Input::Diagnostic(DiagnosticInput {
                steps: job_shape(args).0,
                step_ms: job_shape(args).1,
                ..Default::default()
            })),
            ..Default::default()
        };
        let mut ids = Vec::new();
        for _ in 0..jobs {
            let request = CreateJobRequest { spec: Some(spec.clone()), request_id: String::new() };
            ids.push(client.create_job(request).await?.into_inner().job.context("a job")?.id);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rss_before = rss(pid)?;
        let mut streams = Vec::with_capacity(watchers);
        for i in 0..watchers {
            let mut client = JobServiceClient::new(channels[i % channels.len()].clone());
            let request = WatchJobRequest { job_id: ids[i % jobs].clone(), after_seq: 0 };
            streams.push(client.watch_job(request).await?.into_inner());
        }
        // Every stream has its stored events (the `queued` one) before the jobs start.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss_open = rss(pid)?;
        let live_from = SystemTime::now();
        let readers: Vec<_> = streams
            .into_iter()
            .map(|mut stream| {
                tokio::spawn(async move {
                    // (commit time, delay) of each live event.
                    let mut delays = Vec::new();
                    let mut final_time = None;
                    while let Ok(Some(message)) = stream.message().await {
                        let Some(event) = message.event else { continue };
                        let arrived = SystemTime::now();
                        let Some(time) = event.time.and_then(|t| SystemTime::try_from(t).ok()) else { continue };
                        if time >= live_from {
                            delays.push((time, arrived.duration_since(time).unwrap_or_default()));
                        }
                        if event.event.as_ref().is_some_and(deephardway::is_final) {
                            final_time = Some(time);
                            break;
                        }
                    }
                    // Split: the events committed with the final one, and the others.
                    let (ending, others): (Vec<_>, Vec<_>) =
                        delays.into_iter().partition(|(time, _)| Some(*time) == final_time);
                    (
                        others.into_iter().map(|(_, d)| d).collect::<Vec<_>>(),
                        ending.into_iter().map(|(_, d)| d).collect::<Vec<_>>(),
                    )
                })
            })
            .collect();
        let cpu_before = cpu_time(pid)?;
        let client_cpu_before = cpu_time(std::process::id())?;
        let writes_before = write_calls(pid)?;
        let worker = Worker::start(url);
        let started = Instant::now();
        let (mut delays, mut ending) = (Vec::new(), Vec::new());
        for reader in readers {
            let (others, with_final) = reader.await?;
            delays.extend(others);
            ending.extend(with_final);
        }
        // Read before the sorting below, which is this process's own work, not the
        // watchers'.
        let cpu = cpu_time(pid)?.saturating_sub(cpu_before);
        let client_cpu = cpu_time(std::process::id())?.saturating_sub(client_cpu_before);
        let writes = write_calls(pid)?.saturating_sub(writes_before);
        ending.sort();
        delays.sort();
        let (others_p99, ending_p99) = (percentile(&delays, 99.0), percentile(&ending, 99.0));
        delays.extend(ending);
        worker.stop().await;
        anyhow::ensure!(!delays.is_empty(), "no live event was delivered in {:?}", started.elapsed());
        delays.sort();
        // Longer than `serve`'s trim period (`memory::TRIM_EVERY`).
        tokio::time::sleep(crate::memory::TRIM_EVERY + Duration::from_secs(2)).await;
        let rss_after = rss(pid)?;
        Ok(Spread { delays, others_p99, ending_p99, cpu, client_cpu, writes, rss_before, rss_open, rss_after })
    }

    fn kib_per_stream(&self, watchers: usize) -> f64 {
        self.rss_open.saturating_sub(self.rss_before) as f64 / 1024.0 / watchers as f64
    }

    /// The share of the growth given back, as a percentage; "—" when it did not grow.
    fn returned(&self) -> String {
        let grown = self.rss_open.saturating_sub(self.rss_before) as f64;
        if grown < 1024.0 * 1024.0 {
            return "—".into();
        }
        format!("{:.0}%", 100.0 * (self.rss_open.saturating_sub(self.rss_after) as f64 / grown).clamp(0.0, 1.0))
    }
}

/// Steps and milliseconds per step of the watched jobs: at least 10 of 100 ms, so that
/// the events come while every stream is open.
fn job_shape(args: &BenchArgs) -> (u32, u32) {
    (args.steps.max(10), args.step_ms.max(100))
}

/// An in-process worker with slots for every job.
struct Worker {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Worker {
    fn start(url: &str) -> Worker {
        let stop = CancellationToken::new();
        let options = WorkerOptions {
            server: url.to_string().into(),
            key: Default::default(),
            name: "bench-watch".into(),
            slots: 128,
            device: "cpu".into(),
            runners: vec![Arc::new(DiagnosticRunner)],
        };
        Worker { task: tokio::spawn(deephardway_worker::run(options, stop.clone())), stop }
    }

    async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

async fn connect_when_up(url: &str) -> anyhow::Result<tonic::transport::Channel> {
    for _ in 0..200 {
        if let Ok(channel) = deephardway::connect(url).await {
            return Ok(channel);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("deephardway serve did not start on {url}")
}

/// The resident memory of process `pid`, in bytes.
fn rss(pid: u32) -> anyhow::Result<u64> {
    Ok(proc_field(pid, "status", "VmRSS")?.trim_end_matches("kB").trim().parse::<u64>()? * 1024)
}

/// The write system calls process `pid` has made so far (`syscw` in `/proc/PID/io`).
fn write_calls(pid: u32) -> anyhow::Result<u64> {
    Ok(proc_field(pid, "io", "syscw")?.parse()?)
}

/// The value of the `name:` line of `/proc/PID/file`, trimmed.
fn proc_field(pid: u32, file: &str, name: &str) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
        .with_context(|| format!("no {name} in /proc/PID/{file}"))
}

/// The CPU time (user and system) process `pid` has used so far.
fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command (which is in parentheses and may hold spaces): state is
    // the 3rd field of the line, utime and stime the 14th and 15th.
    let after = stat.rsplit_once(')').context("no command in /proc/PID/stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 =
        fields.get(11..13).context("short /proc/PID/stat")?.iter().map(|f| f.parse::<u64>().unwrap_or(0)).sum();
    // SAFETY: sysconf reads a configuration value; it has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Ok(Duration::from_secs_f64(ticks as f64 / per_second.max(1) as f64))
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
