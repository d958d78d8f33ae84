//! Background housekeeping every replica runs; all of it is idempotent, so replicas
//! racing on the same job do no harm.
//!
//! - A claim that vanishes while its job is still running means the worker (or the
//!   replica holding it) was lost: the job goes back in line or fails. Claim deletes are
//!   seen through the hub (those of jobs just seen to finish need no look), and a
//!   periodic scan catches any that were missed (for example while this replica was
//!   down).
//! - Finished jobs older than the retention are removed with their events, and models no
//!   worker served for a day are forgotten.

use std::{sync::Arc, time::Duration};

use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::{
    hub::{Change, Hub},
    jobs::JobLifecycle,
};

const SCAN_INTERVAL: Duration = Duration::from_secs(5);

/// Jobs seen to finish lately, the oldest forgotten past [`RecentlyFinished::CAPACITY`].
/// The hub routes a transaction's events in its operations' order, and a job's final
/// write puts its record before it deletes its claim; if that ever came the other way
/// round, the release is checked with a read, as for any job not in here.
#[derive(Default)]
struct RecentlyFinished {
    ids: std::collections::HashSet<String>,
    order: std::collections::VecDeque<String>,
}

impl RecentlyFinished {
    const CAPACITY: usize = 10_000;

    fn insert(&mut self, id: &str) {
        if self.ids.insert(id.to_string()) {
            self.order.push_back(id.to_string());
            if self.order.len() > Self::CAPACITY
                && let Some(oldest) = self.order.pop_front()
            {
                self.ids.remove(&oldest);
            }
        }
    }

    fn contains(&self, id: &str) -> bool {
        self.ids.contains(id)
    }
}

pub fn start(lifecycle: JobLifecycle, hub: &Hub, shutdown: CancellationToken) {
    let mut changes = hub.changes();
    let lifecycle = Arc::new(lifecycle);
    let (lifecycle_for_purge, purge_shutdown) = (lifecycle.clone(), shutdown.clone());
    tokio::spawn(async move {
        let mut scan = tokio::time::interval(SCAN_INTERVAL);
        let mut finished = RecentlyFinished::default();
        loop {
            tokio::select! {
                change = changes.recv() => match change {
                    Ok(Change::JobUpdated(job)) if deephardway::is_finished(job.state) => {
                        finished.insert(&job.id);
                    }
                    // A job that finished gives up its claim in the same transaction: not
                    // an orphan, and no read needed to tell.
                    Ok(Change::ClaimReleased { job_id: id }) if !finished.contains(&id) => {
                        if let Err(e) = lifecycle.recover_orphan(&id).await {
                            tracing::warn!(job = %id, error = %e, "could not recover job");
                        }
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(_)) => scan.reset_immediately(),
                    Err(RecvError::Closed) => return,
                },
                _ = scan.tick() => {
                    if let Err(e) = lifecycle.recover_all_orphans().await {
                        tracing::warn!(error = %e, "orphan scan failed");
                    }
                }
                _ = shutdown.cancelled() => return,
            }
        }
    });
    // Retention in a task of its own: a purge of many jobs takes a while, and the lost
    // workers' jobs above should not wait for it.
    tokio::spawn(async move {
        let every = lifecycle_for_purge.config().retention.min(Duration::from_secs(60)).max(Duration::from_millis(200));
        let mut purge = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = purge.tick() => {}
                _ = purge_shutdown.cancelled() => return,
            }
            match lifecycle_for_purge.purge_expired().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(jobs = n, "removed finished jobs past their retention"),
                Err(e) => tracing::warn!(error = %e, "retention purge failed"),
            }
            match lifecycle_for_purge.forget_unserved().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(models = n, "forgot models no worker served for a day"),
                Err(e) => tracing::warn!(error = %e, "could not forget unserved models"),
            }
        }
    });
}
