//! Jobs whose worker was lost: back in line, or failed after their last attempt, or
//! cancelled if a cancel was pending. Idempotent, so every replica's reaper may call it.

use deephardway::{
    errors::RpcStatus,
    v1::{JobCancelled, JobQueued, JobState, job_event::Event},
};
use tonic::{Code, Status};

use super::{Change, JobLifecycle, Rejected, finish, queue_key};
use crate::{
    auth::tenant_of,
    keys,
    store::{Compare, Op},
};

impl JobLifecycle {
    /// Called when a running job's claim has vanished (its worker or the worker's
    /// replica was lost): the job goes back in line, or fails after its last attempt,
    /// or ends cancelled if a cancel was pending.
    pub async fn recover_orphan(&self, id: &str) -> Result<(), Status> {
        let Some((job, _)) = self.find(id).await? else { return Ok(()) };
        if job.state != JobState::Running as i32 {
            return Ok(());
        }
        let entry = queue_key(&job);
        let (_, position) = self.place_in_line(deephardway::served_model(job.kind(), &job.model), &entry).await?;
        let result = self
            .update(id, |job| {
                if job.state != JobState::Running as i32 {
                    return Ok(None);
                }
                let mut change = Change { compares: vec![Compare::absent(keys::claim(id))], ..Default::default() };
                if job.cancel_requested {
                    finish(job, JobState::Cancelled, &mut change);
                    change.events.push(Event::Cancelled(JobCancelled { reason: job.cancel_reason.clone() }));
                } else if job.attempts >= job.max_attempts {
                    let failure = RpcStatus {
                        code: Code::Unavailable as i32,
                        message: format!(
                            "the job's worker was lost during attempt {} of {}",
                            job.attempts, job.max_attempts
                        ),
                        details: Vec::new(),
                    };
                    job.error = Some(failure.clone());
                    finish(job, JobState::Failed, &mut change);
                    change.events.push(Event::Failed(failure));
                } else {
                    job.state = JobState::Queued as i32;
                    job.progress = 0.0;
                    change.ops.push(Op::delete(keys::running(id)));
                    if !job.key.is_empty() {
                        change.ops.push(Op::delete(keys::running_of(tenant_of(&job.tenant), &job.key, id)));
                    }
                    change.ops.push(Op::put(entry.clone(), id.to_string()));
                    change.events.push(Event::Queued(JobQueued {
                        position,
                        attempt: job.attempts + 1,
                        reason: "worker lost".into(),
                    }));
                }
                Ok(Some(change))
            })
            .await;
        match result {
            Ok(job) => {
                tracing::warn!(job = %id, state = ?JobState::try_from(job.state).ok(), "recovered a job whose worker was lost")
            }
            // The claim is back (another replica recovered and re-dispatched it first).
            Err(Rejected::StaleFence | Rejected::Finished) => {}
            Err(Rejected::TooLarge(status) | Rejected::Status(status)) => return Err(status),
        }
        Ok(())
    }

    /// Finds running jobs whose claim is gone (e.g. missed while this replica was down)
    /// and recovers them.
    pub async fn recover_all_orphans(&self) -> Result<usize, Status> {
        // Both ranges are as small as the number of running jobs.
        let running = self.store.range(keys::RUNNING, 0).await?;
        let claims = self.store.range(keys::CLAIMS, 0).await?;
        let claimed: std::collections::HashSet<&str> =
            claims.kvs.iter().map(|kv| keys::last_segment(&kv.key)).collect();
        let mut recovered = 0;
        for kv in &running.kvs {
            let id = keys::last_segment(&kv.key);
            if !claimed.contains(id) {
                self.recover_orphan(id).await?;
                recovered += 1;
            }
        }
        Ok(recovered)
    }
}
