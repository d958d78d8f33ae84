//! The job lifecycle, written once on top of the [`Store`](crate::store::Store) trait.
//!
//! ```text
//!            submit                claim (worker lease)          result / failed / cancelled
//!   ───────▶ QUEUED ─────────────▶ RUNNING ─────────────────────▶ SUCCEEDED | FAILED | CANCELLED
//!              ▲                      │ claim vanished (worker or replica lost)
//!              └──────────────────────┘ attempts < max_attempts, else FAILED
//! ```
//!
//! Every transition is one store transaction that checks the job record's revision,
//! writes the new record, appends the transition's events (so the event log and the
//! record never disagree) and moves the queue entry or claim. Workers' requests carry a
//! *fence*, a random secret of their claim ([`fence`]); a report is applied only while
//! that same claim exists, so a worker presumed dead cannot overwrite a rerun.
//!
//! - this file: the lifecycle's state, report, cancel, reads; [`submit`] and [`claim`]:
//!   the transitions into the line and out of it;
//! - [`fence`]: what proves that a worker holds a job;
//! - [`specs`]: the job's request, written once apart from its often-rewritten record;
//! - [`recovery`]: jobs whose worker was lost; [`retention`]: removing old jobs;
//! - [`served`]: models workers served lately, so their jobs queue while no worker is connected;
//! - [`submitted`]: jobs this replica queued, as written, so that claiming them reads nothing;
//! - [`slots`]: free slots of the workers connected here, where a submit starts its job at once;
//! - [`records`]: the JSON records of workers and claims; request checks are in
//!   [`crate::validate`].

mod claim;
mod fence;
mod records;
mod recovery;
mod retention;
mod served;
mod slots;
mod specs;
mod submit;
mod submitted;

pub use fence::Fence;
use records::ClaimRecord;
pub use records::{ServedModel, WorkerRecord};
pub use served::{RememberedModel, SERVED_MEMORY};
pub use slots::{FreeSlots, HeldSlot};
pub use specs::join as join_spec;

use deephardway::{
    errors::invalid_field,
    is_final,
    v1::{Job, JobCancelled, JobEvent, JobKind, JobState, job_event::Event, job_spec::Input},
};
use prost::Message;
use tonic::Status;

use crate::{
    auth::{Caller, tenant_of},
    config::ServiceConfig,
    keys,
    metrics::Metrics,
    queue_view::QueueView,
    quota::Quotas,
    store::{Compare, KeyValue, Op, SharedStore, StoreError, Txn},
    time::{micros, now},
    validate,
};

/// How many times a transition is retried when another writer got there first.
const MAX_CONFLICT_RETRIES: usize = 64;

/// A new job's id: a UUIDv7 (its first 48 bits the time in milliseconds, 74 random).
pub fn new_job_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// The default model for each kind of job, used when a request names none.
pub fn default_model(kind: JobKind) -> &'static str {
    match kind {
        JobKind::Diagnostic => "diagnostic",
        JobKind::Generate => "smollm2-135m-instruct",
        JobKind::Embed => "all-minilm-l6-v2",
        JobKind::Classify => "catvnoncat",
        JobKind::Train | JobKind::Unspecified => "trainer",
    }
}

/// Checks what can be checked against the model before a job is queued: a generate
/// job's `max_tokens` must fit the model's context (the prompt's length in tokens is only
/// known to the worker, which checks the sum).
fn fits(model: &ServedModel, input: &Input) -> Result<(), Status> {
    if let Input::Generate(g) = input
        && model.context_length > 0
        && g.max_tokens >= model.context_length
    {
        return Err(invalid_field(
            "generate.max_tokens",
            format!("is {}; {} holds {} tokens, prompt included", g.max_tokens, model.name, model.context_length),
        ));
    }
    Ok(())
}

/// The most job records one list call reads.
const MAX_SCANNED: usize = 10_000;

