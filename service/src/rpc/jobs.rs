//! `deephardway.v1.JobService`: create, run, watch, get, list, cancel, and the live job
//! list.
//!
//! Watch is list-then-watch: subscribe to the hub, list the job's stored events, send
//! those after `after_seq`, then forward live ones. Sequence numbers make it exact:
//! anything at or below the last sent is a duplicate and dropped; a jump means the
//! subscription lost something, so it lists again.
//!
//! While the job is queued, the stream also carries its place in line (`queue_status`),
//! from the replica's [`QueueView`](crate::queue_view::QueueView): not events, so no
//! seq and no replay; sent after the stored events, then when it changes, coalesced.

use std::{pin::Pin, sync::Arc, time::Duration};

use deephardway::{
    is_final,
    v1::{
        CancelJobRequest, CancelJobResponse, CreateJobRequest, CreateJobResponse, GetJobRequest, GetJobResponse, Job,
        JobEvent, JobState, JobView, ListJobsRequest, ListJobsResponse, QueueStatus, RunJobRequest, RunJobResponse,
        WatchJobRequest, WatchJobResponse, WatchJobsRequest, WatchJobsResponse, job_event::Event,
        job_service_server::JobService,
    },
};
use futures::{Stream, StreamExt};
use tokio::{
    sync::{mpsc, watch},
    time::Instant,
};
use tonic::{Request, Response, Status};

use super::SharedContext;
use super::{inline_stream, page_token};
use crate::{
    auth::{self, Caller},
    validate,
};

/// The tenant whose jobs a caller lists: its own, or every tenant's for an admin.
fn tenant_filter(caller: &Caller) -> Option<&str> {
    if caller.is_admin() { None } else { Some(caller.tenant()) }
}

/// What a job's stream carries: its events, and, while it is queued, its place in line.
/// The event is boxed: each stream's channel holds 32 slots from the start, and at 144
/// bytes an event those were most of an idle watcher's memory.
pub(crate) enum Update {
    Event(Box<JobEvent>),
    Queue(QueueStatus),
}

impl From<Update> for RunJobResponse {
    fn from(update: Update) -> Self {
        match update {
            Update::Event(event) => RunJobResponse { event: Some(*event), queue_status: None },
            Update::Queue(status) => RunJobResponse { event: None, queue_status: Some(status) },
        }
    }
}

impl From<Update> for WatchJobResponse {
    fn from(update: Update) -> Self {
        match update {
            Update::Event(event) => WatchJobResponse { event: Some(*event), queue_status: None },
            Update::Queue(status) => WatchJobResponse { event: None, queue_status: Some(status) },
        }
    }
}

pub(crate) type EventStream = Pin<Box<dyn Stream<Item = Result<Update, Status>> + Send>>;
pub type RunJobStream = Pin<Box<dyn Stream<Item = Result<RunJobResponse, Status>> + Send>>;
pub type WatchJobStream = Pin<Box<dyn Stream<Item = Result<WatchJobResponse, Status>> + Send>>;

pub struct JobsRpc {
    ctx: SharedContext,
}

impl JobsRpc {
    pub fn new(ctx: SharedContext) -> Self {
        Self { ctx }
    }
}

/// A job as `view` asks: BASIC leaves out the input and the result, which can be large.
/// FULL needs the whole request: records are stored without their input, which is
/// joined here (one read of `/dhw/specs/<id>`; see `jobs::specs`).
async fn viewed(ctx: &SharedContext, job: Job, view: JobView) -> Result<Job, Status> {
    match view {
        JobView::Full => ctx.lifecycle.with_spec(job).await,
        _ => Ok(in_view(job, view)),
    }
}

/// `job` with its live place in line, if it is queued (see [`QueueStatus`]).
fn with_queue_status(ctx: &SharedContext, mut job: Job) -> Job {
    if job.state == JobState::Queued as i32 {
        job.queue_status = ctx.hub.queues().status(&job.id);
    }
    job
}

fn in_view(mut job: Job, view: JobView) -> Job {
    if view == JobView::Basic {
        if let Some(spec) = job.spec.as_mut() {
            spec.input = None;
        }
        job.result = None;
    }
    job
}

/// The view a request asks for, `default` when it leaves it unset.
fn view(value: i32, default: JobView) -> Result<JobView, Status> {
    Ok(match validate::known_enum::<JobView>("view", value)? {
        JobView::Unspecified => default,
        view => view,
    })
}

