//! The worker's session with the service.
//!
//! One `WorkerService.Connect` stream carries everything: the hello (models, device,
//! slots), assignments and cancellations from the service, and the jobs' events back.
//! An assignment goes to the runner that serves its model for its kind of job, by the
//! same rule the service queues it by ([`deephardway::served_model`]). Each job runs in
//! its own task, so a panicking runner fails that job and nothing else. When the stream
//! breaks the worker abandons its running jobs (the service puts them back in line) and
//! reconnects with exponential backoff and jitter.
//!
//! The session loop proves the worker alive: it sends a heartbeat at the interval the
//! welcome names (a worker that stops, deadlocks or stops reading is presumed lost after
//! three missed ones, and its jobs go to other workers), and HTTP/2 keepalive pings tell
//! it when the service has vanished without closing the connection.

use std::{collections::HashMap, sync::Arc, time::Duration};

use anyhow::{Context, bail};
use deephardway::Authorized;
use deephardway::{
    errors::to_rpc_status,
    v1::{JobCancelled, JobEvent, JobKind, job_event::Event},
    worker::v1::{
        Assignment, ConnectRequest, Heartbeat, Hello, Report, ServedModel, connect_request, connect_response,
        worker_service_client::WorkerServiceClient,
    },
};
use rand::Rng;
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Status, transport::Channel};
use tracing::Instrument;

use crate::runner::{JobContext, JobError, Runner};

/// The runners by what they serve: a job kind and a model name.
type Routes = HashMap<(JobKind, String), Arc<dyn Runner>>;

/// How a worker connects and what it serves.
pub struct WorkerOptions {
    /// The service: its URL, e.g. `http://127.0.0.1:50051` or `https://…`, and for
    /// `https://` the CA to check it with and the client certificate to present.
    pub server: deephardway::Remote,
    /// The worker key it authenticates with (a service with auth off needs none).
    pub key: deephardway::ApiKey,
    /// A name for logs and the `started` event.
    pub name: String,
    /// Jobs run at once.
    pub slots: u32,
    /// The device name announced, e.g. `cpu` or `cuda:0`.
    pub device: String,
    /// The runners; each serves the models it announces.
    pub runners: Vec<Arc<dyn Runner>>,
}

const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// HTTP/2 pings on the worker's connection, even while no call is in flight: an
/// unanswered one ends the session, and the worker reconnects.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The connection to the service, with keepalive on.
async fn connect(server: &deephardway::Remote) -> anyhow::Result<Channel> {
    let channel = server
        .endpoint()?
        .tcp_keepalive(Some(Duration::from_secs(60)))
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .connect()
        .await?;
    Ok(channel)
}

/// Serves jobs until `shutdown` is cancelled, reconnecting whenever the stream breaks.
pub async fn run(options: WorkerOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    let options = Arc::new(options);
    let mut backoff = MIN_BACKOFF;
    loop {
        let started = tokio::time::Instant::now();
        match session(&options, &shutdown).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                tracing::warn!(server = %options.server, error = format!("{e:#}"), "disconnected from the service")
            }
        }
        if started.elapsed() > Duration::from_secs(30) {
            backoff = MIN_BACKOFF;
        }
        let jitter = rand::rng().random_range(0.5..1.5);
        let wait = backoff.mul_f64(jitter);
        tracing::info!(wait_ms = wait.as_millis() as u64, "reconnecting");
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

