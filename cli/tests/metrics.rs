//! `GET /metrics` against a real server: the counters and histograms move by exactly the
//! jobs run, the gauges of waiting and running jobs go back to 0 when the queue drains,
//! open streams are counted while open, and with auth on the endpoint needs an
//! operator's key unless it was made public.

mod support;

use std::{collections::BTreeMap, time::Duration};

use deephardway::v1::{EmbedInput, GenerateInput, JobResult, JobSpec, job_event::Event, job_result, job_spec::Input};
use deephardway_service::{
    ServiceConfig,
    auth::{AuthConfig, FixedKey, Role},
};
use support::*;

/// The samples of an exposition: `name{labels}` → value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("a sample line");
            (series.to_string(), value.parse().expect("a number"))
        })
        .collect()
}

fn value(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    samples.get(series).copied().unwrap_or(0.0)
}

/// The sum of a metric over every label set (`sum(name)` in PromQL).
fn total(samples: &BTreeMap<String, f64>, name: &str) -> f64 {
    samples.iter().filter(|(series, _)| series.starts_with(&format!("{name}{{"))).map(|(_, v)| v).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_by_exactly_the_jobs_run_and_gauges_drain() {
    let backend = Backend::embedded().await;
    let server = TestServer::start(backend.open().await).await;
    let worker = TestWorker::start(&server.url, "w1", 1);
    wait_for_workers(&server.url, 1).await;
    let mut client = server.client().await;
    run(&mut client, diagnostic(1, 1), Duration::from_secs(10)).await; // so that every family has a sample
    let succeeded = r#"deephardway_jobs_finished_total{kind="diagnostic",model="diagnostic",outcome="succeeded"}"#;
    // A job's end is counted when its write returns to the worker's session, which can be
    // a moment after the client has seen the final event.
    let mut before = BTreeMap::new();
    for _ in 0..100 {
        let (status, text) = scrape(&server.url, None).await;
        assert_eq!(status, 200, "{text}");
        before = samples(&text);
        if value(&before, succeeded) >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let failed = r#"deephardway_jobs_finished_total{kind="diagnostic",model="diagnostic",outcome="failed"}"#;
    let submitted = r#"deephardway_jobs_submitted_total{kind="diagnostic",model="diagnostic"}"#;
    let latency_count =
        r#"deephardway_job_latency_seconds_count{kind="diagnostic",model="diagnostic",outcome="succeeded"}"#;
    let waits = r#"deephardway_job_queue_wait_seconds_count{kind="diagnostic",model="diagnostic"}"#;
    for _ in 0..3 {
        run(&mut client, diagnostic(2, 5), Duration::from_secs(10)).await;
    }
    let failing = deephardway::v1::JobSpec {
        input: Some(deephardway::v1::job_spec::Input::Diagnostic(deephardway::v1::DiagnosticInput {
            steps: 3,
            step_ms: 5,
            fail_at_step: 2,
            ..Default::default()
        })),
        max_attempts: 1,
        ..Default::default()
    };
    run(&mut client, failing, Duration::from_secs(10)).await;

    // Jobs waiting: one long job holds the only slot, three wait behind it.
    let long = create(&mut client, diagnostic(200, 10)).await;
    let mut waiting = Vec::new();
    for _ in 0..3 {
        waiting.push(create(&mut client, diagnostic(1, 1)).await);
    }
    let watch_stream = watch(&mut client, &long.id, 0).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let during = samples(&scrape(&server.url, None).await.1);
    assert_eq!(value(&during, r#"deephardway_jobs{state="queued",model="diagnostic"}"#), 3.0, "{during:?}");
    assert_eq!(value(&during, r#"deephardway_jobs{state="running",model="diagnostic"}"#), 1.0, "{during:?}");
    assert_eq!(value(&during, r#"deephardway_open_streams{rpc="watch_job"}"#), 1.0, "{during:?}");
    assert_eq!(value(&during, "deephardway_workers_connected"), 1.0);
    assert_eq!(total(&during, "deephardway_worker_slots"), 1.0);
    let info = during.keys().find(|k| k.starts_with("deephardway_worker_info{")).expect("the worker's info");
    assert!(info.contains(r#"name="w1""#) && info.contains(r#"device="cpu""#), "{info}");
    drop(watch_stream);
    let cancel = deephardway::v1::CancelJobRequest { job_id: long.id.clone(), reason: String::new() };
    client.cancel_job(cancel).await.unwrap();
    for job in &waiting {
        let events = collect_events(watch(&mut client, &job.id, 0).await.unwrap(), Duration::from_secs(10)).await;
        assert!(events.is_ok());
    }

    // Counted exactly once each, and the gauges are back to 0.
    let mut after = BTreeMap::new();
    for _ in 0..100 {
        after = samples(&scrape(&server.url, None).await.1);
        let ended =
            total(&after, "deephardway_jobs_finished_total") - total(&before, "deephardway_jobs_finished_total");
        if value(&after, r#"deephardway_jobs{state="running",model="diagnostic"}"#) == 0.0
            && value(&after, r#"deephardway_open_streams{rpc="watch_job"}"#) == 0.0
            && ended >= 8.0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let moved = |series: &str| value(&after, series) - value(&before, series);
    assert_eq!(moved(submitted), 8.0, "3 + 1 failing + 1 long + 3 waiting");
    assert_eq!(moved(succeeded), 6.0);
    assert_eq!(moved(failed), 1.0);
    assert_eq!(
        moved(r#"deephardway_jobs_finished_total{kind="diagnostic",model="diagnostic",outcome="cancelled"}"#),
        1.0
    );
    assert_eq!(moved(latency_count), 6.0);
    assert_eq!(moved(waits), 8.0, "every attempt's wait");
    assert_eq!(value(&after, r#"deephardway_jobs{state="queued",model="diagnostic"}"#), 0.0, "{after:?}");
    assert_eq!(value(&after, r#"deephardway_jobs{state="running",model="diagnostic"}"#), 0.0, "{after:?}");
    assert_eq!(value(&after, r#"deephardway_open_streams{rpc="watch_job"}"#), 0.0);
    assert!(moved(r#"deephardway_store_write_bytes_total{backend="embedded"}"#) > 0.0);
    assert!(moved(r#"deephardway_store_operation_seconds_count{operation="txn",backend="embedded"}"#) >= 8.0);
    worker.stop().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let gone = samples(&scrape(&server.url, None).await.1);
    assert_eq!(value(&gone, "deephardway_workers_connected"), 0.0, "{gone:?}");
    assert!(!gone.keys().any(|k| k.contains("worker=")), "a gone worker's series are removed: {gone:?}");
    server.shutdown().await;
}

/// What the real models did reaches the service in the worker's heartbeats: one embed
/// job of three texts is one batch of three; a generate job decodes one sequence per
/// step, caches its tokens while it runs and frees them after; its first token and its
/// time per token are measured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workers_batches_cache_and_token_latency_arrive_with_its_heartbeats() {
    let fetched = |name: &str| {
        let dir = deephardway_worker::runners::default_models_dir().join(name);
        dir.join(".verified").is_file().then_some(dir)
    };
    let (Some(minilm), Some(smollm)) = (fetched("all-minilm-l6-v2"), fetched("smollm2-135m-instruct")) else {
        println!("SKIPPED: needs the models of scripts/fetch-models");
        return;
    };
    let options = deephardway_worker::runners::ModelOptions { concurrency: 2, embed_batch: Default::default() };
    let device = deephardway_worker::device::select("cpu").unwrap();
    let runners = vec![
        deephardway_worker::runners::open("all-minilm-l6-v2", &minilm, &device, &options).unwrap(),
        deephardway_worker::runners::open("smollm2-135m-instruct", &smollm, &device, &options).unwrap(),
    ];
    let backend = Backend::embedded().await;
    let config = ServiceConfig { worker_heartbeat: Duration::from_millis(200), ..test_config() };
    let server = TestServer::start_with(backend.open().await, config).await;
    let worker = TestWorker::start_with(&server.url, "models", 2, runners);
    wait_for_worker_models(&server.url).await;
    let mut client = server.client().await;

    let texts = ["A man plays guitar.", "Someone plays an instrument.", "It rains."].map(String::from).to_vec();
    let embed = JobSpec { input: Some(Input::Embed(EmbedInput { texts })), ..Default::default() };
    run(&mut client, embed, Duration::from_secs(30)).await;
    let input = GenerateInput { prompt: "The capital of France is".into(), max_tokens: 6, ..Default::default() };
    let generate = JobSpec { input: Some(Input::Generate(input)), ..Default::default() };
    let events = run(&mut client, generate, Duration::from_secs(60)).await;
    let Some(Event::Result(JobResult { value: Some(job_result::Value::Generate(generated)) })) =
        &events.last().unwrap().event
    else {
        panic!("no generate result: {events:?}")
    };
    assert!(generated.completion_tokens > 1, "{generated:?}");

    // Heartbeats come every 200 ms: wait for the one after the jobs.
    let (embed_batches, generate_batches) = (
        r#"deephardway_batch_size_count{model="all-minilm-l6-v2",worker="#,
        r#"deephardway_batch_size_count{model="smollm2-135m-instruct",worker="#,
    );
    for _ in 0..50 {
        let now = samples(&scrape(&server.url, None).await.1);
        let reported = |prefix: &str| now.keys().any(|k| k.starts_with(prefix));
        if reported(embed_batches) && reported(generate_batches) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await; // and the heartbeat after the last step
    let metrics = samples(&scrape(&server.url, None).await.1);
    assert!(total(&metrics, "deephardway_batch_size_count") > 0.0, "{metrics:?}");
    let sum = |name: &str, model: &str| {
        metrics
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{name}{{model=\"{model}\"")))
            .map(|(_, v)| v)
            .sum::<f64>()
    };
    // One job of three texts: one batch of three.
    assert_eq!(sum("deephardway_batch_size_count", "all-minilm-l6-v2"), 1.0, "{metrics:?}");
    assert_eq!(sum("deephardway_batch_size_sum", "all-minilm-l6-v2"), 3.0, "{metrics:?}");
    // One sequence: every step a batch of one, at least a step per generated token.
    let steps = sum("deephardway_batch_size_count", "smollm2-135m-instruct");
    assert!(steps >= f64::from(generated.completion_tokens), "{steps} steps for {generated:?}");
    assert_eq!(sum("deephardway_batch_size_sum", "smollm2-135m-instruct"), steps);
    // Its cache was freed when it ended.
    assert_eq!(sum("deephardway_kv_cache_tokens", "smollm2-135m-instruct"), 0.0, "{metrics:?}");
    let ttft = r#"deephardway_time_to_first_output_seconds_count{kind="generate",model="smollm2-135m-instruct"}"#;
    assert_eq!(value(&metrics, ttft), 1.0, "{metrics:?}");
    let tpot = r#"deephardway_time_per_output_token_seconds_count{model="smollm2-135m-instruct"}"#;
    assert_eq!(value(&metrics, tpot), 1.0, "{metrics:?}");
    let tpot_sum = value(&metrics, r#"deephardway_time_per_output_token_seconds_sum{model="smollm2-135m-instruct"}"#);
    assert!(tpot_sum > 0.0 && tpot_sum < 5.0, "{tpot_sum} s per token");
    worker.stop().await;
    server.shutdown().await;
}

/// Waits until the worker's two models are listed.
async fn wait_for_worker_models(url: &str) {
    use deephardway::v1::{ListModelsRequest, model_service_client::ModelServiceClient};
    let mut models = ModelServiceClient::new(deephardway::connect(url).await.expect("connect"));
    for _ in 0..600 {
        let list = models.list_models(ListModelsRequest::default()).await.expect("ListModels").into_inner();
        if list.models.iter().filter(|m| m.workers > 0).count() >= 2 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the worker's models were not listed within 30 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_auth_on_metrics_need_an_operators_key_unless_public() {
    const ADMIN: &str = "metrics-test-admin-key-0123456789abcdef";
    let config = |public: bool| {
        let mut config = test_config();
        config.auth = AuthConfig {
            enabled: true,
            fixed_keys: vec![
                FixedKey { name: "admin".into(), role: Role::Admin, tenant: "default".into(), secret: ADMIN.into() },
                FixedKey {
                    name: "viewer".into(),
                    role: Role::Viewer,
                    tenant: "default".into(),
                    secret: "metrics-test-viewer-key-0123456789".into(),
                },
                FixedKey {
                    name: "submitter".into(),
                    role: Role::Submitter,
                    tenant: "default".into(),
                    secret: "metrics-test-submitter-key-012345".into(),
                },
            ],
        };
        config.metrics_public = public;
        config
    };
    let backend = Backend::embedded().await;
    let server = TestServer::start_with(backend.open().await, config(false)).await;
    assert_eq!(scrape(&server.url, None).await.0, 401);
    assert_eq!(scrape(&server.url, Some("not-a-key")).await.0, 401);
    assert_eq!(scrape(&server.url, Some("metrics-test-submitter-key-012345")).await.0, 403);
    assert_eq!(scrape(&server.url, Some("metrics-test-viewer-key-0123456789")).await.0, 200);
    assert_eq!(scrape(&server.url, Some(ADMIN)).await.0, 200);
    server.shutdown().await;

    let backend = Backend::embedded().await;
    let server = TestServer::start_with(backend.open().await, config(true)).await;
    let (status, text) = scrape(&server.url, None).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("# TYPE deephardway_store_operation_seconds histogram"), "{text}");
    server.shutdown().await;
}