/// A page of [`JobLifecycle::list`].
#[derive(Debug)]
pub struct JobPage {
    /// The jobs, most recent first.
    pub jobs: Vec<Job>,
    /// The id of the last job read, when more may follow: the next page starts after it.
    pub next: Option<String>,
}

/// A job handed to a worker.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub job: Job,
    /// The claim's fence: its secret goes to the worker, which copies it into its reports.
    pub fence: Fence,
    /// The job's record as the claim wrote it, for the first report to update without
    /// reading it again.
    pub record: StoredRecord,
}

/// A job's record as stored (its spec without the input) and the revision it was written
/// at. A writer that keeps it (a worker session) updates the job next by comparing that
/// revision instead of reading the record first; if someone else wrote it meanwhile (a
/// cancel), the compare fails and the update reads it afresh.
#[derive(Debug, Clone)]
pub struct StoredRecord {
    pub job: Job,
    pub revision: i64,
}

/// Why a transition of a job did not happen.
#[derive(Debug)]
pub enum Rejected {
    /// The reporter's claim is gone (it was presumed dead, or the job timed out).
    StaleFence,
    /// The job is already finished.
    Finished,
    /// The store refused the write for its size (etcd's `--max-request-bytes`): the same
    /// write will never go through.
    TooLarge(Status),
    /// Anything else, as the client should see it: the job does not exist, the store
    /// is unavailable, too many concurrent writers.
    Status(Status),
}

impl From<Status> for Rejected {
    fn from(status: Status) -> Self {
        Rejected::Status(status)
    }
}

impl From<StoreError> for Rejected {
    fn from(err: StoreError) -> Self {
        match err {
            err @ StoreError::TooLarge(_) => Rejected::TooLarge(err.into()),
            err => Rejected::Status(err.into()),
        }
    }
}

impl From<Rejected> for Status {
    fn from(rejected: Rejected) -> Self {
        match rejected {
            Rejected::StaleFence => Status::failed_precondition("this assignment is no longer current"),
            Rejected::Finished => Status::failed_precondition("the job is already finished"),
            Rejected::TooLarge(status) | Rejected::Status(status) => status,
        }
    }
}

/// The job state machine. Cheap to clone; every replica has one.
#[derive(Clone)]
pub struct JobLifecycle {
    store: SharedStore,
    config: ServiceConfig,
    quotas: std::sync::Arc<Quotas>,
    metrics: std::sync::Arc<Metrics>,
    /// The connected workers as last read, for submits (see [`JobLifecycle::check_served`]).
    workers_seen: std::sync::Arc<std::sync::Mutex<Option<WorkersSeen>>>,
    /// The replica's view of the queues, for a submit's depth check and place in line
    /// without reading the queues (see [`JobLifecycle::place_in_line`]).
    queues: Option<QueueView>,
    /// The revision of this replica's latest write to a job (submit, claim, report,
    /// cancel): the view must have it before it answers a submit's place in line.
    written: std::sync::Arc<std::sync::atomic::AtomicI64>,
    /// Jobs this replica queued and has not claimed, as written (see [`submitted`]).
    submitted: std::sync::Arc<submitted::Submitted>,
    /// The free slots of the workers connected here, for jobs that can start at once.
    free_slots: Option<std::sync::Arc<dyn FreeSlots>>,
}

/// A worker list and when it was read.
type WorkersSeen = (std::time::Instant, std::sync::Arc<Vec<WorkerRecord>>);

/// How long a submit may trust the worker list another submit read: a model found there
/// is accepted without reading it again; one not found is always read afresh.
const WORKERS_SEEN_FOR: std::time::Duration = std::time::Duration::from_millis(500);

/// How long a submit waits for the queue view to catch up before reading the store.
const VIEW_WAIT: std::time::Duration = std::time::Duration::from_millis(200);

/// What a transition writes besides the job record and its events.
#[derive(Default)]
struct Change {
    events: Vec<Event>,
    compares: Vec<Compare>,
    ops: Vec<Op>,
}

