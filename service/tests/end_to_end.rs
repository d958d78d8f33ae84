//! End to end over real gRPC, on both stores: a real server on a free port, real
//! workers, the generated client, exactly what a user does.

mod support;

use std::time::Duration;

use deephardway::v1::{
    CancelRequest, DiagnosticInput, GenerateInput, GetJobRequest, JobState, ListJobsRequest, SubmitRequest,
    WatchRequest, job_event::Event, submit_request::Input,
};
use deephardway_service::ServiceConfig;
use support::*;
use tonic::Code;

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::support::Backend::embedded().await).await
                }
            )*
        }
        mod etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::support::Backend::etcd().await).await
                }
            )*
        }
    };
}

on_both_backends!(
    run_streams_every_event_in_order,
    watch_resumes_after_seq_without_gap_or_repeat,
    higher_priority_runs_first,
    request_id_makes_submit_idempotent,
    cancel_queued_job,
    cancel_running_job_stops_the_worker,
    failing_job_ends_with_its_status,
    job_over_its_timeout_fails_with_deadline_exceeded,
    bad_input_is_rejected_and_changes_nothing,
    full_queue_is_resource_exhausted,
    finished_jobs_are_removed_after_retention,
    output_bursts_are_coalesced,
    watch_jobs_sends_a_snapshot_then_live_changes,
);

async fn run_streams_every_event_in_order(backend: Backend) {
    let server = TestServer::start(backend.open().await).await;
    let _worker = TestWorker::start(&server.url, "w1", 2);
    wait_for_workers(&server.url, 1).await;
    let mut client = server.client().await;

    let mut request = diagnostic(5, 20);
    if let Some(Input::Diagnostic(d)) = &mut request.input {
        d.echo = "hello".into();
    }
    let stream = client.run(request).await.expect("Run").into_inner();
    let events = collect_events(stream, Duration::from_secs(20)).await.expect("stream ends cleanly");

    assert_contiguous(&events, 1);
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| match e.event.as_ref().expect("event set") {
            Event::Queued(_) => "queued",
            Event::Started(_) => "started",
            Event::Progress(_) => "progress",
            Event::Output(_) => "output",
            Event::Result(_) => "result",
            Event::Failed(_) => "failed",
            Event::Cancelled(_) => "cancelled",
        })
        .collect();
    assert_eq!(kinds, ["queued", "started", "progress", "progress", "progress", "progress", "progress", "result"]);
    let Some(Event::Started(started)) = &events[1].event else { unreachable!() };
    assert_eq!(started.worker_name, "w1");
    assert_eq!(started.device, "cpu");
    let Some(Event::Progress(last)) = &events[6].event else { unreachable!() };
    assert_eq!(last.fraction, 1.0);
    let Some(Event::Result(result)) = &events[7].event else { unreachable!() };
    let Some(deephardway::v1::job_result::Value::Diagnostic(d)) = &result.value else { panic!("{result:?}") };
    assert_eq!((d.steps, d.echo.as_str()), (5, "hello"));

    let job = client.get(GetJobRequest { job_id: events[0].job_id.clone() }).await.expect("Get").into_inner();
    assert_eq!(job.state, JobState::Succeeded as i32);
    assert_eq!(job.attempts, 1);
    assert_eq!(job.last_seq, 8);
    server.shutdown().await;
}