#[tonic::async_trait]
impl JobService for JobsRpc {
    async fn create_job(&self, request: Request<CreateJobRequest>) -> Result<Response<CreateJobResponse>, Status> {
        let caller = Caller::of(&request)?;
        let CreateJobRequest { spec, request_id } = request.into_inner();
        let spec = spec.ok_or_else(|| deephardway::errors::invalid_field("spec", "is required"))?;
        let (job, deduplicated) = self.ctx.lifecycle.submit(spec, &request_id, &caller).await?;
        Ok(Response::new(CreateJobResponse { job: Some(job), deduplicated }))
    }

    type RunJobStream = RunJobStream;

    async fn run_job(&self, request: Request<RunJobRequest>) -> Result<Response<RunJobStream>, Status> {
        let caller = Caller::of(&request)?;
        let RunJobRequest { spec, request_id } = request.into_inner();
        let spec = spec.ok_or_else(|| deephardway::errors::invalid_field("spec", "is required"))?;
        // Subscribed before the job exists, the stream misses none of its events and
        // starts from the one that queued it, without reading the job's events back.
        let id = crate::jobs::new_job_id();
        let live = self.ctx.hub.subscribe(&id).await.ok_or_else(|| shutting_down(0))?;
        let (job, queued) = self.ctx.lifecycle.submit_as(spec, &request_id, &caller, id).await?;
        let first = queued.map(|queued| (live, vec![queued]));
        let events = follow_from(self.ctx.clone(), "run_job", caller, job.id, 0, first);
        Ok(Response::new(Box::pin(events.map(|e| e.map(RunJobResponse::from)))))
    }

    type WatchJobStream = WatchJobStream;

    async fn watch_job(&self, request: Request<WatchJobRequest>) -> Result<Response<WatchJobStream>, Status> {
        let caller = Caller::of(&request)?;
        let WatchJobRequest { job_id, after_seq } = request.into_inner();
        // Fail fast on an unknown job, with a status rather than an empty stream.
        let job = self.ctx.lifecycle.get_for(&caller, &job_id).await?;
        if after_seq > job.last_seq && deephardway::is_finished(job.state) {
            return Err(deephardway::errors::invalid_field(
                "after_seq",
                format!("{after_seq} is past the job's last event ({})", job.last_seq),
            ));
        }
        let events = follow(self.ctx.clone(), "watch_job", caller, job_id, after_seq);
        Ok(Response::new(Box::pin(events.map(|e| e.map(WatchJobResponse::from)))))
    }

    async fn get_job(&self, request: Request<GetJobRequest>) -> Result<Response<GetJobResponse>, Status> {
        let caller = Caller::of(&request)?;
        let GetJobRequest { job_id, view: asked } = request.into_inner();
        let view = view(asked, JobView::Full)?;
        let job = self.ctx.lifecycle.get_for(&caller, &job_id).await?;
        let job = with_queue_status(&self.ctx, viewed(&self.ctx, job, view).await?);
        Ok(Response::new(GetJobResponse { job: Some(job) }))
    }

    async fn list_jobs(&self, request: Request<ListJobsRequest>) -> Result<Response<ListJobsResponse>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        let state = validate::known_enum::<JobState>("state", req.state)?;
        if !req.model.is_empty() {
            validate::model_name("model", &req.model)?;
        }
        let page_size = validate::page_size(req.page_size, 100)?;
        let view = view(req.view, JobView::Basic)?;
        let after = page_token::decode(&req.page_token)?;
        let page =
            self.ctx.lifecycle.list(tenant_filter(&caller), state, &req.model, page_size, after.as_deref()).await?;
        let mut jobs = Vec::with_capacity(page.jobs.len());
        for job in page.jobs {
            jobs.push(viewed(&self.ctx, job, view).await?);
        }
        Ok(Response::new(ListJobsResponse {
            jobs,
            next_page_token: page.next.as_deref().map(page_token::encode).unwrap_or_default(),
        }))
    }

    type WatchJobsStream = Pin<Box<dyn Stream<Item = Result<WatchJobsResponse, Status>> + Send>>;

    async fn watch_jobs(&self, request: Request<WatchJobsRequest>) -> Result<Response<Self::WatchJobsStream>, Status> {
        let caller = Caller::of(&request)?;
        let WatchJobsRequest { snapshot_size, view: asked } = request.into_inner();
        if snapshot_size > 1000 {
            return Err(deephardway::errors::invalid_field(
                "snapshot_size",
                format!("is {snapshot_size}; at most 1000"),
            ));
        }
        let snapshot_size = if snapshot_size == 0 { 50 } else { snapshot_size as usize };
        let view = view(asked, JobView::Basic)?;
        let ctx = self.ctx.clone();
        Ok(Response::new(Box::pin(inline_stream::stream(move |tx| async move {
            let _open = ctx.lifecycle.metrics().stream("watch_jobs");
            let updates = forward_job_updates(&ctx, &caller, snapshot_size, view, &tx);
            let ended = tokio::select! {
                ended = updates => ended,
                _ = caller.revoked() => Err(auth::revoked_status()),
            };
            if let Err(status) = ended {
                tx.send(Err(status)).await;
            }
        }))))
    }

    async fn cancel_job(&self, request: Request<CancelJobRequest>) -> Result<Response<CancelJobResponse>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        // The request is checked first; then another tenant's job is NOT_FOUND before
        // anything is changed.
        validate::reason(&req.reason)?;
        self.ctx.lifecycle.get_for(&caller, &req.job_id).await?;
        let job = self.ctx.lifecycle.cancel(&req.job_id, &req.reason).await?;
        Ok(Response::new(CancelJobResponse { job: Some(in_view(job, JobView::Basic)) }))
    }
}

