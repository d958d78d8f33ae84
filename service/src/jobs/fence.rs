//! Fences: what proves that a worker holds a job.
//!
//! A claim's fence is a random 64-bit secret drawn from a CSPRNG when the job is claimed,
//! kept in the claim record (which lives under the holding worker's lease) and sent to
//! that worker alone in its assignment. Every request about the job must present it:
//!
//! - reports come on the holding session's own stream, which only accepts them for jobs
//!   it holds, with their fence; they are written only while the claim is still the one
//!   created at [`Fence::revision`] (a claim is never rewritten, so the same claim means
//!   the same secret), so a worker whose job was requeued cannot overwrite the rerun;
//! - `FetchArtifact` and `PublishModel` come on their own calls, from any replica, so
//!   they are checked against the stored claim with [`JobLifecycle::held`].
//!
//! The claim's revision alone used to be the fence; it is small and sequential, so anyone
//! could guess it. The revision still says which claim a report belongs to.

use std::fmt;

use deephardway::v1::{Job, JobState};
use tonic::Status;

use super::{JobLifecycle, records::ClaimRecord};
use crate::keys;

/// What identifies one assignment of a job.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Fence {
    /// The secret the worker presents (the wire's `fence`). Never 0.
    pub secret: u64,
    /// The store revision that created the claim.
    pub revision: i64,
}

impl fmt::Debug for Fence {
    /// Without the secret: fences end up in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fence").field("revision", &self.revision).finish_non_exhaustive()
    }
}

/// A fresh secret. `rand::random` draws from the thread's CSPRNG (ChaCha, seeded from the
/// OS); 0 is skipped because it is what an unset field reads as.
pub(super) fn new_secret() -> u64 {
    loop {
        let secret: u64 = rand::random();
        if secret != 0 {
            return secret;
        }
    }
}

/// Why a request about a job is refused: the same answer whether the job id is malformed,
/// the job does not exist or is not running, or the fence is wrong or stale, so a caller
/// learns nothing by guessing. The id is not quoted: it may be anything.
fn not_held() -> Status {
    Status::permission_denied("no current assignment of yours has this job id and fence")
}

impl JobLifecycle {
    /// The running job `id` (with its whole request) and its fence, if `secret` is the fence of the job's current
    /// claim. The claim exists only while the session holding it lives (it is stored under
    /// that session's lease), so this also proves that the holder is alive. Otherwise
    /// PERMISSION_DENIED.
    pub async fn held(&self, id: &str, secret: u64, caller_key: &str) -> Result<(Job, Fence), Status> {
        if crate::validate::job_id(id).is_err() {
            return Err(not_held());
        }
        let Some(claim) = self.store.get(&keys::claim(id)).await? else { return Err(not_held()) };
        let Ok(record) = serde_json::from_slice::<ClaimRecord>(&claim.value) else { return Err(not_held()) };
        if record.secret == 0 || record.secret != secret || record.key != caller_key {
            return Err(not_held());
        }
        let Some((job, _)) = self.find(id).await? else { return Err(not_held()) };
        let current = job.state == JobState::Running as i32
            && job.worker_id == record.worker_id
            && job.attempts == record.attempt;
        if !current {
            return Err(not_held());
        }
        // Its holder fetches the files its input names, or publishes what it trained.
        let job = self.with_spec(job).await?;
        Ok((job, Fence { secret, revision: claim.create_revision }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_never_zero_and_differ() {
        let a: Vec<u64> = (0..1000).map(|_| new_secret()).collect();
        assert!(a.iter().all(|&s| s != 0));
        let distinct: std::collections::HashSet<_> = a.iter().collect();
        assert_eq!(distinct.len(), a.len());
    }

    #[test]
    fn debug_output_hides_the_secret() {
        let fence = Fence { secret: 0xdead_beef_1234, revision: 7 };
        let shown = format!("{fence:?}");
        assert!(!shown.contains(&0xdead_beef_1234u64.to_string()) && !shown.contains("deadbeef"), "{shown}");
        assert!(shown.contains('7'));
    }
}
