//! deephardway's API and the candle-free domain code that the service, the worker and
//! clients share. A map of the crate:
//!
//! - [`v1`]: the client API, package `deephardway.v1` (`JobService`, `ModelService`,
//!   `DatasetService`): messages, `*_client` and `*_server` modules generated from `proto/`.
//! - [`worker::v1`]: the worker protocol, package `deephardway.worker.v1` (`WorkerService`).
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors, served by gRPC reflection.
//! - [`errors`]: statuses that name the bad field (`google.rpc.BadRequest`) and the
//!   `google.rpc.Status` a failed job carries.
//! - [`datasets`]: a dataset's image files read from a folder or an archive and checked.
//! - [`train`]: a train job's options, defaults filled in and checked.
//! - [`kind_of`], [`is_final`]: small facts about specs and events both sides need.
//! - [`TRAINER_MODEL`], [`CLASSIFIER_MODEL`]: the names of the vision capabilities.
//! - [`connect`]: a channel to a service, for any of the generated clients;
//!   [`remote`]: the same over `https://`, with a CA and a client certificate;
//!   [`bearer`]: the API key every call carries.
//! - [`traces`]: the W3C `traceparent` a job's trace travels with, from the client's
//!   request through the service to the worker.

pub mod bearer;
pub mod datasets;
pub mod errors;
pub mod remote;
pub mod traces;
pub mod train;

pub use bearer::{ApiKey, Authorized};
pub use remote::{ClientTls, Remote};

/// Generated code for package `deephardway.v1`, the client API.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("deephardway.v1");
}

/// The worker protocol, apart from the client API.
pub mod worker {
    /// Generated code for package `deephardway.worker.v1`.
    pub mod v1 {
        #![allow(clippy::all, missing_docs)]
        tonic::include_proto!("deephardway.worker.v1");
    }
}

/// The model name workers announce for train jobs: they train any architecture on any
/// uploaded dataset.
pub const TRAINER_MODEL: &str = "trainer";

/// The model name workers announce when they can run classify jobs on any trained model,
/// fetching it from the service. Classify jobs name the trained model itself.
pub const CLASSIFIER_MODEL: &str = "classifier";

/// The largest message on the worker protocol: trained weights published in one piece.
pub const MAX_ARTIFACT_MESSAGE: usize = 512 << 20;

/// The file descriptor set of every file under `proto/`, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("deephardway_descriptor");

use v1::{JobKind, JobState, job_event, job_spec};

/// The kind of job an input asks for.
pub fn kind_of(input: &job_spec::Input) -> JobKind {
    match input {
        job_spec::Input::Diagnostic(_) => JobKind::Diagnostic,
        job_spec::Input::Generate(_) => JobKind::Generate,
        job_spec::Input::Embed(_) => JobKind::Embed,
        job_spec::Input::Classify(_) => JobKind::Classify,
        job_spec::Input::Train(_) => JobKind::Train,
    }
}

/// True for the events that end a job: result, failed and cancelled.
pub fn is_final(event: &job_event::Event) -> bool {
    matches!(event, job_event::Event::Result(_) | job_event::Event::Failed(_) | job_event::Event::Cancelled(_))
}

/// True for the states a job ends in (a record's `state`): succeeded, failed, cancelled.
pub fn is_finished(state: i32) -> bool {
    matches!(JobState::try_from(state), Ok(JobState::Succeeded | JobState::Failed | JobState::Cancelled))
}

/// A record's `kind` as messages, metrics labels and usage keys name it: `generate`, `embed`, …
pub fn kind_name(kind: i32) -> String {
    JobKind::try_from(kind).map_or("unknown".into(), |k| k.as_str_name().trim_start_matches("JOB_KIND_").to_lowercase())
}

/// A record's `state` as metrics labels and usage keys name it: `queued`, `succeeded`, …
pub fn state_name(state: i32) -> String {
    JobState::try_from(state)
        .map_or("unknown".into(), |s| s.as_str_name().trim_start_matches("JOB_STATE_").to_lowercase())
}

/// Opens a channel to a service at `url` (e.g. `http://127.0.0.1:50051`, or `https://…`
/// checked against the system's roots; see [`Remote`] for a CA or a client certificate),
/// for any of the generated clients: `JobServiceClient::new(deephardway::connect(url).await?)`.
pub async fn connect(url: &str) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    Remote::new(url).connect().await
}

/// The served model that runs a job of `kind` on `model`, and whose queue it waits in:
/// the model itself, except that classify jobs on any trained model go to the workers
/// that announce the [`CLASSIFIER_MODEL`] capability. The service queues by it and
/// the worker picks its runner by it, so the two always agree.
pub fn served_model(kind: JobKind, model: &str) -> &str {
    if kind == JobKind::Classify { CLASSIFIER_MODEL } else { model }
}
