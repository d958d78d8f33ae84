//! Shared harness for the end-to-end tests: real processes and servers, no mocks.
//!
//! - the store-level helpers of the service's own tests ([`Backend`], [`test_config`],
//!   [`diagnostic`], [`assert_contiguous`]), included from service/tests/support;
//! - [`TestServer`]: the service on a free loopback port, in this process;
//! - [`TestWorker`]: a worker in this process; [`WorkerProcess`]: the real binary, to kill;
//!   [`raw_worker::RawWorker`]: the worker protocol by hand, for misbehaving workers;
//! - [`ServiceProcess`], [`UpProcess`]: `deephardway serve` and `up`, to kill and restart;
//! - client helpers: [`jobs_client`], [`create`], [`run`], [`watch`], [`collect_events`],
//!   [`next_event`] (streams also carry queue statuses, which are not events).
#![allow(dead_code)]

pub mod raw_worker;
#[path = "../../../service/tests/support/mod.rs"]
mod service_support;
pub use service_support::*;

use std::{path::PathBuf, process::Stdio, sync::Arc, time::Duration};

use deephardway::v1::{
    CreateJobRequest, Job, JobEvent, JobSpec, QueueStatus, RunJobRequest, RunJobResponse, WatchJobRequest,
    WatchJobResponse, job_service_client::JobServiceClient,
};
use deephardway_service::{ServiceConfig, Web, store::SharedStore};
use deephardway_worker::{Runner, WorkerOptions, runners::diagnostic::DiagnosticRunner};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub type JobsClient = JobServiceClient<Channel>;

/// The service running in this process on a free port.
pub struct TestServer {
    pub url: String,
    pub addr: std::net::SocketAddr,
    pub store: SharedStore,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    pub async fn start(store: SharedStore) -> TestServer {
        Self::start_with(store, test_config()).await
    }

    pub async fn start_with(store: SharedStore, config: ServiceConfig) -> TestServer {
        Self::start_full(store, config, Web::default()).await
    }

    pub async fn start_full(store: SharedStore, config: ServiceConfig, web: Web) -> TestServer {
        log_if_asked();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(deephardway_service::serve(listener, store.clone(), config, web, async move {
            let _ = stopped.await;
        }));
        TestServer { url: format!("http://{addr}"), addr, store, stop: Some(stop), task: Some(task) }
    }

    pub async fn client(&self) -> JobsClient {
        jobs_client(&self.url).await
    }

