//! A worker can touch only what its own session holds: the fence of each assignment is a
//! random secret, so a guessed one publishes nothing; one session cannot report, fetch or
//! publish for another's job; a worker fetches only the files its own assignments name;
//! a published model is checked before it is registered; and a forged result never
//! reaches the submitter. Driven by hand-written workers against a real server.

mod support;

use std::{path::Path, time::Duration};

use deephardway::{
    v1::{
        Architecture, CreateDatasetRequest, Dataset, EmbedInput, EmbedResult, Embedding, GenerateInput, GetJobRequest,
        JobKind, JobProgress, JobResult, JobSpec, JobState, ListModelsRequest, TrainInput, TrainResult, TrainedModel,
        dataset_service_client::DatasetServiceClient, job_event::Event, job_result, job_spec::Input,
        model_service_client::ModelServiceClient,
    },
    worker::v1::{FetchArtifactRequest, PublishModelRequest, connect_response},
};
use deephardway_service::{ServiceConfig, artifacts::ArtifactStore, keys};
use serde_json::json;
use support::{
    raw_worker::{RawWorker, served},
    *,
};
use tonic::Code;

const BEAT: Duration = Duration::from_millis(500);

/// A tiny dataset archive: two classes (`dark`, `light`) of one 4×4 PNG each, `shade`
/// making it unique.
fn tiny_dataset(shade: u8) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    for (class, value) in [("dark", shade / 2), ("light", 128 + shade / 2)] {
        std::fs::create_dir(dir.path().join(class)).unwrap();
        let image = image::GrayImage::from_pixel(4, 4, image::Luma([value]));
        image.save(dir.path().join(class).join("1.png")).unwrap();
    }
    deephardway::datasets::tar_folder(dir.path()).unwrap()
}

/// A safetensors file of F32 tensors, each filled with `value`, written by hand.
fn safetensors(tensors: &[(&str, Vec<usize>)], value: f32) -> Vec<u8> {
    let (mut header, mut data) = (serde_json::Map::new(), Vec::new());
    for (name, shape) in tensors {
        let start = data.len();
        data.extend(value.to_le_bytes().repeat(shape.iter().product()));
        header.insert(name.to_string(), json!({"dtype": "F32", "shape": shape, "data_offsets": [start, data.len()]}));
    }
    let header = serde_json::to_vec(&header).unwrap();
    [(header.len() as u64).to_le_bytes().to_vec(), header, data].concat()
}

/// The tensors of an mlp with one hidden layer of 3 on 4×4 grey images, `classes` out.
fn mlp_tensors(classes: usize) -> Vec<(&'static str, Vec<usize>)> {
    vec![
        ("fc0.weight", vec![3, 16]),
        ("fc0.bias", vec![3]),
        ("out.weight", vec![classes, 3]),
        ("out.bias", vec![classes]),
    ]
}

/// A publish request for that network, labelled `labels`, with these weights.
fn publish(job_id: &str, fence: u64, labels: &[&str], weights: Vec<u8>) -> PublishModelRequest {
    let config = json!({
        "architecture": {"kind": "mlp", "hidden": [3]},
        "input": {"channels": 1, "size": 4},
        "classes": labels,
    });
    PublishModelRequest {
        job_id: job_id.into(),
        fence,
        model: Some(TrainedModel {
            architecture: Architecture::Mlp as i32,
            hidden_sizes: vec![3],
            input_size: 4,
            channels: 1,
            labels: labels.iter().map(|l| l.to_string()).collect(),
            validation_accuracy: 0.5,
            ..Default::default()
        }),
        config: serde_json::to_vec(&config).unwrap(),
        weights,
    }
}

fn fetch(path: &str, job_id: &str, fence: u64) -> FetchArtifactRequest {
    FetchArtifactRequest { path: path.into(), job_id: job_id.into(), fence }
}

/// The whole file, or the status that refused it.
async fn fetched(worker: &RawWorker, request: FetchArtifactRequest) -> Result<Vec<u8>, tonic::Status> {
    let mut chunks = worker.service.clone().fetch_artifact(request).await?.into_inner();
    let mut data = Vec::new();
    while let Some(chunk) = chunks.message().await? {
        data.extend(chunk.data);
    }
    Ok(data)
}

