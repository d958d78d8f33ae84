//! Train and classify through the whole path: `deephardway up`, datasets uploaded as
//! archives, training jobs streaming their curves, trained models registered and used
//! by classify jobs — driven by grpcurl (the acceptance flow) and by a generated
//! client. Needs the shared datasets (`$DEEPHARDWAY_DATASETS`, else `../shared/datasets`
//! beside the repository); without them the accuracy tests say so and pass vacuously.

mod support;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use base64::Engine;
use deephardway::{
    datasets::{Source, tar_folder},
    v1::{
        Architecture, CancelJobRequest, ClassifyInput, CreateDatasetRequest, DeleteDatasetRequest, JobSpec,
        LearningRateSchedule, ListDatasetsRequest, ListModelsRequest, Optimizer, TrainInput,
        dataset_service_client::DatasetServiceClient, job_event::Event, job_result, job_spec::Input,
        model_service_client::ModelServiceClient,
    },
};
use support::*;
use tonic::Code;

fn datasets() -> Option<PathBuf> {
    let dir = std::env::var_os("DEEPHARDWAY_DATASETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/datasets")));
    if dir.exists() {
        return Some(dir);
    }
    eprintln!("SKIPPED: {} is missing (the shared test datasets; set DEEPHARDWAY_DATASETS)", dir.display());
    None
}

/// `up` with no model files: train and classify need none.
async fn up(extra: &[&str]) -> UpProcess {
    UpProcess::start(Some(Path::new("/nonexistent")), extra).await
}

async fn datasets_client(url: &str) -> DatasetServiceClient<tonic::transport::Channel> {
    DatasetServiceClient::new(deephardway::connect(url).await.unwrap()).max_encoding_message_size(usize::MAX)
}

async fn models_client(url: &str) -> ModelServiceClient<tonic::transport::Channel> {
    ModelServiceClient::new(deephardway::connect(url).await.unwrap())
}

fn train(input: TrainInput) -> JobSpec {
    JobSpec { input: Some(Input::Train(input)), ..Default::default() }
}

/// Runs grpcurl with a JSON request read from a file (archives are megabytes of base64).
fn grpcurl(addr: &str, method: &str, request: &serde_json::Value) -> Vec<serde_json::Value> {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), request.to_string()).unwrap();
    let output = Command::new(tool("grpcurl", "GRPCURL"))
        .args(["-plaintext", "-max-msg-sz", "134217728", "-d", "@", addr, method])
        .stdin(std::fs::File::open(file.path()).unwrap())
        .output()
        .expect("run grpcurl (scripts/setup installs it)");
    let printed = String::from_utf8(output.stdout).unwrap();
    assert!(output.status.success(), "{method}: {printed}\n{}", String::from_utf8_lossy(&output.stderr));
    serde_json::Deserializer::from_str(&printed).into_iter().collect::<Result<_, _>>().expect("JSON")
}