/// Streams a job's events after `after_seq` until its final one, or until the caller's
/// key is revoked.
pub(crate) fn follow(
    ctx: SharedContext,
    rpc: &'static str,
    caller: Caller,
    job_id: String,
    after_seq: u64,
) -> EventStream {
    follow_from(ctx, rpc, caller, job_id, after_seq, None)
}

/// A subscription to a job's events and the events before it (all of them since the
/// job began): where a stream starts instead of subscribing and listing the stored ones.
type Start = (mpsc::Receiver<Arc<JobEvent>>, Vec<JobEvent>);

/// [`follow`], from `first` where the caller has it.
/// The stream is driven by its consumer (see [`inline_stream`]): it ends when the client
/// goes away, wherever it was waiting.
fn follow_from(
    ctx: SharedContext,
    rpc: &'static str,
    caller: Caller,
    job_id: String,
    after_seq: u64,
    first: Option<Start>,
) -> EventStream {
    Box::pin(inline_stream::stream(move |tx| async move {
        let _open = ctx.lifecycle.metrics().stream(rpc);
        let ended = tokio::select! {
            ended = forward(&ctx, &job_id, after_seq, first, &tx) => ended,
            _ = caller.revoked() => Err(auth::revoked_status()),
        };
        if let Err(status) = ended {
            tx.send(Err(status)).await;
        }
    }))
}

type Sink = inline_stream::Sender<Result<Update, Status>>;

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
    tx.send(Ok(Update::Event(Box::new(event)))).await;
    Some(done)
}

/// Queue statuses are sent at most this often per stream.
const QUEUE_STATUS_INTERVAL: Duration = Duration::from_millis(250);
/// ... and no sooner than this after the change they report (see `forward`).
const QUEUE_STATUS_SETTLE: Duration = Duration::from_millis(100);
/// ... and re-checked at least this often, as the estimate moves with the rate even
/// while the line does not.
const QUEUE_STATUS_RECHECK: Duration = Duration::from_secs(1);

/// The last queue status a stream sent, to send only what changed.
#[derive(Default)]
struct QueueStatusSent {
    last: Option<QueueStatus>,
    at: Option<Instant>,
}

impl QueueStatusSent {
    /// Whether `new` is worth sending after what was sent: another position, an estimate
    /// that appeared or went, or one that moved by more than a second and 10% of the wait.
    fn differs(&self, new: &QueueStatus) -> bool {
        let Some(last) = &self.last else { return true };
        if last.position != new.position {
            return true;
        }
        let secs = |t: &prost_types::Timestamp| t.seconds as f64 + f64::from(t.nanos) / 1e9;
        match (&last.estimated_start_time, &new.estimated_start_time) {
            (None, None) => false,
            (Some(a), Some(b)) => {
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                let wait = (secs(b) - now.as_secs_f64()).max(0.0);
                (secs(a) - secs(b)).abs() > 1.0_f64.max(0.1 * wait)
            }
            _ => true,
        }
    }

    /// Whether the job is now first in its line and the last status sent did not say so.
    fn became_next(&self, ctx: &SharedContext, job_id: &str) -> bool {
        self.last.is_some_and(|s| s.position != 0) && ctx.hub.queues().is_next(job_id)
    }

