//! No peer can stall the service: a worker that stops reading, a worker process that
//! hangs, and a worker that reports nonsense each lose (or are refused) what they hold,
//! within a few heartbeat intervals, while the healthy workers carry on; nor can one
//! slow store write hold up the rest of its worker's jobs.

mod support;

use std::time::Duration;

use deephardway::v1::{
    DiagnosticResult, GenerateResult, GetJobRequest, Job, JobEvent, JobProgress, JobResult, JobSpec, JobState,
    job_event::Event, job_result,
};
use deephardway::worker::v1::{ConnectRequest, Report, connect_request};
use deephardway_service::{
    ServiceConfig,
    store::{StoreError, Txn},
};
use support::{
    hooked::{Hooked, TxnHook},
    raw_worker::RawWorker,
    *,
};

/// Heartbeats this often, so that a silent or stuck worker is found in about a second.
const HEARTBEAT: Duration = Duration::from_millis(400);

fn config() -> ServiceConfig {
    ServiceConfig { worker_heartbeat: HEARTBEAT, ..test_config() }
}

async fn get(client: &mut JobsClient, job_id: &str) -> Job {
    let request = GetJobRequest { job_id: job_id.to_string(), view: 0 };
    client.get_job(request).await.expect("GetJob").into_inner().job.expect("a job")
}