struct RunningJob {
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

/// One connection. Returns `Ok` on shutdown and an error when the stream broke.
async fn session(options: &Arc<WorkerOptions>, shutdown: &CancellationToken) -> anyhow::Result<()> {
    let (routes, models) = routes(&options.runners);
    let channel = connect(&options.server).await.with_context(|| format!("cannot reach {}", options.server))?;
    let service = WorkerServiceClient::new(options.key.clone().attach(channel))
        .max_decoding_message_size(deephardway::MAX_ARTIFACT_MESSAGE)
        .max_encoding_message_size(deephardway::MAX_ARTIFACT_MESSAGE);
    let mut client = service.clone();
    let (outbound, rx) = mpsc::channel::<ConnectRequest>(1024);
    let hello = Hello {
        name: options.name.clone(),
        device: options.device.clone(),
        models,
        slots: options.slots.max(1),
        version: env!("CARGO_PKG_VERSION").into(),
    };
    outbound.send(ConnectRequest { message: Some(connect_request::Message::Hello(hello)) }).await?;
    let mut inbound =
        client.connect(ReceiverStream::new(rx)).await.context("the service refused the worker")?.into_inner();
    let Some(connect_response::Message::Welcome(welcome)) = inbound.message().await?.and_then(|m| m.message) else {
        bail!("the service did not answer the hello with a welcome");
    };
    tracing::info!(worker = %welcome.worker_id, server = %options.server, device = %options.device, "connected");

    // An older service names no interval and expects no heartbeats.
    let heartbeat = welcome.heartbeat_interval.and_then(|d| Duration::try_from(d).ok()).filter(|d| !d.is_zero());
    let mut beat = tokio::time::interval(heartbeat.unwrap_or(Duration::from_secs(3600)));
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let (finished_tx, mut finished) = mpsc::unbounded_channel::<String>();
    let mut running: HashMap<String, RunningJob> = HashMap::new();
    let outcome = loop {
        tokio::select! {
            _ = beat.tick(), if heartbeat.is_some() => {
                // Never wait here: if the queue to the service is full, the reports in it
                // prove the worker alive as well (and the models' activity waits for the
                // next beat rather than being lost).
                if let Ok(slot) = outbound.try_reserve() {
                    let models = options.runners.iter().flat_map(|runner| runner.activity()).collect();
                    let beat = Heartbeat { running_jobs: running.len() as u32, models };
                    slot.send(ConnectRequest { message: Some(connect_request::Message::Heartbeat(beat)) });
                }
            }
            message = inbound.message() => match message {
                Ok(Some(message)) => match message.message {
                    Some(connect_response::Message::Assignment(assignment)) => {
                        let id = assignment.job_id.clone();
                        let cancel = CancellationToken::new();
                        let runner = route(&routes, &assignment);
                        let span = crate::traces::run_span(&assignment);
                        let job = run_job(runner, assignment, cancel.clone(), outbound.clone(), finished_tx.clone(), service.clone());
                        let task = tokio::spawn(job.instrument(span));
                        running.insert(id, RunningJob { cancel, task });
                    }
                    Some(connect_response::Message::Cancel(cancel)) => {
                        if let Some(job) = running.get(&cancel.job_id) {
                            tracing::info!(job = %cancel.job_id, reason = %cancel.reason, "cancelling");
                            job.cancel.cancel();
                        }
                    }
                    _ => {}
                },
                Ok(None) => break Err(anyhow::anyhow!("the service closed the stream")),
                Err(status) => break Err(anyhow::anyhow!("stream broke: {} ({:?})", status.message(), status.code())),
            },
            Some(id) = finished.recv() => {
                running.remove(&id);
            }
            _ = shutdown.cancelled() => break Ok(()),
        }
    };
    // Abandoned jobs are not reported as cancelled: the service puts them back in line.
    for (id, job) in running {
        tracing::info!(job = %id, "abandoning job");
        job.task.abort();
    }
    outcome
}

/// The runners by what they serve, and every model they serve, to announce.
fn routes(runners: &[Arc<dyn Runner>]) -> (Routes, Vec<ServedModel>) {
    let mut routes = Routes::new();
    let mut models = Vec::new();
    for runner in runners {
        for model in runner.models() {
            let kind = JobKind::try_from(model.kind).unwrap_or(JobKind::Unspecified);
            routes.insert((kind, model.name.clone()), runner.clone());
            models.push(model);
        }
    }
    (routes, models)
}

/// The runner for an assignment: the one serving its model for its kind of job, or why
/// there is none.
fn route(routes: &Routes, assignment: &Assignment) -> Result<Arc<dyn Runner>, Status> {
    let Some(input) = assignment.spec.as_ref().and_then(|spec| spec.input.as_ref()) else {
        return Err(Status::invalid_argument("the assignment's spec has no input"));
    };
    let kind = deephardway::kind_of(input);
    let model = deephardway::served_model(kind, &assignment.model);
    routes.get(&(kind, model.to_string())).cloned().ok_or_else(|| {
        let kind = format!("{kind:?}").to_lowercase();
        Status::failed_precondition(format!("this worker does not serve model {:?} for {kind} jobs", assignment.model))
    })
}

/// Runs one job, forwarding its events, and reports how it ended.
async fn run_job(
    runner: Result<Arc<dyn Runner>, Status>,
    assignment: Assignment,
    cancel: CancellationToken,
    outbound: mpsc::Sender<ConnectRequest>,
    finished: mpsc::UnboundedSender<String>,
    service: WorkerServiceClient<Authorized>,
) {
    tracing::debug!("job assigned");
    let job_id = assignment.job_id.clone();
    let fence = assignment.fence;
    let report = |event: Event| ConnectRequest {
        message: Some(connect_request::Message::Report(Report {
            job_id: job_id.clone(),
            fence,
            event: Some(JobEvent { job_id: job_id.clone(), event: Some(event), ..Default::default() }),
        })),
    };
    let outcome = match runner {
        Err(status) => Err(JobError::Failed(status)),
        Ok(runner) => {
            let (events_tx, mut events) = mpsc::unbounded_channel();
            // The model's work, in a GenAI span of its own for generate and embed jobs.
            let gen_ai = crate::traces::gen_ai_span(&assignment);
            let span = gen_ai.clone().unwrap_or_else(tracing::Span::current);
            let ctx = JobContext::new(assignment, events_tx, cancel, service);
            // Its own task, so that a panic fails this job only.
            let mut job = tokio::spawn(async move { runner.run(ctx).await }.instrument(span));
            let outcome = loop {
                tokio::select! {
                    Some(event) = events.recv() => {
                        let _ = outbound.send(report(event)).await;
                    }
                    joined = &mut job => {
                        while let Ok(event) = events.try_recv() {
                            let _ = outbound.send(report(event)).await;
                        }
                        break joined.unwrap_or_else(|e| Err(JobError::internal(format!("the job's runner crashed: {e}"))));
                    }
                }
            };
            if let (Some(span), Ok(result)) = (&gen_ai, &outcome) {
                crate::traces::record_usage(span, result);
            }
            outcome
        }
    };
    let last = match outcome {
        Ok(result) => Event::Result(result),
        Err(JobError::Cancelled) => Event::Cancelled(JobCancelled::default()),
        Err(JobError::Failed(status)) => {
            crate::traces::record_failure(&status);
            Event::Failed(to_rpc_status(&status))
        }
    };
    // In the job's `run` span, as every line its code logs.
    tracing::debug!(outcome = outcome_name(&last), "job ended");
    let _ = outbound.send(report(last)).await;
    let _ = finished.send(job_id);
}

fn outcome_name(last: &Event) -> &'static str {
    match last {
        Event::Result(_) => "succeeded",
        Event::Cancelled(_) => "cancelled",
        _ => "failed",
    }
}

