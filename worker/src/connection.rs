//! The worker's session with the service.
//!
//! One `Workers.Connect` stream carries everything: the hello (models, device, slots),
//! assignments and cancellations from the service, and the jobs' events back. Each job
//! runs in its own task, so a panicking runner fails that job and nothing else. When
//! the stream breaks the worker abandons its running jobs (the service puts them back
//! in line) and reconnects with exponential backoff and jitter.

use std::{collections::HashMap, sync::Arc, time::Duration};

use anyhow::{Context, bail};
use deephardway::v1::{
    Cancelled, JobAssignment, JobEvent, JobFailed, WorkerHello, WorkerMessage, WorkerReport, job_event::Event,
    service_message, worker_message, workers_client::WorkersClient,
};
use rand::Rng;
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Code, transport::Channel};

use crate::runner::{JobContext, JobError, Runner};

/// How a worker connects and what it serves.
pub struct WorkerOptions {
    /// The service's URL, e.g. `http://127.0.0.1:50051`.
    pub server: String,
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
    let mut routes: HashMap<String, Arc<dyn Runner>> = HashMap::new();
    let mut models = Vec::new();
    for runner in &options.runners {
        for model in runner.models() {
            routes.insert(model.name.clone(), runner.clone());
            models.push(model);
        }
    }
    let channel =
        deephardway::connect(&options.server).await.with_context(|| format!("cannot reach {}", options.server))?;
    let service = WorkersClient::new(channel)
        .max_decoding_message_size(deephardway::MAX_ARTIFACT_MESSAGE)
        .max_encoding_message_size(deephardway::MAX_ARTIFACT_MESSAGE);
    let mut client = service.clone();
    let (outbound, rx) = mpsc::channel::<WorkerMessage>(1024);
    let hello = WorkerHello {
        name: options.name.clone(),
        device: options.device.clone(),
        models,
        slots: options.slots.max(1),
        version: env!("CARGO_PKG_VERSION").into(),
    };
    outbound.send(WorkerMessage { message: Some(worker_message::Message::Hello(hello)) }).await?;
    let mut inbound =
        client.connect(ReceiverStream::new(rx)).await.context("the service refused the worker")?.into_inner();
    let Some(service_message::Message::Welcome(welcome)) = inbound.message().await?.and_then(|m| m.message) else {
        bail!("the service did not answer the hello with a welcome");
    };
    tracing::info!(worker = %welcome.worker_id, server = %options.server, device = %options.device, "connected");

    let (finished_tx, mut finished) = mpsc::unbounded_channel::<String>();
    let mut running: HashMap<String, RunningJob> = HashMap::new();
    let outcome = loop {
        tokio::select! {
            message = inbound.message() => match message {
                Ok(Some(message)) => match message.message {
                    Some(service_message::Message::Assignment(assignment)) => {
                        let id = assignment.job_id.clone();
                        let cancel = CancellationToken::new();
                        // A classify job on a trained model goes to whoever serves "classifier".
                        let runner = routes.get(&assignment.model).or_else(|| {
                            assignment.trained_model.as_ref().and_then(|_| routes.get(deephardway::CLASSIFIER_MODEL))
                        }).cloned();
                        let task = tokio::spawn(run_job(runner, assignment, cancel.clone(), outbound.clone(), finished_tx.clone(), service.clone()));
                        running.insert(id, RunningJob { cancel, task });
                    }
                    Some(service_message::Message::Cancel(cancel)) => {
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

/// Runs one job, forwarding its events, and reports how it ended.
async fn run_job(
    runner: Option<Arc<dyn Runner>>,
    assignment: JobAssignment,
    cancel: CancellationToken,
    outbound: mpsc::Sender<WorkerMessage>,
    finished: mpsc::UnboundedSender<String>,
    service: WorkersClient<Channel>,
) {
    let job_id = assignment.job_id.clone();
    let fence = assignment.fence;
    let report = |event: Event| WorkerMessage {
        message: Some(worker_message::Message::Report(WorkerReport {
            job_id: job_id.clone(),
            fence,
            event: Some(JobEvent { job_id: job_id.clone(), event: Some(event), ..Default::default() }),
        })),
    };
    let outcome = match runner {
        None => Err(JobError::failed(
            Code::FailedPrecondition,
            format!("this worker does not serve model {:?}", assignment.model),
        )),
        Some(runner) => {
            let (events_tx, mut events) = mpsc::unbounded_channel();
            let ctx = JobContext::new(assignment, events_tx, cancel, service);
            // Its own task, so that a panic fails this job only.
            let mut job = tokio::spawn(async move { runner.run(ctx).await });
            loop {
                tokio::select! {
                    Some(event) = events.recv() => {
                        let _ = outbound.send(report(event)).await;
                    }
                    joined = &mut job => {
                        while let Ok(event) = events.try_recv() {
                            let _ = outbound.send(report(event)).await;
                        }
                        break joined.unwrap_or_else(|e| Err(JobError::failed(Code::Internal, format!("the job's runner crashed: {e}"))));
                    }
                }
            }
        }
    };
    let last = match outcome {
        Ok(result) => Event::Result(result),
        Err(JobError::Cancelled) => Event::Cancelled(Cancelled::default()),
        Err(JobError::Failed { code, message }) => Event::Failed(JobFailed { code: code as i32, message }),
    };
    let _ = outbound.send(report(last)).await;
    let _ = finished.send(job_id);
}
