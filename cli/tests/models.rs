//! Text generation through the whole path: `deephardway up` serving SmolLM2 from the model
//! cache (scripts/fetch-models), driven by grpcurl and by a gRPC client — streamed text,
//! chat, stop strings, cancellation, bad input.

mod support;

use std::{process::Command, time::Duration};

use deephardway::v1::{
    CancelJobRequest, ChatMessage, FinishReason, GenerateInput, JobKind, JobSpec, ListModelsRequest,
    chat_message::Role, job_event::Event, job_result, job_spec::Input, model_service_client::ModelServiceClient,
};
use support::*;

/// `deephardway up` with the model cache.
async fn up() -> UpProcess {
    let models = deephardway_worker::runners::default_models_dir();
    assert!(models.join("smollm2-135m-instruct").exists(), "run scripts/fetch-models");
    UpProcess::start(Some(&models), &["--slots", "4"]).await
}

fn generate(input: GenerateInput) -> JobSpec {
    JobSpec { input: Some(Input::Generate(input)), ..Default::default() }
}

fn text_of(events: &[deephardway::v1::JobEvent]) -> (String, job_result::Value) {
    let streamed: String = events
        .iter()
        .filter_map(|e| if let Some(Event::Output(o)) = &e.event { Some(o.text.as_str()) } else { None })
        .collect();
    let Some(Event::Result(result)) = &events.last().unwrap().event else { panic!("no result: {events:?}") };
    (streamed, result.value.clone().unwrap())
}

/// The issue's own acceptance command: grpcurl runs a generate job and the text streams
/// back as `output` events before the `result`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_streams_generated_text() {
    let up = up().await;
    let grpcurl = tool("grpcurl", "GRPCURL");
    let addr = up.addr.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(grpcurl)
            .args([
                "-plaintext",
                "-d",
                r#"{"spec":{"generate":{"prompt":"The capital of France is","max_tokens":16,"seed":"11"}}}"#,
                &addr,
                "deephardway.v1.JobService/RunJob",
            ])
            .output()
            .expect("run grpcurl (scripts/setup installs it)")
    })
    .await
    .unwrap();
    let printed = String::from_utf8(output.stdout).unwrap();
    assert!(output.status.success(), "{printed}\n{}", String::from_utf8_lossy(&output.stderr));
    let messages: Vec<serde_json::Value> =
        serde_json::Deserializer::from_str(&printed).into_iter().collect::<Result<_, _>>().expect("JSON");
    // Each message of the stream is `{"event": {…}}`, or `{"queueStatus": {…}}` while the
    // job waits (no event: not part of the log).
    let events: Vec<&serde_json::Value> =
        messages.iter().filter(|m| m.get("queueStatus").is_none()).map(|m| &m["event"]).collect();
    assert!(events.iter().all(|e| e.is_object()), "{printed}");
    assert_eq!(events[1]["started"]["device"], "cpu", "{printed}");
    let outputs: Vec<&str> = events.iter().filter_map(|e| e["output"]["text"].as_str()).collect();
    assert!(outputs.len() >= 2, "text arrives in several chunks as it is generated: {printed}");
    let result = &events.last().unwrap()["result"]["generate"];
    assert_eq!(result["text"].as_str().unwrap(), outputs.concat(), "{printed}");
    assert!(result["text"].as_str().unwrap().contains("Paris"), "{printed}");
    assert_eq!(result["completionTokens"], 16, "{printed}");
    assert_eq!(result["promptTokens"], 5, "{printed}");
    assert_eq!(result["finishReason"], "FINISH_REASON_LENGTH", "{printed}");
    assert_eq!(result["seed"], "11", "the result reports the seed (a uint64: a string in JSON): {printed}");

    // ModelService.ListModels shows the model with its context length.
    let mut models = ModelServiceClient::new(deephardway::connect(&up.url).await.unwrap());
    let list = models.list_models(ListModelsRequest::default()).await.unwrap().into_inner();
    let smollm = list.models.iter().find(|m| m.name == "smollm2-135m-instruct").expect("served");
    assert_eq!(smollm.context_length, 8192);
    assert_eq!(smollm.kind, JobKind::Generate as i32);
    let generate_only = ListModelsRequest { kind: JobKind::Generate as i32, ..Default::default() };
    let list = models.list_models(generate_only).await.unwrap().into_inner();
    assert!(list.models.iter().all(|m| m.kind == JobKind::Generate as i32), "{list:?}");
    assert!(list.models.iter().any(|m| m.name == "smollm2-135m-instruct"), "{list:?}");
}