/// The acceptance flow, with grpcurl only: upload catvnoncat, train the original
/// project's network (12288→20→7→5→2, gradient descent, 2,500 iterations at 0.0075),
/// watch the loss fall, reach ≥ 75% on the held-out set, classify gray-cat.jpeg as a cat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_trains_the_seed_network_on_cats_and_classifies_a_cat() {
    let Some(data) = datasets() else { return };
    let up = up(&[]).await;
    let addr = up.addr.clone();
    let cats = data.join("catvnoncat");
    let result = tokio::task::spawn_blocking(move || {
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
        let archive = tar_folder(&cats).unwrap();
        let uploaded = grpcurl(
            &addr,
            "deephardway.v1.DatasetService/CreateDataset",
            &serde_json::json!({"name": "catvnoncat", "archive": b64(&archive)}),
        );
        let dataset = &uploaded[0]["dataset"];
        assert_eq!(dataset["trainImages"], 209, "{uploaded:?}");
        assert_eq!(dataset["testImages"], 50, "{uploaded:?}");
        assert_eq!(dataset["classes"], serde_json::json!(["cat", "non-cat"]), "{uploaded:?}");

        let messages = grpcurl(
            &addr,
            "deephardway.v1.JobService/RunJob",
            &serde_json::json!({"spec": {"train": {"dataset": "catvnoncat", "epochs": 2500, "seed": 1}}}),
        );
        // Each message of the stream is `{"event": {…}}`.
        let events: Vec<serde_json::Value> = messages.into_iter().map(|m| m["event"].clone()).collect();
        let losses: Vec<f64> = events.iter().filter_map(|e| e["progress"]["metrics"]["loss"].as_f64()).collect();
        assert!(losses.len() >= 10, "the curve is streamed: {} progress events", losses.len());
        // 200 epoch points (every 13th epoch) and at most 5 a second in between. The bound
        // is taken from the events' own times, so a slow or busy machine does not break it.
        let validations = events.iter().filter(|e| e["progress"]["metrics"]["validation_accuracy"].is_number()).count();
        assert_eq!(validations, 2500usize.div_ceil(13), "epoch points");
        let progress_times: Vec<f64> = events
            .iter()
            .filter(|e| e["progress"].is_object())
            .map(|e| {
                let time: prost_types::Timestamp = e["time"].as_str().expect("every event has a time").parse().unwrap();
                time.seconds as f64 + f64::from(time.nanos) * 1e-9
            })
            .collect();
        let span = progress_times.last().unwrap() - progress_times[0];
        // One in-epoch report per 200 ms of the span (plus the first), the epoch points,
        // and the final step; with slack, because the service stamps an event when it writes
        // it, which can lag the worker's clock by a little.
        let bound = validations + 1 + (span * 5.0 * 1.1).ceil() as usize + 1 + 10;
        assert!(
            losses.len() <= bound,
            "…without writing every step: {} events in {span:.1} s (bound {bound})",
            losses.len()
        );
        eprintln!("{} progress events, {validations} with a validation accuracy", losses.len());
        assert!(losses.last().unwrap() < &(losses[0] * 0.5), "the loss falls: {:?}", (losses[0], losses.last()));
        let result = events.last().unwrap()["result"]["train"].clone();
        assert!(!result.is_null(), "{:?}", events.last());

        let classified = grpcurl(
            &addr,
            "deephardway.v1.JobService/RunJob",
            &serde_json::json!({"spec": {
                "model": "catvnoncat",
                "classify": {"images": [b64(&std::fs::read(data.join("catvnoncat/gray-cat.jpeg")).unwrap())]},
            }}),
        );
        let prediction = classified.last().unwrap()["event"]["result"]["classify"]["predictions"][0].clone();
        (result, prediction)
    })
    .await
    .unwrap();
    let (result, prediction) = result;
    eprintln!("seed network on catvnoncat: {result}; gray-cat.jpeg: {prediction}");
    assert_eq!(result["model"], "catvnoncat");
    assert_eq!(result["version"], 1);
    assert_eq!(result["seed"], "1", "the result reports the seed (a uint64: a string in JSON)");
    assert_eq!(result["validationImages"], 50);
    assert!(result["validationAccuracy"].as_f64().unwrap() >= 0.75, "{result}");
    assert_eq!(prediction["label"], "cat", "{prediction}");
}

