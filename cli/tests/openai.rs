//! The OpenAI-compatible API against a real `deephardway up` serving the real models:
//! OpenAI's own Python package drives it (tests/python/openai_client.py), and its answers
//! are compared with the job API's for the same input; a streaming client that
//! disconnects cancels its job; refusals queue nothing; oversized bodies are refused
//! unread; the README's curl examples run.

mod support;

use std::{
    io::{Read, Write},
    net::TcpStream,
    process::Command,
    time::{Duration, Instant},
};

use deephardway::v1::{
    ChatMessage, EmbedInput, GenerateInput, GetJobRequest, JobKind, JobSpec, JobState, ListJobsRequest,
    chat_message::Role, job_event::Event, job_result, job_spec::Input,
};
use support::*;

const GENERATE: &str = "smollm2-135m-instruct";
const EMBED: &str = "all-minilm-l6-v2";

async fn up() -> UpProcess {
    let models = deephardway_worker::runners::default_models_dir();
    assert!(models.join(GENERATE).exists() && models.join(EMBED).exists(), "run scripts/fetch-models");
    UpProcess::start(Some(&models), &["--slots", "4"]).await
}

fn result_of(events: &[deephardway::v1::JobEvent]) -> job_result::Value {
    match &events.last().expect("events").event {
        Some(Event::Result(result)) => result.value.clone().expect("a value"),
        other => panic!("no result: {other:?}"),
    }
}