#[cfg(test)]
mod tests {
    use deephardway::v1::{ClassifyInput, EmbedInput, GenerateInput, JobResult, JobSpec, job_spec::Input};
    use tonic::Code;

    use super::*;

    /// A runner that serves one model of one kind and runs nothing.
    struct Serves(JobKind, &'static str);

    #[tonic::async_trait]
    impl Runner for Serves {
        fn models(&self) -> Vec<ServedModel> {
            vec![ServedModel { name: self.1.into(), kind: self.0 as i32, ..Default::default() }]
        }

        async fn run(&self, _: JobContext) -> Result<JobResult, JobError> {
            unreachable!("routing only")
        }
    }

    fn assignment(model: &str, input: Option<Input>) -> Assignment {
        Assignment { model: model.into(), spec: Some(JobSpec { input, ..Default::default() }), ..Default::default() }
    }

    #[test]
    fn assignments_go_to_the_runner_serving_their_kind_and_model() {
        let generate: Arc<dyn Runner> = Arc::new(Serves(JobKind::Generate, "smollm"));
        let classifier: Arc<dyn Runner> = Arc::new(Serves(JobKind::Classify, deephardway::CLASSIFIER_MODEL));
        let (routes, models) = routes(&[generate.clone(), classifier.clone()]);
        assert_eq!(models.len(), 2);

        let chat = assignment("smollm", Some(Input::Generate(GenerateInput::default())));
        assert!(Arc::ptr_eq(&route(&routes, &chat).unwrap(), &generate));
        // A classify job names a trained model; the classifier capability runs it.
        let labels = assignment("cats@2", Some(Input::Classify(ClassifyInput::default())));
        assert!(Arc::ptr_eq(&route(&routes, &labels).unwrap(), &classifier));

        let wrong_kind = assignment("smollm", Some(Input::Embed(EmbedInput::default())));
        assert_eq!(route(&routes, &wrong_kind).err().unwrap().code(), Code::FailedPrecondition);
        assert_eq!(route(&routes, &assignment("smollm", None)).err().unwrap().code(), Code::InvalidArgument);
    }
}