/// digits to the bar with a small CNN, and the round trip: classifying the
/// held-out images through the API gives exactly the training job's final validation
/// accuracy. Models.List shows the trained model with its labels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digits_cnn_reaches_95_percent_and_round_trips_through_classify() {
    let Some(data) = datasets() else { return };
    let up = up(&[]).await;
    let mut datasets = datasets_client(&up.url).await;
    let archive = tar_folder(&data.join("digits")).unwrap();
    datasets.create_dataset(CreateDatasetRequest { name: "digits".into(), archive: archive.clone() }).await.unwrap();

    let mut jobs = jobs_client(&up.url).await;
    let input = TrainInput {
        dataset: "digits".into(),
        architecture: Architecture::Cnn as i32,
        epochs: 60,
        batch_size: 32,
        optimizer: Optimizer::Adamw as i32,
        learning_rate: 0.003,
        learning_rate_schedule: LearningRateSchedule::Cosine as i32,
        augment_shift: 1,
        seed: Some(1),
        ..Default::default()
    };
    let events = run(&mut jobs, train(input), Duration::from_secs(600)).await;
    let Some(Event::Result(result)) = &events.last().unwrap().event else { panic!("{:?}", events.last()) };
    let Some(job_result::Value::Train(trained)) = &result.value else { panic!("{result:?}") };
    eprintln!("digits cnn: {trained:?}");
    assert!(trained.validation_accuracy >= 0.95, "{trained:?}");
    assert_eq!(trained.validation_images, 297);
    assert_eq!(trained.seed, 1);
    let validations = events
        .iter()
        .filter(|e| matches!(&e.event, Some(Event::Progress(p)) if p.metrics.contains_key("validation_accuracy")))
        .count();
    assert_eq!(validations, 60, "one validation point per epoch");

    // The held-out images, classified by the registered model through the API.
    let source = Source::from_archive(&archive).unwrap();
    let mut correct = 0;
    for chunk in source.test.chunks(128) {
        let spec = JobSpec {
            model: "digits".into(),
            input: Some(Input::Classify(ClassifyInput { images: chunk.iter().map(|f| f.bytes.clone()).collect() })),
            ..Default::default()
        };
        let events = run(&mut jobs, spec, Duration::from_secs(60)).await;
        let Some(Event::Result(result)) = &events.last().unwrap().event else { panic!("{:?}", events.last()) };
        let Some(job_result::Value::Classify(classified)) = &result.value else { panic!("{result:?}") };
        assert_eq!(classified.predictions.len(), chunk.len());
        for (prediction, file) in classified.predictions.iter().zip(chunk) {
            correct += usize::from(prediction.label == source.classes[file.class as usize]);
            assert_eq!(prediction.probabilities.len(), 10);
        }
    }
    let accuracy = correct as f64 / source.test.len() as f64;
    assert_eq!(accuracy, trained.validation_accuracy, "classify agrees with the job's validation");

    let mut models = models_client(&up.url).await;
    let list = models.list_models(ListModelsRequest::default()).await.unwrap().into_inner();
    let digits = list.models.iter().find(|m| m.name == "digits").expect("registered");
    let info = digits.trained.as_ref().unwrap();
    assert_eq!((info.version, info.input_size, info.channels), (1, 8, 1));
    assert_eq!(info.architecture(), Architecture::Cnn);
    assert_eq!(info.dataset, "digits");
    assert_eq!(info.labels, source.classes);
    assert_eq!(digits.workers, 1);
    assert!(!list.models.iter().any(|m| m.name == deephardway::CLASSIFIER_MODEL), "the capability is not a model");
}