fn decode_job(kv: &KeyValue) -> Result<Job, Status> {
    Job::decode(kv.value.as_slice()).map_err(|e| Status::internal(format!("corrupt job record {}: {e}", kv.key)))
}

fn queue_key(job: &Job) -> String {
    let served = deephardway::served_model(job.kind(), &job.model);
    keys::queue_entry(served, job.priority(), micros(&job.create_time), &job.id)
}

/// The name a model trained on a worker's folder gets when the request gives none: the
/// folder's name, with anything a name may not hold replaced.
fn folder_model_name(dataset_path: &str) -> String {
    let folder = std::path::Path::new(dataset_path).file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    let name: String =
        folder.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '-' }).collect();
    match name.trim_start_matches('.') {
        "" => "local-dataset".into(),
        name => name.into(),
    }
}

fn finish(job: &mut Job, state: JobState, change: &mut Change) {
    let finished = now();
    job.state = state as i32;
    change.ops.push(Op::delete(keys::claim(&job.id)));
    change.ops.push(Op::delete(keys::running(&job.id)));
    if !job.key.is_empty() {
        change.ops.push(Op::delete(keys::active(tenant_of(&job.tenant), &job.key, &job.id)));
        change.ops.push(Op::delete(keys::running_of(tenant_of(&job.tenant), &job.key, &job.id)));
    }
    change.ops.push(Op::put(keys::done(micros(&Some(finished)), &job.id), job.id.clone()));
    job.end_time = Some(finished);
}

trait JobExt {
    fn priority(&self) -> i32;
}

impl JobExt for Job {
    fn priority(&self) -> i32 {
        self.spec.as_ref().map_or(0, |s| s.priority)
    }
}

impl JobLifecycle {
    pub fn new(store: SharedStore, config: ServiceConfig) -> Self {
        Self {
            store,
            config,
            quotas: Default::default(),
            metrics: Default::default(),
            workers_seen: Default::default(),
            queues: None,
            written: Default::default(),
            submitted: Default::default(),
            free_slots: None,
        }
    }

    /// Starts a submitted job at once on a free slot from `slots` (the replica's
    /// dispatcher) where the jobs in its line leave one free (see [`slots`]).
    pub fn with_free_slots(self, slots: std::sync::Arc<dyn FreeSlots>) -> Self {
        Self { free_slots: Some(slots), ..self }
    }

    /// Answers submits' queue questions from `queues` (the hub's view) instead of the store.
    pub fn with_queues(self, queues: QueueView) -> Self {
        Self { queues: Some(queues), ..self }
    }

    /// Records into `metrics` (the server's registry) instead of a private one.
    pub fn with_metrics(self, metrics: std::sync::Arc<Metrics>) -> Self {
        Self { metrics, ..self }
    }

    pub fn metrics(&self) -> &std::sync::Arc<Metrics> {
        &self.metrics
    }

    pub fn store(&self) -> &SharedStore {
        &self.store
    }

    pub fn config(&self) -> &ServiceConfig {
        &self.config
    }

    /// The connected workers.
    pub async fn workers(&self) -> Result<Vec<WorkerRecord>, Status> {
        let range = self.store.range(keys::WORKERS, 0).await?;
        Ok(range.kvs.iter().filter_map(|kv| serde_json::from_slice(&kv.value).ok()).collect())
    }

    /// Notes a revision this replica wrote a job at.
    fn wrote(&self, revision: i64) {
        self.written.fetch_max(revision, std::sync::atomic::Ordering::Relaxed);
    }

