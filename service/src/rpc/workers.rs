//! `deephardway.worker.v1.WorkerService`: one long-lived session per connected worker.
//!
//! The session owns everything about its worker: the store lease that proves the worker
//! is alive (the worker itself never touches the store), its record under that lease,
//! the jobs it is running with their fences and deadlines, and the reports waiting to
//! be written. Reports are buffered for a few tens of milliseconds and written as one
//! transaction per job, with adjacent output chunks merged, so token-by-token output
//! costs a handful of store writes per second. The writes run beside the session's loop,
//! one in flight per job ([`writes`]): the loop never waits for the store either. When
//! the stream ends for any reason the lease is revoked: the worker's claims vanish and
//! its jobs go back in line.
//!
//! No peer can stall the session: its loop never awaits its worker. Messages to the
//! worker go into a bounded queue with `try_send`; a worker whose queue is full, or
//! whose queued messages go unread for five heartbeat intervals, has stopped reading,
//! and its session ends. The worker proves it is alive itself (a heartbeat or a report
//! at least every `worker_heartbeat`, the interval the welcome names); a session that
//! hears nothing for five intervals ends. Reports are checked before they are stored
//! (see [`reports`]). Nor can the store's slowness make a worker fill the service's
//! memory: past a bound of reports waiting to be written, the session stops reading
//! its worker until they are ([`Session::backlogged`]).
//!
//! A worker touches only what its own session holds. Each assignment's fence is a random
//! secret of the job's claim (see [`crate::jobs::Fence`]): the session accepts reports
//! only for jobs it holds, with their fence; `FetchArtifact` serves only the files the
//! caller's own assignment names ([`inputs`]); `PublishModel` needs the train job's
//! fence, and checks the model's files before anything is stored
//! ([`trained_models::check`]).

mod inputs;
mod reports;
mod writes;

use std::{
    collections::HashMap,
    pin::Pin,
    time::{Duration, Instant},
};

use deephardway::{
    errors::{RpcStatus, invalid_field},
    is_final,
    v1::{JobCancelled, job_event::Event, job_result},
    worker::v1::{
        Assignment, Cancel, ConnectRequest, ConnectResponse, FetchArtifactRequest, FetchArtifactResponse, Hello,
        PublishModelRequest, PublishModelResponse, Report, Welcome, connect_request, connect_response,
        worker_service_server::WorkerService,
    },
};
use futures::{Stream, StreamExt};
use tokio::sync::{
    broadcast::error::RecvError,
    mpsc::{self, error::TrySendError},
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};

use super::SharedContext;
use crate::{
    auth::Caller,
    hub::Change,
    jobs::{Claimed, Fence, Rejected, ServedModel, WorkerRecord},
    keys,
    store::{Op, StoreError, Txn},
    trained_models, validate,
};
use reports::{Expected, check_report};
use writes::{ReportLog, Writes, Written, coalesce};

const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_SLOTS: u32 = 256;
/// Models one worker may announce.
const MAX_MODELS: usize = 256;
/// Messages queued for a worker beyond what its slots explain (each assignment takes a
/// slot; cancels are at most one per job). A worker that lets this many pile up unread
/// has stopped reading.
const OUTBOUND_SPARE: usize = 32;
/// A worker silent (or not reading) for this many heartbeat intervals is presumed hung.
const MISSED_HEARTBEATS: u32 = 5;
/// How soon a failed lease renewal is tried again.
const LEASE_RETRY: Duration = Duration::from_millis(250);
/// Reports waiting to be written, across a session's jobs, past which the session stops
/// reading its worker until they are written (see [`Session::backlogged`]).
const MAX_BACKLOG_EVENTS: usize = 16 * 1024;
const MAX_BACKLOG_BYTES: usize = 16 << 20;

pub type ConnectResponses = Pin<Box<dyn Stream<Item = Result<ConnectResponse, Status>> + Send>>;
pub type ArtifactChunks = Pin<Box<dyn Stream<Item = Result<FetchArtifactResponse, Status>> + Send>>;

/// Artifacts are streamed to workers in pieces of at most this many bytes.
const CHUNK: usize = 1 << 20;
type Outbound = mpsc::Sender<Result<ConnectResponse, Status>>;

pub struct WorkersRpc {
    ctx: SharedContext,
}

