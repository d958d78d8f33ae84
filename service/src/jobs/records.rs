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
}

/// A model a worker serves.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServedModel {
    pub name: String,
    /// A [`JobKind`] as its protobuf number.
    pub kind: i32,
    pub description: String,
    /// The most tokens a sequence may hold (generative models; 0 where it does not apply).
    #[serde(default)]
    pub context_length: u32,
}

/// Which worker holds a running job; stored under the worker's lease.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct ClaimRecord {
    pub worker_id: String,
    pub attempt: u32,
}