/// Bad uploads and requests get a clear status and change nothing; a duplicate upload is
/// idempotent; cancelling a training job ends it `cancelled` without registering a model;
/// retraining under a name adds a version, and classify pins the version it used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_cancellation_and_versions() {
    let Some(data) = datasets() else { return };
    let up = up(&["--max-upload-mb", "2"]).await;
    let mut datasets = datasets_client(&up.url).await;
    let upload = |name: &str, archive: Vec<u8>| CreateDatasetRequest { name: name.into(), archive };

    let status = datasets.create_dataset(upload("x", b"hello".to_vec())).await.unwrap_err();
    assert_invalid_field(&status, "archive");
    assert!(status.message().contains("not a zip, tar or tar.gz"), "{}", status.message());

    // A broken image inside: the error names it.
    let dir = tempfile::tempdir().unwrap();
    for class in ["a", "b"] {
        std::fs::create_dir(dir.path().join(class)).unwrap();
        std::fs::copy(
            data.join("digits/train/0").read_dir().unwrap().next().unwrap().unwrap().path(),
            dir.path().join(class).join("ok.png"),
        )
        .unwrap();
    }
    std::fs::write(dir.path().join("b/broken.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let status = datasets.create_dataset(upload("x", tar_folder(dir.path()).unwrap())).await.unwrap_err();
    assert_invalid_field(&status, "archive");
    assert!(status.message().contains("b/broken.png"), "{}", status.message());

    // Over this service's 2 MiB limit.
    let cats = tar_folder(&data.join("catvnoncat")).unwrap();
    let status = datasets.create_dataset(upload("cats", cats)).await.unwrap_err();
    assert_invalid_field(&status, "archive");
    assert!(status.message().contains("--max-upload-mb"), "{}", status.message());
    let status = datasets.create_dataset(upload("../up", vec![1])).await.unwrap_err();
    assert_invalid_field(&status, "name");
    let listed = datasets.list_datasets(ListDatasetsRequest::default()).await.unwrap().into_inner();
    assert!(listed.datasets.is_empty(), "nothing stored");

    let digits = tar_folder(&data.join("digits")).unwrap();
    let first = datasets.create_dataset(upload("digits", digits.clone())).await.unwrap().into_inner();
    let again = datasets.create_dataset(upload("digits", digits)).await.unwrap().into_inner();
    assert_eq!(first, again, "the same archive again is the same dataset");
    std::fs::remove_file(dir.path().join("b/broken.png")).unwrap();
    let status = datasets.create_dataset(upload("digits", tar_folder(dir.path()).unwrap())).await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);

    let mut jobs = jobs_client(&up.url).await;
    let quick =
        |epochs| TrainInput { dataset: "digits".into(), epochs, batch_size: 64, seed: Some(3), ..Default::default() };
    let status =
        jobs.create_job(create_request(train(TrainInput { dataset: "nope".into(), ..quick(1) }))).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.message().starts_with("train.dataset:"), "{}", status.message());
    let status = jobs.create_job(create_request(train(TrainInput { architecture: 42, ..quick(1) }))).await.unwrap_err();
    assert_invalid_field(&status, "train.architecture");
    let status = jobs
        .create_job(create_request(train(TrainInput {
            architecture: Architecture::Cnn as i32,
            hidden_sizes: vec![8],
            ..quick(1)
        })))
        .await
        .unwrap_err();
    assert_invalid_field(&status, "train.hidden_sizes");
    let classify = |model: &str| JobSpec {
        model: model.into(),
        input: Some(Input::Classify(ClassifyInput { images: vec![vec![1, 2, 3]] })),
        ..Default::default()
    };
    assert_eq!(jobs.create_job(create_request(classify("digits"))).await.unwrap_err().code(), Code::NotFound);

    // Cancel a long training run once its curve has started.
    let job = create(&mut jobs, train(quick(100_000))).await;
    let mut watching = watch(&mut jobs, &job.id, 0).await.unwrap();
    while let Some(message) = watching.message().await.unwrap() {
        let Some(event) = message.event() else { continue }; // a queue status
        if matches!(&event.event, Some(Event::Progress(p)) if p.metrics.contains_key("loss")) {
            break;
        }
    }
    jobs.cancel_job(CancelJobRequest { job_id: job.id.clone(), reason: "enough".into() }).await.unwrap();
    let rest = collect_events(watching, Duration::from_secs(30)).await.unwrap();
    assert!(matches!(rest.last().unwrap().event, Some(Event::Cancelled(_))), "{:?}", rest.last());
    let mut models = models_client(&up.url).await;
    let list = models.list_models(ListModelsRequest::default()).await.unwrap().into_inner();
    assert!(!list.models.iter().any(|m| m.name == "digits"), "a cancelled job registers nothing");

    // Two short trainings: versions 1 and 2; a classify job records the version it ran.
    for version in 1..=2 {
        let events = run(&mut jobs, train(quick(1)), Duration::from_secs(120)).await;
        let Some(Event::Result(result)) = &events.last().unwrap().event else { panic!("{:?}", events.last()) };
        let Some(job_result::Value::Train(trained)) = &result.value else { panic!("{result:?}") };
        assert_eq!(trained.version, version);
    }
    let image = std::fs::read(data.join("digits/test/7").read_dir().unwrap().next().unwrap().unwrap().path()).unwrap();
    let spec = JobSpec {
        model: "digits@1".into(),
        input: Some(Input::Classify(ClassifyInput { images: vec![image.clone(), b"not an image".to_vec()] })),
        ..Default::default()
    };
    let job = create(&mut jobs, spec).await;
    assert_eq!(job.model, "digits@1");
    let events = collect_events(watch(&mut jobs, &job.id, 0).await.unwrap(), Duration::from_secs(60)).await.unwrap();
    let Some(Event::Failed(failed)) = &events.last().unwrap().event else { panic!("{:?}", events.last()) };
    assert_eq!(failed.code, Code::InvalidArgument as i32);
    assert!(failed.message.contains("classify.images[1]"), "{}", failed.message);
    // The failed event keeps the google.rpc.BadRequest naming the image.
    let fields: Vec<String> = deephardway::errors::violations(&deephardway::errors::from_rpc_status(failed))
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert_eq!(fields, ["classify.images[1]"], "{failed:?}");
    let spec = JobSpec {
        model: "digits".into(),
        input: Some(Input::Classify(ClassifyInput { images: vec![image] })),
        ..Default::default()
    };
    assert_eq!(create(&mut jobs, spec).await.model, "digits@2", "latest when submitted");

    // Deleting the dataset keeps the models.
    let deleted = datasets.delete_dataset(DeleteDatasetRequest { name: "digits".into() }).await.unwrap().into_inner();
    assert_eq!(deleted.dataset.map(|d| d.name), Some("digits".into()));
    let listed = datasets.list_datasets(ListDatasetsRequest::default()).await.unwrap().into_inner();
    assert_eq!(listed.datasets.len(), 0);
    let list = models.list_models(ListModelsRequest::default()).await.unwrap().into_inner();
    assert_eq!(list.models.iter().find(|m| m.name == "digits").unwrap().trained.as_ref().unwrap().version, 2);
}