impl WorkersRpc {
    pub fn new(ctx: SharedContext) -> Self {
        Self { ctx }
    }
}

#[tonic::async_trait]
impl WorkerService for WorkersRpc {
    type ConnectStream = ConnectResponses;
    type FetchArtifactStream = ArtifactChunks;

    async fn fetch_artifact(&self, request: Request<FetchArtifactRequest>) -> Result<Response<ArtifactChunks>, Status> {
        let caller = Caller::of(&request)?;
        let FetchArtifactRequest { path, job_id, fence } = request.into_inner();
        inputs::check_fetch(&self.ctx.lifecycle, &caller, &job_id, fence, &path).await?;
        let (size, stream) = self.ctx.lifecycle.config().artifacts.get(&path).await?;
        if size == 0 {
            let empty = futures::stream::once(async { Ok(FetchArtifactResponse { data: Vec::new(), total_bytes: 0 }) });
            return Ok(Response::new(Box::pin(empty)));
        }
        // The store's own chunks, re-cut to at most CHUNK bytes; the first carries the size.
        let mut first = true;
        let chunks = stream
            .flat_map(|piece| {
                let pieces: Vec<Result<bytes::Bytes, Status>> = match piece {
                    Ok(bytes) => (0..bytes.len())
                        .step_by(CHUNK)
                        .map(|i| Ok(bytes.slice(i..(i + CHUNK).min(bytes.len()))))
                        .collect(),
                    Err(e) => vec![Err(e)],
                };
                futures::stream::iter(pieces)
            })
            .map(move |piece| {
                let total_bytes = if std::mem::take(&mut first) { size } else { 0 };
                piece.map(|data| FetchArtifactResponse { data: data.to_vec(), total_bytes })
            });
        Ok(Response::new(Box::pin(chunks)))
    }

    async fn publish_model(
        &self,
        request: Request<PublishModelRequest>,
    ) -> Result<Response<PublishModelResponse>, Status> {
        let caller = Caller::of(&request)?;
        let PublishModelRequest { job_id, fence, model, config, weights } = request.into_inner();
        // Only the job's current assignment may publish: the caller must present the
        // secret of the job's live claim, with the key its worker connected with.
        let (job, fence) = self.ctx.lifecycle.held(&job_id, fence, caller.key()).await?;
        let description = model.ok_or_else(|| invalid_field("model", "is required"))?;
        let (store, artifacts) = (self.ctx.lifecycle.store(), &self.ctx.lifecycle.config().artifacts);
        let published =
            trained_models::publish(store, artifacts, &job, fence.revision, description, config, weights).await?;
        Ok(Response::new(PublishModelResponse { model: Some(published) }))
    }

