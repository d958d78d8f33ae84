//! Traces: `deephardway serve` and `deephardway worker`, both with `--otlp-endpoint`,
//! export a job's spans to an OTLP collector — a stand-in here, the
//! `opentelemetry.proto.collector.trace.v1.TraceService` served by this test — in one
//! trace: the client's, when it sends `traceparent` metadata.
//!
//! The service batches spans for 100 ms; the worker for a minute, so that its spans only
//! arrive because it flushes them when it stops (SIGTERM).

mod support;

use std::{
    collections::HashMap,
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use deephardway::v1::{
    CreateJobRequest, DiagnosticInput, EmbedInput, GenerateInput, JobResult, JobSpec, RunJobRequest, job_event::Event,
    job_result, job_spec::Input,
};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{AnyValue, KeyValue, any_value::Value},
    trace::v1::Span,
};
use support::*;
use tonic::{Request, Response, Status};

/// A span as received, with the `service.name` of the process that sent it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    span: Span,
}

impl Received {
    fn attribute(&self, key: &str) -> Option<&Value> {
        attribute(&self.span.attributes, key)
    }

    fn string(&self, key: &str) -> Option<&str> {
        match self.attribute(key) {
            Some(Value::StringValue(s)) => Some(s),
            _ => None,
        }
    }

    fn int(&self, key: &str) -> Option<i64> {
        match self.attribute(key) {
            Some(Value::IntValue(i)) => Some(*i),
            _ => None,
        }
    }
}

fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v: &AnyValue| v.value.as_ref())
}

/// The OTLP collector stand-in: keeps every span exported to it.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Received>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let resource = resource_spans.resource.map(|r| r.attributes).unwrap_or_default();
            let service = match attribute(&resource, "service.name") {
                Some(Value::StringValue(name)) => name.clone(),
                _ => String::new(),
            };
            for scope in resource_spans.scope_spans {
                spans.extend(scope.spans.into_iter().map(|span| Received { service: service.clone(), span }));
            }
        }
        Ok(Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

impl Collector {
    /// Serves on a free loopback port; returns its URL.
    async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let service = TraceServiceServer::new(self.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        url
    }

    /// The spans of trace `trace_id`.
    fn trace(&self, trace_id: &[u8]) -> Vec<Received> {
        self.spans.lock().unwrap().iter().filter(|r| r.span.trace_id == trace_id).cloned().collect()
    }

    /// The spans received that carry `deephardway.job.id = job`.
    fn of_job(&self, job: &str) -> Vec<Received> {
        self.spans.lock().unwrap().iter().filter(|r| r.string("deephardway.job.id") == Some(job)).cloned().collect()
    }
}

/// The one span named `name` among `spans`.
fn named<'a>(spans: &'a [Received], name: &str) -> &'a Received {
    let found: Vec<&Received> = spans.iter().filter(|r| r.span.name == name).collect();
    assert_eq!(found.len(), 1, "one {name:?} span expected in {:#?}", names(spans));
    found[0]
}

fn names(spans: &[Received]) -> Vec<(String, String)> {
    spans.iter().map(|r| (r.service.clone(), r.span.name.clone())).collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap()).collect()
}

/// A client's trace context: a trace id and the id of the client's own span.
struct ClientTrace {
    trace_id: &'static str,
    span_id: &'static str,
}

impl ClientTrace {
    fn traceparent(&self) -> String {
        format!("00-{}-{}-01", self.trace_id, self.span_id)
    }

    fn with<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.metadata_mut().insert("traceparent", self.traceparent().parse().unwrap());
        request
    }
}

