//! Live queue positions and start estimates against a real server: a watcher of the last
//! of 20 queued jobs sees its position fall to 0, then `started`, with estimates close to
//! the real wait; positions cost no store writes (writes per dispatch do not grow with
//! the queue); a resumed watcher, GetJob and WatchJobs show the current position; a job
//! put back in line after its worker was killed shows its new one; the moves of a
//! dispatch wave reach a waiting watcher as one status.

mod support;

use std::time::{Duration, SystemTime};

use deephardway::v1::{CancelJobRequest, GetJobRequest, Job, QueueStatus, WatchJobsRequest, job_event::Event};
use deephardway_service::{
    keys,
    store::{Op, Txn},
};
use support::{
    hooked::{CountsReads, Hooked},
    *,
};
use tokio::time::Instant;

/// A stream message as a watcher saw it, and when.
#[derive(Debug)]
enum Seen {
    Status(QueueStatus, SystemTime),
    Event(Event, SystemTime),
}

/// Reads a watch stream into `seen` until `done` says stop (or `within` passes).
async fn read_until(
    stream: &mut tonic::Streaming<deephardway::v1::WatchJobResponse>,
    seen: &mut Vec<Seen>,
    within: Duration,
    done: impl Fn(&Seen) -> bool,
) {
    let deadline = Instant::now() + within;
    loop {
        let message = tokio::time::timeout_at(deadline, stream.message())
            .await
            .unwrap_or_else(|_| panic!("not started within {within:?}: {seen:?}"))
            .expect("stream")
            .expect("not ended");
        let at = SystemTime::now();
        let next = if let Some(status) = message.queue_status {
            Seen::Status(status, at)
        } else if let Some(event) = message.event.and_then(|e| e.event) {
            Seen::Event(event, at)
        } else {
            continue;
        };
        let stop = done(&next);
        seen.push(next);
        if stop {
            return;
        }
    }
}

async fn cancel(client: &mut JobsClient, id: &str) {
    client.cancel_job(CancelJobRequest { job_id: id.to_string(), reason: String::new() }).await.expect("CancelJob");
}

async fn get(client: &mut JobsClient, id: &str) -> Job {
    client.get_job(GetJobRequest { job_id: id.to_string(), view: 0 }).await.expect("GetJob").into_inner().job.unwrap()
}

/// Creates a long job and waits until it holds the worker's only slot.
async fn block_the_slot(client: &mut JobsClient) -> Job {
    let long = create(client, diagnostic(10_000, 10)).await;
    let mut stream = watch(client, &long.id, 0).await.expect("WatchJob");
    while !matches!(next_event(&mut stream).await.unwrap().unwrap().event, Some(Event::Started(_))) {}
    long
}