/// A worker killed in the middle of training: the job goes back in line, trains again
/// from the start on the other worker (which fetches the dataset itself), and registers
/// exactly one version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn training_survives_a_killed_worker() {
    let Some(data) = datasets() else { return };
    let server = TestServer::start(Backend::embedded().await.open().await).await;
    let cache = tempfile::tempdir().unwrap();
    let worker = |name: &str| {
        let child = tokio::process::Command::new(binary())
            .args(["worker", "--server", &server.url, "--name", name, "--device", "cpu", "--slots", "1"])
            .arg("--artifact-cache")
            .arg(cache.path().join(name))
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .spawn()
            .expect("spawn worker");
        WorkerProcess { child }
    };
    let mut workers = [worker("w1"), worker("w2")];
    wait_for_workers(&server.url, 2).await;
    let mut datasets = datasets_client(&server.url).await;
    let archive = tar_folder(&data.join("digits")).unwrap();
    datasets.create_dataset(CreateDatasetRequest { name: "digits".into(), archive }).await.unwrap();

    let mut jobs = server.client().await;
    let input =
        TrainInput { dataset: "digits".into(), epochs: 300, batch_size: 64, seed: Some(5), ..Default::default() };
    let job = create(&mut jobs, train(input)).await;
    let mut watching = watch(&mut jobs, &job.id, 0).await.unwrap();
    let mut victim = String::new();
    while let Some(message) = watching.message().await.unwrap() {
        let Some(event) = message.event() else { continue }; // a queue status
        match &event.event {
            Some(Event::Started(s)) => victim = s.worker_name.clone(),
            Some(Event::Progress(p)) if p.fraction >= 0.1 => break,
            _ => {}
        }
    }
    workers[if victim == "w1" { 0 } else { 1 }].kill().await;
    let rest = collect_events(watching, Duration::from_secs(300)).await.unwrap();
    let restarted: Vec<&str> = rest
        .iter()
        .filter_map(|e| if let Some(Event::Started(s)) = &e.event { Some(s.worker_name.as_str()) } else { None })
        .collect();
    assert_eq!(restarted.len(), 1, "started again once");
    assert_ne!(restarted[0], victim, "on the other worker");
    let Some(Event::Result(result)) = &rest.last().unwrap().event else { panic!("{:?}", rest.last()) };
    let Some(job_result::Value::Train(trained)) = &result.value else { panic!("{result:?}") };
    assert_eq!(trained.version, 1, "the killed attempt registered nothing");
    assert!(trained.validation_accuracy > 0.5, "{trained:?}");
}

/// Training on a folder of the worker's own machine, only under its --local-datasets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_dataset_folders_only_under_the_allowed_directory() {
    let Some(data) = datasets() else { return };
    let up = up(&["--local-datasets", data.to_str().unwrap()]).await;
    let mut jobs = jobs_client(&up.url).await;
    let spec =
        |path: &str| train(TrainInput { dataset_path: path.into(), epochs: 1, batch_size: 64, ..Default::default() });
    let events = run(&mut jobs, spec("digits"), Duration::from_secs(60)).await;
    let Some(Event::Result(result)) = &events.last().unwrap().event else { panic!("{:?}", events.last()) };
    let Some(job_result::Value::Train(trained)) = &result.value else { panic!("{result:?}") };
    assert_eq!((trained.model.as_str(), trained.validation_images), ("digits", 297));

    for (path, code) in [("..", Code::PermissionDenied), ("no-such-folder", Code::NotFound)] {
        let events = run(&mut jobs, spec(path), Duration::from_secs(60)).await;
        let Some(Event::Failed(failed)) = &events.last().unwrap().event else { panic!("{:?}", events.last()) };
        assert_eq!(failed.code, code as i32, "{path}: {}", failed.message);
    }
    let both = TrainInput { dataset: "x".into(), dataset_path: "digits".into(), ..Default::default() };
    let status = jobs.create_job(create_request(train(both))).await.unwrap_err();
    assert_invalid_field(&status, "train.dataset_path");
}
