//! The service on a three-member etcd cluster while members fail: one member killed (a
//! follower, then the leader), a follower frozen longer than a worker's lease, and quorum
//! lost and regained. Real etcd processes ([`LocalEtcdCluster`]), the service and a worker
//! in this process; each test prints what it measured (`--nocapture`).

mod support;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use deephardway::v1::{
    GetJobRequest, JobState, ListModelsRequest, job_event::Event, model_service_client::ModelServiceClient,
};
use deephardway_service::{
    local_etcd::cluster::LocalEtcdCluster,
    store::{SharedStore, etcd::EtcdStore},
};
use support::*;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

/// A cluster, the service on it (its store connected to `endpoints` in that order) and
/// one worker.
struct Rig {
    etcd: LocalEtcdCluster,
    server: TestServer,
    _worker: TestWorker,
}

async fn rig(order: impl FnOnce(usize) -> Vec<usize>) -> Rig {
    rig_with(order, test_config()).await
}

async fn rig_with(order: impl FnOnce(usize) -> Vec<usize>, config: deephardway_service::ServiceConfig) -> Rig {
    let etcd = LocalEtcdCluster::start(3).await.unwrap_or_else(|e| panic!("{e:#}"));
    let leader = etcd.leader().await.expect("a leader");
    let endpoints: Vec<String> = order(leader).into_iter().map(|i| etcd.endpoint(i)).collect();
    let store: SharedStore = Arc::new(EtcdStore::connect(&endpoints).await.expect("connect to the cluster"));
    let server = TestServer::start_with(store, config).await;
    let worker = TestWorker::start(&server.url, "w1", 2);
    wait_for_workers(&server.url, 1).await;
    Rig { etcd, server, _worker: worker }
}

/// The members other than `leader`.
fn followers(leader: usize) -> Vec<usize> {
    (0..3).filter(|&i| i != leader).collect()
}

async fn health(url: &str) -> HealthClient<tonic::transport::Channel> {
    HealthClient::new(deephardway::connect(url).await.expect("connect"))
}

async fn serving(client: &mut HealthClient<tonic::transport::Channel>) -> Option<ServingStatus> {
    let check = client.check(HealthCheckRequest::default());
    match tokio::time::timeout(Duration::from_secs(1), check).await {
        Ok(Ok(answer)) => Some(answer.into_inner().status()),
        _ => None,
    }
}

