//! Failures a real deployment sees: a worker process killed mid-job, the service killed
//! and restarted, two replicas sharing one etcd, the store going away.

mod support;

use std::time::Duration;

use deephardway::v1::{GetJobRequest, Job, JobEvent, JobState, WatchJobRequest, job_event::Event};
use support::*;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

/// Watches a job to its end after `after_seq`, resuming through dropped connections and
/// restarts.
async fn watch_to_end(url: &str, job_id: &str, after_seq: u64, within: Duration) -> Vec<JobEvent> {
    let deadline = tokio::time::Instant::now() + within;
    let mut events: Vec<JobEvent> = Vec::new();
    while tokio::time::Instant::now() < deadline {
        let Ok(channel) = deephardway::connect(url).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut client = deephardway::v1::job_service_client::JobServiceClient::new(channel);
        let after_seq = events.last().map_or(after_seq, |e| e.seq);
        let Ok(stream) = client.watch_job(WatchJobRequest { job_id: job_id.to_string(), after_seq }).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut stream = stream.into_inner();
        while let Ok(Ok(Some(message))) = tokio::time::timeout_at(deadline, stream.message()).await {
            let Some(event) = message.event() else { continue }; // a queue status
            let done = event.event.as_ref().is_some_and(deephardway::is_final);
            events.push(event);
            if done {
                return events;
            }
        }
    }
    panic!("job {job_id} did not finish within {within:?}: {events:?}");
}

