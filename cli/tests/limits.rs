//! Bounds and availability over real gRPC: connections bounded in number and in how
//! long they may stay silent, requests bounded by count as well as bytes, and queues
//! that accept work while their workers are away.

mod support;

use std::time::Duration;

use deephardway::v1::{
    ChatMessage, GenerateInput, JobSpec, JobState, ListJobsRequest, chat_message::Role, job_event::Event,
    job_spec::Input,
};
use deephardway_service::{ServiceConfig, connections::ConnectionLimits};
use support::*;
use tokio::{io::AsyncReadExt, net::TcpStream};
use tonic::Code;

/// Whether the server closes `stream` within `within` (a read returns end of file or an
/// error), without it sending anything.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(tokio::time::timeout(within, stream.read(&mut buf)).await, Ok(Ok(0) | Err(_)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_closed_and_their_number_is_bounded() {
    let backend = Backend::embedded().await;
    let limits = ConnectionLimits { max_connections: 20, start_timeout: Duration::from_millis(800) };
    let server =
        TestServer::start_with(backend.open().await, ServiceConfig { connections: limits, ..test_config() }).await;

    // Twenty peers connect and say nothing: they fill the limit...
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(TcpStream::connect(server.addr).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // ...so one more is closed at once, while the twenty still wait.
    let mut over = TcpStream::connect(server.addr).await.expect("connect");
    assert!(closed_within(&mut over, Duration::from_millis(500)).await, "a connection over the limit is closed");
    // Having sent nothing within the start timeout, the twenty are closed too.
    for stream in &mut silent {
        assert!(closed_within(stream, Duration::from_secs(3)).await, "a silent connection is closed");
    }
    // And real clients are served again.
    let mut client = server.client().await;
    client.list_jobs(ListJobsRequest::default()).await.expect("ListJobs after the silent peers are gone");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_fields_are_bounded_by_count() {
    let backend = Backend::embedded().await;
    let server = TestServer::start(backend.open().await).await;
    let mut client = server.client().await;
    // 100,000 empty messages: a few hundred KB on the wire, far more once decoded.
    let messages = vec![ChatMessage { role: Role::User as i32, content: String::new() }; 100_000];
    let spec = JobSpec {
        input: Some(Input::Generate(GenerateInput { messages, ..Default::default() })),
        ..Default::default()
    };
    let status = client.create_job(create_request(spec)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().starts_with("generate.messages:"), "{}", status.message());
    let fields: Vec<String> = deephardway::errors::violations(&status).into_iter().map(|v| v.field).collect();
    assert_eq!(fields, ["generate.messages"]);
    server.shutdown().await;
}

/// Waits until no worker is connected.
async fn wait_for_no_workers(server: &TestServer) {
    for _ in 0..200 {
        if server.store.range(deephardway_service::keys::WORKERS, 0).await.unwrap().kvs.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the worker did not disconnect within 10 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_queue_while_workers_are_away() {
    let backend = Backend::embedded().await;
    let server = TestServer::start(backend.open().await).await;
    let mut client = server.client().await;

    // A model never served is refused, as before.
    let never = JobSpec { model: "nosuchmodel".into(), ..diagnostic(1, 1) };
    assert_eq!(client.create_job(create_request(never.clone())).await.unwrap_err().code(), Code::FailedPrecondition);

    // A worker serves `diagnostic`, then goes away (a rolling restart, say).
    let worker = TestWorker::start(&server.url, "w1", 1);
    wait_for_workers(&server.url, 1).await;
    worker.stop().await;
    wait_for_no_workers(&server).await;

    // Jobs for it are accepted and wait in line, with their positions.
    let first = create(&mut client, diagnostic(2, 1)).await;
    let second = create(&mut client, diagnostic(2, 1)).await;
    assert_eq!(first.state, JobState::Queued as i32);
    let mut events = watch(&mut client, &second.id, 0).await.unwrap();
    let queued = next_event(&mut events).await.unwrap().unwrap();
    let Some(Event::Queued(queued)) = queued.event else { panic!("{queued:?}") };
    assert_eq!(queued.position, 1, "one job ahead");
    // Still nothing for a model no worker ever served.
    assert_eq!(client.create_job(create_request(never)).await.unwrap_err().code(), Code::FailedPrecondition);

    // The next worker runs them.
    let _worker = TestWorker::start(&server.url, "w2", 1);
    for job in [&first, &second] {
        let stream = watch(&mut client, &job.id, 0).await.unwrap();
        let events = collect_events(stream, Duration::from_secs(20)).await.expect("the job's events");
        let last = events.last().and_then(|e| e.event.as_ref());
        assert!(matches!(last, Some(Event::Result(_))), "{events:?}");
    }
    server.shutdown().await;
}

/// A worker announces at most 256 models (each is remembered in the store), and a model
/// no worker served for a day is forgotten: its record goes, so made-up names do not pile
/// up in the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_announce_a_bounded_number_of_models_and_stale_ones_are_forgotten() {
    use deephardway::worker::v1::{
        ConnectRequest, Hello, ServedModel, connect_request, worker_service_client::WorkerServiceClient,
    };
    use deephardway_service::{jobs::JobLifecycle, keys, store::Op};
    use futures::StreamExt;
    let backend = Backend::embedded().await;
    let server = TestServer::start(backend.open().await).await;
    let models = (0..257)
        .map(|i| ServedModel {
            name: format!("made-up-{i}"),
            kind: deephardway::v1::JobKind::Diagnostic as i32,
            ..Default::default()
        })
        .collect();
    let hello = Hello { name: "greedy".into(), device: "cpu".into(), slots: 1, models, ..Default::default() };
    let requests = futures::stream::iter([ConnectRequest { message: Some(connect_request::Message::Hello(hello)) }])
        .chain(futures::stream::pending());
    let channel = deephardway::connect(&server.url).await.unwrap();
    let refused = WorkerServiceClient::new(channel).connect(requests).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("hello.models"), "{refused:?}");
    assert!(server.store.range(keys::SERVED, 0).await.unwrap().kvs.is_empty(), "nothing remembered");

    // A model last served two days ago is forgotten; one served now is kept.
    let remembered = |name: &str, last_served: u64| {
        let record = serde_json::json!({
            "model": {"name": name, "kind": 1, "description": "", "context_length": 0},
            "last_served": last_served,
        });
        Op::put(keys::served(1, name), serde_json::to_vec(&record).unwrap())
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let txn = deephardway_service::store::Txn::new()
        .then(remembered("old", now - 2 * 24 * 3600))
        .then(remembered("fresh", now));
    server.store.txn(txn).await.unwrap();
    let lifecycle = JobLifecycle::new(server.store.clone(), test_config());
    assert_eq!(lifecycle.forget_unserved().await.unwrap(), 1);
    let left: Vec<String> =
        server.store.range(keys::SERVED, 0).await.unwrap().kvs.into_iter().map(|kv| kv.key).collect();
    assert_eq!(left, [keys::served(1, "fresh")]);
}
