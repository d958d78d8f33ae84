//! Submitting a job: validate, resolve what it names, check that a worker serves it, and
//! write it queued, or started at once where a connected worker has a free slot for it
//! (see [`super::slots`]); a repeated request id returns the earlier job.

use deephardway::{
    errors::invalid_field,
    kind_of,
    v1::{Job, JobEvent, JobQueued, JobSpec, JobState, job_event::Event, job_spec::Input},
};
use prost::Message;
use tonic::Status;

use super::*;
use crate::{
    auth::Caller,
    keys,
    store::{Compare, Op, StoreError, Txn},
    time::now,
    validate,
};

impl JobLifecycle {
    /// Validates and queues a job for `owner` (the job belongs to its tenant). Returns
    /// the job and whether `request_id` matched an earlier one of the tenant (which is
    /// returned instead). Nothing is written unless it succeeds.
    ///
    /// Its span (a child of the client's trace, see [`crate::traces`]) is the root of the
    /// job's spans: its context is stored with the job for the worker's run to continue.
    pub async fn submit(&self, spec: JobSpec, request_id: &str, owner: &Caller) -> Result<(Job, bool), Status> {
        let (job, queued) = self.submit_as(spec, request_id, owner, new_job_id()).await?;
        Ok((job, queued.is_none()))
    }