    /// How many jobs wait in all queues, and how many would be ahead of `entry` in its
    /// line. From the replica's queue view once it has this replica's own latest write
    /// (so a client's previous submit here is counted; one through another replica a
    /// moment ago may not be): a rank in memory rather than two reads of whole queues per
    /// submit. Not the store's current revision: other writers of a shared etcd move it,
    /// and the view would never see their keys. From the store where there is no view,
    /// or it lags (its watch restarting).
    pub(super) async fn place_in_line(&self, model: &str, entry: &str) -> Result<(usize, u32), Status> {
        if let Some(queues) = &self.queues {
            let revision = self.written.load(std::sync::atomic::Ordering::Relaxed);
            if queues.caught_up(revision, VIEW_WAIT).await
                && let Some(position) = queues.place(entry)
            {
                return Ok((queues.total(), position));
            }
        }
        let depth = self.store.count(keys::QUEUE).await?;
        let range = self.store.range(&keys::queue(model), 0).await?;
        let ahead = range.kvs.iter().filter(|kv| kv.key.as_str() < entry).count();
        Ok((depth, u32::try_from(ahead).unwrap_or(u32::MAX)))
    }

    fn event(&self, job_id: &str, seq: u64, event: Event) -> JobEvent {
        JobEvent { job_id: job_id.to_string(), seq, time: Some(now()), event: Some(event) }
    }

    /// A job as its record holds it (see [`specs`]: for jobs submitted since the split,
    /// without its input) and the record's key-value, or `None`.
    pub async fn find(&self, id: &str) -> Result<Option<(Job, KeyValue)>, Status> {
        let Some(kv) = self.store.get(&keys::job(id)).await? else {
            return Ok(None);
        };
        Ok(Some((decode_job(&kv)?, kv)))
    }

    /// A job with its whole request, or NOT_FOUND.
    pub async fn get(&self, id: &str) -> Result<Job, Status> {
        validate::job_id(id)?;
        match self.find(id).await? {
            Some((job, _)) => self.with_spec(job).await,
            None => Err(Status::not_found(format!("job {id} not found"))),
        }
    }

    /// `job`, a record as stored, with its whole request (see [`specs`]).
    pub async fn with_spec(&self, mut job: Job) -> Result<Job, Status> {
        specs::join(self.store.as_ref(), &mut job).await?;
        Ok(job)
    }

    /// The record of a job that `caller` may see (without its input: see
    /// [`JobLifecycle::with_spec`]), or NOT_FOUND: another tenant's job is answered
    /// exactly like a missing one, so that its existence is not revealed.
    pub async fn get_for(&self, caller: &Caller, id: &str) -> Result<Job, Status> {
        validate::job_id(id)?;
        let Some((job, _)) = self.find(id).await? else {
            return Err(Status::not_found(format!("job {id} not found")));
        };
        if !caller.sees(tenant_of(&job.tenant)) {
            return Err(Status::not_found(format!("job {id} not found")));
        }
        Ok(job)
    }

    /// Records of jobs (without their input: see [`JobLifecycle::with_spec`]) matching
    /// the filters, most recent first, older than the job `after` (the
    /// last of the previous page) when given. Reads backwards a batch at a time (ids are
    /// UUIDv7, so key order is creation order) and stops at `limit` matches, or after
    /// reading [`MAX_SCANNED`] records, so that one call's work is bounded however
    /// rare the matches are. `next` says where the following page starts.
    pub async fn list(
        &self,
        tenant: Option<&str>,
        state: JobState,
        model: &str,
        limit: usize,
        after: Option<&str>,
    ) -> Result<JobPage, Status> {
        const BATCH: usize = 256;
        let mut jobs = Vec::new();
        let mut before = after.map(keys::job);
        let mut scanned = 0;
        loop {
            let batch = self.store.range_rev(keys::JOBS, before.as_deref(), BATCH).await?;
            for kv in &batch.kvs {
                scanned += 1;
                let job = decode_job(kv)?;
                let matches = (state == JobState::Unspecified || job.state == state as i32)
                    && (model.is_empty() || job.model == model)
                    && tenant.is_none_or(|t| tenant_of(&job.tenant) == t);
                if matches {
                    jobs.push(job);
                }
                if jobs.len() == limit || scanned == MAX_SCANNED {
                    let next = Some(keys::last_segment(&kv.key).to_string());
                    return Ok(JobPage { jobs, next });
                }
            }
            match batch.kvs.last() {
                Some(last) if batch.kvs.len() == BATCH => before = Some(last.key.clone()),
                _ => return Ok(JobPage { jobs, next: None }),
            }
        }
    }