/// Checks the spans of one job in the client's trace: the server span of the call that
/// created it continues the client's span, `submit` is its child, `queued` and
/// `dispatch` are the submit's, and the worker's `run` is the dispatch's.
fn check_job_trace(spans: &[Received], client: &ClientTrace, method: &str, job: &str) -> Received {
    for r in spans {
        assert_eq!(hex(&r.span.trace_id), client.trace_id, "{} is in another trace", r.span.name);
    }
    let rpc = named(spans, &format!("deephardway.v1.JobService/{method}"));
    assert_eq!(hex(&rpc.span.parent_span_id), client.span_id, "the server span continues the client's");
    let submit = named(spans, "submit");
    let queued = named(spans, "queued");
    let dispatch = named(spans, "dispatch");
    let run = named(spans, "run");
    for (span, service) in [(rpc, "deephardway-service"), (submit, "deephardway-service"), (run, "deephardway-worker")]
    {
        assert_eq!(span.service, service, "{}", span.span.name);
    }
    assert_eq!(submit.span.parent_span_id, rpc.span.span_id, "submit is the call's");
    assert_eq!(queued.span.parent_span_id, submit.span.span_id, "queued is the submit's");
    assert_eq!(dispatch.span.parent_span_id, submit.span.span_id, "dispatch is the submit's");
    assert_eq!(run.span.parent_span_id, dispatch.span.span_id, "the worker's run continues the dispatch");
    for span in [submit, queued, dispatch, run] {
        assert_eq!(span.string("deephardway.job.id"), Some(job), "{} names its job", span.span.name);
    }
    // The time in line ends when the job is claimed, where the dispatch starts, and the
    // run starts after both.
    assert!(queued.span.start_time_unix_nano <= queued.span.end_time_unix_nano);
    assert!(queued.span.end_time_unix_nano <= dispatch.span.start_time_unix_nano + 1_000_000);
    assert!(run.span.start_time_unix_nano >= dispatch.span.start_time_unix_nano);
    run.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_spans_from_service_and_worker_reach_the_collector_in_the_clients_trace() {
    let collector = Collector::default();
    let endpoint = collector.start().await;
    let data_dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let url = format!("http://{listen}");
    let mut service = tokio::process::Command::new(binary())
        .args(["serve", "--store", "embedded", "--listen", &listen, "--otlp-endpoint", &endpoint])
        .arg("--data-dir")
        .arg(data_dir.path().join("store"))
        .env("RUST_LOG", "warn")
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn service");
    wait_until_serving(&url).await;

    // A job whose first worker is killed mid-run: its rerun waits in line again, from
    // when the worker was lost. (Before the traced worker starts, so that the rerun is
    // what that worker runs.)
    let mut victim = WorkerProcess::start(&url, "victim", 1);
    wait_for_workers(&url, 1).await;
    let mut client = jobs_client(&url).await;
    let rerun_trace = ClientTrace { trace_id: "5c1a2b3c4d5e6f708192a3b4c5d6e7f8", span_id: "1122334455667788" };
    let long = JobSpec {
        input: Some(Input::Diagnostic(DiagnosticInput { steps: 20, step_ms: 50, ..Default::default() })),
        ..Default::default()
    };
    let request = rerun_trace.with(CreateJobRequest { spec: Some(long), request_id: String::new() });
    let rerun = client.create_job(request).await.expect("CreateJob").into_inner().job.unwrap();
    let mut rerun_events = watch(&mut client, &rerun.id, 0).await.unwrap();
    while !matches!(next_event(&mut rerun_events).await.unwrap().unwrap().event, Some(Event::Progress(_))) {}
    victim.kill().await;

    // The models scripts/fetch-models fetched, if it has, for the GenAI spans.
    let fetched = |name: &str| {
        let dir = deephardway_worker::runners::default_models_dir().join(name);
        dir.join(".verified").is_file().then_some(dir)
    };
    let (minilm, smollm) = (fetched("all-minilm-l6-v2"), fetched("smollm2-135m-instruct"));
    let mut worker = tokio::process::Command::new(binary());
    worker
        .args(["worker", "--server", &url, "--name", "traced", "--device", "cpu", "--slots", "2"])
        .args(["--otlp-endpoint", &endpoint])
        .arg("--models-dir")
        .arg(data_dir.path().join("no-models"))
        .arg("--artifact-cache")
        .arg(data_dir.path().join("cache"));
    if let Some(dir) = &minilm {
        worker.arg("--model").arg(format!("all-minilm-l6-v2={}", dir.display()));
    }
    if let Some(dir) = &smollm {
        worker.arg("--model").arg(format!("smollm2-135m-instruct={}", dir.display()));
    }
    // The worker's spans wait for its shutdown to be sent.
    let mut worker = worker
        .env("RUST_LOG", "warn")
        .env("OTEL_BSP_SCHEDULE_DELAY", "60000")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn worker");
    wait_for_workers(&url, 1).await;
    let events = collect_events(rerun_events, Duration::from_secs(30)).await.unwrap();
    assert!(matches!(events.last().unwrap().event, Some(Event::Result(_))), "{events:?}");
    let diagnostic = JobSpec {
        input: Some(Input::Diagnostic(DiagnosticInput { steps: 2, step_ms: 10, ..Default::default() })),
        ..Default::default()
    };

    // CreateJob with the client's trace context, then watch it to its end.
    let created_trace = ClientTrace { trace_id: "4bf92f3577b34da6a3ce929d0e0e4736", span_id: "00f067aa0ba902b7" };
    let request = created_trace.with(CreateJobRequest { spec: Some(diagnostic.clone()), request_id: String::new() });
    let created = client.create_job(request).await.expect("CreateJob").into_inner().job.unwrap();
    let events = collect_events(watch(&mut client, &created.id, 0).await.unwrap(), Duration::from_secs(20)).await;
    assert!(matches!(events.unwrap().last().unwrap().event, Some(Event::Result(_))));

    // RunJob without one: the job starts a trace of its own.
    let stream = client.run_job(run_request(diagnostic)).await.expect("RunJob").into_inner();
    let events = collect_events(stream, Duration::from_secs(20)).await.unwrap();
    let untraced = events[0].job_id.clone();

    // An embed job through RunJob, with the client's trace context.
    let embed_trace = ClientTrace { trace_id: "0af7651916cd43dd8448eb211c80319c", span_id: "b7ad6b7169203331" };
    let embedded = match &minilm {
        None => {
            println!("SKIPPED: the GenAI span of an embed job (run scripts/fetch-models)");
            None
        }
        Some(_) => {
            let texts = vec!["A man plays guitar.".to_string(), "Someone plays an instrument.".to_string()];
            let spec = JobSpec { input: Some(Input::Embed(EmbedInput { texts })), ..Default::default() };
            let request = embed_trace.with(RunJobRequest { spec: Some(spec), request_id: String::new() });
            let stream = client.run_job(request).await.expect("RunJob").into_inner();
            let events = collect_events(stream, Duration::from_secs(20)).await.unwrap();
            assert!(matches!(events.last().unwrap().event, Some(Event::Result(_))), "{events:?}");
            Some(events[0].job_id.clone())
        }
    };

    // A generate job (a raw prompt: a text completion), in a trace of its own.
    let generated = match &smollm {
        None => {
            println!("SKIPPED: the GenAI span of a generate job (run scripts/fetch-models)");
            None
        }
        Some(_) => {
            let input =
                GenerateInput { prompt: "The capital of France is".into(), max_tokens: 4, ..Default::default() };
            let spec = JobSpec { input: Some(Input::Generate(input)), ..Default::default() };
            let stream = client.run_job(run_request(spec)).await.expect("RunJob").into_inner();
            let events = collect_events(stream, Duration::from_secs(20)).await.unwrap();
            let Some(Event::Result(JobResult { value: Some(job_result::Value::Generate(result)) })) =
                &events.last().unwrap().event
            else {
                panic!("no generate result: {events:?}")
            };
            Some((events[0].job_id.clone(), result.prompt_tokens, result.completion_tokens))
        }
    };

    // The service's spans arrive within its batch delay; none of the worker's yet.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while collector.trace(&unhex(created_trace.trace_id)).iter().filter(|r| r.service == "deephardway-service").count()
        < 4
    {
        assert!(tokio::time::Instant::now() < deadline, "the service's spans did not arrive: {:#?}", {
            names(&collector.spans.lock().unwrap())
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // SIGTERM: both flush what they hold as they stop.
    for child in [&mut worker, &mut service] {
        let pid = child.id().unwrap().to_string();
        assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let status = tokio::time::timeout(Duration::from_secs(15), child.wait()).await.expect("stops").unwrap();
        assert!(status.success(), "{status}");
    }

    let spans = collector.trace(&unhex(created_trace.trace_id));
    check_job_trace(&spans, &created_trace, "CreateJob", &created.id);

    // The rerun: a `queued` and a `dispatch` span per attempt, the second wait starting
    // after the first dispatch (when the worker was lost) and ending at the second.
    let spans = collector.trace(&unhex(rerun_trace.trace_id));
    let of = |name: &str, attempt: i64| {
        spans
            .iter()
            .find(|r| r.span.name == name && r.int("deephardway.job.attempt") == Some(attempt))
            .unwrap_or_else(|| panic!("no {name} span of attempt {attempt}: {:#?}", names(&spans)))
    };
    let (queued1, dispatch1, queued2, dispatch2) =
        (of("queued", 1), of("dispatch", 1), of("queued", 2), of("dispatch", 2));
    assert!(queued2.span.start_time_unix_nano > dispatch1.span.start_time_unix_nano, "the rerun's wait starts later");
    assert!(queued2.span.start_time_unix_nano >= queued1.span.end_time_unix_nano);
    assert!(queued2.span.end_time_unix_nano <= dispatch2.span.start_time_unix_nano + 1_000_000);
    assert_eq!(queued2.span.parent_span_id, queued1.span.parent_span_id, "both are the submit's");
    // A job submitted without trace context has a trace of its own, the same from the
    // service to the worker.
    let own = collector.of_job(&untraced);
    let trace_id = &named(&own, "submit").span.trace_id;
    assert!(own.iter().all(|r| &r.span.trace_id == trace_id), "{:#?}", names(&own));
    assert_ne!(hex(trace_id), created_trace.trace_id);
    assert_eq!(named(&own, "run").service, "deephardway-worker");

    if let Some(job) = embedded {
        let spans = collector.trace(&unhex(embed_trace.trace_id));
        let run = check_job_trace(
            &spans.iter().filter(|r| !r.span.name.starts_with("embeddings")).cloned().collect::<Vec<_>>(),
            &embed_trace,
            "RunJob",
            &job,
        );
        // The GenAI semantic conventions: `{operation} {model}`, with its attributes.
        let gen_ai = named(&spans, "embeddings all-minilm-l6-v2");
        assert_eq!(gen_ai.span.parent_span_id, run.span.span_id);
        assert_eq!(gen_ai.service, "deephardway-worker");
        let expected: HashMap<&str, &str> = [
            ("gen_ai.operation.name", "embeddings"),
            ("gen_ai.request.model", "all-minilm-l6-v2"),
            ("deephardway.job.id", job.as_str()),
        ]
        .into();
        for (key, value) in expected {
            assert_eq!(gen_ai.string(key), Some(value), "{key}");
        }
        // "[CLS] a man plays guitar . [SEP]" and "[CLS] someone plays an instrument . [SEP]".
        assert_eq!(gen_ai.int("gen_ai.usage.input_tokens"), Some(14));
    }

    if let Some((job, prompt_tokens, completion_tokens)) = generated {
        let spans = collector.of_job(&job);
        let gen_ai = named(&spans, "text_completion smollm2-135m-instruct");
        assert_eq!(gen_ai.span.parent_span_id, named(&spans, "run").span.span_id);
        assert_eq!(gen_ai.string("gen_ai.operation.name"), Some("text_completion"));
        assert_eq!(gen_ai.string("gen_ai.request.model"), Some("smollm2-135m-instruct"));
        assert_eq!(gen_ai.int("gen_ai.usage.input_tokens"), Some(i64::from(prompt_tokens)));
        assert_eq!(gen_ai.int("gen_ai.usage.output_tokens"), Some(i64::from(completion_tokens)));
        assert!(prompt_tokens > 0 && completion_tokens > 0);
    }
}