    /// Sends the job's queue status if it is queued, changed, and the last was sent long
    /// enough ago (`force` skips both checks: right after the stored events, and when
    /// the job becomes next). Returns false if the view does not have the job in line.
    async fn send(&mut self, ctx: &SharedContext, job_id: &str, tx: &Sink, force: bool) -> bool {
        if !force && self.at.is_some_and(|at| at.elapsed() < QUEUE_STATUS_INTERVAL) {
            return true;
        }
        let Some(status) = ctx.hub.queues().status(job_id) else { return false };
        if !force && !self.differs(&status) {
            return true;
        }
        self.last = Some(status);
        self.at = Some(Instant::now());
        tx.send(Ok(Update::Queue(status))).await;
        true
    }
}

/// The next change of `signal`, or never if there is none.
async fn wait_for(signal: &mut Option<watch::Receiver<()>>) -> Result<(), watch::error::RecvError> {
    match signal {
        Some(signal) => signal.changed().await,
        None => std::future::pending().await,
    }
}

async fn forward(
    ctx: &SharedContext,
    job_id: &str,
    after_seq: u64,
    mut first: Option<Start>,
    tx: &Sink,
) -> Result<(), Status> {
    let mut last = after_seq;
    let mut queue_changes = ctx.hub.queues().changes();
    let mut sent = QueueStatusSent::default();
    let mut recheck = tokio::time::interval(QUEUE_STATUS_RECHECK);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Subscribed first, then the stored events: nothing falls between the two.
        let (mut live, stored) = match first.take() {
            Some(start) => start,
            None => {
                let Some(live) = ctx.hub.subscribe(job_id).await else {
                    return Err(shutting_down(last));
                };
                (live, ctx.lifecycle.events(job_id).await?.0)
            }
        };
        if stored.is_empty() {
            return Err(Status::not_found(format!("job {job_id} not found")));
        }
        let final_seq = stored.last().filter(|e| e.event.as_ref().is_some_and(is_final)).map(|e| e.seq);
        // Whether the job waits in line, by its latest event: only then do changes to the
        // queues concern this stream, which would otherwise wake at every dispatch anywhere.
        let mut in_line = matches!(stored.last().and_then(|e| e.event.as_ref()), Some(Event::Queued(_)));
        for event in stored {
            match deliver(tx, event, &mut last).await {
                Some(true) => return Ok(()),
                Some(false) => {}
                None => break,
            }
        }
        // The watcher has already seen the final event (it resumed after it): nothing
        // more will come.
        if final_seq.is_some_and(|seq| seq <= last) {
            return Ok(());
        }
        // Where a queued job stands now, whatever was sent before (a resumed watcher
        // gets it again at once).
        sent.send(ctx, job_id, tx, true).await;
        // A status due for the changes since the last one sent: when, if any.
        let mut pending: Option<Instant> = None;
        // While one is due, the stream stops following every change to the lines (each
        // dispatch anywhere moves them: a wake-up per waiting watcher per dispatch) and
        // waits on this instead, which changes only when its job becomes next.
        let mut next_signal: Option<watch::Receiver<()>> = None;
        // A status to send at once that the view could not give yet (see below).
        let mut owed = false;
        loop {
            tokio::select! {
                event = live.recv() => match event {
                    // Already delivered: the hub can route an event after the stored
                    // events that held it were read. Taken for new, a `queued` would
                    // force a second status with the same place right after the first.
                    Some(event) if event.seq <= last => {}
                    Some(event) => {
                        let requeued = matches!(event.event, Some(Event::Queued(_)));
                        if requeued || matches!(event.event, Some(Event::Started(_))) {
                            in_line = requeued;
                        }
                        match deliver(tx, Arc::unwrap_or_clone(event), &mut last).await {
                            Some(true) => return Ok(()),
                            Some(false) => {}
                            None => break, // a gap: list again
                        }
                        // Back in line after a lost worker: its new place, at once. The
                        // requeue's transaction writes the event before the queue entry,
                        // so the view may not have the entry yet: then it is sent at the
                        // view's next change (unforced, a place equal to the last one sent,
                        // 0 before the job started, would never be sent).
                        if requeued {
                            (pending, next_signal) = (None, None);
                            owed = !sent.send(ctx, job_id, tx, true).await;
                        }
                    }
                    None => break, // dropped by the hub: list again
                },
                changed = queue_changes.changed(), if in_line && (pending.is_none() || owed) => {
                    if changed.is_err() {
                        return Err(shutting_down(last));
                    }
                    // Signalled from here on (taken before the look below, so that
                    // becoming next just after it is not missed).
                    if next_signal.as_ref().is_none_or(|signal| signal.has_changed().is_err()) {
                        next_signal = ctx.hub.queues().next_signal(job_id);
                    }
                    // Becoming next is sent at once: with one slot the job may start
                    // before the interval ends, and "next" should not be skipped.
                    if owed || sent.became_next(ctx, job_id) {
                        owed = !sent.send(ctx, job_id, tx, true).await;
                    } else {
                        // Sent once the interval since the last status has passed, and no
                        // sooner than a moment after this change: a dispatcher filling free
                        // slots moves the line many times in a few milliseconds, and a
                        // status sent at the first move would be stale on arrival (or, for
                        // a job started in the same wave, superseded by `started`).
                        let interval_end = sent.at.map_or(Instant::now(), |at| at + QUEUE_STATUS_INTERVAL);
                        pending = Some(interval_end.max(Instant::now() + QUEUE_STATUS_SETTLE));
                    }
                }
                signalled = wait_for(&mut next_signal), if in_line && pending.is_some() => {
                    if signalled.is_err() {
                        // Out of line (it started or was cancelled): its event follows.
                        next_signal = None;
                    } else if sent.became_next(ctx, job_id) {
                        pending = None;
                        owed = !sent.send(ctx, job_id, tx, true).await;
                    }
                }
                _ = tokio::time::sleep_until(pending.unwrap_or_else(Instant::now)), if in_line && pending.is_some() => {
                    pending = None;
                    sent.send(ctx, job_id, tx, false).await;
                }
                // (Not while a status is due: that one goes out with what the check would.)
                _ = recheck.tick(), if in_line && pending.is_none() => {
                    sent.send(ctx, job_id, tx, false).await;
                }
                _ = ctx.shutdown.cancelled() => return Err(shutting_down(last)),
            }
        }
    }
}