async fn job(url: &str, id: &str) -> deephardway::v1::Job {
    let mut client = jobs_client(url).await;
    client
        .get_job(GetJobRequest { job_id: id.to_string(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openais_python_client_gets_what_the_job_api_gives() {
    let up = up().await;
    let python = tool("python", "DEEPHARDWAY_PYTHON");
    let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/openai_client.py");
    let base = format!("{}/v1", up.url);
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python).arg(script).args([&base, GENERATE, EMBED]).output().expect("run python")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let got: serde_json::Value = serde_json::from_str(stdout.trim()).expect("the script's JSON");
    eprintln!(
        "chat: {:?} in {} chunks; completion: {:?}; response {}: {:?} ({})",
        got["chat_text"],
        got["chat_stream_chunks"],
        got["completion_text"],
        got["response_id"],
        got["response_text"],
        got["response_events"]
    );

    // The chat answer is what Jobs.Run gives for the same input, and its job is visible.
    let mut client = jobs_client(&up.url).await;
    let chat = GenerateInput {
        messages: vec![
            ChatMessage { role: Role::System as i32, content: "Answer briefly.".into() },
            ChatMessage { role: Role::User as i32, content: "Name three colors.".into() },
        ],
        max_tokens: 12,
        temperature: 0.0,
        top_p: 1.0,
        seed: Some(7),
        ..Default::default()
    };
    let spec = JobSpec { input: Some(Input::Generate(chat)), model: GENERATE.into(), ..Default::default() };
    let job_result::Value::Generate(direct) = result_of(&run(&mut client, spec, Duration::from_secs(60)).await) else {
        panic!("not generated text")
    };
    assert_eq!(got["chat_text"], direct.text);
    assert_eq!(got["chat_usage"]["completion_tokens"], direct.completion_tokens);
    assert_eq!(got["chat_usage"]["prompt_tokens"], direct.prompt_tokens);
    let chat_job = job(&up.url, got["chat_job_id"].as_str().unwrap()).await;
    assert_eq!((chat_job.kind(), chat_job.state()), (JobKind::Generate, JobState::Succeeded));
    assert_eq!(chat_job.model, GENERATE);

    // The embeddings are the embed job's vectors.
    let texts = vec!["A man is playing a guitar.".to_string(), "Someone plays an instrument.".to_string()];
    let spec = JobSpec { input: Some(Input::Embed(EmbedInput { texts })), model: EMBED.into(), ..Default::default() };
    let job_result::Value::Embed(direct) = result_of(&run(&mut client, spec, Duration::from_secs(60)).await) else {
        panic!("not embeddings")
    };
    assert_eq!(got["embedding_tokens"], direct.prompt_tokens);
    for (via_openai, direct) in got["embeddings"].as_array().unwrap().iter().zip(&direct.embeddings) {
        let a: Vec<f32> = serde_json::from_value(via_openai.clone()).unwrap();
        let dot: f32 = a.iter().zip(&direct.values).map(|(x, y)| x * y).sum();
        let norms =
            a.iter().map(|x| x * x).sum::<f32>().sqrt() * direct.values.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!(dot / norms > 0.999_999, "cosine {}", dot / norms);
    }

    // The background response is its job; the cancelled one was cancelled.
    let response = job(&up.url, got["response_id"].as_str().unwrap().trim_start_matches("resp_")).await;
    assert_eq!(response.state(), JobState::Succeeded);
    let cancelled = job(&up.url, got["cancelled_id"].as_str().unwrap().trim_start_matches("resp_")).await;
    assert_eq!(cancelled.state(), JobState::Cancelled, "{cancelled:?}");
    assert_eq!(cancelled.cancel_reason, "cancelled through the Responses API", "{cancelled:?}");

    // Refusals: the documented status and parameter.
    let refusals = &got["refusals"];
    assert_eq!(
        (refusals["unknown_model"]["status"].as_u64(), refusals["unknown_model"]["param"].as_str()),
        (Some(404), Some("model"))
    );
    for (case, param) in
        [("n_2", "n"), ("empty_messages", "messages"), ("token_array", "input"), ("bad_temperature", "temperature")]
    {
        assert_eq!(refusals[case]["status"], 400, "{case}: {refusals}");
        assert_eq!(refusals[case]["param"], param, "{case}: {refusals}");
    }
    // ... and queued nothing: the script made 2 chat, 2 completion, 3 embedding and 2
    // response jobs; this test 2 more.
    let listed =
        client.list_jobs(ListJobsRequest { page_size: 1000, ..Default::default() }).await.unwrap().into_inner();
    assert_eq!(listed.jobs.len(), 11, "{:?}", listed.jobs.iter().map(|j| (&j.model, j.state())).collect::<Vec<_>>());
}

/// A plain HTTP/1.1 exchange on a socket of its own, so that the test can drop it.
fn post(addr: &str, path: &str, body: &str, extra_headers: &str) -> TcpStream {
    let mut socket = TcpStream::connect(addr).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        socket,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra_headers}\r\n{body}",
        body.len()
    )
    .unwrap();
    socket
}

/// Reads from `socket` until `until` holds for what was read.
fn read_until(socket: &mut TcpStream, until: impl Fn(&str) -> bool) -> String {
    let (mut read, mut buffer) = (String::new(), [0u8; 4096]);
    while !until(&read) {
        let n = socket.read(&mut buffer).expect("read");
        assert!(n > 0, "the server closed the connection: {read}");
        read.push_str(&String::from_utf8_lossy(&buffer[..n]));
    }
    read
}

fn header<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    response.lines().find_map(|l| {
        let (key, value) = l.split_once(':')?;
        key.eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_client_that_disconnects_cancels_its_job() {
    let up = up().await;
    let addr = up.addr.clone();
    let body = format!(
        r#"{{"model": "{GENERATE}", "prompt": "Once upon a time", "max_tokens": 400, "temperature": 0, "stream": true}}"#
    );
    let (job_id, seen) = tokio::task::spawn_blocking(move || {
        let mut socket = post(&addr, "/v1/completions", &body, "");
        // Two chunks of text: it is generating.
        let read = read_until(&mut socket, |r| r.matches(r#""text":""#).count() >= 3);
        let job_id = header(&read, "x-deephardway-job-id").expect("the job id header").to_string();
        drop(socket);
        (job_id, read.matches(r#""text":""#).count())
    })
    .await
    .unwrap();
    let started = Instant::now();
    let mut ended = job(&up.url, &job_id).await;
    while !deephardway::is_finished(ended.state) && started.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        ended = job(&up.url, &job_id).await;
    }
    let mut client = jobs_client(&up.url).await;
    let events = collect_events(watch(&mut client, &job_id, 0).await.unwrap(), Duration::from_secs(10)).await.unwrap();
    let outputs = events.iter().filter(|e| matches!(e.event, Some(Event::Output(_)))).count();
    eprintln!(
        "disconnected after {seen} chunks of text; the job ended {:?} after {:?} with {outputs} output events",
        ended.state(),
        started.elapsed()
    );
    assert_eq!(ended.state(), JobState::Cancelled);
    assert_eq!(ended.cancel_reason, "client disconnected");
    // The chunk being written when the client left, and perhaps one more already on
    // its way: the job stops within a token or two of the disconnect.
    assert!(outputs <= seen + 2, "{outputs} output events after {seen} were read: the disconnect was noticed late");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_openais_error_shape_and_queue_nothing() {
    let up = up().await;
    let addr = up.addr.clone();
    let answers = tokio::task::spawn_blocking(move || {
        let mut answers = Vec::new();
        let cases = [
            ("/v1/chat/completions", r#"{"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "x"}], "max_tokens": "x"}"#),
            ("/v1/chat/completions", r#"{"messages": [{"role": "user", "content": "x"}]}"#),
            ("/v1/chat/completions", r#"{"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}"#),
            ("/v1/embeddings", r#"{"model": "all-minilm-l6-v2", "input": "x", "encoding_format": "hex"}"#),
            ("/v1/embeddings", r#"{"model": "no-such-model", "input": "x"}"#),
            ("/v1/completions", r#"not json"#),
            ("/v1/responses/resp_nope", ""),
        ];
        for (path, body) in cases {
            let mut socket = post(&addr, path, body, "Connection: close\r\n");
            let mut read = String::new();
            socket.read_to_string(&mut read).unwrap();
            answers.push(read);
        }
        // A body declared over the limit is refused before it is sent.
        let mut socket = TcpStream::connect(&addr).unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(socket, "POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 9000000\r\n\r\n{{").unwrap();
        answers.push(read_until(&mut socket, |r| r.contains("\r\n\r\n") && r.contains('}')));
        answers
    })
    .await
    .unwrap();
    let status = |answer: &str| answer.split(' ').nth(1).unwrap().parse::<u16>().unwrap();
    let error = |answer: &str| -> serde_json::Value {
        let body = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
        let body = &body[body.find('{').unwrap()..=body.rfind('}').unwrap()];
        serde_json::from_str::<serde_json::Value>(body).unwrap()["error"].clone()
    };
    let expected = [
        (400, Some("body")),
        (400, Some("model")),
        (400, Some("tools")),
        (400, Some("encoding_format")),
        (404, Some("model")),
        (400, Some("body")),
        (405, None),
        (413, None),
    ];
    for (answer, (code, param)) in answers.iter().zip(expected) {
        assert_eq!(status(answer), code, "{answer}");
        if code == 405 {
            continue; // POST on a GET route: axum's own answer
        }
        let error = error(answer);
        assert_eq!(error["param"].as_str(), param, "{answer}");
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()) && error["type"].is_string(), "{answer}");
    }
    let mut client = jobs_client(&up.url).await;
    let listed = client.list_jobs(ListJobsRequest::default()).await.unwrap().into_inner();
    assert!(listed.jobs.is_empty(), "refused requests queued jobs: {:?}", listed.jobs);
}

/// Every `curl` line of the README's OpenAI section runs against a real server and prints
/// JSON or server-sent events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readmes_curl_examples_run() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let section = readme
        .split("<!-- openai-curl-examples -->")
        .nth(1)
        .expect("the README marks its OpenAI curl examples with <!-- openai-curl-examples -->");
    let commands: Vec<String> = section
        .lines()
        .take_while(|l| !l.starts_with("<!-- end -->"))
        .filter(|l| l.starts_with("curl "))
        .map(str::to_string)
        .collect();
    assert!(commands.len() >= 4, "{commands:?}");
    let up = up().await;
    for command in commands {
        let command = command.replace("localhost:50051", &up.addr) + " --fail-with-body --silent --show-error";
        let output = tokio::task::spawn_blocking({
            let command = command.clone();
            move || Command::new("sh").arg("-c").arg(&command).output().expect("run sh")
        })
        .await
        .unwrap();
        let printed = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{command}\n{printed}\n{}", String::from_utf8_lossy(&output.stderr));
        let json = printed.trim_start().starts_with('{');
        assert!(json || printed.contains("data: "), "{command}: {printed}");
        eprintln!("{command}\n  → {}", printed.chars().take(160).collect::<String>().replace('\n', " "));
    }
}

/// A client that gives up on a whole (not streamed) answer cancels its job too: the
/// handler waiting for the job is dropped with the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_before_a_whole_answer_cancels_its_job() {
    let up = up().await;
    let addr = up.addr.clone();
    let body = format!(
        r#"{{"model": "{GENERATE}", "messages": [{{"role": "user", "content": "Count from one to one thousand."}}], "max_tokens": 400, "temperature": 0}}"#
    );
    // Greedy: sampled (OpenAI's default temperature is 1), the answer was now and then a
    // few tokens that ended between two looks at the job list.
    let socket = tokio::task::spawn_blocking(move || post(&addr, "/v1/chat/completions", &body, "")).await.unwrap();
    // Wait until its job runs and has generated something.
    let mut client = jobs_client(&up.url).await;
    let started = Instant::now();
    let job_id = loop {
        let listed = client.list_jobs(ListJobsRequest::default()).await.unwrap().into_inner();
        let summary = || listed.jobs.iter().map(|j| (j.state(), j.last_seq)).collect::<Vec<_>>();
        assert!(started.elapsed() < Duration::from_secs(30), "the job did not start: {:?}", summary());
        assert!(!listed.jobs.iter().any(|j| deephardway::is_finished(j.state)), "the job ended first: {:?}", summary());
        if let Some(job) = listed.jobs.iter().find(|j| j.state() == JobState::Running && j.last_seq >= 4) {
            break job.id.clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    drop(socket);
    let left = Instant::now();
    let mut ended = job(&up.url, &job_id).await;
    while !deephardway::is_finished(ended.state) && left.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        ended = job(&up.url, &job_id).await;
    }
    eprintln!("the job ended {:?} {:?} after the client left", ended.state(), left.elapsed());
    assert_eq!(ended.state(), JobState::Cancelled, "{ended:?}");
    assert_eq!(ended.cancel_reason, "client disconnected");
}

/// With auth on, the API takes the gRPC API's keys as bearer tokens, by role.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_roles_apply_to_the_openai_api() {
    use deephardway_service::auth::{AuthConfig, FixedKey, Role as KeyRole};
    const VIEWER: &str = "openai-test-viewer-key-0123456789";
    const SUBMITTER: &str = "openai-test-submitter-key-012345";
    let mut config = test_config();
    let key = |name: &str, role, secret: &str| FixedKey {
        name: name.into(),
        role,
        tenant: "default".into(),
        secret: secret.into(),
    };
    config.auth = AuthConfig {
        enabled: true,
        fixed_keys: vec![key("viewer", KeyRole::Viewer, VIEWER), key("submitter", KeyRole::Submitter, SUBMITTER)],
    };
    let backend = Backend::embedded().await;
    let server = TestServer::start_with(backend.open().await, config).await;
    let addr = server.url.trim_start_matches("http://").to_string();
    let exchange = |method: &'static str, path: &'static str, key: Option<&'static str>| {
        let addr = addr.clone();
        tokio::task::spawn_blocking(move || {
            let mut socket = TcpStream::connect(&addr).unwrap();
            let auth = key.map(|k| format!("Authorization: Bearer {k}\r\n")).unwrap_or_default();
            let body = r#"{"model": "m", "messages": [{"role": "user", "content": "x"}]}"#;
            write!(
                socket,
                "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{auth}\r\n{body}",
                body.len()
            )
            .unwrap();
            let mut read = String::new();
            socket.read_to_string(&mut read).unwrap();
            read
        })
    };
    let status = |answer: &str| answer.split(' ').nth(1).unwrap().to_string();
    let no_key = exchange("GET", "/v1/models", None).await.unwrap();
    assert_eq!(status(&no_key), "401", "{no_key}");
    assert!(no_key.contains(r#""type":"authentication_error""#), "{no_key}");
    let wrong = exchange("GET", "/v1/models", Some("dhw_not-a-key-at-all")).await.unwrap();
    assert_eq!(status(&wrong), "401", "{wrong}");
    let viewer = exchange("GET", "/v1/models", Some(VIEWER)).await.unwrap();
    assert_eq!(status(&viewer), "200", "{viewer}");
    let viewer_posts = exchange("POST", "/v1/chat/completions", Some(VIEWER)).await.unwrap();
    assert_eq!(status(&viewer_posts), "403", "{viewer_posts}");
    assert!(viewer_posts.contains(r#""type":"permission_error""#), "{viewer_posts}");
    // A submitter gets through to the job API, which finds no worker to run it.
    let submitter = exchange("POST", "/v1/chat/completions", Some(SUBMITTER)).await.unwrap();
    assert_eq!(status(&submitter), "503", "{submitter}");
    assert!(submitter.contains(r#""code":"no_worker""#), "{submitter}");
    server.shutdown().await;
}

/// While a streamed job waits in line, its stream says where it stands (an SSE comment
/// that OpenAI's clients skip), and a queued response's object has its place too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_waiting_in_line_shows_its_place() {
    let models = deephardway_worker::runners::default_models_dir();
    let up = UpProcess::start(Some(&models), &["--slots", "1"]).await;
    let mut client = jobs_client(&up.url).await;
    // One long job holds the only slot.
    let long = GenerateInput { prompt: "Once upon a time".into(), max_tokens: 2000, ..Default::default() };
    let long = create(&mut client, JobSpec { input: Some(Input::Generate(long)), ..Default::default() }).await;
    let started = Instant::now();
    while job(&up.url, &long.id).await.state() != JobState::Running {
        assert!(started.elapsed() < Duration::from_secs(30), "the long job did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let addr = up.addr.clone();
    let body = format!(r#"{{"model": "{GENERATE}", "prompt": "Hello", "max_tokens": 4, "stream": true}}"#);
    let (mut socket, waiting) = tokio::task::spawn_blocking(move || {
        let mut socket = post(&addr, "/v1/completions", &body, "");
        let read = read_until(&mut socket, |r| {
            r.split(": deephardway.queue_status ").nth(1).is_some_and(|rest| rest.contains("\n\n"))
        });
        (socket, read)
    })
    .await
    .unwrap();
    let status = waiting.lines().find_map(|l| l.strip_prefix(": deephardway.queue_status ")).unwrap();
    let status: serde_json::Value = serde_json::from_str(status).unwrap();
    assert_eq!(status["position"], 0, "{waiting}");

    // A background response behind it is second in line.
    let addr = up.addr.clone();
    let queued = tokio::task::spawn_blocking(move || {
        let body = format!(r#"{{"model": "{GENERATE}", "input": "Hi", "max_output_tokens": 4, "background": true}}"#);
        let mut socket = post(&addr, "/v1/responses", &body, "Connection: close\r\n");
        let mut read = String::new();
        socket.read_to_string(&mut read).unwrap();
        read
    })
    .await
    .unwrap();
    let body = |answer: &str| -> serde_json::Value {
        serde_json::from_str(&answer[answer.find("\r\n\r\n").unwrap() + 4..]).unwrap()
    };
    let object = body(&queued);
    assert_eq!(object["status"], "queued", "{object}");
    // Its place comes from the replica's view of the queue, which follows the store's
    // watch: the answer to the create may come a moment before the view has the job.
    let id = object["id"].as_str().unwrap().to_string();
    let started = Instant::now();
    let object = loop {
        let (addr, path) = (up.addr.clone(), format!("/v1/responses/{id}"));
        let answer = tokio::task::spawn_blocking(move || {
            let mut socket = TcpStream::connect(&addr).unwrap();
            write!(socket, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
            let mut read = String::new();
            socket.read_to_string(&mut read).unwrap();
            read
        })
        .await
        .unwrap();
        let object = body(&answer);
        if !object["deephardway"]["queue_status"].is_null() || started.elapsed() > Duration::from_secs(5) {
            break object;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(object["status"], "queued", "{object}");
    assert_eq!(object["deephardway"]["queue_status"]["position"], 1, "{object}");

    // Once the long job is gone, the streamed one runs to its end.
    client
        .cancel_job(deephardway::v1::CancelJobRequest { job_id: long.id.clone(), reason: String::new() })
        .await
        .unwrap();
    let rest =
        tokio::task::spawn_blocking(move || read_until(&mut socket, |r| r.contains("data: [DONE]"))).await.unwrap();
    assert!(rest.contains(r#""finish_reason":"#), "{rest}");
}
