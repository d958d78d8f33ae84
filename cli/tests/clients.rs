//! The service as other tools see it: the real grpcurl binary through server reflection,
//! and a Python client generated from `proto/` with grpcio-tools.

mod support;

use std::{path::PathBuf, process::Command};

use support::*;

fn run_tool(cmd: &mut Command) -> String {
    let output = cmd.output().expect("run tool");
    assert!(
        output.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8")
}

/// The JSON objects grpcurl printed, one per message.
fn json_values(printed: &str) -> Vec<serde_json::Value> {
    serde_json::Deserializer::from_str(printed).into_iter().collect::<Result<_, _>>().expect("grpcurl prints JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_describes_and_runs_through_reflection() {
    let backend = Backend::embedded().await;
    let server = TestServer::start(backend.open().await).await;
    let _worker = TestWorker::start(&server.url, "w1", 1);
    wait_for_workers(&server.url, 1).await;
    let grpcurl = tool("grpcurl", "GRPCURL");
    let addr = server.addr.to_string();

    let version = String::from_utf8(Command::new(&grpcurl).arg("-version").output().unwrap().stderr).unwrap();
    assert!(version.contains("1.8"), "{version}");

    let listed = tokio::task::spawn_blocking({
        let (grpcurl, addr) = (grpcurl.clone(), addr.clone());
        move || run_tool(Command::new(grpcurl).args(["-plaintext", &addr, "list"]))
    })
    .await
    .unwrap();
    for service in [
        "deephardway.v1.JobService",
        "deephardway.v1.ModelService",
        "deephardway.v1.DatasetService",
        "deephardway.worker.v1.WorkerService",
        "grpc.health.v1.Health",
    ] {
        assert!(listed.lines().any(|l| l == service), "{service} missing from:\n{listed}");
    }
    for old in ["deephardway.v1.Jobs", "deephardway.v1.Models", "deephardway.v1.Workers"] {
        assert!(!listed.lines().any(|l| l == old), "{old} is still served:\n{listed}");
    }

    let described = tokio::task::spawn_blocking({
        let (grpcurl, addr) = (grpcurl.clone(), addr.clone());
        move || run_tool(Command::new(grpcurl).args(["-plaintext", &addr, "describe", "deephardway.v1.JobService"]))
    })
    .await
    .unwrap();
    assert!(
        described
            .contains("rpc RunJob ( .deephardway.v1.RunJobRequest ) returns ( stream .deephardway.v1.RunJobResponse )"),
        "{described}"
    );
    assert!(
        described
            .contains("rpc ListJobs ( .deephardway.v1.ListJobsRequest ) returns ( .deephardway.v1.ListJobsResponse )"),
        "{described}"
    );
    assert!(described.contains("RunJob creates a job and streams its events"), "comments reach grpcurl: {described}");

    let ran = tokio::task::spawn_blocking({
        let (grpcurl, addr) = (grpcurl.clone(), addr.clone());
        move || {
            run_tool(Command::new(grpcurl).args([
                "-plaintext",
                "-d",
                r#"{"spec":{"diagnostic":{"steps":5,"step_ms":20},"timeout":"30s"}}"#,
                &addr,
                "deephardway.v1.JobService/RunJob",
            ]))
        }
    })
    .await
    .unwrap();
    // grpcurl prints one JSON object per streamed message: `{"event": {…}}`, or, while
    // the job waits, `{"queueStatus": {…}}` (its place in line, not an event).
    let messages = json_values(&ran);
    let (events, statuses): (Vec<&serde_json::Value>, Vec<&serde_json::Value>) =
        messages.iter().partition(|m| m.get("event").is_some());
    assert!(statuses.iter().all(|m| m.get("queueStatus").is_some()), "{ran}");
    assert_eq!(events.len(), 8, "{ran}");
    let events: Vec<&serde_json::Value> = events.iter().map(|m| &m["event"]).collect();
    assert!(events[0].get("queued").is_some(), "{ran}");
    assert!(events[1].get("started").is_some(), "{ran}");
    assert!(events[7].get("result").is_some(), "{ran}");
    assert_eq!(events[7]["seq"], "8");
    assert_eq!(events[7]["result"]["diagnostic"]["steps"], 5, "{ran}");
    let job_id = events[0]["jobId"].as_str().expect("jobId").to_string();

    // The job as JSON: enums by name, durations and times as strings.
    let got = tokio::task::spawn_blocking({
        let (grpcurl, addr) = (grpcurl.clone(), addr.clone());
        let request = serde_json::json!({ "job_id": job_id }).to_string();
        move || {
            run_tool(Command::new(grpcurl).args([
                "-plaintext",
                "-d",
                &request,
                &addr,
                "deephardway.v1.JobService/GetJob",
            ]))
        }
    })
    .await
    .unwrap();
    let job = &json_values(&got)[0]["job"];
    assert_eq!(job["state"], "JOB_STATE_SUCCEEDED", "{got}");
    assert_eq!(job["kind"], "JOB_KIND_DIAGNOSTIC", "{got}");
    assert_eq!(job["timeout"], "30s", "{got}");
    assert_eq!(job["spec"]["diagnostic"]["steps"], 5, "the FULL view: {got}");
    assert!(job["createTime"].is_string() && job["endTime"].is_string(), "{got}");
    let listed = tokio::task::spawn_blocking({
        let (grpcurl, addr) = (grpcurl.clone(), addr.clone());
        move || {
            run_tool(Command::new(grpcurl).args([
                "-plaintext",
                "-d",
                r#"{"state":"JOB_STATE_SUCCEEDED","page_size":10}"#,
                &addr,
                "deephardway.v1.JobService/ListJobs",
            ]))
        }
    })
    .await
    .unwrap();
    let jobs = &json_values(&listed)[0]["jobs"];
    assert_eq!(jobs[0]["id"], job_id.as_str(), "{listed}");
    assert!(jobs[0]["spec"].get("diagnostic").is_none(), "the BASIC view leaves the input out: {listed}");

    // A bad field: grpcurl shows the status, and the field path leads the message.
    let refused = tokio::task::spawn_blocking({
        let (grpcurl, addr) = (grpcurl.clone(), addr.clone());
        move || {
            Command::new(grpcurl)
                .args(["-plaintext", "-d", r#"{"spec":{"diagnostic":{"steps":0}}}"#, &addr])
                .arg("deephardway.v1.JobService/CreateJob")
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{said}");
    assert!(said.contains("Code: InvalidArgument") && said.contains("diagnostic.steps:"), "{said}");

    let health = tokio::task::spawn_blocking(move || {
        run_tool(Command::new(grpcurl).args(["-plaintext", &addr, "grpc.health.v1.Health/Check"]))
    })
    .await
    .unwrap();
    assert!(health.contains("SERVING"), "{health}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_python_client_creates_and_streams() {
    let backend = Backend::embedded().await;
    let server = TestServer::start(backend.open().await).await;
    let _worker = TestWorker::start(&server.url, "w1", 1);
    wait_for_workers(&server.url, 1).await;
    let python = tool("python", "DEEPHARDWAY_PYTHON");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/client.py");
    let addr = server.addr.to_string();
    let out = tokio::task::spawn_blocking(move || {
        run_tool(Command::new(python).arg(script).arg(root.join("proto")).arg(&addr).arg("4"))
    })
    .await
    .unwrap();
    let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    assert_eq!(lines.len(), 1 + (2 + 4 + 1) + 1, "{out}");
    // The refused job: INVALID_ARGUMENT naming the field, with a google.rpc.BadRequest.
    let error = &lines[0]["error"];
    assert_eq!(error["code"], "INVALID_ARGUMENT", "{out}");
    assert!(error["message"].as_str().unwrap().starts_with("diagnostic.steps:"), "{out}");
    assert_eq!(error["details"], serde_json::json!(["type.googleapis.com/google.rpc.BadRequest"]), "{out}");
    let events = &lines[1..8];
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["seq"], (i + 1).to_string(), "{out}");
    }
    assert_eq!(events[6]["result"]["diagnostic"]["echo"], "from python", "{out}");
    let job = &lines[8];
    assert_eq!(job["state"], "JOB_STATE_SUCCEEDED", "{out}");
    assert_eq!((job["requestId"].as_str(), job["timeout"].as_str()), (Some("python-1"), Some("60s")), "{out}");
    server.shutdown().await;
}

/// The browser path: grpc-web framing over plain HTTP/1.1 (what a browser's fetch can
/// do), through tonic-web's client layer, plus the CORS preflight a browser sends first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_web_over_http1_with_cors() {
    use deephardway::v1::{job_event::Event, job_service_client::JobServiceClient};
    use hyper_util::{client::legacy::Client, rt::TokioExecutor};

    let backend = Backend::embedded().await;
    // A development page on another origin is allowed by name; other origins are not.
    let web = deephardway_service::Web {
        cors: deephardway_service::Cors::Origins(vec!["http://localhost:5173".into()]),
        client_dir: None,
    };
    let server = TestServer::start_full(backend.open().await, Default::default(), web).await;
    let _worker = TestWorker::start(&server.url, "w1", 1);
    wait_for_workers(&server.url, 1).await;

    let http1 = Client::builder(TokioExecutor::new())
        .http2_only(false)
        .build_http::<tonic_web::GrpcWebCall<tonic::body::Body>>();
    let grpc_web = tower::ServiceBuilder::new().layer(tonic_web::GrpcWebClientLayer::new()).service(http1);
    let mut client = JobServiceClient::with_origin(grpc_web, server.url.parse().unwrap());
    let stream = client.run_job(run_request(diagnostic(3, 10))).await.expect("RunJob over grpc-web").into_inner();
    let events = collect_events(stream, std::time::Duration::from_secs(10)).await.expect("stream ends cleanly");
    assert_contiguous(&events, 1);
    assert!(matches!(events.last().unwrap().event, Some(Event::Result(_))), "{events:?}");

    // Errors arrive as statuses over grpc-web too.
    let status = client.create_job(create_request(diagnostic(0, 1))).await.unwrap_err();
    assert_invalid_field(&status, "diagnostic.steps");

    // CORS preflight, as a browser on another origin sends it.
    let preflight = |origin: &str| {
        http::Request::builder()
            .method("OPTIONS")
            .uri(format!("{}/deephardway.v1.JobService/RunJob", server.url))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization,content-type,x-grpc-web,x-user-agent")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap()
    };
    let plain = Client::builder(TokioExecutor::new()).build_http();
    let response = plain.request(preflight("http://localhost:5173")).await.expect("preflight");
    assert!(response.status().is_success(), "{:?}", response.status());
    let headers = response.headers();
    assert_eq!(headers.get("access-control-allow-origin").unwrap(), "http://localhost:5173");
    let allowed = headers.get("access-control-allow-headers").unwrap().to_str().unwrap().to_lowercase();
    // Listed by name: a browser never lets `*` cover `authorization`.
    assert!(allowed.contains("x-grpc-web") && allowed.contains("authorization"), "{allowed}");
    // Any other page gets no permission to read the answer.
    let response = plain.request(preflight("https://evil.example")).await.expect("preflight");
    assert!(response.headers().get("access-control-allow-origin").is_none(), "{:?}", response.headers());
    server.shutdown().await;
}

/// The built web client is served on the gRPC port: files, the client's own routes
/// (index.html), and without a build, a page that says how to make one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_client_files_are_served_beside_the_api() {
    use http_body_util::BodyExt;
    use hyper_util::{client::legacy::Client, rt::TokioExecutor};

    let site = tempfile::tempdir().unwrap();
    std::fs::write(site.path().join("index.html"), "<!doctype html><title>dhw</title>app shell").unwrap();
    std::fs::create_dir(site.path().join("assets")).unwrap();
    std::fs::write(site.path().join("assets/app.js"), "console.log('hi')").unwrap();
    let get = |url: String| async move {
        let http = Client::builder(TokioExecutor::new()).build_http::<http_body_util::Empty<bytes::Bytes>>();
        let response = http.get(url.parse().unwrap()).await.expect("GET");
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).to_string())
    };

    let backend = Backend::embedded().await;
    let web = deephardway_service::Web { client_dir: Some(site.path().to_path_buf()), ..Default::default() };
    let server = TestServer::start_full(backend.open().await, test_config(), web).await;
    let (status, body) = get(format!("{}/", server.url)).await;
    assert_eq!((status.as_u16(), body.contains("app shell")), (200, true), "{body}");
    let (status, body) = get(format!("{}/assets/app.js", server.url)).await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "console.log('hi')"));
    let (status, body) = get(format!("{}/jobs/some-id", server.url)).await;
    assert_eq!((status.as_u16(), body.contains("app shell")), (200, true), "client routes get index.html");
    // gRPC still works on the same port.
    let mut client = server.client().await;
    let status = client.get_job(deephardway::v1::GetJobRequest { job_id: "nope".into(), view: 0 }).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    server.shutdown().await;

    let backend = Backend::embedded().await;
    let server = TestServer::start(backend.open().await).await;
    let (status, body) = get(format!("{}/", server.url)).await;
    assert_eq!(status.as_u16(), 200);
    assert!(body.contains("web client is not built") && body.contains("npm --prefix client-web"), "{body}");
    server.shutdown().await;
}