async fn watch_resumes_after_seq_without_gap_or_repeat(backend: Backend) {
    let server = TestServer::start(backend.open().await).await;
    let _worker = TestWorker::start(&server.url, "w1", 1);
    wait_for_workers(&server.url, 1).await;
    let mut client = server.client().await;
    let job = client.submit(diagnostic(12, 40)).await.expect("Submit").into_inner().job.expect("job");

    // Read the first four events, then hang up mid-stream.
    let mut first = Vec::new();
    {
        let mut stream =
            client.watch(WatchRequest { job_id: job.id.clone(), after_seq: 0 }).await.expect("Watch").into_inner();
        while first.len() < 4 {
            first.push(stream.message().await.expect("event").expect("not ended"));
        }
    }
    // Resume where we left off, on a new connection.
    let mut other = jobs_client(&server.url).await;
    let rest = other.watch(WatchRequest { job_id: job.id.clone(), after_seq: 4 }).await.expect("Watch").into_inner();
    let rest = collect_events(rest, Duration::from_secs(20)).await.expect("stream ends cleanly");

    let all: Vec<_> = first.into_iter().chain(rest).collect();
    assert_contiguous(&all, 1);
    assert!(matches!(all.last().and_then(|e| e.event.as_ref()), Some(Event::Result(_))));
    assert_eq!(all.len(), 2 + 12 + 1);

    // Watching a finished job replays exactly what is left.
    let tail = client.watch(WatchRequest { job_id: job.id.clone(), after_seq: 13 }).await.expect("Watch").into_inner();
    let tail = collect_events(tail, Duration::from_secs(5)).await.expect("ends");
    assert_eq!(tail.iter().map(|e| e.seq).collect::<Vec<_>>(), [14, 15]);
    server.shutdown().await;
}

async fn higher_priority_runs_first(backend: Backend) {
    let server = TestServer::start(backend.open().await).await;
    let _worker = TestWorker::start(&server.url, "w1", 1);
    wait_for_workers(&server.url, 1).await;
    let mut client = server.client().await;

    // Occupy the only slot, then queue jobs with mixed priorities.
    let blocker = client.submit(diagnostic(1, 500)).await.expect("Submit").into_inner().job.expect("job");
    let mut ids = Vec::new();
    for priority in [0, 5, -3, 5, 10] {
        let mut request = diagnostic(1, 1);
        request.priority = priority;
        let job = client.submit(request).await.expect("Submit").into_inner().job.expect("job");
        ids.push((priority, job.id));
    }
    let mut started = Vec::new();
    for (priority, id) in &ids {
        let stream = client.watch(WatchRequest { job_id: id.clone(), after_seq: 0 }).await.expect("Watch").into_inner();
        collect_events(stream, Duration::from_secs(20)).await.expect("ends");
        let job = client.get(GetJobRequest { job_id: id.clone() }).await.expect("Get").into_inner();
        assert_eq!(job.state, JobState::Succeeded as i32);
        let at = job.started_at.expect("started");
        started.push(((at.seconds, at.nanos), *priority, id.clone()));
    }
    started.sort();
    let order: Vec<i32> = started.iter().map(|(_, p, _)| *p).collect();
    assert_eq!(order, [10, 5, 5, 0, -3], "jobs ran in this priority order");
    // Equal priorities run first come, first served.
    let fives: Vec<&String> = started.iter().filter(|(_, p, _)| *p == 5).map(|(_, _, id)| id).collect();
    assert_eq!(fives, [&ids[1].1, &ids[3].1]);
    let blocker = client.get(GetJobRequest { job_id: blocker.id }).await.expect("Get").into_inner();
    assert_eq!(blocker.state, JobState::Succeeded as i32);
    server.shutdown().await;
}

async fn request_id_makes_submit_idempotent(backend: Backend) {
    let server = TestServer::start(backend.open().await).await;
    let _worker = TestWorker::start(&server.url, "w1", 1);
    wait_for_workers(&server.url, 1).await;
    let mut client = server.client().await;
    let mut request = diagnostic(2, 10);
    request.request_id = "order-42".into();
    let first = client.submit(request.clone()).await.expect("Submit").into_inner();
    let second = client.submit(request.clone()).await.expect("Submit").into_inner();
    assert!(!first.deduplicated);
    assert!(second.deduplicated);
    assert_eq!(first.job.as_ref().unwrap().id, second.job.as_ref().unwrap().id);

    // Concurrent duplicates also collapse to one job.
    request.request_id = "order-43".into();
    let mut handles = Vec::new();
    for _ in 0..8 {
        let mut c = server.client().await;
        let r = request.clone();
        handles.push(tokio::spawn(async move { c.submit(r).await.expect("Submit").into_inner().job.unwrap().id }));
    }
    let mut ids = Vec::new();
    for h in handles {
        ids.push(h.await.unwrap());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "one job for one request id: {ids:?}");
    let all = client.list(ListJobsRequest::default()).await.expect("List").into_inner().jobs;
    assert_eq!(all.len(), 2);
    server.shutdown().await;
}