/// The trained models Models.List shows.
async fn trained_models(url: &str) -> Vec<TrainedModel> {
    let mut models = ModelServiceClient::new(deephardway::connect(url).await.unwrap());
    let request = ListModelsRequest { kind: JobKind::Classify as i32, ..Default::default() };
    let list = models.list_models(request).await.expect("ListModels").into_inner();
    list.models.into_iter().filter_map(|m| m.trained).collect()
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path.display().to_string());
        }
    }
    out
}

async fn job_state(client: &mut JobsClient, job_id: &str) -> deephardway::v1::Job {
    client.get_job(GetJobRequest { job_id: job_id.into(), view: 0 }).await.unwrap().into_inner().job.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_touches_only_what_its_own_session_holds() {
    let backend = Backend::embedded().await;
    let artifact_dir = tempfile::tempdir().unwrap();
    let config = ServiceConfig {
        artifacts: ArtifactStore::open(artifact_dir.path().to_str().unwrap()).unwrap(),
        worker_heartbeat: BEAT,
        ..test_config()
    };
    let server = TestServer::start_with(backend.open().await, config).await;
    let mut datasets = DatasetServiceClient::new(deephardway::connect(&server.url).await.unwrap());
    let mut upload = async |name: &str, archive: Vec<u8>| -> Dataset {
        let request = CreateDatasetRequest { name: name.into(), archive };
        datasets.create_dataset(request).await.expect("CreateDataset").into_inner().dataset.unwrap()
    };
    let (one_archive, two_archive) = (tiny_dataset(0), tiny_dataset(60));
    let one = upload("one", one_archive.clone()).await;
    let two = upload("two", two_archive).await;

    // Session A trains on "one"; session B runs a diagnostic job.
    let mut a = RawWorker::serving(&server.url, "a", vec![served(deephardway::TRAINER_MODEL, JobKind::Train)], 1).await;
    a.keep_beating(BEAT);
    let mut b = RawWorker::connect(&server.url, "diagnostic", 1, None).await;
    b.keep_beating(BEAT);
    let mut client = server.client().await;
    let train = TrainInput { dataset: "one".into(), output_model: "cats".into(), epochs: 1, ..Default::default() };
    let a_job = create(&mut client, JobSpec { input: Some(Input::Train(train)), ..Default::default() }).await;
    let a_assignment = a.assignment().await;
    assert_eq!(a_assignment.job_id, a_job.id);
    assert_eq!(a_assignment.dataset.as_ref().map(|d| d.artifact.as_str()), Some(one.artifact.as_str()));
    let b_job = create(&mut client, diagnostic(1, 1)).await;
    let b_assignment = b.assignment().await;
    assert_eq!(b_assignment.job_id, b_job.id);
    let (a_fence, b_fence) = (a_assignment.fence, b_assignment.fence);
    let good_weights = || safetensors(&mlp_tensors(2), 0.1);

    // Guessed fences publish nothing: small numbers, and the claim's store revision
    // (which was the fence before it became a secret).
    let claim = server.store.get(&keys::claim(&a_job.id)).await.unwrap().expect("A's claim");
    let revision = claim.create_revision as u64;
    assert_ne!(a_fence, revision, "the fence is not the claim's revision");
    let mut guesser = a.service.clone();
    for guess in (1..=1000).chain([revision, 0]).filter(|&g| g != a_fence) {
        let refused = guesser.publish_model(publish(&a_job.id, guess, &["dark", "light"], good_weights())).await;
        assert_eq!(refused.expect_err("a guessed fence is refused").code(), Code::PermissionDenied, "fence {guess}");
    }
    assert!(trained_models(&server.url).await.is_empty(), "nothing was registered");

    // Another session's fence: B's (valid for B's own job) opens nothing of A's.
    let refused = guesser.publish_model(publish(&a_job.id, b_fence, &["dark", "light"], good_weights())).await;
    assert_eq!(refused.unwrap_err().code(), Code::PermissionDenied);
    for request in [fetch(&one.artifact, &a_job.id, b_fence), fetch(&one.artifact, &b_job.id, b_fence)] {
        let refused = fetched(&b, request).await.expect_err("B fetches nothing of A's");
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    }
    // B reports for A's job on its own stream, even with A's fence: refused (B is told to
    // stop a job it does not hold), and A's job is untouched.
    let forged = JobResult { value: Some(job_result::Value::Train(TrainResult::default())) };
    b.report(&a_job.id, a_fence, Event::Result(forged)).await;
    match b.next().await {
        connect_response::Message::Cancel(cancel) => assert_eq!(cancel.job_id, a_job.id),
        other => panic!("B is told to stop, not {other:?}"),
    }
    let still = job_state(&mut client, &a_job.id).await;
    assert_eq!((still.state, still.result.is_none()), (JobState::Running as i32, true), "{still:?}");

    // A fetches its own dataset, and nothing else: not another dataset (its path is no
    // secret: Datasets.List shows it), not without naming the job.
    assert_eq!(fetched(&a, fetch(&one.artifact, &a_job.id, a_fence)).await.expect("A's own dataset"), one_archive);
    for request in [
        fetch(&two.artifact, &a_job.id, a_fence),
        fetch(&one.artifact, "", 0),
        fetch(&one.artifact, &a_job.id, 0),
        fetch("models/cats", &a_job.id, a_fence),
    ] {
        let refused = fetched(&a, request.clone()).await.expect_err("refused");
        assert_eq!(refused.code(), Code::PermissionDenied, "{request:?}: {refused:?}");
    }

    // With the right fence, forged models are refused by what is wrong with them, and
    // nothing is registered or stored.
    let mut publisher = a.service.clone();
    let mut wrong_sizes = good_weights();
    wrong_sizes.truncate(wrong_sizes.len() - 4);
    let forgeries = [
        ("weights", publish(&a_job.id, a_fence, &["dark", "light"], b"NOT SAFETENSORS".to_vec())),
        ("weights", publish(&a_job.id, a_fence, &["dark", "light"], wrong_sizes)),
        ("weights", publish(&a_job.id, a_fence, &["dark", "light"], safetensors(&mlp_tensors(3), 0.1))),
        ("weights", publish(&a_job.id, a_fence, &["dark", "light"], safetensors(&mlp_tensors(2), f32::NAN))),
        ("config", publish(&a_job.id, a_fence, &["cat", "dog"], good_weights())),
    ];
    for (field, request) in forgeries {
        let status = publisher.publish_model(request).await.expect_err("a forged model is refused");
        assert_invalid_field(&status, field);
    }
    let mut mismatched = publish(&a_job.id, a_fence, &["dark", "light"], good_weights());
    mismatched.model.as_mut().unwrap().labels = vec!["light".into(), "dark".into()];
    assert_invalid_field(&publisher.publish_model(mismatched).await.unwrap_err(), "model.labels");
    assert!(trained_models(&server.url).await.is_empty(), "nothing was registered");
    let stored = files(artifact_dir.path());
    assert!(stored.iter().all(|f| !f.contains("/models/")), "no model files were left: {stored:?}");

    // The real thing is registered, and the job ends with A's result.
    let published = publisher.publish_model(publish(&a_job.id, a_fence, &["dark", "light"], good_weights())).await;
    let published = published.expect("a good model is registered").into_inner().model.unwrap();
    assert_eq!((published.name.as_str(), published.version), ("cats", 1));
    assert!(!published.artifact.contains(&a_fence.to_string()), "the secret is not in the shown path");
    let registered = trained_models(&server.url).await;
    assert_eq!(registered.iter().map(|m| m.labels.clone()).collect::<Vec<_>>(), [["dark", "light"]]);
    let result = TrainResult { model: "cats".into(), version: 1, loss: 0.5, train_accuracy: 1.0, ..Default::default() };
    a.report(&a_job.id, a_fence, Event::Result(JobResult { value: Some(job_result::Value::Train(result)) })).await;
    let stream = watch(&mut client, &a_job.id, 0).await.unwrap();
    collect_events(stream, Duration::from_secs(10)).await.unwrap();
    assert_eq!(job_state(&mut client, &a_job.id).await.state, JobState::Succeeded as i32);

    // Once the job has ended its fence opens nothing.
    let refused = fetched(&a, fetch(&one.artifact, &a_job.id, a_fence)).await.expect_err("the claim is gone");
    assert_eq!(refused.code(), Code::PermissionDenied);
    let refused = publisher.publish_model(publish(&a_job.id, a_fence, &["dark", "light"], good_weights())).await;
    assert_eq!(refused.unwrap_err().code(), Code::PermissionDenied);
    assert_eq!(trained_models(&server.url).await.len(), 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_result_never_reaches_the_submitter() {
    let backend = Backend::embedded().await;
    let config = ServiceConfig { worker_heartbeat: BEAT, ..test_config() };
    let server = TestServer::start_with(backend.open().await, config).await;
    let models = vec![served("fake-llm", JobKind::Generate), served("fake-embedder", JobKind::Embed)];
    let mut worker = RawWorker::serving(&server.url, "forger", models, 1).await;
    worker.keep_beating(BEAT);
    let mut client = server.client().await;
    let nan_embedding =
        || EmbedResult { embeddings: vec![Embedding { values: vec![f32::NAN, 1.0] }], ..Default::default() };

    // An embed result (with NaN) for a generate job, after NaN progress.
    let generate = GenerateInput { prompt: "hello".into(), max_tokens: 4, ..Default::default() };
    let spec = JobSpec { model: "fake-llm".into(), input: Some(Input::Generate(generate)), ..Default::default() };
    let stream = client.run_job(run_request(spec)).await.expect("RunJob").into_inner();
    let assignment = worker.assignment().await;
    let progress =
        JobProgress { fraction: f64::NAN, metrics: [("loss".into(), f64::NAN)].into(), ..Default::default() };
    worker.report(&assignment.job_id, assignment.fence, Event::Progress(progress)).await;
    let forged = JobResult { value: Some(job_result::Value::Embed(nan_embedding())) };
    worker.report(&assignment.job_id, assignment.fence, Event::Result(forged)).await;
    let events = collect_events(stream, Duration::from_secs(10)).await.expect("the job's events");
    assert!(
        events.iter().all(|e| !matches!(e.event, Some(Event::Result(_) | Event::Progress(_)))),
        "neither the forged result nor the NaN progress reached the client: {events:?}"
    );
    let Some(Event::Failed(failure)) = &events.last().unwrap().event else { panic!("the job failed: {events:?}") };
    assert_eq!(failure.code, Code::Internal as i32);
    assert_eq!(failure.message, "the worker reported a embed result for a generate job");
    let job = job_state(&mut client, &assignment.job_id).await;
    assert_eq!((job.state, job.result), (JobState::Failed as i32, None));

    // The right kind with NaN in it fails the job too, and is never stored.
    let embed = EmbedInput { texts: vec!["a".into()] };
    let spec = JobSpec { model: "fake-embedder".into(), input: Some(Input::Embed(embed)), ..Default::default() };
    let stream = client.run_job(run_request(spec)).await.expect("RunJob").into_inner();
    let assignment = worker.assignment().await;
    let forged = JobResult { value: Some(job_result::Value::Embed(nan_embedding())) };
    worker.report(&assignment.job_id, assignment.fence, Event::Result(forged)).await;
    let events = collect_events(stream, Duration::from_secs(10)).await.expect("the job's events");
    assert!(events.iter().all(|e| !matches!(e.event, Some(Event::Result(_)))), "{events:?}");
    let Some(Event::Failed(failure)) = &events.last().unwrap().event else { panic!("the job failed: {events:?}") };
    assert_eq!(failure.code, Code::Internal as i32);
    assert_eq!(failure.message, "the worker reported an invalid embed result: embedding 0 holds NaN");
    server.shutdown().await;
}
