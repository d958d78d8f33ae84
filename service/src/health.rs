//! `grpc.health.v1`: SERVING while the job store can commit, NOT_SERVING while it cannot.
//! Load balancers and `grpc_health_probe` read it. The check is [`Store::health`]: for
//! etcd, what its background probes of every member last found (so one member of three
//! down does not flap it, and a lost quorum shows within about 1.5 s); for the embedded
//! store, a revision read.
//!
//! [`Store::health`]: crate::store::Store::health

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::store::SharedStore;

/// Often, so that a change shows within a fraction of a second: the check is cheap.
const CHECK_EVERY: Duration = Duration::from_millis(250);
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// The services whose status follows the store's ("" is the server as a whole).
const SERVICES: &[&str] = &[
    "",
    "deephardway.v1.JobService",
    "deephardway.v1.ModelService",
    "deephardway.v1.DatasetService",
    "deephardway.worker.v1.WorkerService",
];

/// Checks the store once (so the answer is right from the first request), then keeps
/// checking in the background.
pub async fn start(store: SharedStore, reporter: HealthReporter, shutdown: CancellationToken) {
    let mut last = check(&store, None).await;
    set_all(&reporter, last).await;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(CHECK_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => {
                    set_all(&reporter, ServingStatus::NotServing).await;
                    return;
                }
            }
            let status = check(&store, Some(last)).await;
            if status != last {
                set_all(&reporter, status).await;
                last = status;
            }
        }
    });
}

/// The store's status; logged when it changes (the check runs four times a second).
async fn check(store: &SharedStore, last: Option<ServingStatus>) -> ServingStatus {
    let failure = match tokio::time::timeout(CHECK_TIMEOUT, store.health()).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(format!("no answer within {CHECK_TIMEOUT:?}")),
    };
    match failure {
        None => {
            if last == Some(ServingStatus::NotServing) {
                tracing::info!("job store healthy again: SERVING");
            }
            ServingStatus::Serving
        }
        Some(why) => {
            if last != Some(ServingStatus::NotServing) {
                tracing::warn!(error = %why, "job store health check failed: NOT_SERVING");
            }
            ServingStatus::NotServing
        }
    }
}

async fn set_all(reporter: &HealthReporter, status: ServingStatus) {
    for service in SERVICES {
        reporter.set_service_status(*service, status).await;
    }
}