async fn cancel_queued_job(backend: Backend) {
    let server = TestServer::start(backend.open().await).await;
    let _worker = TestWorker::start(&server.url, "w1", 1);
    wait_for_workers(&server.url, 1).await;
    let mut client = server.client().await;
    let blocker = client.submit(diagnostic(1, 800)).await.expect("Submit").into_inner().job.unwrap();
    let queued = client.submit(diagnostic(1, 1)).await.expect("Submit").into_inner().job.unwrap();

    let cancelled = client
        .cancel(CancelRequest { job_id: queued.id.clone(), reason: "changed my mind".into() })
        .await
        .expect("Cancel")
        .into_inner();
    assert_eq!(cancelled.state, JobState::Cancelled as i32);
    let events =
        client.watch(WatchRequest { job_id: queued.id.clone(), after_seq: 0 }).await.expect("Watch").into_inner();
    let events = collect_events(events, Duration::from_secs(5)).await.expect("ends");
    assert_eq!(events.len(), 2, "queued then cancelled: {events:?}");
    let Some(Event::Cancelled(c)) = &events[1].event else { panic!("{events:?}") };
    assert_eq!(c.reason, "changed my mind");

    // Cancelling again changes nothing.
    let again =
        client.cancel(CancelRequest { job_id: queued.id.clone(), reason: String::new() }).await.unwrap().into_inner();
    assert_eq!(again.last_seq, 2);
    // The blocker was not touched and finishes.
    let events = client.watch(WatchRequest { job_id: blocker.id, after_seq: 0 }).await.unwrap().into_inner();
    let events = collect_events(events, Duration::from_secs(10)).await.unwrap();
    assert!(matches!(events.last().unwrap().event, Some(Event::Result(_))));
    server.shutdown().await;
}

async fn cancel_running_job_stops_the_worker(backend: Backend) {
    let server = TestServer::start(backend.open().await).await;
    let _worker = TestWorker::start(&server.url, "w1", 1);
    wait_for_workers(&server.url, 1).await;
    let mut client = server.client().await;
    let job = client.submit(diagnostic(1000, 50)).await.expect("Submit").into_inner().job.unwrap();
    let mut stream = client.watch(WatchRequest { job_id: job.id.clone(), after_seq: 0 }).await.unwrap().into_inner();
    // Wait until it is running and has made progress.
    loop {
        let event = stream.message().await.unwrap().unwrap();
        if matches!(event.event, Some(Event::Progress(_))) {
            break;
        }
    }
    let asked = tokio::time::Instant::now();
    client.cancel(CancelRequest { job_id: job.id.clone(), reason: "stop".into() }).await.expect("Cancel");
    let rest = collect_events(stream, Duration::from_secs(10)).await.expect("ends");
    let Some(Event::Cancelled(c)) = &rest.last().unwrap().event else { panic!("{rest:?}") };
    assert_eq!(c.reason, "stop");
    // The worker stopped (well before the cancel grace would have ended it for it).
    assert!(asked.elapsed() < Duration::from_secs(2), "took {:?}", asked.elapsed());
    let job = client.get(GetJobRequest { job_id: job.id }).await.unwrap().into_inner();
    assert_eq!(job.state, JobState::Cancelled as i32);
    assert!(job.progress < 0.5);
    // The slot is free again.
    let next = client.run(diagnostic(1, 1)).await.unwrap().into_inner();
    let next = collect_events(next, Duration::from_secs(10)).await.unwrap();
    assert!(matches!(next.last().unwrap().event, Some(Event::Result(_))));
    server.shutdown().await;
}