/// Chat through the template, stop strings, cancellation within a token, and requests
/// the model cannot take.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_stop_cancel_and_bad_requests() {
    let up = up().await;
    let mut client = jobs_client(&up.url).await;
    let within = Duration::from_secs(60);

    // Chat: the answer ends on its own (end of sequence), greedy so it is repeatable.
    let chat = GenerateInput {
        messages: vec![ChatMessage { role: Role::User as i32, content: "Say hello.".into() }],
        max_tokens: 64,
        ..Default::default()
    };
    let events = run(&mut client, generate(chat.clone()), within).await;
    let (streamed, job_result::Value::Generate(first)) = text_of(&events) else { panic!() };
    assert_eq!(streamed, first.text);
    assert!(!first.text.contains("<|im_end|>") && !first.text.is_empty(), "{first:?}");
    assert!(first.prompt_tokens > 20, "the template adds a system prompt: {first:?}");
    let events = run(&mut client, generate(chat), within).await;
    let (_, job_result::Value::Generate(again)) = text_of(&events) else { panic!() };
    assert_eq!(again.text, first.text, "greedy decoding is deterministic");

    // A stop string cuts the text before it.
    let prompt = "The capital of France is".to_string();
    let stop = GenerateInput { prompt: prompt.clone(), max_tokens: 32, stop: vec!["\n".into()], ..Default::default() };
    let events = run(&mut client, generate(stop), within).await;
    let (streamed, job_result::Value::Generate(stopped)) = text_of(&events) else { panic!() };
    assert_eq!((stopped.finish_reason(), streamed.as_str()), (FinishReason::Stop, stopped.text.as_str()));
    assert!(!stopped.text.contains('\n') && stopped.text.contains("Paris"), "{stopped:?}");

    // Sampling with a seed is repeatable too.
    let sampled = GenerateInput {
        prompt: prompt.clone(),
        max_tokens: 12,
        temperature: 0.8,
        top_p: 0.9,
        top_k: 40,
        repetition_penalty: 1.1,
        seed: Some(7),
        ..Default::default()
    };
    let mut texts = Vec::new();
    for _ in 0..2 {
        let events = run(&mut client, generate(sampled.clone()), within).await;
        let (_, job_result::Value::Generate(g)) = text_of(&events) else { panic!() };
        assert_eq!(g.seed, 7, "the result reports the seed it used: {g:?}");
        texts.push(g.text);
    }
    assert_eq!(texts[0], texts[1]);

    // Cancel a long generation once text flows: it ends cancelled, promptly.
    let long = GenerateInput { prompt: "Once upon a time".into(), max_tokens: 4000, ..Default::default() };
    let mut stream = client.run_job(run_request(generate(long))).await.unwrap().into_inner();
    let mut job_id = String::new();
    let mut events = Vec::new();
    while let Some(message) = tokio::time::timeout(within, stream.message()).await.unwrap().unwrap() {
        let Some(event) = message.event() else { continue }; // a queue status
        job_id = event.job_id.clone();
        let is_output = matches!(event.event, Some(Event::Output(_)));
        events.push(event);
        if is_output {
            break;
        }
    }
    let cancelled_at = std::time::Instant::now();
    client.cancel_job(CancelJobRequest { job_id, reason: "test".into() }).await.unwrap();
    events.extend(collect_events(stream, within).await.unwrap());
    assert!(matches!(events.last().unwrap().event, Some(Event::Cancelled(_))), "{:?}", events.last());
    assert!(cancelled_at.elapsed() < Duration::from_secs(5), "cancel took {:?}", cancelled_at.elapsed());

    // More tokens than the model's context: refused before anything is queued.
    let status = client
        .create_job(create_request(generate(GenerateInput {
            prompt: prompt.clone(),
            max_tokens: 8192,
            ..Default::default()
        })))
        .await
        .unwrap_err();
    assert_invalid_field(&status, "generate.max_tokens");
    assert!(status.message().contains("8192"), "{status:?}");
    // A prompt that only the tokenizer can tell is too long fails the job with the same code.
    let huge = "word ".repeat(12_000);
    let events =
        run(&mut client, generate(GenerateInput { prompt: huge, max_tokens: 16, ..Default::default() }), within).await;
    let Some(Event::Failed(failed)) = &events.last().unwrap().event else { panic!("{:?}", events.last()) };
    assert_eq!(failed.code, tonic::Code::InvalidArgument as i32, "{failed:?}");
    assert!(failed.message.contains("tokens"), "{failed:?}");
    // …with a google.rpc.BadRequest naming the field, kept in the failed event.
    let status = deephardway::errors::from_rpc_status(failed);
    assert_invalid_field(&status, "generate.prompt");
    // A role this version does not know, and a role left unset.
    for role in [42, Role::Unspecified as i32] {
        let messages = vec![ChatMessage { role, content: "hi".into() }];
        let status = client
            .create_job(create_request(generate(GenerateInput { messages, ..Default::default() })))
            .await
            .unwrap_err();
        assert_invalid_field(&status, "generate.messages[0].role");
    }
}

/// Concurrent embed jobs are batched together on the worker; each still gets exactly its
/// own vectors, in its own order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_embed_jobs_each_get_their_own_vectors() {
    use deephardway::v1::EmbedInput;
    let up = up().await;
    let client = jobs_client(&up.url).await;
    let embed = |texts: Vec<String>| {
        let mut client = client.clone();
        async move {
            let spec = JobSpec { input: Some(Input::Embed(EmbedInput { texts })), ..Default::default() };
            let events = run(&mut client, spec, Duration::from_secs(60)).await;
            let Some(Event::Result(result)) = &events.last().unwrap().event else { panic!("{events:?}") };
            let Some(job_result::Value::Embed(e)) = &result.value else { panic!("{result:?}") };
            e.embeddings.iter().map(|v| v.values.clone()).collect::<Vec<_>>()
        }
    };
    let jobs: Vec<Vec<String>> = (0..12)
        .map(|j| {
            (0..1 + j % 3)
                .map(|t| format!("job {j} text {t}: {}", "a fairly ordinary sentence ".repeat(j % 5)))
                .collect()
        })
        .collect();
    let together = futures::future::join_all(jobs.iter().cloned().map(&embed)).await;
    for (texts, vectors) in jobs.into_iter().zip(together) {
        assert_eq!(vectors.len(), texts.len());
        for (text, vector) in texts.iter().zip(&vectors) {
            let alone = embed(vec![text.clone()]).await.remove(0);
            let cosine: f32 = alone.iter().zip(vector).map(|(a, b)| a * b).sum();
            assert!(cosine > 0.9999, "{text:?}: cosine {cosine} between batched and alone");
        }
    }
}