    /// A job's events, in order, and the revision they were read at.
    pub async fn events(&self, id: &str) -> Result<(Vec<JobEvent>, i64), Status> {
        let range = self.store.range(&keys::events(id), 0).await?;
        let events = range
            .kvs
            .iter()
            .map(|kv| {
                JobEvent::decode(kv.value.as_slice())
                    .map_err(|e| Status::internal(format!("corrupt event {}: {e}", kv.key)))
            })
            .collect::<Result<_, _>>()?;
        Ok((events, range.revision))
    }

    /// Applies `transition` to the job's record with optimistic concurrency: read, change,
    /// write if nobody else wrote in between, else retry. `transition` returns `None` to
    /// change nothing. Extra compares that fail (a fence) end it with `StaleFence`.
    async fn update<F>(&self, id: &str, transition: F) -> Result<Job, Rejected>
    where
        F: FnMut(&mut Job) -> Result<Option<Change>, Rejected>,
    {
        self.update_from(id, None, transition).await.map(|record| record.job)
    }

    /// [`JobLifecycle::update`], starting from `known` (the record as the caller last
    /// wrote or read it) instead of a read, and returning the record as written.
    async fn update_from<F>(
        &self,
        id: &str,
        mut known: Option<StoredRecord>,
        mut transition: F,
    ) -> Result<StoredRecord, Rejected>
    where
        F: FnMut(&mut Job) -> Result<Option<Change>, Rejected>,
    {
        let key = keys::job(id);
        for _ in 0..MAX_CONFLICT_RETRIES {
            let (current, revision) = match known.take() {
                Some(record) => (record.job, record.revision),
                None => match self.find(id).await? {
                    Some((job, kv)) => (job, kv.mod_revision),
                    None => return Err(Status::not_found(format!("job {id} not found")).into()),
                },
            };
            let mut job = current.clone();
            let Some(change) = transition(&mut job)? else { return Ok(StoredRecord { job: current, revision }) };
            let has_extra_compares = !change.compares.is_empty();
            let mut txn = Txn::new().when(Compare::ModRevision(key.clone(), revision));
            txn.compares.extend(change.compares);
            for event in change.events {
                job.last_seq += 1;
                let event = self.event(id, job.last_seq, event);
                txn.ops.push(Op::put(keys::event(id, job.last_seq), event.encode_to_vec()));
            }
            // A record from before the split moves its input out now (see `specs`).
            txn.ops.extend(specs::split(&mut job));
            txn.ops.push(Op::put(key.clone(), job.encode_to_vec()));
            txn.ops.extend(change.ops);
            let outcome = self.store.txn(txn).await?;
            if outcome.succeeded {
                self.wrote(outcome.revision);
                if deephardway::is_finished(job.state) && !deephardway::is_finished(current.state) {
                    self.metrics.finished(&job);
                }
                return Ok(StoredRecord { job, revision: outcome.revision });
            }
            if has_extra_compares {
                // Was it the record (retry) or the fence (reject)?
                let still = self.store.get(&key).await?;
                if still.is_some_and(|s| s.mod_revision == revision) {
                    return Err(Rejected::StaleFence);
                }
            }
        }
        Err(Status::aborted(format!("job {id}: too many concurrent updates; retry")).into())
    }

    /// Applies a worker's events (in order, as one write) if its claim is still current:
    /// the one created at `fence.revision` (the caller, the session holding the claim,
    /// has checked the worker's secret against `fence.secret`). A final event ends the
    /// job and releases the claim.
    pub async fn report(&self, id: &str, fence: &Fence, events: Vec<Event>) -> Result<Job, Rejected> {
        self.report_after(id, fence, None, events).await
    }