    /// [`JobLifecycle::submit`] under `id` (from [`new_job_id`]), for a caller that
    /// subscribed to the job's events before it existed. Returns the job, and the event
    /// that queued it if this call made it (`None` when `request_id` matched an earlier
    /// job, which is returned instead, under its own id).
    #[tracing::instrument(name = "submit", skip_all, fields(deephardway.job.id = tracing::field::Empty))]
    pub async fn submit_as(
        &self,
        mut spec: JobSpec,
        request_id: &str,
        owner: &Caller,
        id: String,
    ) -> Result<(Job, Option<JobEvent>), Status> {
        validate::spec(&spec)?;
        validate::request_id(request_id)?;
        let tenant = owner.tenant();
        let input = spec.input.as_ref().expect("validated");
        let kind = kind_of(input);
        if spec.model.is_empty() {
            spec.model = default_model(kind).to_string();
        }
        if !request_id.is_empty()
            && let Some(job) = self.by_request_id(tenant, request_id).await?
        {
            return Ok((job, None));
        }
        self.quotas.check_rate(owner)?;
        // Names of stored things are resolved now, so that the job records what it uses.
        match spec.input.as_mut() {
            Some(Input::Train(train)) if train.dataset_path.is_empty() => {
                crate::datasets::find(&self.store, tenant, &train.dataset)
                    .await
                    .map_err(|s| Status::new(s.code(), format!("train.dataset: {}", s.message())))?;
                if train.output_model.is_empty() {
                    train.output_model = train.dataset.clone();
                }
            }
            Some(Input::Train(train)) => {
                // A worker's local folder: only the worker can check it.
                if train.output_model.is_empty() {
                    train.output_model = folder_model_name(&train.dataset_path);
                }
                validate::artifact_name("train.output_model", &train.output_model)?;
            }
            Some(Input::Classify(_)) => {
                let trained = crate::trained_models::resolve(&self.store, tenant, &spec.model).await?;
                spec.model = format!("{}@{}", trained.name, trained.version);
            }
            _ => {}
        }
        let input = spec.input.as_ref().expect("validated");
        self.check_served(deephardway::served_model(kind, &spec.model), input).await?;
        self.quotas.check_active(&self.store, owner).await?;

        let created = now();
        let span = tracing::Span::current();
        span.record("deephardway.job.id", id.as_str());
        let job = Job {
            id: id.clone(),
            state: JobState::Queued as i32,
            kind: kind as i32,
            model: spec.model.clone(),
            attempts: 0,
            max_attempts: if spec.max_attempts == 0 { self.config.default_max_attempts } else { spec.max_attempts },
            timeout: Some(match spec.timeout {
                Some(timeout) => timeout,
                None => self.config.default_timeout.try_into().expect("the default timeout fits a Duration"),
            }),
            create_time: Some(created),
            last_seq: 1,
            spec: Some(spec),
            request_id: request_id.to_string(),
            tenant: tenant.to_string(),
            key: owner.key().to_string(),
            ..Default::default()
        };
        let entry = queue_key(&job);
        let served_model = deephardway::served_model(kind, &job.model);
        let (depth, position) = self.place_in_line(served_model, &entry).await?;
        if depth >= self.config.max_queue_depth {
            return Err(Status::resource_exhausted(format!(
                "the queue is full ({depth} jobs waiting, limit {}); retry later",
                self.config.max_queue_depth
            )));
        }
        let queued = self.event(&id, 1, Event::Queued(JobQueued { position, attempt: 1, reason: "submitted".into() }));

        // The request is written once, under its own key; the record holds the rest.
        let mut record = job.clone();
        let spec_op = specs::split(&mut record).expect("a validated spec has an input");
        let traceparent = deephardway::traces::traceparent_of(&span);
        let mut slot = self.free_slot(served_model, &job).await?;
        let (written, started, outcome) = loop {
            let mut written = record.clone();
            let mut txn = Txn::new().when(Compare::absent(keys::job(&id)));
            let started = match &slot {
                // The queue entry first: stores report a transaction's changes in the
                // order of its operations, so once the queue view has seen any of them it
                // has the entry (see `place_in_line`, which waits for the view to reach
                // this revision).
                None => {
                    txn = txn.then(Op::put(entry.clone(), id.clone()));
                    None
                }
                Some(slot) => Some(self.start(&mut written, slot.worker(), slot.lease())),
            };
            txn = txn
                .then(spec_op.clone())
                .then(Op::put(keys::job(&id), written.encode_to_vec()))
                .then(Op::put(keys::event(&id, 1), queued.encode_to_vec()));
            if let Some(started) = &started {
                txn = txn.then(Op::put(keys::event(&id, 2), started.event.encode_to_vec()));
                txn.ops.extend(started.ops.iter().cloned());
            }
            if !request_id.is_empty() {
                txn = txn
                    .when(Compare::absent(keys::request(tenant, request_id)))
                    .then(Op::put(keys::request(tenant, request_id), id.clone()));
            }
            if !job.key.is_empty() {
                txn = txn.then(Op::put(keys::active(tenant, &job.key, &id), Vec::new()));
            }
            if let Some(traceparent) = &traceparent {
                txn = txn.then(Op::put(keys::trace(&id), traceparent.clone()));
            }
            match (self.store.txn(txn).await, slot.take()) {
                // The worker's session ended meanwhile: the job waits in line instead.
                (Err(StoreError::LeaseNotFound(_)), Some(_)) => {}
                (Err(e), Some(slot)) => return self.resolve_started(&id, e.into(), slot, queued).await,
                (outcome, held) => {
                    slot = held;
                    break (written, started, outcome?);
                }
            }
        };
        self.wrote(outcome.revision);
        if !outcome.succeeded {
            // Another submit with the same request_id won the race: return its job.
            return match self.by_request_id(tenant, request_id).await? {
                Some(job) => Ok((job, None)),
                None => Err(Status::aborted("concurrent submit conflict; retry")),
            };
        }
        self.metrics.submitted(&job);
        let spec = job.spec.clone().expect("validated");
        let (Some(slot), Some(started)) = (slot, started) else {
            tracing::info!(job = %id, model = %job.model, position, "job queued");
            self.submitted.insert(submitted::Written { record: written, revision: outcome.revision, spec });
            return Ok((job, Some(queued)));
        };
        tracing::info!(job = %id, model = %job.model, worker = %slot.worker().worker_id, "job started on submit");
        self.metrics.started(&written);
        let job = Job { spec: Some(spec), ..written.clone() };
        let fence = Fence { secret: started.secret, revision: outcome.revision };
        let record = StoredRecord { job: written, revision: outcome.revision };
        slot.hand_over(Claimed { job: job.clone(), fence, record });
        Ok((job, Some(queued)))
    }

    /// `job`'s record as just written. Once it no longer waits in line (claimed, here or by
    /// another replica, or cancelled), the copy its submit kept here for the claim (see
    /// [`submitted`]) is dropped, rather than kept until newer jobs push it out.
    pub fn left_the_line(&self, job: &Job) {
        if job.state != JobState::Queued as i32 {
            self.submitted.take(&job.id);
        }
    }

    /// How many queued jobs' copies this replica keeps for their claims (see [`submitted`]).
    pub fn submitted_copies(&self) -> usize {
        self.submitted.count()
    }