/// 100 Submits one after another with a member SIGKILLed just before (first in the store's
/// list, so that it is the one in use): at least 95 succeed, each within 5 s, every
/// accepted job exists, and health never flaps.
async fn submits_survive_a_killed_member(kill_leader: bool) {
    let mut rig = rig(|leader| {
        let f = followers(leader);
        if kill_leader { vec![leader, f[0], f[1]] } else { vec![f[0], leader, f[1]] }
    })
    .await;
    let leader = rig.etcd.leader().await.unwrap();
    let victim = if kill_leader { leader } else { followers(leader)[0] };
    let mut client = rig.server.client().await;
    // Health, sampled throughout: it must not say NOT_SERVING while two of three serve
    // (after the leader's death the cluster cannot commit until it elects another, and
    // health says so: up to 3 s are allowed for that; a second or so is usual).
    let url = rig.server.url.clone();
    let killed_at = Instant::now();
    let sampler = tokio::spawn(async move {
        let mut health = health(&url).await;
        let mut not_serving = Vec::new();
        while killed_at.elapsed() < Duration::from_secs(8) {
            if serving(&mut health).await != Some(ServingStatus::Serving) {
                not_serving.push(killed_at.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        not_serving
    });
    rig.etcd.kill(victim).await;
    let started = Instant::now();
    let (mut accepted, mut failures, mut slowest) = (Vec::new(), Vec::new(), Duration::ZERO);
    for _ in 0..100 {
        let t = Instant::now();
        match tokio::time::timeout(Duration::from_secs(5), client.create_job(create_request(diagnostic(1, 1)))).await {
            Ok(Ok(response)) => accepted.push(response.into_inner().job.expect("a job").id),
            Ok(Err(status)) => failures.push(format!("{:?}: {}", status.code(), status.message())),
            Err(_) => failures.push("no answer within 5 s".into()),
        }
        slowest = slowest.max(t.elapsed());
    }
    let took = started.elapsed();
    let not_serving = sampler.await.unwrap();
    eprintln!(
        "killed {} (member {victim}): {}/100 Submits succeeded in {took:?}, slowest {slowest:?}, \
         health not SERVING in {} of ~75 samples (at {not_serving:?}); failures: {:?}",
        if kill_leader { "the leader" } else { "a follower" },
        accepted.len(),
        not_serving.len(),
        failures.iter().take(3).collect::<Vec<_>>()
    );
    assert!(accepted.len() >= 95, "only {}/100 Submits succeeded: {failures:?}", accepted.len());
    assert!(slowest < Duration::from_secs(5));
    for id in &accepted {
        let job = client.get_job(GetJobRequest { job_id: id.clone(), ..Default::default() }).await;
        assert!(job.is_ok(), "accepted job {id} is lost: {job:?}");
    }
    let allowed = if kill_leader { Duration::from_secs(3) } else { Duration::ZERO };
    let flaps: Vec<_> = not_serving.iter().filter(|at| **at > allowed).collect();
    assert!(flaps.is_empty(), "health said NOT_SERVING while two of three members served, at {flaps:?}");
    // The hub's watch was on the victim (first in the store's list): it was reopened,
    // and the metrics say so.
    let (_, metrics) = scrape(&rig.server.url, None).await;
    let restarts = metrics
        .lines()
        .find_map(|l| l.strip_prefix(r#"deephardway_store_watch_restarts_total{backend="etcd"} "#))
        .unwrap_or_else(|| panic!("no watch restart counter: {metrics}"));
    assert!(restarts.parse::<u64>().unwrap() >= 1, "watch restarts: {restarts}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submits_survive_a_killed_follower() {
    submits_survive_a_killed_member(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submits_survive_a_killed_leader() {
    submits_survive_a_killed_member(true).await;
}

/// A follower frozen (SIGSTOP) for three lease TTLs: the worker keeps its session, its
/// running job is not re-run, a watcher gets every event without a long silence, and
/// Submits keep succeeding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_follower_costs_no_worker_session() {
    // A 4 s lease: failing over must beat it even on a loaded CI machine (with 2 s, a
    // busy 2-core machine once let it expire), and the stall still lasts three of them.
    let config = deephardway_service::ServiceConfig { worker_lease_ttl: Duration::from_secs(4), ..test_config() };
    let stall = config.worker_lease_ttl * 3;
    // The frozen follower first in the store's list, so that it is the one in use.
    let rig = rig_with(
        |leader| {
            let mut order = followers(leader);
            order.push(leader);
            order
        },
        config,
    )
    .await;
    let leader = rig.etcd.leader().await.unwrap();
    let frozen = followers(leader)[0];
    let mut client = rig.server.client().await;
    // A job that runs through the stall and reports every 100 ms.
    let steps = (stall.as_millis() as u32 + 4000) / 100;
    let job = create(&mut client, diagnostic(steps, 100)).await;
    let mut watch_stream = watch(&mut client, &job.id, 0).await.unwrap();
    loop {
        let event = next_event(&mut watch_stream).await.unwrap().expect("events");
        if matches!(event.event, Some(Event::Progress(_))) {
            break;
        }
    }
    let watcher = tokio::spawn(async move {
        // Every event after the first progress, with the longest wait between two.
        let (mut events, mut longest_gap, mut last) = (Vec::new(), Duration::ZERO, Instant::now());
        loop {
            match tokio::time::timeout(Duration::from_secs(30), watch_stream.message()).await {
                Ok(Ok(Some(message))) => {
                    longest_gap = longest_gap.max(last.elapsed());
                    last = Instant::now();
                    events.extend(message.event()); // queue statuses are not events
                }
                Ok(Ok(None)) => return Ok((events, longest_gap)),
                Ok(Err(status)) => return Err(status),
                Err(_) => panic!("the watch went silent for 30 s"),
            }
        }
    });

    rig.etcd.stop(frozen);
    let frozen_at = Instant::now();
    let mut models = ModelServiceClient::new(deephardway::connect(&rig.server.url).await.unwrap());
    let (mut submits, mut failed_submits, mut slowest, mut workerless) = (0, Vec::new(), Duration::ZERO, 0);
    while frozen_at.elapsed() < stall {
        let t = Instant::now();
        match tokio::time::timeout(Duration::from_secs(5), client.create_job(create_request(diagnostic(1, 1)))).await {
            Ok(Ok(_)) => {}
            Ok(Err(status)) => failed_submits.push(format!("{:?}: {}", status.code(), status.message())),
            Err(_) => failed_submits.push("no answer within 5 s".into()),
        }
        submits += 1;
        slowest = slowest.max(t.elapsed());
        let listed =
            tokio::time::timeout(Duration::from_secs(2), models.list_models(ListModelsRequest::default())).await;
        let workers = match listed {
            Ok(Ok(list)) => list.into_inner().models.iter().find(|m| m.name == "diagnostic").map_or(0, |m| m.workers),
            _ => 0,
        };
        if workers == 0 {
            workerless += 1;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    rig.etcd.cont(frozen);

    let (events, longest_gap) = watcher.await.unwrap().expect("the watch ends with the job, not an error");
    let done = client.get_job(GetJobRequest { job_id: job.id.clone(), ..Default::default() }).await.unwrap();
    let done = done.into_inner().job.unwrap();
    eprintln!(
        "froze member {frozen} for {stall:?}: {}/{submits} Submits failed (slowest {slowest:?}), \
         {workerless} samples without a worker, job attempts {}, state {:?}, longest watch silence {longest_gap:?}; \
         failures: {:?}",
        failed_submits.len(),
        done.attempts,
        done.state(),
        failed_submits.iter().take(3).collect::<Vec<_>>()
    );
    assert_eq!(done.state(), JobState::Succeeded, "{done:?}");
    assert_eq!(done.attempts, 1, "the running job was re-run: its worker's session was lost");
    assert_eq!(workerless, 0, "the worker was dropped during the stall");
    let first = events.first().expect("events after the stall").seq;
    assert_contiguous(&events, first);
    assert!(matches!(events.last().unwrap().event, Some(Event::Result(_))));
    assert!(longest_gap < Duration::from_secs(3), "the watch went silent for {longest_gap:?}");
    assert!(failed_submits.is_empty(), "Submits failed during the stall: {failed_submits:?}");
}

/// Two of three members killed: health says NOT_SERVING in about a second (at most 5 s
/// on a loaded machine) and Submit fails UNAVAILABLE within a few seconds; once they are back, health says SERVING, a Submit succeeds and
/// a job runs to its end, with nothing restarted but etcd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_quorum() {
    let mut rig = rig(|_| vec![0, 1, 2]).await;
    let mut health = health(&rig.server.url).await;
    assert_eq!(serving(&mut health).await, Some(ServingStatus::Serving));
    let leader = rig.etcd.leader().await.unwrap();
    let lost = [leader, followers(leader)[0]];
    for &i in &lost {
        rig.etcd.kill(i).await;
    }
    let killed_at = Instant::now();
    let not_serving_after = loop {
        if serving(&mut health).await == Some(ServingStatus::NotServing) {
            break killed_at.elapsed();
        }
        assert!(killed_at.elapsed() < Duration::from_secs(15), "health still SERVING 15 s after quorum was lost");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut client = rig.server.client().await;
    let t = Instant::now();
    let refused = tokio::time::timeout(Duration::from_secs(15), client.create_job(create_request(diagnostic(1, 1))))
        .await
        .expect("Submit answers within 15 s")
        .expect_err("Submit cannot commit without quorum");
    let refused_after = t.elapsed();

    for &i in &lost {
        rig.etcd.restart(i, false).await.unwrap();
    }
    let back_at = Instant::now();
    let serving_after = loop {
        if serving(&mut health).await == Some(ServingStatus::Serving) {
            break back_at.elapsed();
        }
        assert!(back_at.elapsed() < Duration::from_secs(20), "health not SERVING 20 s after quorum returned");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    wait_for_workers(&rig.server.url, 1).await;
    let t = Instant::now();
    let accepted =
        tokio::time::timeout(Duration::from_secs(5), client.create_job(create_request(diagnostic(1, 1)))).await;
    let accepted_after = t.elapsed();
    // And it runs: the watch, the dispatcher and the worker's session are all back.
    let ran = run(&mut client, diagnostic(2, 10), Duration::from_secs(15)).await;
    eprintln!(
        "quorum lost: NOT_SERVING after {not_serving_after:?}; Submit answered {:?} after {refused_after:?}; \
         quorum back: SERVING after {serving_after:?}; then Submit: {:?} in {accepted_after:?}, a job ran in {:?}",
        refused.code(),
        accepted.as_ref().map(|r| r.as_ref().map(|_| "ok").map_err(|s| s.code())),
        t.elapsed()
    );
    assert!(matches!(ran.last().and_then(|e| e.event.as_ref()), Some(Event::Result(_))), "{ran:?}");
    // Typically 0.6–1.2 s and 1.7–2.0 s on an idle machine (printed above); the bounds
    // leave room for a CI machine running other suites at once (the old code: 3.9 s to
    // NOT_SERVING only with the machine idle, and Submits hanging 10 s).
    assert!(not_serving_after <= Duration::from_secs(5), "NOT_SERVING only after {not_serving_after:?}");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(refused_after <= Duration::from_secs(8), "Submit failed only after {refused_after:?}");
    accepted.expect("Submit answers within 5 s").expect("Submit succeeds once quorum is back");
}