async fn failing_job_ends_with_its_status(backend: Backend) {
    let server = TestServer::start(backend.open().await).await;
    let _worker = TestWorker::start(&server.url, "w1", 1);
    wait_for_workers(&server.url, 1).await;
    let mut client = server.client().await;
    let request = SubmitRequest {
        input: Some(Input::Diagnostic(DiagnosticInput { steps: 5, step_ms: 5, fail_at_step: 3, ..Default::default() })),
        ..Default::default()
    };
    let events =
        collect_events(client.run(request).await.unwrap().into_inner(), Duration::from_secs(10)).await.unwrap();
    assert_contiguous(&events, 1);
    let Some(Event::Failed(f)) = &events.last().unwrap().event else { panic!("{events:?}") };
    assert_eq!(f.code, Code::Internal as i32);
    assert!(f.message.contains("step 3"), "{}", f.message);
    let progress = events.iter().filter(|e| matches!(e.event, Some(Event::Progress(_)))).count();
    assert_eq!(progress, 2);
    let job = client.get(GetJobRequest { job_id: events[0].job_id.clone() }).await.unwrap().into_inner();
    assert_eq!(job.state, JobState::Failed as i32);
    assert_eq!(job.failure.unwrap().code, Code::Internal as i32);
    server.shutdown().await;
}

async fn job_over_its_timeout_fails_with_deadline_exceeded(backend: Backend) {
    let server = TestServer::start(backend.open().await).await;
    let _worker = TestWorker::start(&server.url, "w1", 1);
    wait_for_workers(&server.url, 1).await;
    let mut client = server.client().await;
    let mut request = diagnostic(100, 50);
    request.timeout_ms = 300;
    let events =
        collect_events(client.run(request).await.unwrap().into_inner(), Duration::from_secs(10)).await.unwrap();
    let Some(Event::Failed(f)) = &events.last().unwrap().event else { panic!("{events:?}") };
    assert_eq!(f.code, Code::DeadlineExceeded as i32, "{f:?}");
    // The worker was told to stop: the next job runs at once.
    let next =
        collect_events(client.run(diagnostic(1, 1)).await.unwrap().into_inner(), Duration::from_secs(5)).await.unwrap();
    assert!(matches!(next.last().unwrap().event, Some(Event::Result(_))));
    server.shutdown().await;
}