fn seconds(t: &prost_types::Timestamp) -> SystemTime {
    SystemTime::try_from(*t).expect("a valid time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_of_20_sees_its_position_fall_to_0_then_starts_near_the_estimate() {
    let backend = Backend::embedded().await;
    let server = TestServer::start(backend.open().await).await;
    let _worker = TestWorker::start(&server.url, "w1", 1);
    wait_for_workers(&server.url, 1).await;
    let mut client = server.client().await;
    let long = block_the_slot(&mut client).await;
    let mut queued = Vec::new();
    for _ in 0..20 {
        queued.push(create(&mut client, diagnostic(4, 50)).await);
    }
    let last = queued.last().unwrap().clone();
    let mut stream = watch(&mut client, &last.id, 0).await.expect("WatchJob");
    // The first status comes right after the stored events. Read it before the line
    // moves: the times below are when the client read a message, which is when the
    // server sent it only while the client keeps reading (a status sent before the
    // first read would otherwise seem to arrive together with the next).
    let mut seen = Vec::new();
    let within = Duration::from_secs(60);
    read_until(&mut stream, &mut seen, within, |s| matches!(s, Seen::Status(..))).await;
    // Let the line move.
    cancel(&mut client, &long.id).await;
    read_until(&mut stream, &mut seen, within, |s| matches!(s, Seen::Event(Event::Started(_), _))).await;
    let Some(Seen::Event(Event::Started(_), started_at)) = seen.last() else { unreachable!() };

    let statuses: Vec<(&QueueStatus, SystemTime)> = seen
        .iter()
        .filter_map(|s| match s {
            Seen::Status(status, at) => Some((status, *at)),
            Seen::Event(..) => None,
        })
        .collect();
    let positions: Vec<u32> = statuses.iter().map(|(s, _)| s.position).collect();
    eprintln!("positions seen: {positions:?}");
    assert_eq!(positions.first(), Some(&19), "the current position comes right after the stored events: {seen:?}");
    assert_eq!(positions.last(), Some(&0), "it reaches 0 before it starts: {seen:?}");
    assert!(positions.windows(2).all(|w| w[0] >= w[1]), "the position never grows: {positions:?}");
    assert!(
        matches!(seen.iter().rev().nth(1), Some(Seen::Status(s, _)) if s.position == 0),
        "position 0 is the last thing before `started`: {seen:?}"
    );
    // Coalesced: a few per second at most, and fewer than one per job ahead.
    assert!(statuses.len() <= 20, "{} statuses for 19 jobs ahead", statuses.len());
    // (Becoming next, position 0, is sent at once.)
    for pair in statuses.windows(2).filter(|pair| pair[1].0.position > 0) {
        let gap = pair[1].1.duration_since(pair[0].1).unwrap_or_default();
        assert!(gap >= Duration::from_millis(200), "statuses {gap:?} apart: {positions:?}");
    }

    // Once jobs of the line have been started, the estimate is known, and in the steady
    // state (past the first few starts) within a factor of 2 of the real wait.
    let mut checked = 0;
    for (status, at) in &statuses {
        if status.position > 16 {
            continue;
        }
        let eta = status.estimated_start_time.as_ref().unwrap_or_else(|| panic!("no estimate: {status:?}"));
        assert!(status.dispatch_rate > 0.0, "{status:?}");
        if status.position < 2 {
            continue; // a wait of one job is mostly noise
        }
        let predicted = seconds(eta).duration_since(*at).unwrap_or_default().as_secs_f64();
        let real = started_at.duration_since(*at).unwrap_or_default().as_secs_f64();
        eprintln!(
            "position {:2}: estimated wait {predicted:.2}s, real {real:.2}s (rate {:.2}/s)",
            status.position, status.dispatch_rate
        );
        assert!(
            predicted <= 2.0 * real && real <= 2.0 * predicted,
            "position {}: {predicted:.2}s vs {real:.2}s",
            status.position
        );
        checked += 1;
    }
    assert!(checked >= 2, "few estimates to check: {positions:?}");
    server.shutdown().await;
}

/// Runs `queued` jobs through one slot, every one of them watched, and returns the store
/// writes (revisions) per job, from the moment they are all in line to the last result.
async fn writes_per_dispatch(queued: usize) -> f64 {
    let backend = Backend::embedded().await;
    let server = TestServer::start(backend.open().await).await;
    let _worker = TestWorker::start(&server.url, "w1", 1);
    wait_for_workers(&server.url, 1).await;
    let mut client = server.client().await;
    let long = block_the_slot(&mut client).await;
    let mut watchers = Vec::new();
    for _ in 0..queued {
        let job = create(&mut client, diagnostic(1, 1)).await;
        let stream = watch(&mut client, &job.id, 0).await.expect("WatchJob");
        watchers.push(tokio::spawn(collect_events(stream, Duration::from_secs(120))));
    }
    let before = server.store.revision().await.unwrap();
    cancel(&mut client, &long.id).await;
    for watcher in watchers {
        let events = watcher.await.unwrap().expect("events");
        assert!(matches!(events.last().and_then(|e| e.event.as_ref()), Some(Event::Result(_))), "{events:?}");
    }
    let after = server.store.revision().await.unwrap();
    server.shutdown().await;
    // The cancel of the long job is a few writes; spread over the jobs they are noise.
    (after - before) as f64 / queued as f64
}

/// Four slots free at once: the line moves four times within milliseconds. A waiting
/// watcher gets those moves as one status, sent a moment (100 ms) after the first, not a
/// status at the first move and another when the interval ends: before, every move woke
/// every waiting stream, and the first one sent at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatch_wave_reaches_a_waiting_watcher_as_one_status_after_it() {
    let backend = Backend::embedded().await;
    let server = TestServer::start(backend.open().await).await;
    let _worker = TestWorker::start(&server.url, "w1", 4);
    wait_for_workers(&server.url, 1).await;
    let mut client = server.client().await;
    let mut blockers = Vec::new();
    for _ in 0..4 {
        blockers.push(block_the_slot(&mut client).await);
    }
    let mut queued = Vec::new();
    for _ in 0..10 {
        queued.push(create(&mut client, diagnostic(10_000, 10)).await);
    }
    let last = queued.last().unwrap().clone();
    let mut stream = watch(&mut client, &last.id, 0).await.expect("WatchJob");
    let mut seen = Vec::new();
    let within = Duration::from_secs(60);
    read_until(&mut stream, &mut seen, within, |s| matches!(s, Seen::Status(..))).await;
    let Some(Seen::Status(first, _)) = seen.last() else { unreachable!() };
    assert_eq!(first.position, 9);
    // Longer than the interval between statuses, so that none is held back by it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let freed = Instant::now();
    let cancels = blockers.iter().map(|job| {
        let mut client = client.clone();
        async move { cancel(&mut client, &job.id).await }
    });
    futures::future::join_all(cancels).await;
    // The first status that shows the line moved (one with only a new estimate may come
    // before it).
    let moved = loop {
        read_until(&mut stream, &mut seen, within, |s| matches!(s, Seen::Status(..))).await;
        match seen.last() {
            Some(Seen::Status(status, _)) if status.position < 9 => break *status,
            _ => continue,
        }
    };
    let after = freed.elapsed();
    assert!(
        after >= Duration::from_millis(100),
        "the moves' status came {after:?} after the slots were freed, before the wave settled: {seen:?}"
    );
    assert!(moved.position >= 5, "{moved:?}");
    eprintln!("status {after:?} after the slots were freed: position {}", moved.position);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_writes_per_dispatch_do_not_grow_with_the_queue() {
    let small = writes_per_dispatch(10).await;
    let large = writes_per_dispatch(200).await;
    eprintln!("store writes per dispatched job: {small:.2} with 10 queued, {large:.2} with 200 queued");
    // Each job costs its claim and its reports, whatever the length of the line; writing
    // positions would cost a write per job still in line (about 100 per job at 200).
    assert!(large <= small + 1.0, "{small:.2} writes per job at 10 queued, {large:.2} at 200");
    assert!(large < 10.0, "{large:.2}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumed_watchers_get_and_jobs_show_the_current_position() {
    let backend = Backend::embedded().await;
    let server = TestServer::start(backend.open().await).await;
    let _worker = TestWorker::start(&server.url, "w1", 1);
    wait_for_workers(&server.url, 1).await;
    let mut client = server.client().await;
    let long = block_the_slot(&mut client).await;
    let mut queued = Vec::new();
    for _ in 0..5 {
        queued.push(create(&mut client, diagnostic(1, 1)).await);
    }
    let fifth = &queued[4];
    // Resuming after the `queued` event (seq 1): no event is due, yet the position is.
    let mut stream = watch(&mut client, &fifth.id, 1).await.expect("WatchJob");
    let first = tokio::time::timeout(Duration::from_secs(5), stream.message()).await.unwrap().unwrap().unwrap();
    assert!(first.event.is_none(), "{first:?}");
    assert_eq!(first.queue_status.expect("a queue status").position, 4);

    // GetJob: the position of a queued job; none for a running one.
    assert_eq!(get(&mut client, &fifth.id).await.queue_status.expect("queued").position, 4);
    assert_eq!(get(&mut client, &queued[0].id).await.queue_status.expect("queued").position, 0);
    assert!(get(&mut client, &long.id).await.queue_status.is_none(), "a running job is not in line");
    // WatchJobs' snapshot too.
    let mut jobs = client.watch_jobs(WatchJobsRequest { snapshot_size: 10, view: 0 }).await.unwrap().into_inner();
    let mut shown = std::collections::HashMap::new();
    while shown.len() < 6 {
        let update = jobs.message().await.unwrap().unwrap();
        let job = update.job.unwrap();
        shown.insert(job.id.clone(), job.queue_status.map(|s| s.position));
    }
    assert_eq!(shown[&fifth.id], Some(4));
    assert_eq!(shown[&long.id], None);

    // A cancel ahead of it moves it up.
    cancel(&mut client, &queued[1].id).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let message = tokio::time::timeout_at(deadline, stream.message()).await.unwrap().unwrap().unwrap();
        if message.queue_status.is_some_and(|s| s.position == 3) {
            break;
        }
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_back_in_line_after_its_worker_was_killed_shows_its_new_position() {
    let backend = Backend::embedded().await;
    let server = TestServer::start(backend.open().await).await;
    let mut worker = WorkerProcess::start(&server.url, "doomed", 1);
    wait_for_workers(&server.url, 1).await;
    let mut client = server.client().await;
    let first = block_the_slot(&mut client).await;
    let second = create(&mut client, diagnostic(10_000, 10)).await;
    let third = create(&mut client, diagnostic(1, 1)).await;
    // The second job is watched from the start: in line, started, then back in line.
    let mut second_watch = watch(&mut client, &second.id, 0).await.expect("WatchJob");
    let mut third_watch = watch(&mut client, &third.id, 1).await.expect("WatchJob");
    let status = third_watch.message().await.unwrap().unwrap().queue_status.expect("a queue status");
    assert_eq!(status.position, 1);
    cancel(&mut client, &first.id).await;
    let mut seen = Vec::new();
    read_until(&mut second_watch, &mut seen, Duration::from_secs(10), |s| {
        matches!(s, Seen::Event(Event::Started(_), _))
    })
    .await;
    assert!(matches!(seen.iter().rev().nth(1), Some(Seen::Status(s, _)) if s.position == 0), "{seen:?}");

    worker.kill().await;
    // The second job goes back in line at its original place, ahead of the third, and
    // its watcher is told its new place right after the `queued` event.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let message = tokio::time::timeout_at(deadline, second_watch.message()).await.unwrap().unwrap().unwrap();
        match message.event.and_then(|e| e.event) {
            Some(Event::Progress(_)) => continue,
            Some(Event::Queued(q)) => {
                assert_eq!(q.reason, "worker lost");
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let next = tokio::time::timeout(Duration::from_secs(1), second_watch.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(next.queue_status.expect("its new place at once").position, 0);
    loop {
        let message = tokio::time::timeout_at(deadline, third_watch.message()).await.unwrap().unwrap().unwrap();
        if let Some(status) = message.queue_status
            && status.position == 1
            && message.event.is_none()
        {
            break;
        }
    }
    assert_eq!(get(&mut client, &second.id).await.queue_status.expect("queued again").position, 0);
    assert_eq!(get(&mut client, &third.id).await.queue_status.expect("queued").position, 1);
    server.shutdown().await;
}

/// A submit's place in line comes from the replica's view of the queues, not from reading
/// them, and is exact for a client submitting one job after another, even while another
/// application writes to the same etcd (its writes move the store's revision, and the
/// replica never sees their keys).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn places_in_line_come_from_the_view_while_others_share_the_etcd() {
    let backend = Backend::etcd().await;
    let store = std::sync::Arc::new(Hooked { inner: backend.open().await, hook: CountsReads::under(&[keys::QUEUE]) });
    let server = TestServer::start(store.clone()).await;
    // A worker serves the model, then leaves: jobs wait in line.
    let worker = TestWorker::start(&server.url, "w", 1);
    wait_for_workers(&server.url, 1).await;
    worker.stop().await;
    let other = backend.open().await;
    let elsewhere = tokio::spawn(async move {
        for i in 0u64.. {
            other.txn(Txn::new().then(Op::put("/elsewhere/counter", i.to_string()))).await.unwrap();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    let mut client = server.client().await;
    let reads_before = store.hook.reads();
    for expected in 0..5 {
        let job = create(&mut client, diagnostic(1, 1)).await;
        let mut stream = watch(&mut client, &job.id, 0).await.expect("WatchJob");
        match next_event(&mut stream).await.unwrap().unwrap().event {
            Some(Event::Queued(queued)) => assert_eq!(queued.position, expected, "job {expected}"),
            other => panic!("expected the queued event, got {other:?}"),
        }
    }
    let reads = store.hook.reads() - reads_before;
    assert_eq!(reads, 0, "submits read the queues {reads} times");
    elsewhere.abort();
    server.shutdown().await;
}

/// A `RunJob` stream is subscribed before its job exists: it starts from the event that
/// queued the job, with its place in line, and gets every later event once and in order
/// without reading any of them back from the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_job_stream_reads_none_of_its_events_back() {
    let backend = Backend::embedded().await;
    let store = std::sync::Arc::new(Hooked { inner: backend.open().await, hook: CountsReads::under(&[keys::EVENTS]) });
    let server = TestServer::start(store.clone()).await;
    let worker = TestWorker::start(&server.url, "w", 1);
    wait_for_workers(&server.url, 1).await;
    let mut client = server.client().await;
    let reads_before = store.hook.reads();
    for _ in 0..3 {
        let events = run(&mut client, diagnostic(4, 5), Duration::from_secs(20)).await;
        let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "every event once, in order");
        assert!(matches!(events[0].event, Some(Event::Queued(_))), "{:?}", events[0]);
        assert!(matches!(events.last().unwrap().event, Some(Event::Result(_))), "{:?}", events.last());
        assert!(events.len() >= 6, "queued, started, 4 steps' progress, result: {events:?}");
    }
    let reads = store.hook.reads() - reads_before;
    assert_eq!(reads, 0, "RunJob read its job's events {reads} times");
    worker.stop().await;
    server.shutdown().await;
}
