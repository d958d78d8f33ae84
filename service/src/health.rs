//! `grpc.health.v1`: SERVING while the job store can commit, NOT_SERVING while it cannot.
//! Load balancers and `grpc_health_probe` read it. The check is [`Store::health`]: for
//! etcd, what its background probes of every member last found (so one member of three
//! down does not flap it, and a lost quorum shows within about 1.5 s); for the embedded
//! store, a revision read.
//!
//! Each served model has its own entry, `model/<name>` (e.g. `model/all-minilm-l6-v2`):
//! SERVING while a connected worker anywhere in the cluster serves it (read from the
//! workers' records in the store every second), NOT_SERVING once the last one has gone,
//! or while the store is unhealthy. `Health/Watch` streams every change.
//!
//! [`Store::health`]: crate::store::Store::health

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use futures::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Response, Status};
use tonic_health::{
    ServingStatus,
    pb::{
        HealthCheckRequest, HealthCheckResponse,
        health_check_response::ServingStatus as ProtocolStatus,
        health_server::{Health, HealthServer},
    },
    server::{HealthReporter, HealthService},
};

use crate::{jobs::WorkerRecord, keys, store::SharedStore};

/// How often the workers' records are read for the per-model entries.
const MODELS_EVERY: Duration = Duration::from_secs(1);

/// The health service name of a served model.
pub fn model_service(model: &str) -> String {
    format!("model/{model}")
}

/// Often, so that a change shows within a fraction of a second: the check is cheap.
const CHECK_EVERY: Duration = Duration::from_millis(250);
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// The services whose status follows the store's ("" is the server as a whole).
const SERVICES: &[&str] = &[
    "",
    "deephardway.v1.JobService",
    "deephardway.v1.ModelService",
    "deephardway.v1.DatasetService",
    "deephardway.v1.KeyService",
    "deephardway.v1.UsageService",
    "deephardway.worker.v1.WorkerService",
];

/// The `grpc.health.v1.Health` service: tonic-health's, with `Watch` streams that end when
/// the server shuts down (a load balancer's open watch would otherwise hold the graceful
/// shutdown forever).
pub fn service(reporter: HealthReporter, shutdown: CancellationToken) -> HealthServer<EndingHealth> {
    HealthServer::new(EndingHealth { inner: Arc::new(HealthService::from_health_reporter(reporter)), shutdown })
}

pub struct EndingHealth {
    inner: Arc<HealthService>,
    shutdown: CancellationToken,
}

/// How often a `Watch` on a service not (yet) known looks for it again.
const UNKNOWN_RECHECK: Duration = Duration::from_secs(1);

type HealthStream = std::pin::Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Health for EndingHealth {
    async fn check(&self, request: Request<HealthCheckRequest>) -> Result<Response<HealthCheckResponse>, Status> {
        self.inner.check(request).await
    }

    type WatchStream = HealthStream;

    /// A service not known yet (a model no worker has served) is not an error: as the
    /// health protocol says, the stream answers SERVICE_UNKNOWN and then follows the
    /// service once it exists (tonic-health would refuse the call with NOT_FOUND).
    async fn watch(&self, request: Request<HealthCheckRequest>) -> Result<Response<HealthStream>, Status> {
        let service = request.get_ref().service.clone();
        let ended = self.shutdown.clone().cancelled_owned();
        let statuses: HealthStream = match self.inner.watch(request).await {
            Ok(statuses) => Box::pin(statuses.into_inner()),
            Err(status) if status.code() == Code::NotFound => {
                let unknown = HealthCheckResponse { status: ProtocolStatus::ServiceUnknown.into() };
                let inner = self.inner.clone();
                let known = async move {
                    loop {
                        tokio::time::sleep(UNKNOWN_RECHECK).await;
                        let request = Request::new(HealthCheckRequest { service: service.clone() });
                        if let Ok(statuses) = inner.watch(request).await {
                            return statuses.into_inner();
                        }
                    }
                };
                Box::pin(
                    futures::stream::once(async move { Ok(unknown) }).chain(futures::stream::once(known).flatten()),
                )
            }
            Err(status) => return Err(status),
        };
        Ok(Response::new(Box::pin(statuses.take_until(ended))))
    }
}

/// Checks the store once (so the answer is right from the first request), then keeps
/// checking in the background.
pub async fn start(store: SharedStore, reporter: HealthReporter, shutdown: CancellationToken) {
    let mut last = check(&store, None).await;
    set_all(&reporter, last).await;
    let mut models = ModelHealth::default();
    // Models served lately (before a restart, say) have an entry from the start.
    if let Ok(range) = store.range(keys::SERVED, 0).await {
        models.remembered = range.kvs.iter().map(|kv| keys::last_segment(&kv.key).to_string()).collect();
    }
    models.refresh(&store, &reporter, last).await;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(CHECK_EVERY);
        let mut models_tick = tokio::time::interval(MODELS_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let status = check(&store, Some(last)).await;
                    if status != last {
                        set_all(&reporter, status).await;
                        last = status;
                        models.refresh(&store, &reporter, last).await;
                    }
                }
                _ = models_tick.tick() => models.refresh(&store, &reporter, last).await,
                _ = shutdown.cancelled() => {
                    set_all(&reporter, ServingStatus::NotServing).await;
                    models.set_all(&reporter, ServingStatus::NotServing).await;
                    return;
                }
            }
        }
    });
}

/// The per-model entries: every model ever served is kept, so that one whose last worker
/// left reads NOT_SERVING rather than unknown.
#[derive(Default)]
struct ModelHealth {
    reported: BTreeMap<String, ServingStatus>,
    /// Served before this replica started; reported NOT_SERVING until a worker serves it.
    remembered: BTreeSet<String>,
}

impl ModelHealth {
    async fn refresh(&mut self, store: &SharedStore, reporter: &HealthReporter, store_status: ServingStatus) {
        let served: BTreeSet<String> = match store.range(keys::WORKERS, 0).await {
            Ok(range) => range
                .kvs
                .iter()
                .filter_map(|kv| serde_json::from_slice::<WorkerRecord>(&kv.value).ok())
                .flat_map(|w| w.models.into_iter().map(|m| m.name))
                .collect(),
            // Unknown: keep what was reported, unless the store itself is down.
            Err(_) if store_status == ServingStatus::Serving => return,
            Err(_) => BTreeSet::new(),
        };
        let names: BTreeSet<String> = self
            .reported
            .keys()
            .cloned()
            .chain(served.iter().cloned())
            .chain(std::mem::take(&mut self.remembered))
            .collect();
        for name in names {
            let status = match store_status == ServingStatus::Serving && served.contains(&name) {
                true => ServingStatus::Serving,
                false => ServingStatus::NotServing,
            };
            if self.reported.get(&name) != Some(&status) {
                reporter.set_service_status(&model_service(&name), status).await;
                self.reported.insert(name, status);
            }
        }
    }

    async fn set_all(&mut self, reporter: &HealthReporter, status: ServingStatus) {
        for (name, reported) in self.reported.iter_mut() {
            reporter.set_service_status(&model_service(name), status).await;
            *reported = status;
        }
    }
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