/// A job's record (GetJob's default FULL view).
async fn get(client: &mut JobsClient, job_id: &str) -> Job {
    let request = GetJobRequest { job_id: job_id.to_string(), view: 0 };
    client.get_job(request).await.expect("GetJob").into_inner().job.expect("a job")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_killed_mid_job_completes_on_another_worker() {
    let backend = Backend::embedded().await;
    let server = TestServer::start(backend.open().await).await;
    let mut workers = [WorkerProcess::start(&server.url, "w1", 1), WorkerProcess::start(&server.url, "w2", 1)];
    wait_for_workers(&server.url, 2).await;
    let mut client = server.client().await;
    let job = create(&mut client, diagnostic(20, 100)).await;

    let mut stream = watch(&mut client, &job.id, 0).await.unwrap();
    let mut seen = Vec::new();
    let victim = loop {
        let event = next_event(&mut stream).await.unwrap().unwrap();
        let progressed = matches!(event.event, Some(Event::Progress(ref p)) if p.fraction >= 0.15);
        seen.push(event);
        if progressed {
            break started_names(&seen).pop().expect("started before progress");
        }
    };
    let index = if victim == "w1" { 0 } else { 1 };
    workers[index].kill().await;

    let after = seen.last().expect("events seen").seq;
    let rest = watch_to_end(&server.url, &job.id, after, Duration::from_secs(30)).await;
    let all: Vec<JobEvent> = seen.into_iter().chain(rest).collect();
    assert_contiguous(&all, 1);
    let names = started_names(&all);
    assert_eq!(names.len(), 2, "started twice: {names:?}");
    assert_ne!(names[0], names[1], "the rerun went to the other worker");
    let requeued =
        all.iter().any(|e| matches!(&e.event, Some(Event::Queued(q)) if q.attempt == 2 && q.reason == "worker lost"));
    assert!(requeued, "a queued event for attempt 2: {all:?}");
    let results = all.iter().filter(|e| matches!(e.event, Some(Event::Result(_)))).count();
    assert_eq!(results, 1, "exactly one result");
    assert!(matches!(all.last().unwrap().event, Some(Event::Result(_))));
    let job = get(&mut client, &job.id).await;
    assert_eq!((job.state, job.attempts), (JobState::Succeeded as i32, 2));
    assert_eq!(job.worker_name, names[1], "the record names the worker that finished it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_killed_and_restarted_keeps_every_accepted_job() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut service = ServiceProcess::start(dir.path(), port).await;
    let worker = TestWorker::start(&service.url, "w1", 1);
    wait_for_workers(&service.url, 1).await;
    let mut client = jobs_client(&service.url).await;
    let long = create(&mut client, diagnostic(15, 100)).await;
    let mut queued = Vec::new();
    for _ in 0..3 {
        queued.push(create(&mut client, diagnostic(2, 10)).await.id);
    }
    // Kill the service while the long job runs and the others wait.
    let mut stream = watch(&mut client, &long.id, 0).await.unwrap();
    while !matches!(next_event(&mut stream).await.unwrap().unwrap().event, Some(Event::Progress(_))) {}
    service.kill().await;
    drop(stream);

    let service = ServiceProcess::start(dir.path(), port).await;
    for id in std::iter::once(&long.id).chain(&queued) {
        let events = watch_to_end(&service.url, id, 0, Duration::from_secs(60)).await;
        assert!(matches!(events.last().unwrap().event, Some(Event::Result(_))), "{id}: {events:?}");
        assert_contiguous(&events, 1);
    }
    let mut client = jobs_client(&service.url).await;
    let long = get(&mut client, &long.id).await;
    assert_eq!(long.attempts, 2, "the interrupted job ran again");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_etcd_serve_any_watcher() {
    let backend = Backend::etcd().await;
    let a = TestServer::start(backend.open().await).await;
    let b = TestServer::start(backend.open().await).await;
    let _worker = TestWorker::start(&a.url, "on-a", 2);
    wait_for_workers(&b.url, 1).await;

    // Submit on B (whose only worker is connected to A), watch on both.
    let mut on_b = b.client().await;
    let job = create(&mut on_b, diagnostic(6, 50)).await;
    let mut on_a = a.client().await;
    let watch_a = watch(&mut on_a, &job.id, 0).await.unwrap();
    let watch_b = watch(&mut on_b, &job.id, 0).await.unwrap();
    let (from_a, from_b) = tokio::join!(
        collect_events(watch_a, Duration::from_secs(20)),
        collect_events(watch_b, Duration::from_secs(20))
    );
    let (from_a, from_b) = (from_a.unwrap(), from_b.unwrap());
    assert_contiguous(&from_a, 1);
    assert_eq!(from_a, from_b, "both replicas tell the same story");
    assert_eq!(started_names(&from_a), ["on-a"]);
    assert!(matches!(from_a.last().unwrap().event, Some(Event::Result(_))));
    a.shutdown().await;
    b.shutdown().await;
}

/// Each served model has a health entry (`model/<name>`): Health/Watch sees it SERVING
/// when a worker that serves it connects and NOT_SERVING when the last one leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_models_health_follows_its_workers() {
    let backend = Backend::embedded().await;
    let server = TestServer::start(backend.open().await).await;
    let mut health = HealthClient::new(deephardway::connect(&server.url).await.unwrap());
    let request = HealthCheckRequest { service: "model/diagnostic".into() };
    // A model never served is unknown: Check says NOT_FOUND, and Watch streams
    // SERVICE_UNKNOWN and then follows the model once a worker serves it (the protocol's
    // rule for Watch).
    assert_eq!(health.check(request.clone()).await.unwrap_err().code(), tonic::Code::NotFound);
    let mut statuses = health.watch(request.clone()).await.unwrap().into_inner();
    let mut next = async || {
        let message = tokio::time::timeout(Duration::from_secs(5), statuses.message()).await;
        message.expect("a status within 5 s").unwrap().unwrap().status()
    };
    assert_eq!(next().await, ServingStatus::ServiceUnknown);
    let worker = TestWorker::start(&server.url, "w1", 1);
    wait_for_workers(&server.url, 1).await;
    assert_eq!(next().await, ServingStatus::Serving);
    let second = TestWorker::start(&server.url, "w2", 1);
    wait_for_workers(&server.url, 2).await;
    worker.stop().await;
    // One of two left: still served. Then the last one leaves.
    let check = HealthCheckRequest { service: "model/diagnostic".into() };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(health.check(check).await.unwrap().into_inner().status(), ServingStatus::Serving);
    second.stop().await;
    assert_eq!(next().await, ServingStatus::NotServing);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_not_serving_while_the_store_is_down() {
    let backend = Backend::etcd().await;
    let server = TestServer::start(backend.open().await).await;
    let mut health = HealthClient::new(deephardway::connect(&server.url).await.unwrap());
    let check = |service: &str| HealthCheckRequest { service: service.to_string() };
    let mut status = ServingStatus::Unknown;
    for _ in 0..50 {
        status = health.check(check("deephardway.v1.JobService")).await.unwrap().into_inner().status();
        if status == ServingStatus::Serving {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, ServingStatus::Serving);
    for service in
        ["", "deephardway.v1.ModelService", "deephardway.v1.DatasetService", "deephardway.worker.v1.WorkerService"]
    {
        let answer = health.check(check(service)).await.unwrap().into_inner().status();
        assert_eq!(answer, ServingStatus::Serving, "{service:?}");
    }
    // The old names are gone.
    let refused = health.check(check("deephardway.v1.Jobs")).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::NotFound, "{refused:?}");

    let Backend::Etcd(etcd) = backend else { unreachable!() };
    drop(etcd); // kills etcd
    for _ in 0..100 {
        status = health.check(check("")).await.unwrap().into_inner().status();
        if status == ServingStatus::NotServing {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("health still {status:?} 10 s after the store went away");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_ends_live_streams_with_a_resume_point() {
    let backend = Backend::embedded().await;
    let server = TestServer::start(backend.open().await).await;
    let _worker = TestWorker::start(&server.url, "w1", 1);
    wait_for_workers(&server.url, 1).await;
    let mut client = server.client().await;
    let job = create(&mut client, diagnostic(1000, 50)).await;
    let mut stream = watch(&mut client, &job.id, 0).await.unwrap();
    let mut last = 0;
    while last < 3 {
        last = next_event(&mut stream).await.unwrap().unwrap().seq;
    }
    let stopping = tokio::spawn(server.shutdown());
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.message()).await.expect("stream ends") {
            Ok(Some(message)) => last = message.event().map_or(last, |e| e.seq),
            Ok(None) => panic!("the stream ended without saying why"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(status.message().contains(&format!("after_seq={last}")), "{}", status.message());
    stopping.await.expect("server shut down within its limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deephardway_up_runs_everything_on_one_machine() {
    let mut up = UpProcess::start(None, &[]).await;
    let (url, dir) = (up.url.clone(), up.data_dir.path().to_path_buf());
    let mut client = jobs_client(&url).await;
    let events = run(&mut client, diagnostic(5, 20), Duration::from_secs(20)).await;
    assert_contiguous(&events, 1);
    assert!(matches!(events.last().unwrap().event, Some(Event::Result(_))));
    assert!(dir.join("store.redb").exists(), "the embedded store lives in --data-dir");

    // SIGTERM: a clean exit.
    let pid = up.child.id().expect("running") as i32;
    sigterm(pid);
    let status =
        tokio::time::timeout(Duration::from_secs(15), up.child.wait()).await.expect("exits on SIGTERM").unwrap();
    assert!(status.success(), "{status:?}");
}

fn sigterm(pid: i32) {
    let status = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status().unwrap();
    assert!(status.success());
}