async fn bad_input_is_rejected_and_changes_nothing(backend: Backend) {
    let server = TestServer::start(backend.open().await).await;
    let _worker = TestWorker::start(&server.url, "w1", 1);
    wait_for_workers(&server.url, 1).await;
    let mut client = server.client().await;
    let before = server.store.range("/dhw/", 0).await.unwrap();

    let missing = "0190c0de-0000-7000-8000-000000000000".to_string();
    let status = client.get(GetJobRequest { job_id: missing.clone() }).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = client.watch(WatchRequest { job_id: missing.clone(), after_seq: 0 }).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = client.cancel(CancelRequest { job_id: missing, reason: String::new() }).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = client.get(GetJobRequest { job_id: "../etc".into() }).await.unwrap_err();
    assert_eq!((status.code(), status.message().starts_with("job_id:")), (Code::InvalidArgument, true));

    let mut cases: Vec<(SubmitRequest, Code, &str)> = vec![
        (SubmitRequest::default(), Code::InvalidArgument, "input:"),
        (diagnostic(0, 1), Code::InvalidArgument, "diagnostic.steps:"),
        (diagnostic(1, 10_000_000), Code::InvalidArgument, "diagnostic.step_ms:"),
        (
            SubmitRequest {
                input: Some(Input::Diagnostic(DiagnosticInput {
                    steps: 1,
                    echo: "x".repeat(5000),
                    ..Default::default()
                })),
                ..Default::default()
            },
            Code::InvalidArgument,
            "diagnostic.echo:",
        ),
        (SubmitRequest { priority: 1000, ..diagnostic(1, 1) }, Code::InvalidArgument, "priority:"),
        (SubmitRequest { model: "no/slashes".into(), ..diagnostic(1, 1) }, Code::InvalidArgument, "model:"),
        (SubmitRequest { request_id: "r".repeat(200), ..diagnostic(1, 1) }, Code::InvalidArgument, "request_id:"),
        (SubmitRequest { max_attempts: 99, ..diagnostic(1, 1) }, Code::InvalidArgument, "max_attempts:"),
        (
            SubmitRequest {
                input: Some(Input::Generate(GenerateInput { prompt: "x".repeat(100_000), ..Default::default() })),
                ..Default::default()
            },
            Code::InvalidArgument,
            "generate.prompt:",
        ),
        (
            SubmitRequest {
                input: Some(Input::Generate(GenerateInput {
                    prompt: "hi".into(),
                    temperature: f32::NAN,
                    ..Default::default()
                })),
                ..Default::default()
            },
            Code::InvalidArgument,
            "generate.temperature:",
        ),
        // Well-formed, but nobody serves it.
        (
            SubmitRequest {
                input: Some(Input::Generate(GenerateInput { prompt: "hi".into(), ..Default::default() })),
                ..Default::default()
            },
            Code::FailedPrecondition,
            "no connected worker serves model",
        ),
        (
            SubmitRequest { model: "nosuchmodel".into(), ..diagnostic(1, 1) },
            Code::FailedPrecondition,
            "no connected worker",
        ),
    ];
    // Bigger than tonic's default 4 MiB message limit: still our field-level answer.
    cases.push((
        SubmitRequest {
            input: Some(Input::Generate(GenerateInput { prompt: "x".repeat(5 << 20), ..Default::default() })),
            ..Default::default()
        },
        Code::InvalidArgument,
        "generate.prompt: is 5242880 bytes",
    ));
    for (request, code, message) in cases {
        let status = client.submit(request.clone()).await.unwrap_err();
        assert_eq!(status.code(), code, "{status:?}");
        assert!(status.message().contains(message), "{message:?} not in {:?}", status.message());
        let status = client.run(request).await.unwrap_err();
        assert_eq!(status.code(), code, "Run: {status:?}");
    }
    // Beyond the 64 MiB message limit the decoder refuses it before reading it.
    let huge = SubmitRequest {
        input: Some(Input::Diagnostic(DiagnosticInput { steps: 1, echo: "x".repeat(65 << 20), ..Default::default() })),
        ..Default::default()
    };
    let status = client.submit(huge).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(status.message().contains("too large"), "{}", status.message());

    let after = server.store.range("/dhw/", 0).await.unwrap();
    assert_eq!(before.kvs, after.kvs, "rejected requests changed the store");
    server.shutdown().await;
}

async fn full_queue_is_resource_exhausted(backend: Backend) {
    let config = ServiceConfig { max_queue_depth: 2, ..test_config() };
    let server = TestServer::start_with(backend.open().await, config).await;
    let _worker = TestWorker::start(&server.url, "w1", 1);
    wait_for_workers(&server.url, 1).await;
    let mut client = server.client().await;
    let running = client.submit(diagnostic(1, 1000)).await.unwrap().into_inner().job.unwrap();
    // Wait until the first leaves the queue, then fill the queue.
    let mut stream = client.watch(WatchRequest { job_id: running.id, after_seq: 0 }).await.unwrap().into_inner();
    while !matches!(stream.message().await.unwrap().unwrap().event, Some(Event::Started(_))) {}
    client.submit(diagnostic(1, 1)).await.unwrap();
    client.submit(diagnostic(1, 1)).await.unwrap();
    let status = client.submit(diagnostic(1, 1)).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("queue is full"), "{}", status.message());
    server.shutdown().await;
}

