//! The contract between the worker's connection loop and the code that runs jobs.
//!
//! A runner serves one or more models of one kind. For each assigned job it gets the
//! assignment, a sink for progress and output events, and a cancellation token; it
//! returns the result or the gRPC status the job failed with. Models load once when the
//! runner is built and stay resident; `run` may be called concurrently for up to
//! `slots` jobs.
//!
//! A failure keeps its whole status, details included, so that a job failed by a bad
//! input names the field (`classify.images[3]`) in a `google.rpc.BadRequest`, as the
//! service's own request checks do. [`FailJob`] turns any other error into a status.

use deephardway::Authorized;
use deephardway::{
    errors::FieldViolation,
    v1::{JobResult, job_event::Event, job_spec::Input},
    worker::v1::{Assignment, ModelActivity, ServedModel, worker_service_client::WorkerServiceClient},
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};

/// Why a job did not produce a result.
#[derive(Debug, Clone)]
pub enum JobError {
    /// The job was cancelled and stopped.
    Cancelled,
    /// The job failed with this status: its code, message and details, as the job's
    /// `failed` event carries them.
    Failed(Status),
}

impl From<Status> for JobError {
    fn from(status: Status) -> Self {
        JobError::Failed(status)
    }
}

impl From<FieldViolation> for JobError {
    fn from(violation: FieldViolation) -> Self {
        JobError::Failed(violation.into())
    }
}

impl JobError {
    /// The job failed through no fault of its input: INTERNAL.
    pub fn internal(message: impl Into<String>) -> Self {
        JobError::Failed(Status::internal(message))
    }
}

/// A failed job's status from any error, its whole chain of causes in the message.
pub trait FailJob<T> {
    /// Fails the job with INTERNAL: the worker's own fault, not the input's.
    fn internal(self) -> Result<T, JobError>;

    /// Fails the job with `code`.
    fn fail_with(self, code: Code) -> Result<T, JobError>;
}

impl<T, E: Into<anyhow::Error>> FailJob<T> for Result<T, E> {
    fn internal(self) -> Result<T, JobError> {
        self.fail_with(Code::Internal)
    }

    fn fail_with(self, code: Code) -> Result<T, JobError> {
        self.map_err(|e| JobError::Failed(Status::new(code, format!("{:#}", e.into()))))
    }
}

/// What a running job can use besides its assignment.
pub struct JobContext {
    pub assignment: Assignment,
    events: mpsc::UnboundedSender<Event>,
    pub cancel: CancellationToken,
    /// The service the job came from: for fetching artifacts and publishing models.
    pub service: WorkerServiceClient<Authorized>,
}

impl JobContext {
    pub fn new(
        assignment: Assignment,
        events: mpsc::UnboundedSender<Event>,
        cancel: CancellationToken,
        service: WorkerServiceClient<Authorized>,
    ) -> Self {
        Self { assignment, events, cancel, service }
    }

    /// The job's input, as its spec gives it.
    pub fn input(&self) -> Option<&Input> {
        self.assignment.spec.as_ref().and_then(|spec| spec.input.as_ref())
    }

    /// Reports a progress or output event. Never blocks: the connection forwards them.
    pub fn emit(&self, event: Event) {
        let _ = self.events.send(event);
    }

    /// A handle for reporting events from another thread (e.g. a blocking computation).
    pub fn sender(&self) -> mpsc::UnboundedSender<Event> {
        self.events.clone()
    }
}

/// The failure of a job handed to a runner of another kind: the connection routes by
/// kind, so this is the worker's own fault.
pub fn wrong_kind(runner: &str) -> JobError {
    JobError::internal(format!("the {runner} runner got a job of another kind"))
}

/// Runs jobs of one kind.
#[tonic::async_trait]
pub trait Runner: Send + Sync + 'static {
    /// The models this runner serves, as announced to the service.
    fn models(&self) -> Vec<ServedModel>;

    /// Runs one job to its end.
    async fn run(&self, job: JobContext) -> Result<JobResult, JobError>;

    /// What its models did since the last call (see [`crate::activity`]); nothing by
    /// default.
    fn activity(&self) -> Vec<ModelActivity> {
        Vec::new()
    }
}