/// Sends a snapshot of recent jobs, then every change to a job record. Subscribing before
/// the snapshot means nothing is missed; a subscriber that lags gets a fresh snapshot.
async fn forward_job_updates(
    ctx: &SharedContext,
    caller: &Caller,
    snapshot_size: usize,
    view: JobView,
    tx: &inline_stream::Sender<Result<WatchJobsResponse, Status>>,
) -> Result<(), Status> {
    use tokio::sync::broadcast::error::RecvError;

    use crate::hub::Change;

    let mut changes = ctx.hub.changes();
    let mut send_snapshot = true;
    // The ids this stream has shown, so that a removal is sent only for those: a removed
    // job's record is gone, and with it the tenant it belonged to.
    let mut shown = std::collections::HashSet::new();
    let tenant = tenant_filter(caller);
    loop {
        if std::mem::take(&mut send_snapshot) {
            for job in ctx.lifecycle.list(tenant, JobState::Unspecified, "", snapshot_size, None).await?.jobs {
                shown.insert(job.id.clone());
                let job = with_queue_status(ctx, viewed(ctx, job, view).await?);
                let update = WatchJobsResponse { job: Some(job), removed: false, snapshot: true };
                tx.send(Ok(update)).await;
            }
        }
        let change = tokio::select! {
            change = changes.recv() => change,
            _ = ctx.shutdown.cancelled() => return Err(Status::unavailable("server shutting down")),
        };
        let update = match change {
            Ok(Change::JobUpdated(job)) => {
                if !caller.sees(auth::tenant_of(&job.tenant)) {
                    continue;
                }
                shown.insert(job.id.clone());
                // The change carries the record; FULL joins the request (a job removed
                // meanwhile keeps the record's).
                let job = with_queue_status(ctx, viewed(ctx, Job::clone(&job), view).await?);
                WatchJobsResponse { job: Some(job), removed: false, snapshot: false }
            }
            Ok(Change::JobRemoved { job_id }) if shown.remove(&job_id) => WatchJobsResponse {
                job: Some(Job { id: job_id, ..Default::default() }),
                removed: true,
                snapshot: false,
            },
            Ok(_) => continue,
            Err(RecvError::Lagged(_)) => {
                send_snapshot = true;
                continue;
            }
            Err(RecvError::Closed) => return Err(Status::unavailable("server shutting down")),
        };
        tx.send(Ok(update)).await;
    }
}

fn shutting_down(last: u64) -> Status {
    Status::unavailable(format!("server shutting down; resume with after_seq={last}"))
}