    /// [`JobLifecycle::report`], retrying a write whose outcome is unknown (the store
    /// lost its answer): `after_seq` is the job's last event before `events` as the
    /// writer last saw it. Only the claim's holder adds events to a running job, so if
    /// the job is now exactly `events` further on, that write landed, and these are not
    /// appended a second time (a streamed text would repeat a chunk).
    pub async fn report_after(
        &self,
        id: &str,
        fence: &Fence,
        after_seq: Option<u64>,
        events: Vec<Event>,
    ) -> Result<Job, Rejected> {
        self.report_from(id, fence, after_seq, &events, None).await.map(|record| record.job)
    }

    /// [`JobLifecycle::report_after`] from the record as the caller last wrote it (see
    /// [`StoredRecord`]): no read of the record unless someone else wrote it since.
    pub async fn report_from(
        &self,
        id: &str,
        fence: &Fence,
        after_seq: Option<u64>,
        events: &[Event],
        known: Option<StoredRecord>,
    ) -> Result<StoredRecord, Rejected> {
        let fence_holds = Compare::CreateRevision(keys::claim(id), fence.revision);
        // What applying `events` adds: up to and with the first final one.
        let adds = events.iter().position(is_final).map_or(events.len(), |i| i + 1) as u64;
        self.update_from(id, known, |job| {
            // (An earlier try that landed with a final event finished the job: Finished.)
            if job.state != JobState::Running as i32 {
                return Err(if job.state == JobState::Queued as i32 {
                    Rejected::StaleFence
                } else {
                    Rejected::Finished
                });
            }
            if let Some(after) = after_seq
                && job.last_seq != after
            {
                if job.last_seq == after + adds {
                    return Ok(None); // the earlier try landed
                }
                tracing::warn!(job = %id, after, last_seq = job.last_seq, "a running job's events moved under its holder");
            }
            let mut change = Change { compares: vec![fence_holds.clone()], ..Default::default() };
            for event in events {
                match event {
                    Event::Progress(p) => job.progress = p.fraction.clamp(0.0, 1.0),
                    Event::Result(r) => {
                        job.result = Some(r.clone());
                        job.progress = 1.0;
                        finish(job, JobState::Succeeded, &mut change);
                    }
                    Event::Failed(f) => {
                        job.error = Some(f.clone());
                        finish(job, JobState::Failed, &mut change);
                    }
                    Event::Cancelled(_) => finish(job, JobState::Cancelled, &mut change),
                    _ => {}
                }
                match event {
                    // The worker knows it was cancelled, not why; the record does.
                    Event::Cancelled(c) if c.reason.is_empty() => {
                        change.events.push(Event::Cancelled(JobCancelled { reason: job.cancel_reason.clone() }))
                    }
                    event => change.events.push(event.clone()),
                }
                if is_final(event) {
                    break;
                }
            }
            Ok(Some(change))
        })
        .await
    }

    /// Cancels a job: a queued one at once; a running one is marked, and the replica
    /// holding its worker tells the worker to stop.
    pub async fn cancel(&self, id: &str, reason: &str) -> Result<Job, Status> {
        validate::job_id(id)?;
        validate::reason(reason)?;
        let reason = if reason.is_empty() { "cancelled by request" } else { reason };
        let job = self
            .update(id, |job| match JobState::try_from(job.state) {
                Ok(JobState::Queued) => {
                    let mut change = Change::default();
                    change.ops.push(Op::delete(queue_key(job)));
                    job.cancel_reason = reason.to_string();
                    finish(job, JobState::Cancelled, &mut change);
                    change.events.push(Event::Cancelled(JobCancelled { reason: reason.to_string() }));
                    Ok(Some(change))
                }
                Ok(JobState::Running) if !job.cancel_requested => {
                    job.cancel_requested = true;
                    job.cancel_reason = reason.to_string();
                    Ok(Some(Change::default()))
                }
                _ => Ok(None),
            })
            .await?;
        Ok(job)
    }
}