    async fn connect(&self, request: Request<Streaming<ConnectRequest>>) -> Result<Response<ConnectResponses>, Status> {
        let caller = Caller::of(&request)?;
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no hello within 10 s"))??;
        let Some(ConnectRequest { message: Some(connect_request::Message::Hello(hello)) }) = first else {
            return Err(invalid_field("message", "the first message must be a hello"));
        };
        let mut record = record_from_hello(hello)?;
        record.key = caller.key().to_string();

        let store = self.ctx.lifecycle.store();
        let ttl = self.ctx.lifecycle.config().worker_lease_ttl;
        let lease = store.lease_grant(ttl).await?;
        let put = Txn::new().then(Op::put_with_lease(
            keys::worker(&record.worker_id),
            serde_json::to_vec(&record).expect("serialisable"),
            lease,
        ));
        store.txn(put).await?;
        self.ctx.lifecycle.remember_served(&record).await?;
        tracing::info!(worker = %record.worker_id, name = %record.name, device = %record.device,
            models = ?record.models.iter().map(|m| &m.name).collect::<Vec<_>>(), "worker connected");

        let capacity = record.slots as usize + OUTBOUND_SPARE;
        let (outbound, rx) = mpsc::channel(capacity);
        let heartbeat = self.ctx.lifecycle.config().worker_heartbeat;
        let welcome = connect_response::Message::Welcome(Welcome {
            worker_id: record.worker_id.clone(),
            heartbeat_interval: prost_types::Duration::try_from(heartbeat).ok(),
        });
        let mut session = Session {
            ctx: self.ctx.clone(),
            record,
            lease,
            outbound,
            capacity,
            sent: 0,
            ending: None,
            running: HashMap::new(),
            writes: Writes::default(),
        };
        session.send(welcome);
        tokio::spawn(session.run(inbound, caller));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

fn record_from_hello(hello: Hello) -> Result<WorkerRecord, Status> {
    if hello.models.is_empty() {
        return Err(invalid_field("hello.models", "a worker must serve at least one model"));
    }
    // Each is remembered in the store (see `jobs::served`): no worker makes up thousands.
    if hello.models.len() > MAX_MODELS {
        return Err(invalid_field("hello.models", format!("has {}; at most {MAX_MODELS}", hello.models.len())));
    }
    for (i, m) in hello.models.iter().enumerate() {
        validate::model_name(&format!("hello.models[{i}].name"), &m.name)?;
    }
    if hello.slots == 0 || hello.slots > MAX_SLOTS {
        return Err(invalid_field("hello.slots", format!("is {}; must be 1 to {MAX_SLOTS}", hello.slots)));
    }
    Ok(WorkerRecord {
        worker_id: uuid::Uuid::now_v7().to_string(),
        name: hello.name,
        device: if hello.device.is_empty() { "cpu".into() } else { hello.device },
        slots: hello.slots,
        models: hello
            .models
            .into_iter()
            .map(|m| ServedModel {
                name: m.name,
                kind: m.kind,
                description: m.description,
                context_length: m.context_length,
            })
            .collect(),
        key: String::new(),
    })
}

/// A job this session's worker is running.
struct Running {
    /// The claim's fence: its secret is what the worker must present.
    fence: Fence,
    /// What the job's reports must fit: its kind, and how many items its input has.
    expected: Expected,
    deadline: Instant,
    timeout: Duration,
    /// When the worker was told to stop, if it was.
    cancel_sent: Option<Instant>,
    /// Reports not yet written, and their encoded size (kept as they come and go, so
    /// that the session's backlog is known without going over them).
    pending: Vec<Event>,
    pending_bytes: usize,
    /// The reports being written now, if a write is in flight (one at a time per job).
    writing: Option<Backlog>,
    /// What the session knows of the job's events in the store (taken by the write in
    /// flight, and given back when it is settled).
    log: ReportLog,
    /// Why the session ended the job itself (a timeout, a worker deaf to cancelling):
    /// the worker is told to stop, with this reason, once that end is written.
    ended_on_behalf: Option<&'static str>,
    /// For the latency metrics: the job's kind and model, when it was handed over, and
    /// when its first output came.
    kind: i32,
    model: String,
    assigned: Instant,
    first_output: Option<Instant>,
}

/// Reports held in memory: how many, and their encoded size.
#[derive(Clone, Copy, Default)]
struct Backlog {
    events: usize,
    bytes: usize,
}

impl Running {
    /// Adds a report to those waiting to be written.
    fn wait(&mut self, event: Event) {
        self.pending_bytes += event.encoded_len();
        self.pending.push(event);
    }

    /// Takes every report waiting, to be written.
    fn take_waiting(&mut self) -> Vec<Event> {
        self.pending_bytes = 0;
        std::mem::take(&mut self.pending)
    }

    /// Puts reports back to wait (a write failed).
    fn set_waiting(&mut self, events: Vec<Event>) {
        self.pending_bytes = events.iter().map(Event::encoded_len).sum();
        self.pending = events;
    }
}

struct Session {
    ctx: SharedContext,
    record: WorkerRecord,
    lease: i64,
    outbound: Outbound,
    /// The outbound queue's size.
    capacity: usize,
    /// Messages queued so far; less those still queued, those the worker has taken.
    sent: u64,
    /// Set when the worker can no longer be sent to: the session ends, saying why.
    ending: Option<String>,
    running: HashMap<String, Running>,
    /// Report writes in flight, beside the loop (see [`writes`]).
    writes: Writes,
}

/// Whether a worker still takes what is queued for it: messages that wait unread for
/// [`MISSED_HEARTBEATS`] intervals mean it has stopped reading.
#[derive(Default)]
struct ReadWatch {
    taken: u64,
    stalled_since: Option<Instant>,
}

impl Session {
    async fn run(mut self, mut inbound: Streaming<ConnectRequest>, caller: Caller) {
        let worker_id = self.record.worker_id.clone();
        let config = self.ctx.lifecycle.config().clone();
        // The dispatcher hands over claimed jobs with `try_send`: a channel with room for
        // every slot never fills unless this session is stuck, and then it drops the worker.
        let (assign_tx, mut assignments) = mpsc::channel(self.record.slots.max(1) as usize);
        self.ctx.dispatcher.register(self.record.clone(), self.lease, assign_tx);
        let record = &self.record;
        let series = self.ctx.lifecycle.metrics().worker_connected(
            &worker_id,
            &record.name,
            &record.device,
            record.slots,
            record.models.iter().map(|m| m.name.clone()),
        );
        let mut changes = self.ctx.hub.changes();
        let mut flush = tokio::time::interval(config.output_coalesce);
        let mut keepalive = tokio::time::interval(config.worker_lease_ttl / 3);
        let heartbeat = config.worker_heartbeat;
        let silence = heartbeat * MISSED_HEARTBEATS;
        let mut liveness = tokio::time::interval(heartbeat);
        let mut last_heard = Instant::now();
        let mut reading = ReadWatch::default();
        let end = loop {
            if let Some(why) = self.ending.take() {
                break why;
            }
            let backlogged = self.backlogged();
            tokio::select! {
                message = inbound.message(), if !backlogged => {
                    last_heard = Instant::now();
                    match message {
                        Ok(Some(ConnectRequest { message: Some(connect_request::Message::Report(report)) })) => {
                            self.on_report(report).await;
                        }
                        Ok(Some(ConnectRequest { message: Some(connect_request::Message::Heartbeat(beat)) })) => {
                            tracing::trace!(worker = %worker_id, running = beat.running_jobs, "heartbeat");
                            series.heartbeat(&beat);
                        }
                        Ok(Some(_)) => tracing::warn!(worker = %worker_id, "ignoring an unexpected message"),
                        Ok(None) => break "worker closed its stream".to_string(),
                        Err(status) => break format!("stream error: {}", status.message()),
                    }
                }
                claimed = assignments.recv() => match claimed {
                    Some(claimed) => self.assign(claimed).await,
                    None => break "the dispatcher dropped this worker".to_string(),
                },
                _ = liveness.tick() => {
                    // While the session is not reading, the silence is its own.
                    if backlogged {
                        last_heard = Instant::now();
                    }
                    if last_heard.elapsed() > silence {
                        break format!("no heartbeat or report for {:?} (worker hung or gone)", last_heard.elapsed());
                    }
                    if let Some(why) = self.check_reading(&mut reading, silence) {
                        break why;
                    }
                }
                change = changes.recv() => match change {
                    Ok(Change::JobUpdated(job)) if self.running.contains_key(&job.id) => {
                        self.on_job_changed(&job).await;
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(_)) => self.recheck_cancels().await,
                    Err(RecvError::Closed) => break "hub stopped".to_string(),
                },
                Some((id, written)) = self.writes.next(), if !self.writes.is_empty() => self.settle(&id, written),
                _ = flush.tick() => self.on_tick().await,
                _ = keepalive.tick() => match self.ctx.lifecycle.store().lease_keep_alive(self.lease).await {
                    Ok(()) => {}
                    Err(e @ StoreError::LeaseNotFound(_)) => break format!("worker lease lost: {e}"),
                    // The store cannot be reached right now (an etcd election, a lost
                    // quorum): the lease is not lost until it says so. A lease that ran
                    // out meanwhile is reported missing by the next try.
                    // Soon, not a third of the lease later: a failover takes a moment.
                    Err(e) => {
                        tracing::warn!(worker = %worker_id, error = %e, "could not renew the worker lease; retrying");
                        keepalive.reset_after(LEASE_RETRY);
                    }
                },
                _ = self.ctx.shutdown.cancelled() => break "server shutting down".to_string(),
                // A revoked worker key ends the session: its jobs go back in line.
                _ = caller.revoked() => break "its API key was revoked".to_string(),
            }
        };
        tracing::info!(worker = %worker_id, reason = %end, running = self.running.len(), "worker disconnected");
        drop(series);
        self.ctx.dispatcher.deregister(&worker_id);
        self.write_last().await;
        // Its claims vanish with the lease; the reaper puts the jobs back in line.
        if let Err(e) = self.ctx.lifecycle.store().lease_revoke(self.lease).await {
            tracing::warn!(worker = %worker_id, error = %e, "could not revoke lease; it will expire");
        }
        // Never wait for a worker that may not be reading.
        let _ = self.outbound.try_send(Err(Status::unavailable(end)));
    }

    /// Whether the reports waiting to be written are past the session's bound. The store
    /// is down or slower than the worker reports (failed writes go back to wait), and
    /// reading on would hold the worker's output in the service's memory without limit:
    /// the session stops reading its stream instead, until a write gets through. HTTP/2
    /// flow control then holds the worker back; its heartbeats wait in the stream too,
    /// so the session does not count that silence against it.
    fn backlogged(&self) -> bool {
        let (mut events, mut bytes) = (0, 0);
        for running in self.running.values() {
            let writing = running.writing.unwrap_or_default();
            events += running.pending.len() + writing.events;
            bytes += running.pending_bytes + writing.bytes;
            if events > MAX_BACKLOG_EVENTS || bytes > MAX_BACKLOG_BYTES {
                return true;
            }
        }
        false
    }

    /// Queues a message for the worker without waiting. A full queue means the worker
    /// has stopped reading: the session ends (see `run`).
    fn send(&mut self, message: connect_response::Message) {
        if self.ending.is_some() {
            return;
        }
        match self.outbound.try_send(Ok(ConnectResponse { message: Some(message) })) {
            Ok(()) => self.sent += 1,
            Err(TrySendError::Full(_)) => {
                self.ending = Some(format!("the worker stopped reading: {} messages wait unread", self.capacity));
            }
            Err(TrySendError::Closed(_)) => self.ending = Some("the worker's stream is gone".into()),
        }
    }

    /// Why the session should end if messages have waited unread for `silence`.
    fn check_reading(&self, watch: &mut ReadWatch, silence: Duration) -> Option<String> {
        let queued = (self.capacity - self.outbound.capacity()) as u64;
        let taken = self.sent.saturating_sub(queued);
        if queued == 0 || taken != watch.taken {
            watch.taken = taken;
            watch.stalled_since = None;
            return None;
        }
        let since = *watch.stalled_since.get_or_insert_with(Instant::now);
        (since.elapsed() >= silence)
            .then(|| format!("the worker stopped reading: {queued} messages unread for {:?}", since.elapsed()))
    }

    async fn assign(&mut self, claimed: Claimed) {
        let Claimed { job, fence, record } = claimed;
        let timeout = job.timeout.and_then(|t| Duration::try_from(t).ok()).unwrap_or(Duration::MAX / 2);
        let running = Running {
            fence,
            expected: Expected::of(&job),
            deadline: Instant::now() + timeout,
            timeout,
            cancel_sent: None,
            pending: Vec::new(),
            pending_bytes: 0,
            writing: None,
            log: ReportLog { last_seq: job.last_seq, uncertain: false, record: Some(record) },
            ended_on_behalf: None,
            kind: job.kind,
            model: job.model.clone(),
            assigned: Instant::now(),
            first_output: None,
        };
        self.running.insert(job.id.clone(), running);
        let (dataset, trained_model) = inputs::assignment_inputs(self.ctx.lifecycle.store(), &job).await;
        let traceparent =
            crate::traces::handed_over(self.ctx.lifecycle.store().as_ref(), &job, &self.record.worker_id).await;
        let assignment = Assignment {
            job_id: job.id.clone(),
            fence: fence.secret,
            attempt: job.attempts,
            model: job.model.clone(),
            spec: job.spec.clone(),
            dataset,
            trained_model,
            traceparent,
        };
        self.send(connect_response::Message::Assignment(assignment));
        // A cancel may have been accepted between the claim and now.
        self.on_job_changed(&job).await;
    }

    async fn on_report(&mut self, report: Report) {
        let Report { job_id, fence, event } = report;
        let Some(event) = event.and_then(|e| e.event) else { return };
        // Only this session's own jobs, with their fence: a job another session holds is
        // not in `running`, whatever fence the report carries.
        let Some(running) = self.running.get_mut(&job_id).filter(|r| r.fence.secret == fence) else {
            tracing::warn!(job = %job_id, worker = %self.record.worker_id, "dropping a report for a job it does not hold");
            // Not (or no longer) this worker's job: make sure it stops.
            let cancel = Cancel { job_id, reason: "the job is not assigned to this worker".into() };
            self.send(connect_response::Message::Cancel(cancel));
            return;
        };
        let event = match check_report(event, running.expected) {
            Ok(event) => event,
            Err(why) => {
                tracing::warn!(job = %job_id, worker = %self.record.worker_id, "dropping a report: {why}");
                return;
            }
        };
        let last = is_final(&event);
        let first_output = observe_latency(self.ctx.lifecycle.metrics(), running, &event);
        running.wait(event);
        if last {
            // Don't make the job's watchers wait for the next tick; write everyone's
            // pending reports with it.
            self.flush_all();
        } else if first_output {
            // Nor for a job's first output (a streamed text's first token: the wait a
            // user of streamed generation feels most). The outputs after it are
            // coalesced until the tick, as ever.
            self.write(&job_id);
        }
    }

    async fn on_tick(&mut self) {
        self.flush_all();
        let now = Instant::now();
        let grace = self.ctx.lifecycle.config().cancel_grace;
        let ids: Vec<String> = self.running.keys().cloned().collect();
        for id in ids {
            // A job the session has already ended waits only for that end to be written.
            let Some(running) = self.running.get(&id).filter(|r| r.ended_on_behalf.is_none()) else { continue };
            if now >= running.deadline {
                let failure = RpcStatus {
                    code: Code::DeadlineExceeded as i32,
                    message: format!("the job ran longer than its timeout of {:?}", running.timeout),
                    details: Vec::new(),
                };
                self.end_on_behalf(&id, Event::Failed(failure), "timeout");
            } else if running.cancel_sent.is_some_and(|t| now >= t + grace) {
                let reason = match self.ctx.lifecycle.find(&id).await {
                    Ok(Some((job, _))) => job.cancel_reason,
                    _ => "cancelled".into(),
                };
                self.end_on_behalf(&id, Event::Cancelled(JobCancelled { reason }), "cancel grace expired");
            }
        }
    }

    /// Ends a job without waiting for its worker (timeout, unresponsive to cancel): the
    /// end is written, and once it is, the worker is told to stop (see [`Self::release`]).
    fn end_on_behalf(&mut self, id: &str, event: Event, why: &'static str) {
        let Some(running) = self.running.get_mut(id) else { return };
        running.wait(event);
        running.ended_on_behalf = Some(why);
        self.write(id);
    }

    /// Starts writing a job's pending reports, unless a write of its reports is in flight
    /// (those wait for it: a job's writes land in order).
    fn write(&mut self, id: &str) {
        let Some(running) = self.running.get_mut(id) else { return };
        if running.pending.is_empty() || running.writing.is_some() {
            return;
        }
        running.writing = Some(Backlog { events: running.pending.len(), bytes: running.pending_bytes });
        let (log, events) = (std::mem::take(&mut running.log), coalesce(running.take_waiting()));
        self.writes.start(&self.ctx.lifecycle, id.to_string(), running.fence, log, events);
    }

    /// Starts writing every job's pending reports, one write per job (see
    /// [`Self::write`]): the store commits those that overlap together (one fsync for
    /// the embedded store).
    fn flush_all(&mut self) {
        let ids: Vec<String> = self.running.keys().cloned().collect();
        for id in ids {
            self.write(&id);
        }
    }

    /// Waits for the writes in flight, then writes what is left once: the session is
    /// ending, and its jobs' claims end with it.
    async fn write_last(&mut self) {
        self.settle_in_flight().await;
        self.flush_all();
        self.settle_in_flight().await;
    }

    /// Waits for every write in flight (and any a settled one starts) and settles it.
    async fn settle_in_flight(&mut self) {
        while let Some((id, written)) = self.writes.next().await {
            self.settle(&id, written);
        }
    }

    /// Acts on the outcome of writing a job's reports. A final report that came while
    /// the write was in flight is written at once, the rest at the next tick.
    fn settle(&mut self, id: &str, written: Written) {
        let Written { outcome, unwritten, log } = written;
        if let Some(running) = self.running.get_mut(id) {
            running.log = log;
            running.writing = None;
        }
        match outcome {
            Ok(job) => {
                if job.end_time.is_some() {
                    self.release(id);
                } else if self.running.get(id).is_some_and(|r| r.pending.iter().any(is_final)) {
                    self.write(id);
                }
            }
            Err(rejected @ (Rejected::StaleFence | Rejected::Finished)) => {
                tracing::info!(job = %id, ?rejected, "dropping reports for a job this worker no longer holds");
                self.release(id);
                if matches!(rejected, Rejected::StaleFence) {
                    let cancel = Cancel { job_id: id.to_string(), reason: "the job was reassigned".into() };
                    self.send(connect_response::Message::Cancel(cancel));
                }
            }
            Err(Rejected::Status(status)) if status.code() == Code::NotFound => self.release(id),
            Err(Rejected::TooLarge(status)) => self.fail_too_large(id, &status, &unwritten),
            Err(Rejected::Status(status)) => {
                tracing::warn!(job = %id, error = %status, "could not record reports; retrying");
                if let Some(running) = self.running.get_mut(id) {
                    let newer = running.take_waiting();
                    running.set_waiting(unwritten.into_iter().chain(newer).collect());
                }
            }
        }
    }

    /// The store refused a job's reports for their size, and would at every retry: the
    /// job fails with a small write instead (the reports that did not fit are dropped,
    /// and the worker is told to stop). If even that is refused, the session lets the
    /// job go: its claim ends with the session, or its timeout fails it.
    fn fail_too_large(&mut self, id: &str, status: &Status, unwritten: &[Event]) {
        tracing::error!(job = %id, error = %status, "the job's reports are larger than the job store accepts");
        let Some(running) = self.running.get_mut(id) else { return };
        if unwritten.iter().all(|e| matches!(e, Event::Failed(_))) {
            tracing::error!(job = %id, "not even the job's failure could be written; letting it go");
            self.release(id);
            return;
        }
        let failure = RpcStatus {
            code: Code::ResourceExhausted as i32,
            message: format!("the job's output does not fit the job store ({})", status.message()),
            details: Vec::new(),
        };
        // Reports that came since go after it, and are not written: the failure is final.
        let newer = running.take_waiting();
        running.set_waiting(std::iter::once(Event::Failed(failure)).chain(newer).collect());
        let cancel = Cancel { job_id: id.to_string(), reason: "its output does not fit the job store".into() };
        self.send(connect_response::Message::Cancel(cancel));
    }

    /// The session is done with a job: its slot is free. A job the session ended itself
    /// is stopped on the worker now (its end is written, or the job is no longer this
    /// worker's).
    fn release(&mut self, id: &str) {
        let Some(running) = self.running.remove(id) else { return };
        self.ctx.dispatcher.slot_freed(&self.record.worker_id);
        if let Some(why) = running.ended_on_behalf {
            let cancel = Cancel { job_id: id.to_string(), reason: why.to_string() };
            self.send(connect_response::Message::Cancel(cancel));
        }
    }

    async fn on_job_changed(&mut self, job: &deephardway::v1::Job) {
        let Some(running) = self.running.get_mut(&job.id) else { return };
        if job.cancel_requested && running.cancel_sent.is_none() {
            running.cancel_sent = Some(Instant::now());
            let cancel = Cancel { job_id: job.id.clone(), reason: job.cancel_reason.clone() };
            self.send(connect_response::Message::Cancel(cancel));
        }
    }

    async fn recheck_cancels(&mut self) {
        let ids: Vec<String> = self.running.keys().cloned().collect();
        for id in ids {
            if let Ok(Some((job, _))) = self.ctx.lifecycle.find(&id).await {
                self.on_job_changed(&job).await;
            }
        }
    }
}

/// Time to first output (any kind's first `output` event, a generate job's first token)
/// and, when a generate job ends, its time per output token after the first. Returns
/// whether `event` is the job's first output.
fn observe_latency(metrics: &crate::metrics::Metrics, running: &mut Running, event: &Event) -> bool {
    match event {
        Event::Output(_) if running.first_output.is_none() => {
            running.first_output = Some(Instant::now());
            metrics.first_output(running.kind, &running.model, running.assigned.elapsed().as_secs_f64());
            return true;
        }
        Event::Result(result) => {
            if let (Some(first), Some(job_result::Value::Generate(generated))) = (running.first_output, &result.value) {
                metrics.generated(&running.model, generated.completion_tokens, first.elapsed().as_secs_f64());
            }
        }
        _ => {}
    }
    false
}
