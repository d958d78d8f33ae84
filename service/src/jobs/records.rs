//! The small JSON records kept beside the protobuf job records: who is connected and
//! what it serves, and who holds a running job.

use serde::{Deserialize, Serialize};

/// A connected worker as recorded in the store (under its lease).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerRecord {
    pub worker_id: String,
    pub name: String,
    pub device: String,
    pub slots: u32,
    pub models: Vec<ServedModel>,
    /// The name of the API key the worker connected with (empty with auth off).
    #[serde(default)]
    pub key: String,
}

/// A model a worker serves.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServedModel {
    pub name: String,
    /// A [`JobKind`](deephardway::v1::JobKind) as its protobuf number.
    pub kind: i32,
    pub description: String,
    /// The most tokens a sequence may hold (generative models; 0 where it does not apply).
    #[serde(default)]
    pub context_length: u32,
}

/// Which worker holds a running job; stored under the worker's lease, so it exists only
/// while that worker's session lives. Written once when the job is claimed, never changed,
/// deleted when the job ends or goes back in line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct ClaimRecord {
    pub worker_id: String,
    pub attempt: u32,
    /// The assignment's fence: a random secret only the holding session and its worker
    /// know (see [`super::fence`]). Claims written before there was one read as 0, which
    /// no request can present.
    #[serde(default)]
    pub secret: u64,
    /// The holding worker's API key name: FetchArtifact and PublishModel must come with
    /// the same key, so that a stolen fence is no use without the worker's own key.
    #[serde(default)]
    pub key: String,
}
