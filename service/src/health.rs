//! `grpc.health.v1`: SERVING while the job store answers, NOT_SERVING while it does not.
//! Load balancers and `grpc_health_probe` read it; the check is a cheap revision read.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::store::SharedStore;

const CHECK_EVERY: Duration = Duration::from_secs(2);
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

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
    let mut last = check(&store).await;
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
            let status = check(&store).await;
            if status != last {
                set_all(&reporter, status).await;
                last = status;
            }
        }
    });
}

async fn check(store: &SharedStore) -> ServingStatus {
    match tokio::time::timeout(CHECK_TIMEOUT, store.revision()).await {
        Ok(Ok(_)) => ServingStatus::Serving,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "job store health check failed");
            ServingStatus::NotServing
        }
        Err(_) => {
            tracing::warn!("job store health check timed out");
            ServingStatus::NotServing
        }
    }
}

async fn set_all(reporter: &HealthReporter, status: ServingStatus) {
    for service in SERVICES {
        reporter.set_service_status(*service, status).await;
    }
}