/// A real model through the whole path: `deephardway up` loads all-MiniLM-L6-v2 from
/// the model cache (scripts/fetch-models) and answers an embed job over gRPC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_serves_the_embed_model_from_the_cache() {
    use deephardway::v1::{EmbedInput, JobSpec, job_event::Event, job_result, job_spec::Input};
    let models = deephardway_worker::runners::default_models_dir();
    assert!(models.join("all-minilm-l6-v2/model.safetensors").exists(), "run scripts/fetch-models");
    let up = UpProcess::start(Some(&models), &[]).await;
    let url = up.url.clone();
    let mut client = jobs_client(&url).await;
    let texts = ["The cat sits on the mat.", "A kitten rests on a rug.", "Quarterly revenue grew 4%."];
    let spec = JobSpec {
        input: Some(Input::Embed(EmbedInput { texts: texts.map(String::from).to_vec() })),
        ..Default::default()
    };
    let events = run(&mut client, spec, std::time::Duration::from_secs(30)).await;
    let Some(Event::Result(result)) = &events.last().unwrap().event else { panic!("{events:?}") };
    let Some(job_result::Value::Embed(embed)) = &result.value else { panic!("{result:?}") };
    let v: Vec<&Vec<f32>> = embed.embeddings.iter().map(|e| &e.values).collect();
    assert_eq!((v.len(), v[0].len()), (3, 384));
    let cos = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    assert!(cos(v[0], v[1]) > cos(v[0], v[2]), "cat/kitten closer than cat/revenue");
}