async fn finished_jobs_are_removed_after_retention(backend: Backend) {
    let config = ServiceConfig { retention: Duration::from_secs(1), ..test_config() };
    let server = TestServer::start_with(backend.open().await, config).await;
    let _worker = TestWorker::start(&server.url, "w1", 1);
    wait_for_workers(&server.url, 1).await;
    let mut client = server.client().await;
    let events =
        collect_events(client.run(diagnostic(1, 1)).await.unwrap().into_inner(), Duration::from_secs(5)).await.unwrap();
    let id = events[0].job_id.clone();
    for _ in 0..100 {
        match client.get(GetJobRequest { job_id: id.clone() }).await {
            Err(status) if status.code() == Code::NotFound => {
                let left = server.store.range(&format!("/dhw/events/{id}/"), 0).await.unwrap();
                assert!(left.kvs.is_empty(), "events outlived their job");
                server.shutdown().await;
                return;
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    panic!("job {id} was still there 10 s after a 1 s retention");
}

async fn output_bursts_are_coalesced(backend: Backend) {
    let server = TestServer::start(backend.open().await).await;
    let _worker = TestWorker::start(&server.url, "w1", 1);
    wait_for_workers(&server.url, 1).await;
    let mut client = server.client().await;
    let request = SubmitRequest {
        input: Some(Input::Diagnostic(DiagnosticInput {
            steps: 300,
            step_ms: 0,
            output_per_step: "tok ".into(),
            ..Default::default()
        })),
        ..Default::default()
    };
    let events =
        collect_events(client.run(request).await.unwrap().into_inner(), Duration::from_secs(20)).await.unwrap();
    assert_contiguous(&events, 1);
    let outputs: Vec<&str> = events
        .iter()
        .filter_map(|e| match &e.event {
            Some(Event::Output(o)) => Some(o.text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(outputs.concat(), "tok ".repeat(300), "no output lost or reordered");
    assert!(outputs.len() < 100, "300 chunks written as {} events", outputs.len());
    server.shutdown().await;
}

async fn watch_jobs_sends_a_snapshot_then_live_changes(backend: Backend) {
    use deephardway::v1::WatchJobsRequest;
    let server = TestServer::start(backend.open().await).await;
    let _worker = TestWorker::start(&server.url, "w1", 1);
    wait_for_workers(&server.url, 1).await;
    let mut client = server.client().await;
    let earlier = client.submit(diagnostic(1, 1)).await.unwrap().into_inner().job.unwrap();
    collect_events(
        client.watch(WatchRequest { job_id: earlier.id.clone(), after_seq: 0 }).await.unwrap().into_inner(),
        Duration::from_secs(5),
    )
    .await
    .unwrap();

    let mut updates = client.watch_jobs(WatchJobsRequest { limit: 10 }).await.unwrap().into_inner();
    let first = updates.message().await.unwrap().unwrap();
    assert!(first.snapshot);
    assert_eq!(first.job.as_ref().unwrap().id, earlier.id);

    let job = client.submit(diagnostic(3, 30)).await.unwrap().into_inner().job.unwrap();
    let mut states = Vec::new();
    while states.last() != Some(&(JobState::Succeeded as i32)) {
        let update = tokio::time::timeout(Duration::from_secs(10), updates.message()).await.unwrap().unwrap().unwrap();
        let seen = update.job.unwrap();
        assert!(!update.snapshot);
        if seen.id == job.id && states.last() != Some(&seen.state) {
            states.push(seen.state);
        }
    }
    let expected = [JobState::Queued, JobState::Running, JobState::Succeeded].map(|s| s as i32);
    assert_eq!(states, expected, "the job's life, live");
    let status = client.watch_jobs(WatchJobsRequest { limit: 5000 }).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    server.shutdown().await;
}
