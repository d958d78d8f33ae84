//! End to end over real gRPC, on both stores: a real server on a free port, real
//! workers, the generated client, exactly what a user does.

mod support;

use std::{collections::HashSet, sync::Arc, time::Duration};

use deephardway::v1::{
    CancelJobRequest, ChatMessage, CreateDatasetRequest, CreateJobRequest, DeleteDatasetRequest, DiagnosticInput,
    GenerateInput, GetDatasetRequest, GetJobRequest, Job, JobEvent, JobKind, JobSpec, JobState, JobView,
    ListDatasetsRequest, ListJobsRequest, ListModelsRequest, RunJobRequest, TrainInput, WatchJobsRequest,
    dataset_service_client::DatasetServiceClient, job_event::Event, job_result, job_spec::Input,
    model_service_client::ModelServiceClient,
};
use deephardway_service::ServiceConfig;
use prost_types::Duration as ProtoDuration;
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
    watch_after_the_final_event_ends_at_once,
    higher_priority_runs_first,
    request_id_makes_create_idempotent,
    cancel_queued_job,
    cancel_running_job_stops_the_worker,
    failing_job_ends_with_its_status,
    job_over_its_timeout_fails_with_deadline_exceeded,
    bad_input_is_rejected_and_changes_nothing,
    full_queue_is_resource_exhausted,
    finished_jobs_are_removed_after_retention,
    output_bursts_are_coalesced,
    a_jobs_first_output_is_written_at_once,
    watch_jobs_sends_a_snapshot_then_live_changes,
    list_jobs_pages_newest_first,
    views_leave_out_inputs_and_results_where_asked,
    list_models_pages_by_name,
    datasets_are_created_paged_got_and_deleted,
);

/// A finished job's record, as GetJob returns it by default (the FULL view).
async fn get(client: &mut JobsClient, job_id: &str) -> Job {
    let request = GetJobRequest { job_id: job_id.to_string(), view: JobView::Unspecified as i32 };
    client.get_job(request).await.expect("GetJob").into_inner().job.expect("a job")
}

async fn list(client: &mut JobsClient, request: ListJobsRequest) -> Result<(Vec<Job>, String), tonic::Status> {
    let response = client.list_jobs(request).await?.into_inner();
    Ok((response.jobs, response.next_page_token))
}

async fn cancel(client: &mut JobsClient, job_id: &str, reason: &str) -> Result<Job, tonic::Status> {
    let request = CancelJobRequest { job_id: job_id.to_string(), reason: reason.to_string() };
    Ok(client.cancel_job(request).await?.into_inner().job.expect("a job"))
}

fn diagnostic_input(spec: &JobSpec) -> &DiagnosticInput {
    let Some(Input::Diagnostic(d)) = &spec.input else { panic!("not a diagnostic spec: {spec:?}") };
    d
}

async fn run_streams_every_event_in_order(backend: Backend) {
    let server = TestServer::start(backend.open().await).await;
    let _worker = TestWorker::start(&server.url, "w1", 2);
    wait_for_workers(&server.url, 1).await;
    let mut client = server.client().await;

    let mut spec = diagnostic(5, 20);
    if let Some(Input::Diagnostic(d)) = &mut spec.input {
        d.echo = "hello".into();
    }
    let stream = client.run_job(run_request(spec)).await.expect("RunJob").into_inner();
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
    let Some(job_result::Value::Diagnostic(d)) = &result.value else { panic!("{result:?}") };
    assert_eq!((d.steps, d.echo.as_str()), (5, "hello"));

    let job = get(&mut client, &events[0].job_id).await;
    assert_eq!(job.state, JobState::Succeeded as i32);
    assert_eq!(job.attempts, 1);
    assert_eq!(job.last_seq, 8);
    assert_eq!(job.kind, JobKind::Diagnostic as i32);
    assert_eq!(job.model, "diagnostic", "the default model filled in");
    let (create, start, end) = (job.create_time.unwrap(), job.start_time.unwrap(), job.end_time.unwrap());
    let at = |t: prost_types::Timestamp| (t.seconds, t.nanos);
    assert!(at(create) <= at(start) && at(start) <= at(end), "{job:?}");
    assert!(job.timeout.is_some(), "the server's default timeout filled in: {job:?}");
    server.shutdown().await;
}

async fn watch_resumes_after_seq_without_gap_or_repeat(backend: Backend) {
    let server = TestServer::start(backend.open().await).await;
    let _worker = TestWorker::start(&server.url, "w1", 1);
    wait_for_workers(&server.url, 1).await;
    let mut client = server.client().await;
    let job = create(&mut client, diagnostic(12, 40)).await;

    // Read the first four events, then hang up mid-stream.
    let mut first = Vec::new();
    {
        let mut stream = watch(&mut client, &job.id, 0).await.expect("WatchJob");
        while first.len() < 4 {
            first.push(next_event(&mut stream).await.expect("event").expect("not ended"));
        }
    }
    // Resume where we left off, on a new connection.
    let mut other = jobs_client(&server.url).await;
    let rest = watch(&mut other, &job.id, 4).await.expect("WatchJob");
    let rest = collect_events(rest, Duration::from_secs(20)).await.expect("stream ends cleanly");

    let all: Vec<_> = first.into_iter().chain(rest).collect();
    assert_contiguous(&all, 1);
    assert!(matches!(all.last().and_then(|e| e.event.as_ref()), Some(Event::Result(_))));
    assert_eq!(all.len(), 2 + 12 + 1);

    // Watching a finished job replays exactly what is left.
    let tail = watch(&mut client, &job.id, 13).await.expect("WatchJob");
    let tail = collect_events(tail, Duration::from_secs(5)).await.expect("ends");
    assert_eq!(tail.iter().map(|e| e.seq).collect::<Vec<_>>(), [14, 15]);
    // Past the last event of a finished job is a bad request naming after_seq.
    let status = watch(&mut client, &job.id, 16).await.unwrap_err();
    assert_invalid_field(&status, "after_seq");
    server.shutdown().await;
}

