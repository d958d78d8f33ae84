//! deephardway's API: the `deephardway.v1` protobuf messages and gRPC services generated
//! from `proto/`, shared by the service (`service/`), the worker (`worker/`) and clients.
//!
//! - [`v1`]: messages, `*_client` and `*_server` modules for `Jobs`, `Models`, `Workers`.
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors, served by gRPC reflection.
//! - [`kind_of`], [`is_final`]: small facts about requests and events both sides need.
//! - [`TRAINER_MODEL`], [`CLASSIFIER_MODEL`]: the names of the vision capabilities.
//! - [`connect`]: a channel to a service, for any of the generated clients.

/// Generated code for package `deephardway.v1`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("deephardway.v1");
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

use v1::{JobKind, job_event, submit_request};

/// The kind of job a request's input asks for.
pub fn kind_of(input: &submit_request::Input) -> JobKind {
    match input {
        submit_request::Input::Diagnostic(_) => JobKind::Diagnostic,
        submit_request::Input::Generate(_) => JobKind::Generate,
        submit_request::Input::Embed(_) => JobKind::Embed,
        submit_request::Input::Classify(_) => JobKind::Classify,
        submit_request::Input::Train(_) => JobKind::Train,
    }
}

/// True for the events that end a job: result, failed and cancelled.
pub fn is_final(event: &job_event::Event) -> bool {
    matches!(event, job_event::Event::Result(_) | job_event::Event::Failed(_) | job_event::Event::Cancelled(_))
}

/// Opens a channel to a service at `url` (e.g. `http://127.0.0.1:50051`), for any of the
/// generated clients: `JobsClient::new(deephardway::connect(url).await?)`.
pub async fn connect(url: &str) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    tonic::transport::Endpoint::from_shared(url.to_string())?
        .connect_timeout(std::time::Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect()
        .await
}
