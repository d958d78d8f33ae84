//! The `train` job: find the dataset, decode it, train a classifier on it with candle-nn,
//! stream the curves, and publish the trained model to the service, which registers it.
//!
//! The request's options come from `deephardway::train::options`, which the service
//! already checked the request with; what can only be checked once the images are read
//! (the network against their actual size) fails the job with INVALID_ARGUMENT naming
//! the field, as the service's own checks do.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use candle_core::Device;
use deephardway::{
    datasets::Source,
    errors::{field_status, invalid_field},
    train::{TrainOptions, check_network},
    v1::{
        JobKind, JobProgress, JobResult, TrainInput, TrainResult, TrainedModel, job_event::Event, job_result,
        job_spec::Input,
    },
    worker::v1::{ModelActivity, PublishModelRequest, ServedModel},
};
use tokio::sync::mpsc::UnboundedSender;
use tonic::{Code, Status};

use crate::{
    activity::Activity,
    artifacts::ArtifactCache,
    models::vision::{
        classifier::Classifier,
        dataset::{self, Dataset},
        training::{self, Progress, Stopped, Trained},
    },
    runner::{FailJob, JobContext, JobError, Runner, wrong_kind},
};

/// Progress events at most this often within epochs: smooth curves without writing every
/// step of a fast training run to the store.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(200);
/// At most this many epoch ends (with their validation accuracy) are reported per job:
/// every epoch of a 60-epoch run, every 13th of the original network's 2,500.
const EPOCH_POINTS: usize = 200;

/// Runs train jobs on one device.
pub struct TrainRunner {
    device: Device,
    cache: ArtifactCache,
    /// The folder under which `dataset_path` may point, if any.
    local_datasets: Option<PathBuf>,
    /// Images trained on, for the heartbeats.
    activity: Arc<Activity>,
}

/// Where a dataset's images are, and the request field that named them.
enum Location {
    /// An uploaded archive, fetched into the cache (`train.dataset`).
    Archive(PathBuf),
    /// A folder on this machine (`train.dataset_path`).
    Folder(PathBuf),
}

impl Location {
    fn field(&self) -> &'static str {
        match self {
            Location::Archive(_) => "train.dataset",
            Location::Folder(_) => "train.dataset_path",
        }
    }
}

impl TrainRunner {
    /// Trains on uploaded datasets, fetched into `cache`, and, given `local_datasets`, on
    /// folders under it on this machine (`TrainInput.dataset_path`).
    pub fn new(device: Device, cache: ArtifactCache, local_datasets: Option<PathBuf>) -> Self {
        TrainRunner { device, cache, local_datasets, activity: Arc::default() }
    }

    /// The dataset's name and where its images are: an uploaded archive (fetched into the
    /// cache) or a folder of this machine's, if the worker allows it.
    async fn locate(&self, job: &JobContext, input: &TrainInput) -> Result<(String, Location), JobError> {
        if !input.dataset_path.is_empty() {
            return Ok((input.dataset_path.clone(), Location::Folder(self.local_folder(&input.dataset_path)?)));
        }
        let Some(dataset) = job.assignment.dataset.as_ref() else {
            return Err(field_status(
                Code::NotFound,
                "train.dataset",
                format!("{:?} no longer exists (deleted after the job was created?)", input.dataset),
            )
            .into());
        };
        let archive = self
            .cache
            .get(job, &dataset.artifact)
            .await
            .map_err(|e| Status::unavailable(format!("dataset {}: {e:#}", dataset.name)))?;
        Ok((dataset.name.clone(), Location::Archive(archive)))
    }

    /// `path` resolved against the local datasets folder, refused unless it lies inside.
    fn local_folder(&self, path: &str) -> Result<PathBuf, JobError> {
        let field = "train.dataset_path";
        let Some(root) = &self.local_datasets else {
            return Err(field_status(
                Code::PermissionDenied,
                field,
                "this worker reads no local folders (start it with --local-datasets DIR); upload the dataset instead",
            )
            .into());
        };
        let root = root
            .canonicalize()
            .map_err(|e| Status::permission_denied(format!("--local-datasets {}: {e}", root.display())))?;
        let folder = root
            .join(path)
            .canonicalize()
            .map_err(|e| field_status(Code::NotFound, field, format!("{path:?}: {e}")))?;
        if !folder.starts_with(&root) {
            return Err(
                field_status(Code::PermissionDenied, field, format!("{path:?} is outside {}", root.display())).into()
            );
        }
        Ok(folder)
    }