    /// Shuts down gracefully and waits for the server to finish.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(15), task)
                .await
                .expect("server shuts down within 15 s")
                .expect("server task")
                .expect("server ran cleanly");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A worker running in this process, serving the diagnostic model.
pub struct TestWorker {
    stop: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestWorker {
    pub fn start(url: &str, name: &str, slots: u32) -> TestWorker {
        Self::start_with(url, name, slots, vec![Arc::new(DiagnosticRunner)])
    }

    /// A worker with the given runners (and the models they announce).
    pub fn start_with(url: &str, name: &str, slots: u32, runners: Vec<Arc<dyn Runner>>) -> TestWorker {
        Self::start_keyed(url, name, slots, runners, None)
    }

    /// A worker that authenticates with `key`.
    pub fn start_keyed(
        url: &str,
        name: &str,
        slots: u32,
        runners: Vec<Arc<dyn Runner>>,
        key: Option<&str>,
    ) -> TestWorker {
        let stop = CancellationToken::new();
        let options = WorkerOptions {
            server: url.into(),
            key: deephardway::ApiKey::new(key).expect("a valid key"),
            name: name.to_string(),
            slots,
            device: "cpu".into(),
            runners,
        };
        let task = tokio::spawn(deephardway_worker::run(options, stop.clone()));
        TestWorker { stop, task: Some(task) }
    }

    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for TestWorker {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The `deephardway` binary built alongside these tests.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_deephardway"))
}

/// A `deephardway worker` process.
pub struct WorkerProcess {
    pub child: tokio::process::Child,
}

impl WorkerProcess {
    pub fn start(url: &str, name: &str, slots: u32) -> WorkerProcess {
        let child = tokio::process::Command::new(binary())
            .args(["worker", "--server", url, "--name", name, "--device", "cpu", "--slots", &slots.to_string()])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn worker");
        WorkerProcess { child }
    }

    /// SIGKILL: no goodbye, no cleanup.
    pub async fn kill(&mut self) {
        self.child.kill().await.expect("kill worker");
    }
}

/// `deephardway up` (service, embedded store and a local worker) on a free port, with a
/// fresh data directory; killed when dropped.
pub struct UpProcess {
    pub child: tokio::process::Child,
    pub url: String,
    /// `host:port`, as grpcurl takes it.
    pub addr: String,
    pub data_dir: tempfile::TempDir,
}

impl UpProcess {
    /// Starts it serving the models in `models_dir` (none: the default models directory)
    /// with `extra` flags, and waits until its worker is connected.
    pub async fn start(models_dir: Option<&std::path::Path>, extra: &[&str]) -> UpProcess {
        let data_dir = tempfile::tempdir().unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let mut command = tokio::process::Command::new(binary());
        command.args(["up", "--listen", &addr, "--device", "cpu"]).args(extra).arg("--data-dir").arg(data_dir.path());
        command.arg("--artifact-cache").arg(data_dir.path().join("worker-cache"));
        if let Some(models) = models_dir {
            command.arg("--models-dir").arg(models);
        }
        let mut child =
            command.env("RUST_LOG", "warn").stdin(Stdio::null()).kill_on_drop(true).spawn().expect("spawn up");
        let url = format!("http://{addr}");
        wait_until_serving(&url).await;
        // Something answers on the port: make sure it is this process (one that could not
        // bind would have exited).
        if let Some(status) = child.try_wait().expect("check up") {
            panic!("deephardway up on {addr} exited at start ({status}) though something answers there");
        }
        wait_for_workers(&url, 1).await;
        UpProcess { child, url, addr, data_dir }
    }
}

/// A `deephardway serve` process on the embedded store.
pub struct ServiceProcess {
    pub child: tokio::process::Child,
    pub url: String,
}

impl ServiceProcess {
    pub async fn start(data_dir: &std::path::Path, port: u16) -> ServiceProcess {
        let listen = format!("127.0.0.1:{port}");
        let child = tokio::process::Command::new(binary())
            .args(["serve", "--store", "embedded", "--listen", &listen, "--worker-lease-s", "2"])
            .arg("--data-dir")
            .arg(data_dir)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn service");
        let url = format!("http://{listen}");
        wait_until_serving(&url).await;
        ServiceProcess { child, url }
    }

    pub async fn kill(&mut self) {
        self.child.kill().await.expect("kill service");
    }
}

/// With `DEEPHARDWAY_TEST_LOG` set (a `RUST_LOG`-style filter, e.g.
/// `warn,deephardway_service=info`), the in-process services and workers log to stderr:
/// what a flaky test's servers did (how a refused etcd transaction was found).
pub fn log_if_asked() {
    if let Ok(filter) = std::env::var("DEEPHARDWAY_TEST_LOG") {
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
    }
}

/// A loopback port for a server process to be told to listen on: free now, never handed
/// out before in this process, and outside the kernel's ephemeral range.
///
/// That range is where `bind(…:0)` and outgoing connections get their ports, and tests
/// here do both side by side: a port taken from it and released could be handed to an
/// in-process test server (or a client socket) before the process told to use it binds
/// it, and then that other server answers for it. Below the range, only a process told a
/// port number can take one.
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = (ephemeral_low.saturating_sub(12_000).max(1024), ephemeral_low);
    assert!(high > low + 1000, "the ephemeral port range starts at {ephemeral_low}: no room below it");
    // A different starting point in each process, should two test binaries run at once.
    let span = u32::from(high - low);
    let seed = std::process::id().wrapping_mul(2_654_435_761) ^ std::time::UNIX_EPOCH.elapsed().unwrap().subsec_nanos();
    let mut handed_out = HANDED_OUT.lock().unwrap();
    let start = seed % span;
    for step in 0..span {
        let port = low + ((start + step) % span) as u16;
        if !handed_out.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.push(port);
            return port;
        }
    }
    panic!("no free port in {low}..{high}");
}

pub async fn wait_until_serving(url: &str) {
    for _ in 0..200 {
        if deephardway::connect(url).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{url} did not start serving within 10 s");
}

pub async fn jobs_client(url: &str) -> JobsClient {
    JobServiceClient::new(deephardway::connect(url).await.expect("connect"))
}

/// A CreateJob request for `spec`, without a request id.
pub fn create_request(spec: JobSpec) -> CreateJobRequest {
    CreateJobRequest { spec: Some(spec), request_id: String::new() }
}

/// Creates a job and returns it.
pub async fn create(client: &mut JobsClient, spec: JobSpec) -> Job {
    client.create_job(create_request(spec)).await.expect("CreateJob").into_inner().job.expect("a job")
}

/// A RunJob request for `spec`, without a request id.
pub fn run_request(spec: JobSpec) -> RunJobRequest {
    RunJobRequest { spec: Some(spec), request_id: String::new() }
}

/// Runs a job to its end and returns its events.
pub async fn run(client: &mut JobsClient, spec: JobSpec, within: Duration) -> Vec<JobEvent> {
    let stream = client.run_job(run_request(spec)).await.expect("RunJob").into_inner();
    collect_events(stream, within).await.expect("the job's events")
}

/// Opens a WatchJob stream.
pub async fn watch(
    client: &mut JobsClient,
    job_id: &str,
    after_seq: u64,
) -> Result<tonic::Streaming<WatchJobResponse>, tonic::Status> {
    Ok(client.watch_job(WatchJobRequest { job_id: job_id.to_string(), after_seq }).await?.into_inner())
}

/// A message of RunJob's and WatchJob's streams: a job event, or (while the job is
/// queued) its place in line, which carries no event.
pub trait EventMessage {
    fn event(self) -> Option<JobEvent>;
    fn queue_status(&self) -> Option<&QueueStatus>;

    /// The event; panics on a queue status (see [`next_event`] to skip those).
    fn into_event(self) -> JobEvent
    where
        Self: Sized + std::fmt::Debug,
    {
        let text = format!("{self:?}");
        self.event().unwrap_or_else(|| panic!("a stream message without an event: {text}"))
    }
}

impl EventMessage for RunJobResponse {
    fn event(self) -> Option<JobEvent> {
        self.event
    }
    fn queue_status(&self) -> Option<&QueueStatus> {
        self.queue_status.as_ref()
    }
}

impl EventMessage for WatchJobResponse {
    fn event(self) -> Option<JobEvent> {
        self.event
    }
    fn queue_status(&self) -> Option<&QueueStatus> {
        self.queue_status.as_ref()
    }
}

/// The stream's next job event, skipping queue statuses; `None` when it ended.
pub async fn next_event<M: EventMessage>(stream: &mut tonic::Streaming<M>) -> Result<Option<JobEvent>, tonic::Status> {
    while let Some(message) = stream.message().await? {
        if let Some(event) = message.event() {
            return Ok(Some(event));
        }
    }
    Ok(None)
}

/// Waits (up to `within`) until some connected worker serves the diagnostic model.
pub async fn wait_for_workers(url: &str, count: u32) {
    use deephardway::v1::{ListModelsRequest, model_service_client::ModelServiceClient};
    let mut models = ModelServiceClient::new(deephardway::connect(url).await.expect("connect"));
    for _ in 0..200 {
        let list = models.list_models(ListModelsRequest::default()).await.expect("ListModels").into_inner();
        if list.models.iter().any(|m| m.name == "diagnostic" && m.workers >= count) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{count} worker(s) did not connect within 10 s");
}

/// Reads a stream of events to its end (or until `within` passes).
pub async fn collect_events<M: EventMessage>(
    mut stream: tonic::Streaming<M>,
    within: Duration,
) -> Result<Vec<JobEvent>, tonic::Status> {
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.message()).await {
            // Queue statuses are not events.
            Ok(Ok(Some(message))) => events.extend(message.event()),
            Ok(Ok(None)) => return Ok(events),
            Ok(Err(status)) => return Err(status),
            Err(_) => panic!("stream did not end within {within:?}; got {} events: {events:?}", events.len()),
        }
    }
}

/// Asserts that a request was refused as INVALID_ARGUMENT for `field`: the message starts
/// with the field's path, and a `google.rpc.BadRequest` detail names it.
#[track_caller]
pub fn assert_invalid_field(status: &tonic::Status, field: &str) {
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{field}: {status:?}");
    assert!(status.message().starts_with(&format!("{field}:")), "the message names {field}: {:?}", status.message());
    let named: Vec<String> = deephardway::errors::violations(status).into_iter().map(|v| v.field).collect();
    assert_eq!(named, [field], "the BadRequest detail names {field}: {status:?}");
}

/// A tool installed by `scripts/setup`, on PATH or in its cache.
pub fn tool(name: &str, env_override: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env_override) {
        return PathBuf::from(path);
    }
    let cache = std::env::var_os("DEEPHARDWAY_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/deephardway"));
    let candidates = [cache.join("tools/bin").join(name), cache.join("venv/bin").join(name)];
    for candidate in candidates {
        if candidate.exists() {
            return candidate;
        }
    }
    if let Ok(output) = std::process::Command::new("which").arg(name).output()
        && output.status.success()
    {
        return PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    }
    panic!("{name} is not installed: run scripts/setup");
}

/// The names of the workers that started a job, in order, from its events.
pub fn started_names(events: &[JobEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match &e.event {
            Some(deephardway::v1::job_event::Event::Started(s)) => Some(s.worker_name.clone()),
            _ => None,
        })
        .collect()
}

/// `GET /metrics` (with `key` as a bearer token, if any): the status and the body.
pub async fn scrape(url: &str, key: Option<&str>) -> (u16, String) {
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let mut request = http::Request::get(format!("{url}/metrics"));
    if let Some(key) = key {
        request = request.header("authorization", format!("Bearer {key}"));
    }
    let response = http.request(request.body(Default::default()).unwrap()).await.expect("GET /metrics");
    let status = response.status().as_u16();
    let body = http_body_util::BodyExt::collect(response.into_body()).await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}
