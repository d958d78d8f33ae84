//! `GET /metrics` against a real server: the counters and histograms move by exactly the
//! jobs run, the gauges of waiting and running jobs go back to 0 when the queue drains,
//! open streams are counted while open, and with auth on the endpoint needs an
//! operator's key unless it was made public.

mod support;

use std::{collections::BTreeMap, time::Duration};

use deephardway_service::auth::{AuthConfig, FixedKey, Role};
use http_body_util::BodyExt;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
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

async fn scrape(url: &str, key: Option<&str>) -> (u16, String) {
    let http = Client::builder(TokioExecutor::new()).build_http::<http_body_util::Empty<bytes::Bytes>>();
    let mut request = http::Request::get(format!("{url}/metrics"));
    if let Some(key) = key {
        request = request.header("authorization", format!("Bearer {key}"));
    }
    let response = http.request(request.body(Default::default()).unwrap()).await.expect("GET /metrics");
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn value(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    samples.get(series).copied().unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_by_exactly_the_jobs_run_and_gauges_drain() {
    let backend = Backend::embedded().await;
    let server = TestServer::start(backend.open().await).await;
    let worker = TestWorker::start(&server.url, "w1", 1);
    wait_for_workers(&server.url, 1).await;
    let mut client = server.client().await;
    run(&mut client, diagnostic(1, 1), Duration::from_secs(10)).await; // so that every family has a sample
    let (status, before) = scrape(&server.url, None).await;
    assert_eq!(status, 200, "{before}");
    let before = samples(&before);

    let succeeded = r#"deephardway_jobs_finished_total{kind="diagnostic",model="diagnostic",outcome="succeeded"}"#;
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
    assert_eq!(value(&during, "deephardway_worker_slots"), 1.0);
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
        if value(&after, r#"deephardway_jobs{state="running",model="diagnostic"}"#) == 0.0
            && value(&after, r#"deephardway_open_streams{rpc="watch_job"}"#) == 0.0
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
    server.shutdown().await;
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