    /// The training and held-out images, decoded at the requested size, with the network
    /// checked against it.
    async fn decode(
        &self,
        location: Location,
        input: &TrainInput,
        options: &TrainOptions,
    ) -> Result<(Dataset, Option<Dataset>), JobError> {
        let field = location.field();
        let (device, size) = (self.device.clone(), input.input_size as usize);
        let decoded = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let source = match location {
                Location::Archive(file) => Source::from_archive(&std::fs::read(&file)?)?,
                Location::Folder(dir) => Source::from_dir(&dir)?,
            };
            dataset::from_source(&source, size, &device)
        })
        .await
        .internal()?
        .map_err(|e| invalid_field(field, format!("{e:#}")))?;
        if let Err(mut violation) = check_network(&options.architecture, decoded.0.shape.size) {
            if input.input_size == 0 {
                violation.description.push_str(" (0 took the size of the dataset's first image)");
            }
            return Err(violation.into());
        }
        Ok(decoded)
    }
}

#[tonic::async_trait]
impl Runner for TrainRunner {
    fn models(&self) -> Vec<ServedModel> {
        vec![ServedModel {
            name: deephardway::TRAINER_MODEL.into(),
            kind: JobKind::Train as i32,
            description: "trains image classifiers (mlp, cnn) on uploaded datasets".into(),
            context_length: 0,
        }]
    }

    fn activity(&self) -> Vec<ModelActivity> {
        self.activity.take()
    }

    async fn run(&self, job: JobContext) -> Result<JobResult, JobError> {
        let Some(Input::Train(input)) = job.input().cloned() else {
            return Err(wrong_kind("train"));
        };
        let options = deephardway::train::options(&input)?;
        let (dataset_name, location) = self.locate(&job, &input).await?;
        job.emit(Event::Progress(JobProgress {
            fraction: 0.0,
            message: "reading the dataset".into(),
            ..Default::default()
        }));
        let (train_set, test_set) = self.decode(location, &input, &options).await?;
        let (decoded_images, separate_test_set) = (train_set.files.len(), test_set.is_some());

        let started = Instant::now();
        let epochs = options.epochs;
        let (device, mut reporter) = (self.device.clone(), Reporter::new(&job, epochs, self.activity.clone()));
        let trained = tokio::task::spawn_blocking(move || {
            training::train(&train_set, test_set.as_ref(), &options, &device, |p| reporter.report(p))
        })
        .await
        .internal()?;
        let trained = match trained {
            Ok(trained) => trained,
            Err(Stopped::Cancelled) => return Err(JobError::Cancelled),
            Err(Stopped::Failed(e)) => return Err(JobError::internal(format!("training failed: {e:#}"))),
        };
        let epoch_ms = started.elapsed().as_secs_f64() * 1000.0 / epochs.max(1) as f64;
        let published = publish(&job, &trained, dataset_name).await?;
        let last = &trained.last;
        Ok(JobResult {
            value: Some(job_result::Value::Train(TrainResult {
                model: published.name,
                version: published.version,
                loss: last.loss,
                train_accuracy: last.train_accuracy,
                validation_accuracy: last.validation_accuracy.unwrap_or(0.0),
                validation_images: last.validation_images as u32,
                // Without a test set, the held-out images came out of the decoded ones.
                train_images: if separate_test_set {
                    decoded_images
                } else {
                    decoded_images.saturating_sub(last.validation_images)
                } as u32,
                epoch_ms,
                seed: trained.seed,
            })),
        })
    }
}

/// Turns training progress into the job's progress events, thinned out: at most one
/// every [`PROGRESS_INTERVAL`] within epochs, and at most [`EPOCH_POINTS`] epoch ends
/// (the first, the last and evenly between). Runs on the training thread, where it also
/// stops training once the job is cancelled.
struct Reporter {
    events: UnboundedSender<Event>,
    cancel: tokio_util::sync::CancellationToken,
    epochs: usize,
    epoch_stride: usize,
    last_sent: Option<Instant>,
    /// The images trained on, for the heartbeats, under the job's model (the trainer's name).
    activity: Arc<Activity>,
    model: String,
}

