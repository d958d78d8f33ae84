//! Per-key limits on submitting (see `deephardway.v1.Quota`):
//!
//! - active jobs (queued or running): counted from the key's index in the store
//!   (`/dhw/tenants/<t>/active/<key>/<id>`, written with the job and removed when it
//!   finishes), so every replica counts the same jobs;
//! - running jobs: counted from the key's running index when a job is claimed, one claim
//!   per key at a time on each replica ([`Quotas::claim_lock`]); replicas claiming jobs of
//!   the same key at the same instant may each start one more;
//! - submissions per second: a token bucket per key on each replica. Kept in memory on
//!   purpose: a store write per submission would cost more than the submission, and a
//!   cluster of N replicas then allows at most N times the rate, which an operator sizes for.
//!
//! Both refuse with RESOURCE_EXHAUSTED, with a `google.rpc.QuotaFailure` naming the
//! limit, and for the rate a `google.rpc.RetryInfo` saying how long to wait.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, QuotaViolation, StatusExt};

use crate::{auth::Caller, keys, store::SharedStore};

/// The limits every replica enforces; one per [`crate::jobs::JobLifecycle`].
#[derive(Default)]
pub struct Quotas {
    buckets: Mutex<HashMap<String, Bucket>>,
    claim_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// A token bucket: `burst` tokens at most, refilled at `rate` per second.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    /// Takes a token, or says how long until one is there.
    fn take(&mut self, rate: f64, burst: f64, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.updated = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        Err(Duration::from_secs_f64((1.0 - self.tokens) / rate))
    }
}

fn exhausted(message: String, subject: &str, description: String, retry: Option<Duration>) -> Status {
    let mut details = ErrorDetails::new();
    details.set_quota_failure(vec![QuotaViolation::new(subject, description)]);
    if let Some(wait) = retry {
        details.set_retry_info(Some(wait));
    }
    Status::with_error_details(Code::ResourceExhausted, message, details)
}

impl Quotas {
    /// The lock that serialises claims of one key's jobs on this replica.
    pub fn claim_lock(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.claim_locks.lock().expect("quota lock").entry(key.to_string()).or_default().clone()
    }

    /// Takes one submission from the key's bucket.
    pub fn check_rate(&self, caller: &Caller) -> Result<(), Status> {
        let quota = &caller.identity.quota;
        let rate = quota.submits_per_second;
        if rate <= 0.0 || caller.key().is_empty() {
            return Ok(());
        }
        let burst = if quota.submit_burst > 0 { f64::from(quota.submit_burst) } else { rate.max(1.0) };
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("quota lock");
        let bucket = buckets.entry(caller.key().to_string()).or_insert(Bucket { tokens: burst, updated: now });
        bucket.take(rate, burst, now).map_err(|wait| {
            exhausted(
                format!(
                    "key {:?} submits at most {rate} jobs per second; retry in {} ms",
                    caller.key(),
                    wait.as_millis()
                ),
                &format!("keys/{}", caller.key()),
                format!("submits_per_second {rate}, burst {burst}"),
                Some(wait),
            )
        })
    }

    /// Refuses a submission that would exceed the key's active jobs.
    pub async fn check_active(&self, store: &SharedStore, caller: &Caller) -> Result<(), Status> {
        let max = caller.identity.quota.max_active_jobs;
        if max == 0 || caller.key().is_empty() {
            return Ok(());
        }
        let active = store.count(&keys::active_jobs(caller.tenant(), caller.key())).await?;
        if active >= max as usize {
            return Err(exhausted(
                format!(
                    "key {:?} has {active} jobs queued or running, its limit; submit again when one finishes",
                    caller.key()
                ),
                &format!("keys/{}", caller.key()),
                format!("max_active_jobs {max}"),
                None,
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_the_rate() {
        let start = Instant::now();
        let mut bucket = Bucket { tokens: 3.0, updated: start };
        for _ in 0..3 {
            bucket.take(2.0, 3.0, start).unwrap();
        }
        let wait = bucket.take(2.0, 3.0, start).unwrap_err();
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-6, "{wait:?}");
        // Half a second later one token is back, and only one.
        let later = start + Duration::from_millis(500);
        bucket.take(2.0, 3.0, later).unwrap();
        assert!(bucket.take(2.0, 3.0, later).is_err());
        // Never more than the burst, however long it rested.
        let much_later = later + Duration::from_secs(60);
        for _ in 0..3 {
            bucket.take(2.0, 3.0, much_later).unwrap();
        }
        assert!(bucket.take(2.0, 3.0, much_later).is_err());
    }
}