/// A watcher that saw the final event and reconnects (with `after_seq` at it) gets an
/// empty stream that ends at once: there is nothing after the final event.
async fn watch_after_the_final_event_ends_at_once(backend: Backend) {
    let server = TestServer::start(backend.open().await).await;
    let _worker = TestWorker::start(&server.url, "w1", 1);
    wait_for_workers(&server.url, 1).await;
    let mut client = server.client().await;
    let events = run(&mut client, diagnostic(1, 1), Duration::from_secs(10)).await;
    let (id, last) = (events[0].job_id.clone(), events.last().unwrap().seq);
    let rest = collect_events(watch(&mut client, &id, last).await.expect("WatchJob"), Duration::from_secs(5));
    assert!(rest.await.expect("ends").is_empty());
    server.shutdown().await;
}

async fn higher_priority_runs_first(backend: Backend) {
    let server = TestServer::start(backend.open().await).await;
    let _worker = TestWorker::start(&server.url, "w1", 1);
    wait_for_workers(&server.url, 1).await;
    let mut client = server.client().await;

    // Occupy the only slot, then queue jobs with mixed priorities.
    let blocker = create(&mut client, diagnostic(1, 500)).await;
    let mut ids = Vec::new();
    for priority in [0, 5, -3, 5, 10] {
        let mut spec = diagnostic(1, 1);
        spec.priority = priority;
        let job = create(&mut client, spec).await;
        ids.push((priority, job.id));
    }
    let mut started = Vec::new();
    for (priority, id) in &ids {
        let stream = watch(&mut client, id, 0).await.expect("WatchJob");
        collect_events(stream, Duration::from_secs(20)).await.expect("ends");
        let job = get(&mut client, id).await;
        assert_eq!(job.state, JobState::Succeeded as i32);
        let at = job.start_time.expect("started");
        started.push(((at.seconds, at.nanos), *priority, id.clone()));
    }
    started.sort();
    let order: Vec<i32> = started.iter().map(|(_, p, _)| *p).collect();
    assert_eq!(order, [10, 5, 5, 0, -3], "jobs ran in this priority order");
    // Equal priorities run first come, first served.
    let fives: Vec<&String> = started.iter().filter(|(_, p, _)| *p == 5).map(|(_, _, id)| id).collect();
    assert_eq!(fives, [&ids[1].1, &ids[3].1]);
    let blocker = get(&mut client, &blocker.id).await;
    assert_eq!(blocker.state, JobState::Succeeded as i32);
    server.shutdown().await;
}

async fn request_id_makes_create_idempotent(backend: Backend) {
    let server = TestServer::start(backend.open().await).await;
    let _worker = TestWorker::start(&server.url, "w1", 1);
    wait_for_workers(&server.url, 1).await;
    let mut client = server.client().await;
    let mut request = CreateJobRequest { spec: Some(diagnostic(2, 10)), request_id: "order-42".into() };
    let first = client.create_job(request.clone()).await.expect("CreateJob").into_inner();
    let second = client.create_job(request.clone()).await.expect("CreateJob").into_inner();
    assert!(!first.deduplicated);
    assert!(second.deduplicated);
    let first_job = first.job.as_ref().unwrap();
    assert_eq!(first_job.id, second.job.as_ref().unwrap().id);
    assert_eq!(first_job.request_id, "order-42", "the job records its key");
    // RunJob with the same key watches the first job instead of creating another.
    let run = RunJobRequest { spec: request.spec.clone(), request_id: "order-42".into() };
    let events = collect_events(client.run_job(run).await.expect("RunJob").into_inner(), Duration::from_secs(10))
        .await
        .expect("ends");
    assert!(events.iter().all(|e| e.job_id == first_job.id), "{events:?}");
    assert!(matches!(events.last().unwrap().event, Some(Event::Result(_))));

    // Concurrent duplicates also collapse to one job.
    request.request_id = "order-43".into();
    let mut handles = Vec::new();
    for _ in 0..8 {
        let mut c = server.client().await;
        let r = request.clone();
        handles
            .push(tokio::spawn(async move { c.create_job(r).await.expect("CreateJob").into_inner().job.unwrap().id }));
    }
    let mut ids = Vec::new();
    for h in handles {
        ids.push(h.await.unwrap());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "one job for one request id: {ids:?}");
    let (all, _) = list(&mut client, ListJobsRequest::default()).await.expect("ListJobs");
    assert_eq!(all.len(), 2);
    server.shutdown().await;
}

async fn cancel_queued_job(backend: Backend) {
    let server = TestServer::start(backend.open().await).await;
    let _worker = TestWorker::start(&server.url, "w1", 1);
    wait_for_workers(&server.url, 1).await;
    let mut client = server.client().await;
    let blocker = create(&mut client, diagnostic(1, 800)).await;
    let queued = create(&mut client, diagnostic(1, 1)).await;

    let cancelled = cancel(&mut client, &queued.id, "changed my mind").await.expect("CancelJob");
    assert_eq!(cancelled.state, JobState::Cancelled as i32);
    assert_eq!(cancelled.cancel_reason, "changed my mind", "the record keeps why, as for a running job");
    assert!(cancelled.spec.as_ref().is_some_and(|s| s.input.is_none()), "CancelJob answers the BASIC view");
    let events = watch(&mut client, &queued.id, 0).await.expect("WatchJob");
    let events = collect_events(events, Duration::from_secs(5)).await.expect("ends");
    assert_eq!(events.len(), 2, "queued then cancelled: {events:?}");
    let Some(Event::Cancelled(c)) = &events[1].event else { panic!("{events:?}") };
    assert_eq!(c.reason, "changed my mind");

    // Cancelling again changes nothing.
    let again = cancel(&mut client, &queued.id, "").await.unwrap();
    assert_eq!(again.last_seq, 2);
    // The blocker was not touched and finishes.
    let events = watch(&mut client, &blocker.id, 0).await.unwrap();
    let events = collect_events(events, Duration::from_secs(10)).await.unwrap();
    assert!(matches!(events.last().unwrap().event, Some(Event::Result(_))));
    server.shutdown().await;
}

