//! `deephardway.v1.Jobs`: submit, watch, get, list, cancel, and the live job list.
//!
//! Watch is list-then-watch: subscribe to the hub, list the job's stored events, send
//! those after `after_seq`, then forward live ones. Sequence numbers make it exact:
//! anything at or below the last sent is a duplicate and dropped; a jump means the
//! subscription lost something, so it lists again.

use std::pin::Pin;

use deephardway::{
    is_final,
    v1::{
        CancelRequest, GetJobRequest, Job, JobEvent, JobState, JobUpdate, ListJobsRequest, ListJobsResponse,
        SubmitRequest, SubmitResponse, WatchJobsRequest, WatchRequest, jobs_server::Jobs,
    },
};
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::SharedContext;
use crate::jobs::validate;

pub type EventStream = Pin<Box<dyn Stream<Item = Result<JobEvent, Status>> + Send>>;

pub struct JobsRpc {
    ctx: SharedContext,
}

impl JobsRpc {
    pub fn new(ctx: SharedContext) -> Self {
        Self { ctx }
    }
}

#[tonic::async_trait]
impl Jobs for JobsRpc {
    async fn submit(&self, request: Request<SubmitRequest>) -> Result<Response<SubmitResponse>, Status> {
        let (job, deduplicated) = self.ctx.lifecycle.submit(request.into_inner()).await?;
        Ok(Response::new(SubmitResponse { job: Some(job), deduplicated }))
    }

    type RunStream = EventStream;

    async fn run(&self, request: Request<SubmitRequest>) -> Result<Response<EventStream>, Status> {
        let (job, _) = self.ctx.lifecycle.submit(request.into_inner()).await?;
        Ok(Response::new(follow(self.ctx.clone(), job.id, 0)))
    }

    type WatchStream = EventStream;

    async fn watch(&self, request: Request<WatchRequest>) -> Result<Response<EventStream>, Status> {
        let WatchRequest { job_id, after_seq } = request.into_inner();
        // Fail fast on an unknown job, with a status rather than an empty stream.
        let job = self.ctx.lifecycle.get(&job_id).await?;
        if after_seq > job.last_seq && is_finished(&job) {
            return Err(Status::out_of_range(format!(
                "after_seq: {after_seq} is past the job's last event ({})",
                job.last_seq
            )));
        }
        Ok(Response::new(follow(self.ctx.clone(), job_id, after_seq)))
    }

    async fn get(&self, request: Request<GetJobRequest>) -> Result<Response<Job>, Status> {
        Ok(Response::new(self.ctx.lifecycle.get(&request.into_inner().job_id).await?))
    }

    async fn list(&self, request: Request<ListJobsRequest>) -> Result<Response<ListJobsResponse>, Status> {
        let req = request.into_inner();
        let state = JobState::try_from(req.state)
            .map_err(|_| Status::invalid_argument(format!("state: {} is not a JobState", req.state)))?;
        if !req.model.is_empty() {
            validate::model_name("model", &req.model)?;
        }
        if req.limit > 1000 {
            return Err(Status::invalid_argument(format!("limit: is {}; at most 1000", req.limit)));
        }
        let limit = if req.limit == 0 { 100 } else { req.limit as usize };
        let jobs = self.ctx.lifecycle.list(state, &req.model, limit).await?;
        Ok(Response::new(ListJobsResponse { jobs }))
    }

    type WatchJobsStream = Pin<Box<dyn Stream<Item = Result<JobUpdate, Status>> + Send>>;