/// Polls until every job has ended, or panics after `within`.
async fn wait_all_ended(client: &mut JobsClient, ids: &[String], within: Duration) -> Vec<Job> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let mut jobs = Vec::new();
        for id in ids {
            jobs.push(get(client, id).await);
        }
        if jobs.iter().all(|j| j.end_time.is_some()) {
            return jobs;
        }
        if tokio::time::Instant::now() > deadline {
            let states: Vec<_> = jobs.iter().map(|j| (j.state, j.worker_name.clone())).collect();
            panic!("not every job ended within {within:?}: {states:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A diagnostic job's result, as a worker reports it.
fn diagnostic_result() -> Event {
    Event::Result(JobResult {
        value: Some(job_result::Value::Diagnostic(DiagnosticResult { steps: 1, echo: String::new() })),
    })
}

/// The job's output text, from its events.
fn output_text(events: &[JobEvent]) -> String {
    events
        .iter()
        .filter_map(|e| match &e.event {
            Some(Event::Output(output)) => Some(output.text.as_str()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_stops_reading_does_not_stall_the_others() {
    let backend = Backend::embedded().await;
    let server = TestServer::start_with(backend.open().await, config()).await;
    // It grants no receive window, so nothing the service sends it arrives, yet it sends
    // heartbeats: only its unread queue gives it away.
    let stuck = RawWorker::connect(&server.url, "diagnostic", 64, Some(0)).await;
    stuck.keep_beating(HEARTBEAT / 4);
    wait_for_workers(&server.url, 1).await;
    let mut client = server.client().await;
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(create(&mut client, diagnostic(2, 10)).await.id);
    }
    // The stuck worker, alone, has claimed them; a healthy one arrives.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let healthy = TestWorker::start(&server.url, "healthy", 4);
    let jobs = wait_all_ended(&mut client, &ids, Duration::from_secs(15)).await;
    for job in &jobs {
        assert_eq!(job.state, JobState::Succeeded as i32, "{job:?}");
        assert_eq!(job.worker_name, "healthy");
    }
    healthy.stop().await;
    drop(stuck);
}

fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill").args([signal, &pid.to_string()]).status().expect("run kill");
    assert!(status.success(), "kill {signal} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_worker_process_loses_its_job_within_a_few_heartbeats() {
    let backend = Backend::embedded().await;
    let server = TestServer::start_with(backend.open().await, config()).await;
    let frozen = WorkerProcess::start(&server.url, "frozen", 1);
    wait_for_workers(&server.url, 1).await;
    let mut client = server.client().await;
    let job = create(&mut client, diagnostic(30, 100)).await;
    let mut stream = watch(&mut client, &job.id, 0).await.unwrap();
    let mut seen = Vec::new();
    while !matches!(seen.last(), Some(JobEvent { event: Some(Event::Progress(_)), .. })) {
        let message = tokio::time::timeout(Duration::from_secs(10), stream.message()).await.expect("progress");
        seen.extend(message.unwrap().unwrap().event()); // queue statuses are not events
    }
    let pid = frozen.child.id().expect("running");
    signal(pid, "-STOP");
    let stopped_at = tokio::time::Instant::now();
    let thawed = TestWorker::start(&server.url, "thawed", 1);

    let events = collect_events(stream, Duration::from_secs(20)).await.expect("the job's events");
    signal(pid, "-CONT");
    let all: Vec<JobEvent> = seen.into_iter().chain(events).collect();
    assert_contiguous(&all, 1);
    assert_eq!(started_names(&all), ["frozen", "thawed"], "{all:?}");
    let results = all.iter().filter(|e| matches!(e.event, Some(Event::Result(_)))).count();
    assert_eq!(results, 1, "finished exactly once: {all:?}");
    let job = get(&mut client, &job.id).await;
    assert_eq!((job.state, job.attempts, job.worker_name.as_str()), (JobState::Succeeded as i32, 2, "thawed"));
    // Found within a few heartbeats (3 s of running included), far below the 1 h job timeout.
    assert!(stopped_at.elapsed() < Duration::from_secs(12), "took {:?}", stopped_at.elapsed());
    thawed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_are_checked_before_they_are_stored() {
    let backend = Backend::embedded().await;
    let server = TestServer::start_with(backend.open().await, config()).await;
    let mut worker = RawWorker::connect(&server.url, "nan-reporter", 1, None).await;
    worker.keep_beating(HEARTBEAT / 4);
    let mut client = server.client().await;
    let spec = JobSpec { model: "nan-reporter".into(), ..diagnostic(1, 1) };

    // NaN progress is dropped; the job's record and events never hold it.
    let job = create(&mut client, spec.clone()).await;
    let assignment = worker.assignment().await;
    assert_eq!(assignment.job_id, job.id);
    let progress = |fraction: f64| Event::Progress(JobProgress { fraction, ..Default::default() });
    worker.report(&job.id, assignment.fence, progress(f64::NAN)).await;
    worker.report(&job.id, assignment.fence, progress(f64::INFINITY)).await;
    worker.report(&job.id, assignment.fence, progress(0.5)).await;
    worker.report(&job.id, assignment.fence, diagnostic_result()).await;
    let stream = watch(&mut client, &job.id, 0).await.unwrap();
    let events = collect_events(stream, Duration::from_secs(10)).await.unwrap();
    let fractions: Vec<f64> = events
        .iter()
        .filter_map(|e| match &e.event {
            Some(Event::Progress(p)) => Some(p.fraction),
            _ => None,
        })
        .collect();
    assert_eq!(fractions, [0.5], "only the valid progress is stored: {events:?}");
    let stored = get(&mut client, &job.id).await;
    assert!(stored.progress.is_finite(), "{stored:?}");
    assert_eq!(stored.state, JobState::Succeeded as i32);

    // A result of another kind fails the job.
    let job = create(&mut client, spec).await;
    let assignment = worker.assignment().await;
    let wrong = JobResult { value: Some(job_result::Value::Generate(GenerateResult::default())) };
    worker.report(&job.id, assignment.fence, Event::Result(wrong)).await;
    let stream = watch(&mut client, &job.id, 0).await.unwrap();
    collect_events(stream, Duration::from_secs(10)).await.unwrap();
    let failed = get(&mut client, &job.id).await;
    assert_eq!(failed.state, JobState::Failed as i32, "{failed:?}");
    let error = failed.error.expect("an error");
    assert_eq!(error.code, tonic::Code::Internal as i32);
    assert_eq!(error.message, "the worker reported a generate result for a diagnostic job");
}

/// Output that piles up between two writes (a burst, a slow store) is written in values
/// and transactions etcd accepts: merged into one event it would pass etcd's request size
/// limit (1.5 MiB by default), be refused at every retry, and the job would never end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_large_output_is_written_in_pieces_etcd_accepts() {
    let backend = Backend::etcd().await;
    // Every report of the burst arrives before the first write.
    let config = ServiceConfig { output_coalesce: Duration::from_millis(1500), ..config() };
    let server = TestServer::start_with(backend.open().await, config).await;
    let mut worker = RawWorker::connect(&server.url, "big-output", 1, None).await;
    worker.keep_beating(HEARTBEAT / 4);
    let mut client = server.client().await;
    let job = create(&mut client, JobSpec { model: "big-output".into(), ..diagnostic(1, 1) }).await;
    let assignment = worker.assignment().await;
    let piece = |i: usize| char::from(b'a' + (i % 26) as u8).to_string().repeat(900 * 1024);
    for i in 0..6 {
        let output = Event::Output(deephardway::v1::JobOutput { text: piece(i) });
        worker.report(&job.id, assignment.fence, output).await;
    }
    worker.report(&job.id, assignment.fence, diagnostic_result()).await;
    let stream = watch(&mut client, &job.id, 0).await.unwrap();
    let events = collect_events(stream, Duration::from_secs(20)).await.expect("the job ends");
    let text = output_text(&events);
    let expected: String = (0..6).map(piece).collect();
    assert!(text == expected, "every byte of output, in order ({} of {} bytes)", text.len(), expected.len());
    assert_eq!(get(&mut client, &job.id).await.state, JobState::Succeeded as i32);
}

/// Refuses every transaction while `refusing` is set, as a store that is down does.
struct RefusesWrites {
    refusing: std::sync::atomic::AtomicBool,
}

impl TxnHook for RefusesWrites {
    fn before(&self, _txn: &Txn) -> Option<StoreError> {
        self.refusing
            .load(std::sync::atomic::Ordering::SeqCst)
            .then(|| StoreError::Unavailable("refusing writes for the test".into()))
    }
}

/// While reports cannot be written, a worker that keeps reporting does not fill the
/// service's memory: past a bound the session stops reading it, and HTTP/2 flow control
/// holds the worker back. Nothing it did send is lost, and its session survives the
/// pause (the silence is the service's own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_reporting_faster_than_the_store_writes_is_held_back() {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    };
    let backend = Backend::embedded().await;
    let store =
        Arc::new(Hooked { inner: backend.open().await, hook: RefusesWrites { refusing: AtomicBool::new(false) } });
    let server = TestServer::start_with(store.clone(), config()).await;
    let mut worker = RawWorker::connect(&server.url, "flood", 1, None).await;
    worker.keep_beating(HEARTBEAT / 4);
    let mut client = server.client().await;
    let job = create(&mut client, JobSpec { model: "flood".into(), ..diagnostic(1, 1) }).await;
    let assignment = worker.assignment().await;

    store.hook.refusing.store(true, Ordering::SeqCst);
    const PIECE: usize = 256 * 1024;
    let sent = Arc::new(AtomicUsize::new(0));
    let requests = worker.requests.clone();
    let (job_id, fence, counter) = (job.id.clone(), assignment.fence, sent.clone());
    let flood = tokio::spawn(async move {
        loop {
            let output = Event::Output(deephardway::v1::JobOutput { text: "x".repeat(PIECE) });
            let event = JobEvent { job_id: job_id.clone(), event: Some(output), ..Default::default() };
            let report = Report { job_id: job_id.clone(), fence, event: Some(event) };
            let message = ConnectRequest { message: Some(connect_request::Message::Report(report)) };
            if requests.send(message).await.is_err() {
                return;
            }
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    // Several heartbeat silences long: the session must hold on through its pause.
    tokio::time::sleep(HEARTBEAT * 8).await;
    flood.abort();
    let held = sent.load(Ordering::SeqCst);
    eprintln!("pieces of 256 KiB the worker got to send while the store refused writes: {held}");
    // The service's bound (16 MiB, 64 pieces) plus what the channel and the connection
    // buffer; without the bound the service took thousands.
    assert!(held < 400, "the worker was not held back: {held} pieces of 256 KiB sent");
    assert!(held > 64, "the bound is 16 MiB: {held}");

    store.hook.refusing.store(false, Ordering::SeqCst);
    worker.report(&job.id, assignment.fence, diagnostic_result()).await;
    let stream = watch(&mut client, &job.id, 0).await.unwrap();
    let events = collect_events(stream, Duration::from_secs(30)).await.expect("the job ends");
    let bytes = output_text(&events).len();
    let done = get(&mut client, &job.id).await;
    assert_eq!((done.state, done.attempts), (JobState::Succeeded as i32, 1), "one session, to the end");
    // Every piece the worker handed over, not one lost (the last may be in flight when
    // the flood stopped, so between the count and one more).
    assert!(bytes == held * PIECE || bytes == (held + 1) * PIECE, "{bytes} bytes stored for {held} pieces sent");
}

/// Refuses, as too large, every transaction whose values pass `limit` bytes: an etcd run
/// with a lower `--max-request-bytes`.
struct RefusesLargeWrites {
    limit: usize,
}

impl TxnHook for RefusesLargeWrites {
    fn before(&self, txn: &Txn) -> Option<StoreError> {
        let bytes: usize = txn
            .ops
            .iter()
            .map(|op| match op {
                deephardway_service::store::Op::Put { value, .. } => value.len(),
                deephardway_service::store::Op::Delete { .. } => 0,
            })
            .sum();
        (bytes > self.limit).then(|| StoreError::TooLarge(format!("etcdserver: request is too large ({bytes} bytes)")))
    }
}

/// Reports the store refuses for their size, at every try, fail the job with
/// RESOURCE_EXHAUSTED and stop the worker, instead of being retried forever (the job
/// would never end, not even at its timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_too_large_for_the_store_fail_the_job() {
    let backend = Backend::embedded().await;
    let store =
        std::sync::Arc::new(Hooked { inner: backend.open().await, hook: RefusesLargeWrites { limit: 300 << 10 } });
    let server = TestServer::start_with(store, config()).await;
    let mut worker = RawWorker::connect(&server.url, "too-much", 1, None).await;
    worker.keep_beating(HEARTBEAT / 4);
    let mut client = server.client().await;
    let job = create(&mut client, JobSpec { model: "too-much".into(), ..diagnostic(1, 1) }).await;
    let assignment = worker.assignment().await;
    let output = Event::Output(deephardway::v1::JobOutput { text: "x".repeat(500 << 10) });
    worker.report(&job.id, assignment.fence, output).await;
    match worker.next().await {
        deephardway::worker::v1::connect_response::Message::Cancel(cancel) => assert_eq!(cancel.job_id, job.id),
        other => panic!("expected a cancel, got {other:?}"),
    }
    let stream = watch(&mut client, &job.id, 0).await.unwrap();
    let events = collect_events(stream, Duration::from_secs(10)).await.expect("the job ends");
    let failed = get(&mut client, &job.id).await;
    assert_eq!(failed.state, JobState::Failed as i32, "{events:?}");
    let error = failed.error.expect("an error");
    assert_eq!(error.code, tonic::Code::ResourceExhausted as i32);
    assert!(error.message.contains("does not fit the job store"), "{}", error.message);
}

/// Holds every transaction that touches one job's keys, once armed, until released.
struct HoldsOneJob {
    job_id: std::sync::Mutex<Option<String>>,
    released: tokio::sync::watch::Sender<bool>,
}

impl TxnHook for HoldsOneJob {
    fn hold(&self, txn: &Txn) -> Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>> {
        let job_id = self.job_id.lock().unwrap().clone()?;
        let touches = txn.ops.iter().any(|op| match op {
            deephardway_service::store::Op::Put { key, .. } | deephardway_service::store::Op::Delete { key, .. } => {
                key.ends_with(&format!("/{job_id}")) || key.contains(&format!("/{job_id}/"))
            }
        });
        let mut released = self.released.subscribe();
        touches.then(|| {
            Box::pin(async move { while !*released.borrow_and_update() && released.changed().await.is_ok() {} }) as _
        })
    }
}

/// A worker session writes its jobs' reports beside its loop, not in it: while one job's
/// result waits on a slow store write, the worker's other job still ends. (The session
/// used to await each write, so a worker ran at most one job per commit latency, and a
/// stuck write held every job of its worker.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_report_write_does_not_hold_up_the_workers_other_jobs() {
    let backend = Backend::embedded().await;
    let (released, _) = tokio::sync::watch::channel(false);
    let hook = HoldsOneJob { job_id: std::sync::Mutex::new(None), released };
    let store = std::sync::Arc::new(Hooked { inner: backend.open().await, hook });
    let server = TestServer::start_with(store.clone(), config()).await;
    let mut worker = RawWorker::connect(&server.url, "two-at-once", 2, None).await;
    worker.keep_beating(HEARTBEAT / 4);
    let mut client = server.client().await;
    let spec = JobSpec { model: "two-at-once".into(), ..diagnostic(1, 1) };
    let (slow, quick) = (create(&mut client, spec.clone()).await, create(&mut client, spec).await);
    let (first, second) = (worker.assignment().await, worker.assignment().await);
    let fence_of = |id: &str| if first.job_id == id { first.fence } else { second.fence };

    *store.hook.job_id.lock().unwrap() = Some(slow.id.clone());
    worker.report(&slow.id, fence_of(&slow.id), diagnostic_result()).await;
    worker.report(&quick.id, fence_of(&quick.id), diagnostic_result()).await;
    let ended = wait_all_ended(&mut client, std::slice::from_ref(&quick.id), Duration::from_secs(10)).await;
    assert_eq!(ended[0].state, JobState::Succeeded as i32);
    assert!(get(&mut client, &slow.id).await.end_time.is_none(), "the slow job's write is still held");

    store.hook.released.send_replace(true);
    let ended = wait_all_ended(&mut client, std::slice::from_ref(&slow.id), Duration::from_secs(10)).await;
    assert_eq!((ended[0].state, ended[0].attempts), (JobState::Succeeded as i32, 1));
}
