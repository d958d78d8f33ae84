//! The contract between the worker's connection loop and the code that runs jobs.
//!
//! A runner serves one or more models of one kind. For each assigned job it gets the
//! request, a sink for progress and output events, and a cancellation token; it returns
//! the result or an error with a gRPC code. Models load once when the runner is built
//! and stay resident; `run` may be called concurrently for up to `slots` jobs.

use deephardway::v1::{JobAssignment, JobResult, WorkerModel, job_event::Event, workers_client::WorkersClient};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::{Code, transport::Channel};

/// Why a job did not produce a result.
#[derive(Debug, Clone, PartialEq)]
pub enum JobError {
    /// The job was cancelled and stopped.
    Cancelled,
    /// The job failed; `code` is the gRPC status code that describes why.
    Failed { code: Code, message: String },
}

impl JobError {
    pub fn failed(code: Code, message: impl Into<String>) -> Self {
        JobError::Failed { code, message: message.into() }
    }
}

/// What a running job can use besides its request.
pub struct JobContext {
    pub assignment: JobAssignment,
    events: mpsc::UnboundedSender<Event>,
    pub cancel: CancellationToken,
    /// The service the job came from: for fetching artifacts and publishing models.
    pub service: WorkersClient<Channel>,
}

impl JobContext {
    pub fn new(
        assignment: JobAssignment,
        events: mpsc::UnboundedSender<Event>,
        cancel: CancellationToken,
        service: WorkersClient<Channel>,
    ) -> Self {
        Self { assignment, events, cancel, service }
    }

    /// Reports a progress or output event. Never blocks: the connection coalesces them.
    pub fn emit(&self, event: Event) {
        let _ = self.events.send(event);
    }

    /// A handle for reporting events from another thread (e.g. a blocking computation).
    pub fn sender(&self) -> mpsc::UnboundedSender<Event> {
        self.events.clone()
    }
}

/// Runs jobs of one kind.
#[tonic::async_trait]
pub trait Runner: Send + Sync + 'static {
    /// The models this runner serves, as announced to the service.
    fn models(&self) -> Vec<WorkerModel>;

    /// Runs one job to its end.
    async fn run(&self, job: JobContext) -> Result<JobResult, JobError>;
}