async fn cancel_running_job_stops_the_worker(backend: Backend) {
    let server = TestServer::start(backend.open().await).await;
    let _worker = TestWorker::start(&server.url, "w1", 1);
    wait_for_workers(&server.url, 1).await;
    let mut client = server.client().await;
    let job = create(&mut client, diagnostic(1000, 50)).await;
    let mut stream = watch(&mut client, &job.id, 0).await.unwrap();
    // Wait until it is running and has made progress.
    loop {
        let event = next_event(&mut stream).await.unwrap().unwrap();
        if matches!(event.event, Some(Event::Progress(_))) {
            break;
        }
    }
    let asked = tokio::time::Instant::now();
    let running = cancel(&mut client, &job.id, "stop").await.expect("CancelJob");
    assert!(running.cancel_requested, "{running:?}");
    assert_eq!(running.cancel_reason, "stop");
    let rest = collect_events(stream, Duration::from_secs(10)).await.expect("ends");
    let Some(Event::Cancelled(c)) = &rest.last().unwrap().event else { panic!("{rest:?}") };
    assert_eq!(c.reason, "stop");
    // The worker stopped (well before the cancel grace would have ended it for it).
    assert!(asked.elapsed() < Duration::from_secs(2), "took {:?}", asked.elapsed());
    let job = get(&mut client, &job.id).await;
    assert_eq!(job.state, JobState::Cancelled as i32);
    assert!(job.progress < 0.5);
    // The slot is free again.
    let next = client.run_job(run_request(diagnostic(1, 1))).await.unwrap().into_inner();
    let next = collect_events(next, Duration::from_secs(10)).await.unwrap();
    assert!(matches!(next.last().unwrap().event, Some(Event::Result(_))));
    server.shutdown().await;
}

async fn failing_job_ends_with_its_status(backend: Backend) {
    let server = TestServer::start(backend.open().await).await;
    let _worker = TestWorker::start(&server.url, "w1", 1);
    wait_for_workers(&server.url, 1).await;
    let mut client = server.client().await;
    let spec = JobSpec {
        input: Some(Input::Diagnostic(DiagnosticInput { steps: 5, step_ms: 5, fail_at_step: 3, ..Default::default() })),
        ..Default::default()
    };
    let events = run(&mut client, spec, Duration::from_secs(10)).await;
    assert_contiguous(&events, 1);
    let Some(Event::Failed(f)) = &events.last().unwrap().event else { panic!("{events:?}") };
    assert_eq!(f.code, Code::Internal as i32);
    assert!(f.message.contains("step 3"), "{}", f.message);
    let progress = events.iter().filter(|e| matches!(e.event, Some(Event::Progress(_)))).count();
    assert_eq!(progress, 2);
    let job = get(&mut client, &events[0].job_id).await;
    assert_eq!(job.state, JobState::Failed as i32);
    let error = job.error.expect("a failed job keeps its error");
    assert_eq!(error.code, Code::Internal as i32);
    assert_eq!(&error, f, "the record's error is the failed event's status");
    assert!(job.result.is_none());
    server.shutdown().await;
}

async fn job_over_its_timeout_fails_with_deadline_exceeded(backend: Backend) {
    let server = TestServer::start(backend.open().await).await;
    let _worker = TestWorker::start(&server.url, "w1", 1);
    wait_for_workers(&server.url, 1).await;
    let mut client = server.client().await;
    let mut spec = diagnostic(100, 50);
    spec.timeout = Some(ProtoDuration { seconds: 0, nanos: 300_000_000 });
    let events = run(&mut client, spec, Duration::from_secs(10)).await;
    let Some(Event::Failed(f)) = &events.last().unwrap().event else { panic!("{events:?}") };
    assert_eq!(f.code, Code::DeadlineExceeded as i32, "{f:?}");
    let job = get(&mut client, &events[0].job_id).await;
    assert_eq!(job.timeout, Some(ProtoDuration { seconds: 0, nanos: 300_000_000 }), "the job keeps its limit");
    assert_eq!((job.state, job.error.map(|e| e.code)), (JobState::Failed as i32, Some(Code::DeadlineExceeded as i32)));
    // The worker was told to stop: the next job runs at once.
    let next = run(&mut client, diagnostic(1, 1), Duration::from_secs(5)).await;
    assert!(matches!(next.last().unwrap().event, Some(Event::Result(_))));
    server.shutdown().await;
}