    async fn watch_jobs(&self, request: Request<WatchJobsRequest>) -> Result<Response<Self::WatchJobsStream>, Status> {
        let limit = request.into_inner().limit;
        if limit > 1000 {
            return Err(Status::invalid_argument(format!("limit: is {limit}; at most 1000")));
        }
        let limit = if limit == 0 { 50 } else { limit as usize };
        let (tx, rx) = mpsc::channel(256);
        let ctx = self.ctx.clone();
        tokio::spawn(async move {
            if let Err(status) = forward_job_updates(&ctx, limit, &tx).await {
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn cancel(&self, request: Request<CancelRequest>) -> Result<Response<Job>, Status> {
        let req = request.into_inner();
        Ok(Response::new(self.ctx.lifecycle.cancel(&req.job_id, &req.reason).await?))
    }
}

fn is_finished(job: &Job) -> bool {
    matches!(JobState::try_from(job.state), Ok(JobState::Succeeded | JobState::Failed | JobState::Cancelled))
}

/// Streams a job's events after `after_seq` until its final one.
pub fn follow(ctx: SharedContext, job_id: String, after_seq: u64) -> EventStream {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        if let Err(status) = forward(&ctx, &job_id, after_seq, &tx).await {
            let _ = tx.send(Err(status)).await;
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

type Sink = mpsc::Sender<Result<JobEvent, Status>>;

/// Sends one event unless it is a duplicate. Returns `Some(done)`, or `None` on a gap.
async fn deliver(tx: &Sink, event: JobEvent, last: &mut u64) -> Option<bool> {
    if event.seq <= *last {
        return Some(false);
    }
    if event.seq != *last + 1 {
        return None;
    }
    *last = event.seq;
    let done = event.event.as_ref().is_some_and(is_final);
    // A closed channel means the client went away: nothing more to do.
    Some(tx.send(Ok(event)).await.is_err() || done)
}

async fn forward(ctx: &SharedContext, job_id: &str, after_seq: u64, tx: &Sink) -> Result<(), Status> {
    let mut last = after_seq;
    loop {
        let Some(mut live) = ctx.hub.subscribe(job_id).await else {
            return Err(shutting_down(last));
        };
        let (stored, _) = ctx.lifecycle.events(job_id).await?;
        if stored.is_empty() {
            return Err(Status::not_found(format!("job {job_id} not found")));
        }
        for event in stored {
            match deliver(tx, event, &mut last).await {
                Some(true) => return Ok(()),
                Some(false) => {}
                None => break,
            }
        }
        loop {
            tokio::select! {
                event = live.recv() => match event {
                    Some(event) => match deliver(tx, event, &mut last).await {
                        Some(true) => return Ok(()),
                        Some(false) => {}
                        None => break, // a gap: list again
                    },
                    None => break, // dropped by the hub: list again
                },
                _ = tx.closed() => return Ok(()),
                _ = ctx.shutdown.cancelled() => return Err(shutting_down(last)),
            }
        }
    }
}

/// Sends a snapshot of recent jobs, then every change to a job record. Subscribing before
/// the snapshot means nothing is missed; a subscriber that lags gets a fresh snapshot.
async fn forward_job_updates(
    ctx: &SharedContext,
    limit: usize,
    tx: &mpsc::Sender<Result<JobUpdate, Status>>,
) -> Result<(), Status> {
    use tokio::sync::broadcast::error::RecvError;

    use crate::{keys, store::EventKind};

    let mut changes = ctx.hub.changes();
    let mut send_snapshot = true;
    loop {
        if std::mem::take(&mut send_snapshot) {
            for job in ctx.lifecycle.list(JobState::Unspecified, "", limit).await? {
                if tx.send(Ok(JobUpdate { job: Some(job), removed: false, snapshot: true })).await.is_err() {
                    return Ok(());
                }
            }
        }
        let change = tokio::select! {
            change = changes.recv() => change,
            _ = tx.closed() => return Ok(()),
            _ = ctx.shutdown.cancelled() => return Err(Status::unavailable("server shutting down")),
        };
        let update = match change {
            Ok(change) if change.kv.key.starts_with(keys::JOBS) => match change.kind {
                EventKind::Put => match <Job as prost::Message>::decode(change.kv.value.as_slice()) {
                    Ok(job) => JobUpdate { job: Some(job), removed: false, snapshot: false },
                    Err(_) => continue,
                },
                EventKind::Delete => {
                    let id = keys::last_segment(&change.kv.key).to_string();
                    JobUpdate { job: Some(Job { id, ..Default::default() }), removed: true, snapshot: false }
                }
            },
            Ok(_) => continue,
            Err(RecvError::Lagged(_)) => {
                send_snapshot = true;
                continue;
            }
            Err(RecvError::Closed) => return Err(Status::unavailable("server shutting down")),
        };
        if tx.send(Ok(update)).await.is_err() {
            return Ok(());
        }
    }
}

fn shutting_down(last: u64) -> Status {
    Status::unavailable(format!("server shutting down; resume with after_seq={last}"))
}