impl Reporter {
    fn new(job: &JobContext, epochs: usize, activity: Arc<Activity>) -> Self {
        Reporter {
            model: job.assignment.model.clone(),
            activity,
            events: job.sender(),
            cancel: job.cancel.clone(),
            epochs,
            epoch_stride: epochs.div_ceil(EPOCH_POINTS).max(1),
            last_sent: None,
        }
    }

    /// Reports a step if it is due; false when training should stop.
    fn report(&mut self, p: &Progress) -> bool {
        if self.cancel.is_cancelled() {
            return false;
        }
        self.activity.trained(&self.model, p.batch_images);
        let finished = p.step == p.steps;
        let epoch_point = p.epoch_end && (p.epoch.is_multiple_of(self.epoch_stride) || finished);
        if !(epoch_point || finished || self.last_sent.is_none_or(|t| t.elapsed() >= PROGRESS_INTERVAL)) {
            return true;
        }
        self.last_sent = Some(Instant::now());
        let mut metrics = HashMap::from([
            ("loss".to_string(), p.loss),
            ("train_accuracy".to_string(), p.train_accuracy),
            ("images_per_second".to_string(), p.images_per_second),
            ("epoch".to_string(), p.epoch as f64),
            ("step".to_string(), p.step as f64),
        ]);
        if epoch_point && let Some(accuracy) = p.validation_accuracy {
            metrics.insert("validation_accuracy".into(), accuracy);
        }
        let epochs = self.epochs;
        let _ = self.events.send(Event::Progress(JobProgress {
            fraction: p.step as f64 / p.steps.max(1) as f64,
            message: match p.validation_accuracy {
                Some(accuracy) => {
                    format!("epoch {}/{epochs}: loss {:.4}, validation accuracy {:.3}", p.epoch, p.loss, accuracy)
                }
                None => format!("epoch {}/{epochs}: loss {:.4}", p.epoch, p.loss),
            },
            metrics,
        }));
        true
    }
}

/// Sends the trained model to the service, which registers it under the job's output
/// name (a new version); returns the model as registered.
async fn publish(job: &JobContext, trained: &Trained, dataset: String) -> Result<TrainedModel, JobError> {
    // The files as `Classifier::load` reads them, sent in one message.
    let dir = tempfile::tempdir().internal()?;
    Classifier::save(trained, dir.path()).internal()?;
    let config = std::fs::read(dir.path().join("config.json")).internal()?;
    let weights = std::fs::read(dir.path().join("model.safetensors")).internal()?;
    let (architecture, hidden_sizes) = trained.config.architecture.to_proto();
    let description = TrainedModel {
        architecture: architecture as i32,
        hidden_sizes,
        input_size: trained.config.input.size as u32,
        channels: trained.config.input.channels as u32,
        labels: trained.config.classes.clone(),
        dataset,
        validation_accuracy: trained.last.validation_accuracy.unwrap_or(0.0),
        ..Default::default()
    };
    let request = PublishModelRequest {
        job_id: job.assignment.job_id.clone(),
        fence: job.assignment.fence,
        model: Some(description),
        config,
        weights,
    };
    let response = job
        .service
        .clone()
        .publish_model(request)
        .await
        .map_err(|s| Status::new(s.code(), format!("cannot publish the trained model: {}", s.message())))?;
    response
        .into_inner()
        .model
        .ok_or_else(|| JobError::internal("the service registered the model but did not return it"))
}

#[cfg(test)]
mod tests {
    use deephardway::errors::violations;

    use super::*;

    fn refusal(runner: &TrainRunner, path: &str) -> (Code, String) {
        let Err(JobError::Failed(status)) = runner.local_folder(path) else { panic!("{path:?} was allowed") };
        (status.code(), violations(&status).remove(0).field)
    }

    #[test]
    fn local_folders_outside_the_allowed_root_are_refused_by_field() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("digits")).unwrap();
        let cache = ArtifactCache::new(root.path().join("cache"));
        let runner = TrainRunner::new(Device::Cpu, cache.clone(), Some(root.path().to_path_buf()));
        assert!(runner.local_folder("digits").unwrap().ends_with("digits"));
        let field = "train.dataset_path".to_string();
        assert_eq!(refusal(&runner, ".."), (Code::PermissionDenied, field.clone()));
        assert_eq!(refusal(&runner, "no-such-folder"), (Code::NotFound, field.clone()));
        let closed = TrainRunner::new(Device::Cpu, cache, None);
        assert_eq!(refusal(&closed, "digits"), (Code::PermissionDenied, field));
    }
}