async fn bad_input_is_rejected_and_changes_nothing(backend: Backend) {
    let server = TestServer::start(backend.open().await).await;
    let _worker = TestWorker::start(&server.url, "w1", 1);
    wait_for_workers(&server.url, 1).await;
    // The session records the served models just after the worker itself: wait for both
    // writes, so that the snapshot below is of a store nothing else is changing.
    for _ in 0..200 {
        if !server.store.range("/dhw/served/", 0).await.unwrap().kvs.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut client = server.client().await;
    let before = server.store.range("/dhw/", 0).await.unwrap();

    let missing = "0190c0de-0000-7000-8000-000000000000".to_string();
    let status = client.get_job(GetJobRequest { job_id: missing.clone(), view: 0 }).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = watch(&mut client, &missing, 0).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = cancel(&mut client, &missing, "").await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = client.get_job(GetJobRequest { job_id: "../etc".into(), view: 0 }).await.unwrap_err();
    assert_invalid_field(&status, "job_id");
    let status = client.get_job(GetJobRequest { job_id: missing.clone(), view: 42 }).await.unwrap_err();
    assert_invalid_field(&status, "view");
    let status = cancel(&mut client, &missing, &"r".repeat(2000)).await.unwrap_err();
    assert_invalid_field(&status, "reason");

    let request = |spec: JobSpec| CreateJobRequest { spec: Some(spec), request_id: String::new() };
    let generate =
        |input: GenerateInput| request(JobSpec { input: Some(Input::Generate(input)), ..Default::default() });
    let chat = |role: i32| {
        generate(GenerateInput { messages: vec![ChatMessage { role, content: "hi".into() }], ..Default::default() })
    };
    let timeout = |seconds: i64, nanos: i32| {
        request(JobSpec { timeout: Some(ProtoDuration { seconds, nanos }), ..diagnostic(1, 1) })
    };
    // Invalid requests: INVALID_ARGUMENT, the message starts with the field path.
    let mut invalid: Vec<(CreateJobRequest, &str)> = vec![
        (CreateJobRequest { spec: None, request_id: String::new() }, "spec:"),
        (request(JobSpec::default()), "input:"),
        (request(diagnostic(0, 1)), "diagnostic.steps:"),
        (request(diagnostic(1, 10_000_000)), "diagnostic.step_ms:"),
        (
            request(JobSpec {
                input: Some(Input::Diagnostic(DiagnosticInput {
                    steps: 1,
                    echo: "x".repeat(5000),
                    ..Default::default()
                })),
                ..Default::default()
            }),
            "diagnostic.echo:",
        ),
        (request(JobSpec { priority: 1000, ..diagnostic(1, 1) }), "priority:"),
        (request(JobSpec { model: "no/slashes".into(), ..diagnostic(1, 1) }), "model:"),
        (CreateJobRequest { spec: Some(diagnostic(1, 1)), request_id: "r".repeat(200) }, "request_id:"),
        (request(JobSpec { max_attempts: 99, ..diagnostic(1, 1) }), "max_attempts:"),
        // More than a day, or not a positive duration.
        (timeout(24 * 3600 + 1, 0), "timeout:"),
        (timeout(24 * 3600, 1), "timeout:"),
        (timeout(0, 0), "timeout:"),
        (timeout(-5, 0), "timeout:"),
        (generate(GenerateInput { prompt: "x".repeat(100_000), ..Default::default() }), "generate.prompt:"),
        (
            generate(GenerateInput { prompt: "hi".into(), temperature: f32::NAN, ..Default::default() }),
            "generate.temperature:",
        ),
        (
            generate(GenerateInput { prompt: "hi".into(), max_tokens: 100_000, ..Default::default() }),
            "generate.max_tokens:",
        ),
        // Enums: unset where required, or a number this version does not know.
        (chat(0), "generate.messages[0].role:"),
        (chat(42), "generate.messages[0].role:"),
        (
            request(JobSpec {
                input: Some(Input::Train(TrainInput { dataset: "x".into(), architecture: 42, ..Default::default() })),
                ..Default::default()
            }),
            "train.architecture:",
        ),
        (
            request(JobSpec {
                input: Some(Input::Train(TrainInput {
                    dataset: "x".into(),
                    hidden_sizes: vec![4, 0],
                    ..Default::default()
                })),
                ..Default::default()
            }),
            "train.hidden_sizes[1]:",
        ),
    ];
    // Bigger than tonic's default 4 MiB message limit: still our field-level answer.
    invalid.push((
        generate(GenerateInput { prompt: "x".repeat(5 << 20), ..Default::default() }),
        "generate.prompt: is 5242880 bytes",
    ));
    for (request, message) in invalid {
        let field = message.split(':').next().unwrap();
        let status = client.create_job(request.clone()).await.unwrap_err();
        assert_invalid_field(&status, field);
        assert!(status.message().starts_with(message), "{message:?} does not start {:?}", status.message());
        let run = RunJobRequest { spec: request.spec, request_id: request.request_id };
        let status = client.run_job(run).await.unwrap_err();
        assert_invalid_field(&status, field);
    }

    // Well-formed, but nobody serves it.
    let unserved = [
        generate(GenerateInput { prompt: "hi".into(), ..Default::default() }),
        request(JobSpec { model: "nosuchmodel".into(), ..diagnostic(1, 1) }),
    ];
    for request in unserved {
        let status = client.create_job(request.clone()).await.unwrap_err();
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        let message = status.message();
        assert!(message.contains("no connected worker serves model"), "{message}");
        assert!(message.contains("ModelService.ListModels"), "it says where to look: {message}");
        assert!(deephardway::errors::violations(&status).is_empty(), "no bad field: {status:?}");
        let run = RunJobRequest { spec: request.spec, request_id: request.request_id };
        assert_eq!(client.run_job(run).await.unwrap_err().code(), Code::FailedPrecondition);
    }
    // A model that runs another kind of job is a bad `model`.
    let wrong_kind = JobSpec {
        model: "diagnostic".into(),
        input: Some(Input::Generate(GenerateInput { prompt: "hi".into(), ..Default::default() })),
        ..Default::default()
    };
    let status = client.create_job(request(wrong_kind)).await.unwrap_err();
    assert_invalid_field(&status, "model");
    assert!(status.message().contains("runs diagnostic jobs, not generate"), "{}", status.message());

    // Beyond the 64 MiB message limit the decoder refuses it before reading it.
    let huge = request(JobSpec {
        input: Some(Input::Diagnostic(DiagnosticInput { steps: 1, echo: "x".repeat(65 << 20), ..Default::default() })),
        ..Default::default()
    });
    let status = client.create_job(huge).await.unwrap_err();
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
    let running = create(&mut client, diagnostic(1, 1000)).await;
    // Wait until the first leaves the queue, then fill the queue.
    let mut stream = watch(&mut client, &running.id, 0).await.unwrap();
    while !matches!(next_event(&mut stream).await.unwrap().unwrap().event, Some(Event::Started(_))) {}
    create(&mut client, diagnostic(1, 1)).await;
    create(&mut client, diagnostic(1, 1)).await;
    let status = client.create_job(create_request(diagnostic(1, 1))).await.unwrap_err();
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
    let events = run(&mut client, diagnostic(1, 1), Duration::from_secs(5)).await;
    let id = events[0].job_id.clone();
    for _ in 0..100 {
        match client.get_job(GetJobRequest { job_id: id.clone(), view: 0 }).await {
            Err(status) if status.code() == Code::NotFound => {
                let left = server.store.range(&format!("/dhw/events/{id}/"), 0).await.unwrap();
                assert!(left.kvs.is_empty(), "events outlived their job");
                let spec = server.store.get(&deephardway_service::keys::spec(&id)).await.unwrap();
                assert!(spec.is_none(), "the request outlived its job");
                server.shutdown().await;
                return;
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    panic!("job {id} was still there 10 s after a 1 s retention");
}

/// A server on `backend` (which the caller keeps: dropping it stops its etcd and removes
/// its files) whose worker sessions write reports every `interval`, with a worker of one
/// slot connected.
async fn flushing_every(backend: &Backend, interval: Duration) -> (TestServer, TestWorker) {
    let config = ServiceConfig { output_coalesce: interval, ..test_config() };
    let server = TestServer::start_with(backend.open().await, config).await;
    let worker = TestWorker::start(&server.url, "w1", 1);
    wait_for_workers(&server.url, 1).await;
    (server, worker)
}

/// A diagnostic job that emits the output "tok " after each step.
fn output_per_step(steps: u32, step_ms: u32) -> JobSpec {
    let input = DiagnosticInput { steps, step_ms, output_per_step: "tok ".into(), ..Default::default() };
    JobSpec { input: Some(Input::Diagnostic(input)), ..Default::default() }
}

/// A burst of 300 steps, each with output: the outputs are merged into few events, none
/// lost or reordered. The flush interval is longer than the burst, so the session holds
/// all of it at once: more reports than one store transaction may carry (etcd refuses
/// more than 128 operations), which it must write in several.
async fn output_bursts_are_coalesced(backend: Backend) {
    let (server, _worker) = flushing_every(&backend, Duration::from_millis(500)).await;
    let events = run(&mut server.client().await, output_per_step(300, 0), Duration::from_secs(20)).await;
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
    let steps = events.iter().filter(|e| matches!(&e.event, Some(Event::Progress(_)))).count();
    assert_eq!(steps, 300, "every step's progress is kept");
    server.shutdown().await;
}

/// A job's first output (a streamed text's first token) is written as it comes, not at
/// the session's next flush: with a 10 s flush interval, the first of two outputs half a
/// second apart is committed before the second and the result, not with them.
async fn a_jobs_first_output_is_written_at_once(backend: Backend) {
    let (server, _worker) = flushing_every(&backend, Duration::from_secs(10)).await;
    let events = run(&mut server.client().await, output_per_step(2, 500), Duration::from_secs(20)).await;
    let time = |e: &JobEvent| std::time::SystemTime::try_from(e.time.expect("a commit time")).expect("a valid time");
    let first_output = events.iter().find(|e| matches!(e.event, Some(Event::Output(_)))).expect("an output");
    let result = events.last().expect("events");
    assert!(matches!(result.event, Some(Event::Result(_))), "{events:?}");
    let ahead = time(result).duration_since(time(first_output)).unwrap_or_default();
    assert!(ahead >= Duration::from_millis(250), "the first output was committed {ahead:?} before the result");
    server.shutdown().await;
}

async fn watch_jobs_sends_a_snapshot_then_live_changes(backend: Backend) {
    let server = TestServer::start(backend.open().await).await;
    // Two slots: the earlier job's may not be free yet when the next job is submitted.
    let _worker = TestWorker::start(&server.url, "w1", 2);
    wait_for_workers(&server.url, 1).await;
    let mut client = server.client().await;
    let earlier = create(&mut client, diagnostic(1, 1)).await;
    collect_events(watch(&mut client, &earlier.id, 0).await.unwrap(), Duration::from_secs(5)).await.unwrap();

    let request = WatchJobsRequest { snapshot_size: 10, view: JobView::Unspecified as i32 };
    let mut updates = client.watch_jobs(request).await.unwrap().into_inner();
    let first = updates.message().await.unwrap().unwrap();
    assert!(first.snapshot);
    assert!(!first.removed);
    let first = first.job.unwrap();
    assert_eq!(first.id, earlier.id);
    // The BASIC view by default: no input, no result.
    assert!(first.spec.as_ref().is_some_and(|s| s.input.is_none()), "{first:?}");
    assert!(first.result.is_none(), "{first:?}");

    let job = create(&mut client, diagnostic(3, 30)).await;
    let mut states = Vec::new();
    while states.last() != Some(&(JobState::Succeeded as i32)) {
        let update = tokio::time::timeout(Duration::from_secs(10), updates.message()).await.unwrap().unwrap().unwrap();
        let seen = update.job.unwrap();
        assert!(!update.snapshot);
        assert!(seen.result.is_none() && seen.spec.as_ref().is_none_or(|s| s.input.is_none()), "{seen:?}");
        if seen.id == job.id && states.last() != Some(&seen.state) {
            states.push(seen.state);
        }
    }
    // A job that finds a free slot starts in its submit's transaction: its record is
    // written running from the first (its events still begin with `queued`).
    let expected = [JobState::Running, JobState::Succeeded].map(|s| s as i32);
    assert_eq!(states, expected, "the job's life, live");

    // The FULL view, when asked.
    let request = WatchJobsRequest { snapshot_size: 1, view: JobView::Full as i32 };
    let mut full = client.watch_jobs(request).await.unwrap().into_inner();
    let newest = full.message().await.unwrap().unwrap();
    let newest = newest.job.unwrap();
    assert_eq!(newest.id, job.id, "newest first");
    assert_eq!(diagnostic_input(newest.spec.as_ref().unwrap()).steps, 3);
    assert!(newest.result.is_some(), "{newest:?}");

    let status = client.watch_jobs(WatchJobsRequest { snapshot_size: 5000, view: 0 }).await.unwrap_err();
    assert_invalid_field(&status, "snapshot_size");
    server.shutdown().await;
}

async fn list_jobs_pages_newest_first(backend: Backend) {
    let server = TestServer::start(backend.open().await).await;
    let _worker = TestWorker::start(&server.url, "w1", 1);
    wait_for_workers(&server.url, 1).await;
    let mut client = server.client().await;
    let mut created = Vec::new();
    for _ in 0..7 {
        created.push(create(&mut client, diagnostic(1, 1)).await.id);
    }

    let (mut seen, mut token, mut pages) = (Vec::new(), String::new(), 0);
    loop {
        let request = ListJobsRequest { page_size: 3, page_token: token.clone(), ..Default::default() };
        let (jobs, next) = list(&mut client, request).await.expect("ListJobs");
        assert!(jobs.len() <= 3, "a page of {}", jobs.len());
        seen.extend(jobs.into_iter().map(|j| j.id));
        pages += 1;
        assert!(pages <= 4, "paging does not end: {seen:?}");
        if next.is_empty() {
            break;
        }
        token = next;
    }
    let newest_first: Vec<String> = created.iter().rev().cloned().collect();
    assert_eq!(seen, newest_first, "every job exactly once, most recent first");
    assert!(pages >= 3, "7 jobs in pages of 3: {pages} pages");
    // The default page holds them all.
    let (all, next) = list(&mut client, ListJobsRequest::default()).await.unwrap();
    assert_eq!((all.len(), next.as_str()), (7, ""));

    // Filters: by model, and by state once they have all finished.
    for id in &created {
        collect_events(watch(&mut client, id, 0).await.unwrap(), Duration::from_secs(10)).await.unwrap();
    }
    let by_state = |state: JobState| ListJobsRequest { state: state as i32, ..Default::default() };
    assert_eq!(list(&mut client, by_state(JobState::Succeeded)).await.unwrap().0.len(), 7);
    assert!(list(&mut client, by_state(JobState::Queued)).await.unwrap().0.is_empty());
    let by_model = |model: &str| ListJobsRequest { model: model.into(), ..Default::default() };
    assert_eq!(list(&mut client, by_model("diagnostic")).await.unwrap().0.len(), 7);
    assert!(list(&mut client, by_model("other")).await.unwrap().0.is_empty());

    // Bad requests name their field.
    let bad = |page_size: u32, page_token: &str| ListJobsRequest {
        page_size,
        page_token: page_token.into(),
        ..Default::default()
    };
    for token in ["garbage!!", "Zm9v/YmFy", "%%%"] {
        let status = list(&mut client, bad(3, token)).await.unwrap_err();
        assert_invalid_field(&status, "page_token");
    }
    let status = list(&mut client, bad(1001, "")).await.unwrap_err();
    assert_invalid_field(&status, "page_size");
    let status = list(&mut client, ListJobsRequest { state: 42, ..Default::default() }).await.unwrap_err();
    assert_invalid_field(&status, "state");
    server.shutdown().await;
}

async fn views_leave_out_inputs_and_results_where_asked(backend: Backend) {
    let server = TestServer::start(backend.open().await).await;
    let _worker = TestWorker::start(&server.url, "w1", 1);
    wait_for_workers(&server.url, 1).await;
    let mut client = server.client().await;
    let mut spec = diagnostic(2, 1);
    if let Some(Input::Diagnostic(d)) = &mut spec.input {
        d.echo = "the input".into();
    }
    spec.priority = 7;
    let events = run(&mut client, spec, Duration::from_secs(10)).await;
    let id = events[0].job_id.clone();

    let has_all = |job: &Job| {
        let input = job.spec.as_ref().and_then(|s| s.input.as_ref());
        matches!(input, Some(Input::Diagnostic(d)) if d.echo == "the input") && job.result.is_some()
    };
    let basic = |job: &Job| {
        let spec = job.spec.as_ref().expect("the spec, less its input");
        spec.input.is_none() && spec.priority == 7 && job.result.is_none()
    };
    // GetJob: FULL by default, BASIC when asked.
    assert!(has_all(&get(&mut client, &id).await));
    for (view, check) in [(JobView::Full, has_all as fn(&Job) -> bool), (JobView::Basic, basic)] {
        let job = client.get_job(GetJobRequest { job_id: id.clone(), view: view as i32 }).await.unwrap();
        let job = job.into_inner().job.unwrap();
        assert!(check(&job), "GetJob {view:?}: {job:?}");
        // Everything else is there in both views.
        assert_eq!((job.state, job.model.as_str(), job.last_seq), (JobState::Succeeded as i32, "diagnostic", 5));
    }
    // ListJobs: BASIC by default, FULL when asked.
    let (jobs, _) = list(&mut client, ListJobsRequest::default()).await.unwrap();
    assert!(basic(&jobs[0]), "ListJobs default: {:?}", jobs[0]);
    assert_eq!(jobs[0].state, JobState::Succeeded as i32);
    let full = ListJobsRequest { view: JobView::Full as i32, ..Default::default() };
    let (jobs, _) = list(&mut client, full).await.unwrap();
    assert!(has_all(&jobs[0]), "ListJobs FULL: {:?}", jobs[0]);
    let status = list(&mut client, ListJobsRequest { view: 9, ..Default::default() }).await.unwrap_err();
    assert_invalid_field(&status, "view");
    server.shutdown().await;
}

/// A runner that announces several diagnostic models, to list them.
struct ManyModels(Vec<String>);

#[tonic::async_trait]
impl deephardway_worker::Runner for ManyModels {
    fn models(&self) -> Vec<deephardway::worker::v1::ServedModel> {
        self.0
            .iter()
            .map(|name| deephardway::worker::v1::ServedModel {
                name: name.clone(),
                kind: JobKind::Diagnostic as i32,
                description: format!("diagnostic, as {name}"),
                ..Default::default()
            })
            .collect()
    }

    async fn run(
        &self,
        job: deephardway_worker::JobContext,
    ) -> Result<deephardway::v1::JobResult, deephardway_worker::JobError> {
        deephardway_worker::runners::diagnostic::DiagnosticRunner.run(job).await
    }
}

async fn list_models_pages_by_name(backend: Backend) {
    use deephardway_worker::Runner;
    let server = TestServer::start(backend.open().await).await;
    let names = ["diag-e", "diag-b", "diagnostic", "diag-d", "diag-a"].map(String::from).to_vec();
    let _worker =
        TestWorker::start_with(&server.url, "w1", 1, vec![Arc::new(ManyModels(names.clone())) as Arc<dyn Runner>]);
    let _other = TestWorker::start(&server.url, "w2", 1);
    wait_for_workers(&server.url, 1).await;
    let mut models = ModelServiceClient::new(deephardway::connect(&server.url).await.unwrap());
    // Both workers serve `diagnostic`.
    for _ in 0..200 {
        let list = models.list_models(ListModelsRequest::default()).await.unwrap().into_inner();
        if list.models.len() == 5 && list.models.iter().any(|m| m.name == "diagnostic" && m.workers == 2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (mut seen, mut token, mut pages) = (Vec::new(), String::new(), 0);
    loop {
        let request = ListModelsRequest { page_size: 2, page_token: token.clone(), ..Default::default() };
        let page = models.list_models(request).await.expect("ListModels").into_inner();
        assert!(page.models.len() <= 2, "{page:?}");
        seen.extend(page.models);
        pages += 1;
        assert!(pages <= 4, "paging does not end: {seen:?}");
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(seen.iter().map(|m| m.name.clone()).collect::<Vec<_>>(), sorted, "by name, each once");
    let served = seen.iter().find(|m| m.name == "diagnostic").unwrap();
    assert_eq!((served.workers, served.devices.as_slice()), (2, ["cpu".to_string()].as_slice()));
    assert!(seen.iter().all(|m| m.kind == JobKind::Diagnostic as i32));
    // A job can name any of them.
    let mut client = server.client().await;
    let events =
        run(&mut client, JobSpec { model: "diag-b".into(), ..diagnostic(1, 1) }, Duration::from_secs(10)).await;
    assert!(matches!(events.last().unwrap().event, Some(Event::Result(_))), "{events:?}");

    // The kind filter.
    let of_kind = |kind: JobKind| ListModelsRequest { kind: kind as i32, ..Default::default() };
    assert_eq!(models.list_models(of_kind(JobKind::Diagnostic)).await.unwrap().into_inner().models.len(), 5);
    assert!(models.list_models(of_kind(JobKind::Generate)).await.unwrap().into_inner().models.is_empty());
    // Bad requests name their field.
    let status = models.list_models(ListModelsRequest { page_size: 1001, ..Default::default() }).await.unwrap_err();
    assert_invalid_field(&status, "page_size");
    let garbage = ListModelsRequest { page_token: "not a token".into(), ..Default::default() };
    assert_invalid_field(&models.list_models(garbage).await.unwrap_err(), "page_token");
    let status = models.list_models(ListModelsRequest { kind: 42, ..Default::default() }).await.unwrap_err();
    assert_invalid_field(&status, "kind");
    server.shutdown().await;
}

/// A tiny dataset archive: two classes of one small PNG each, `shade` making it unique.
fn tiny_dataset(shade: u8) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    for (class, value) in [("dark", shade / 2), ("light", 128 + shade / 2)] {
        std::fs::create_dir(dir.path().join(class)).unwrap();
        let image = image::GrayImage::from_pixel(4, 4, image::Luma([value]));
        image.save(dir.path().join(class).join("1.png")).unwrap();
    }
    deephardway::datasets::tar_folder(dir.path()).unwrap()
}

async fn datasets_are_created_paged_got_and_deleted(backend: Backend) {
    let server = TestServer::start(backend.open().await).await;
    let mut datasets = DatasetServiceClient::new(deephardway::connect(&server.url).await.unwrap());
    let names = ["set-c", "set-a", "set-e", "set-b", "set-d"];
    for (i, name) in names.iter().enumerate() {
        let request = CreateDatasetRequest { name: name.to_string(), archive: tiny_dataset(i as u8 * 10) };
        let dataset = datasets.create_dataset(request).await.expect("CreateDataset").into_inner().dataset.unwrap();
        assert_eq!(
            (dataset.name.as_str(), dataset.classes.as_slice()),
            (*name, ["dark", "light"].map(String::from).as_slice())
        );
        assert_eq!((dataset.train_images, dataset.test_images), (2, 0));
    }

    let (mut seen, mut token, mut pages) = (Vec::new(), String::new(), 0);
    loop {
        let request = ListDatasetsRequest { page_size: 2, page_token: token.clone() };
        let page = datasets.list_datasets(request).await.expect("ListDatasets").into_inner();
        assert!(page.datasets.len() <= 2, "{page:?}");
        seen.extend(page.datasets.into_iter().map(|d| d.name));
        pages += 1;
        assert!(pages <= 4, "paging does not end: {seen:?}");
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, ["set-a", "set-b", "set-c", "set-d", "set-e"], "by name, each once");
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 5);

    let got = datasets.get_dataset(GetDatasetRequest { name: "set-b".into() }).await.unwrap().into_inner();
    let got = got.dataset.unwrap();
    assert_eq!(got.name, "set-b");
    let deleted = datasets.delete_dataset(DeleteDatasetRequest { name: "set-b".into() }).await.unwrap().into_inner();
    assert_eq!(deleted.dataset.unwrap(), got, "DeleteDataset returns what it deleted");
    let status = datasets.get_dataset(GetDatasetRequest { name: "set-b".into() }).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let left = datasets.list_datasets(ListDatasetsRequest::default()).await.unwrap().into_inner();
    assert_eq!(left.datasets.len(), 4);
    assert!(left.next_page_token.is_empty());

    let status =
        datasets.list_datasets(ListDatasetsRequest { page_size: 1001, ..Default::default() }).await.unwrap_err();
    assert_invalid_field(&status, "page_size");
    let garbage = ListDatasetsRequest { page_size: 2, page_token: "???".into() };
    assert_invalid_field(&datasets.list_datasets(garbage).await.unwrap_err(), "page_token");
    let status = datasets.get_dataset(GetDatasetRequest { name: "../x".into() }).await.unwrap_err();
    assert_invalid_field(&status, "name");
    let bad = CreateDatasetRequest { name: "bad".into(), archive: b"hello".to_vec() };
    assert_invalid_field(&datasets.create_dataset(bad).await.unwrap_err(), "archive");
    server.shutdown().await;
}

/// A request body that does not decode is INVALID_ARGUMENT (tonic alone answers INTERNAL),
/// for unary and server-streaming calls, over gRPC (HTTP/2 frames made by hand: tonic's
/// framing around bytes that are no protobuf message) and over grpc-web (HTTP/1.1, the
/// body framed by hand); and nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_requests_are_invalid_argument_and_change_nothing() {
    use http_body_util::BodyExt;
    use hyper_util::{client::legacy::Client, rt::TokioExecutor};

    let backend = Backend::embedded().await;
    let server = TestServer::start(backend.open().await).await;
    let before = server.store.range("/dhw/", 0).await.unwrap();
    // Field 1 with wire type 7 (there is none); a length running past the end; a
    // varint that never ends.
    let bodies: [&[u8]; 3] = [&[0x0f, 0xff, 0xff], &[0x0a, 0x10, 0x01], &[0x08, 0xff, 0xff, 0xff]];
    let unary = ["/deephardway.v1.JobService/CreateJob", "/deephardway.v1.JobService/GetJob"];
    let streaming = ["/deephardway.v1.JobService/RunJob", "/deephardway.v1.JobService/WatchJobs"];
    let check = |status: &tonic::Status, how: &str| {
        assert_eq!(status.code(), Code::InvalidArgument, "{how}: {status:?}");
        assert!(status.message().contains("did not decode"), "{how}: {}", status.message());
    };

    let channel = tonic::transport::Channel::from_shared(server.url.clone()).unwrap().connect().await.unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    for body in bodies {
        for path in unary {
            grpc.ready().await.unwrap();
            let path = http::uri::PathAndQuery::from_static(path);
            let status = grpc.unary(tonic::Request::new(body.to_vec()), path.clone(), raw::Codec).await.unwrap_err();
            check(&status, &format!("{path} {body:?}"));
        }
        for path in streaming {
            grpc.ready().await.unwrap();
            let path = http::uri::PathAndQuery::from_static(path);
            let request = tonic::Request::new(body.to_vec());
            let status = grpc.server_streaming(request, path.clone(), raw::Codec).await.unwrap_err();
            check(&status, &format!("{path} {body:?}"));
        }
    }

    // grpc-web: one frame (flag 0, big-endian length, bytes); the status comes in the
    // headers of a trailers-only answer, or in the body's trailer frame.
    let http1 = Client::builder(TokioExecutor::new()).build_http::<http_body_util::Full<bytes::Bytes>>();
    for path in unary.into_iter().chain(streaming) {
        let body = bodies[0];
        let mut frame = vec![0u8];
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frame.extend_from_slice(body);
        let request = http::Request::post(format!("{}{path}", server.url))
            .header("content-type", "application/grpc-web+proto")
            .header("x-grpc-web", "1")
            .body(http_body_util::Full::new(bytes::Bytes::from(frame)))
            .unwrap();
        let response = http1.request(request).await.expect("grpc-web POST");
        assert!(response.status().is_success(), "{path}: {:?}", response.status());
        let mut headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        if let Some(trailers) = body.get(5..).filter(|_| body.first() == Some(&0x80)) {
            for line in String::from_utf8_lossy(trailers).split("\r\n").filter(|l| !l.is_empty()) {
                let (name, value) = line.split_once(':').expect("a trailer line");
                headers.insert(
                    http::HeaderName::from_bytes(name.trim().as_bytes()).unwrap(),
                    value.trim().parse().unwrap(),
                );
            }
        }
        let status =
            tonic::Status::from_header_map(&headers).unwrap_or_else(|| panic!("{path}: no status: {headers:?}"));
        check(&status, &format!("grpc-web {path}"));
    }

    let after = server.store.range("/dhw/", 0).await.unwrap();
    assert_eq!(before.kvs, after.kvs, "undecodable requests changed the store");
    server.shutdown().await;
}

/// A codec that sends bytes as they are and reads answers as bytes: requests made by hand.
mod raw {
    use bytes::{Buf, BufMut};
    use tonic::{
        Status,
        codec::{DecodeBuf, Decoder, EncodeBuf, Encoder},
    };

    pub struct Codec;

    impl tonic::codec::Codec for Codec {
        type Encode = Vec<u8>;
        type Decode = Vec<u8>;
        type Encoder = Codec;
        type Decoder = Codec;
        fn encoder(&mut self) -> Codec {
            Codec
        }
        fn decoder(&mut self) -> Codec {
            Codec
        }
    }

    impl Encoder for Codec {
        type Item = Vec<u8>;
        type Error = Status;
        fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
            dst.put_slice(&item);
            Ok(())
        }
    }

    impl Decoder for Codec {
        type Item = Vec<u8>;
        type Error = Status;
        fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
            Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
        }
    }
}