    /// A submit that would have started its job and whose transaction failed without a
    /// clear answer: the job may be running on the slot's worker, which has not been told.
    /// Read back, as a claim is ([`JobLifecycle::resolve_claim`]), never dropped: the job
    /// is handed over if it started; if it cannot be told, the worker's session is ended,
    /// and with its lease any claim that did commit (the job then goes back in line).
    async fn resolve_started(
        &self,
        id: &str,
        error: Status,
        slot: Box<dyn HeldSlot>,
        queued: JobEvent,
    ) -> Result<(Job, Option<JobEvent>), Status> {
        match self.resolve_claim_of(id, slot.worker()).await {
            Ok(Some(claimed)) => {
                self.metrics.submitted(&claimed.job);
                self.metrics.started(&claimed.job);
                let job = claimed.job.clone();
                slot.hand_over(claimed);
                Ok((job, Some(queued)))
            }
            // Not started: not written, or written and its claim already gone with the
            // session (the reaper puts it in line; a retry with the request id finds it).
            Ok(None) => Err(error),
            Err(e) => {
                tracing::warn!(job = %id, error = %e, "a started submit's outcome could not be read back");
                slot.drop_worker("a job started on submit could not be read back");
                Err(error)
            }
        }
    }

    /// A free slot of a connected worker for `job`, held, where the job can start at once:
    /// the jobs in its line, as this replica sees it, leave a free slot (see [`slots`]),
    /// and its key has no running limit (counted under the claim's lock, see `claim_from`).
    async fn free_slot(&self, served_model: &str, job: &Job) -> Result<Option<Box<dyn HeldSlot>>, Status> {
        let (Some(slots), Some(queues)) = (&self.free_slots, &self.queues) else { return Ok(None) };
        // The slot first: the key's limit is read only where the job could start (a held
        // slot dropped here is free again).
        let Some(slot) = slots.hold(served_model, queues.len(served_model)) else { return Ok(None) };
        if !job.key.is_empty() && crate::auth::api_keys::max_running_jobs(&self.store, &job.key).await? > 0 {
            return Ok(None);
        }
        Ok(Some(slot))
    }

    async fn by_request_id(&self, tenant: &str, request_id: &str) -> Result<Option<Job>, Status> {
        let Some(kv) = self.store.get(&keys::request(tenant, request_id)).await? else {
            return Ok(None);
        };
        let id = String::from_utf8_lossy(&kv.value).to_string();
        match self.find(&id).await? {
            Some((job, _)) => Ok(Some(self.with_spec(job).await?)),
            None => Ok(None),
        }
    }

    /// FAILED_PRECONDITION unless a connected worker serves `model` for this kind of job,
    /// or one served it within [`SERVED_MEMORY`] (the job then waits in line for the next
    /// worker that does; see [`served`]); INVALID_ARGUMENT if the request does not fit the
    /// model (see [`fits`]), as the worker last described it.
    async fn check_served(&self, model: &str, input: &Input) -> Result<(), Status> {
        let kind = kind_of(input);
        // A worker list read within the last moment serves every submit that finds its
        // model there: a read of every worker record per submit was a good part of a
        // job's store time. A worker that left since is no harm (the job waits, as for a
        // model served lately); a model not found is checked against a fresh read.
        let seen = self.workers_seen.lock().expect("workers lock").clone();
        if let Some((at, workers)) = seen
            && at.elapsed() < WORKERS_SEEN_FOR
            && let Some(m) = workers.iter().flat_map(|w| &w.models).find(|m| m.name == model && m.kind == kind as i32)
        {
            return fits(m, input);
        }
        let workers = self.workers().await?;
        *self.workers_seen.lock().expect("workers lock") =
            Some((std::time::Instant::now(), std::sync::Arc::new(workers.clone())));
        let mut other_kind = None;
        for w in &workers {
            for m in w.models.iter().filter(|m| m.name == model) {
                if m.kind == kind as i32 {
                    return fits(m, input);
                }
                other_kind = Some(m.kind);
            }
        }
        if let Some(remembered) = self.recently_served(kind as i32, model).await? {
            return fits(&remembered, input);
        }
        use deephardway::kind_name;
        Err(match other_kind {
            Some(k) => {
                invalid_field("model", format!("{model:?} runs {} jobs, not {}", kind_name(k), kind_name(kind as i32)))
            }
            None => Status::failed_precondition(format!(
                "no connected worker serves model {model:?} for {} jobs (connected workers: {}); \
                 ModelService.ListModels shows what is served",
                kind_name(kind as i32),
                workers.len()
            )),
        })
    }
}
