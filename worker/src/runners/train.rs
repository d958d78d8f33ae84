//! The `train` job: fetch the dataset, train a classifier on it with candle-nn, stream
//! the curves, and publish the trained model to the service, which registers it.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use candle_core::Device;
use deephardway::v1::{
    JobResult, Progress, PublishModelRequest, TrainInput, TrainResult, TrainedModel, WorkerModel, job_event::Event,
    job_result, submit_request::Input,
};
use tonic::Code;

use super::vision::{
    classifier::Classifier,
    network::{Architecture, ModelConfig, check},
    source::Source,
    training::{self, OptimizerKind, Stopped, TrainOptions},
};
use crate::{JobContext, JobError, Runner, artifacts::ArtifactCache};

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
}

enum Location {
    Archive(PathBuf),
    Folder(PathBuf),
}

impl TrainRunner {
    /// Trains on uploaded datasets, fetched into `cache`, and, given `local_datasets`, on
    /// folders under it on this machine (`TrainInput.dataset_path`).
    pub fn new(device: Device, cache: ArtifactCache, local_datasets: Option<PathBuf>) -> Self {
        TrainRunner { device, cache, local_datasets }
    }

    /// `path` resolved against the local datasets folder, refused unless it lies inside.
    fn local_folder(&self, path: &str) -> Result<PathBuf, JobError> {
        let denied = |why: String| JobError::failed(Code::PermissionDenied, why);
        let Some(root) = &self.local_datasets else {
            return Err(denied(
                "train.dataset_path: this worker reads no local folders (start it with --local-datasets DIR); \
                 upload the dataset instead"
                    .into(),
            ));
        };
        let root = root.canonicalize().map_err(|e| denied(format!("--local-datasets {}: {e}", root.display())))?;
        let folder = root
            .join(path)
            .canonicalize()
            .map_err(|e| JobError::failed(Code::NotFound, format!("train.dataset_path {path:?}: {e}")))?;
        if !folder.starts_with(&root) {
            return Err(denied(format!("train.dataset_path {path:?} is outside {}", root.display())));
        }
        Ok(folder)
    }
}

/// A request's options, with the documented defaults filled in.
pub fn options(input: &TrainInput) -> Result<TrainOptions, String> {
    let architecture = match input.architecture.as_str() {
        "" | "mlp" => Architecture::Mlp {
            hidden: if input.hidden_sizes.is_empty() {
                vec![20, 7, 5]
            } else {
                input.hidden_sizes.iter().map(|&h| h as usize).collect()
            },
        },
        "cnn" if input.hidden_sizes.is_empty() => Architecture::Cnn,
        "cnn" => return Err("train.hidden_sizes: only for the mlp architecture".into()),
        other => return Err(format!("train.architecture: {other:?} is not mlp or cnn")),
    };
    let optimizer = match input.optimizer.as_str() {
        "" | "sgd" => OptimizerKind::Sgd,
        "adamw" => OptimizerKind::AdamW,
        other => return Err(format!("train.optimizer: {other:?} is not sgd or adamw")),
    };
    let learning_rate = match (input.learning_rate, optimizer) {
        (0.0, OptimizerKind::Sgd) => 0.0075,
        (0.0, OptimizerKind::AdamW) => 0.001,
        (lr, _) => lr as f64,
    };
    Ok(TrainOptions {
        architecture,
        epochs: if input.epochs == 0 { 10 } else { input.epochs as usize },
        batch_size: input.batch_size as usize,
        optimizer,
        learning_rate,
        validation_split: input.validation_split as f64,
        seed: input.seed,
        augment_shift: input.augment_shift as usize,
        cosine_decay: match input.learning_rate_schedule.as_str() {
            "" | "constant" => false,
            "cosine" => true,
            other => return Err(format!("train.learning_rate_schedule: {other:?} is not constant or cosine")),
        },
    })
}

fn invalid(message: impl std::fmt::Display) -> JobError {
    JobError::failed(Code::InvalidArgument, message.to_string())
}

#[tonic::async_trait]
impl Runner for TrainRunner {
    fn models(&self) -> Vec<WorkerModel> {
        vec![WorkerModel {
            name: deephardway::TRAINER_MODEL.into(),
            kind: deephardway::v1::JobKind::Train as i32,
            description: "trains image classifiers (mlp, cnn) on uploaded datasets".into(),
            context_length: 0,
        }]
    }

    async fn run(&self, job: JobContext) -> Result<JobResult, JobError> {
        let Some(Input::Train(input)) = job.assignment.request.as_ref().and_then(|r| r.input.clone()) else {
            return Err(invalid("not a train job"));
        };
        let options = options(&input).map_err(invalid)?;
        // Where the images are: an uploaded archive (fetched into the cache) or a folder
        // of this machine's, if the worker allows it.
        let (dataset_name, location) = if input.dataset_path.is_empty() {
            let Some(dataset) = job.assignment.dataset.clone() else {
                return Err(JobError::failed(
                    Code::NotFound,
                    format!("dataset {:?} no longer exists (deleted after the job was submitted?)", input.dataset),
                ));
            };
            let archive = self
                .cache
                .get(&job.service, &dataset.artifact)
                .await
                .map_err(|e| JobError::failed(Code::Unavailable, format!("dataset {}: {e:#}", dataset.name)))?;
            (dataset.name, Location::Archive(archive))
        } else {
            (input.dataset_path.clone(), Location::Folder(self.local_folder(&input.dataset_path)?))
        };
        job.emit(Event::Progress(Progress {
            fraction: 0.0,
            message: "reading the dataset".into(),
            ..Default::default()
        }));

        let (device, size) = (self.device.clone(), input.input_size as usize);
        let decoded = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let source = match location {
                Location::Archive(file) => Source::from_archive(&std::fs::read(&file)?)?,
                Location::Folder(dir) => Source::from_dir(&dir)?,
            };
            source.decode(size, &device)
        })
        .await
        .map_err(|e| JobError::failed(Code::Internal, e.to_string()))?
        .map_err(|e| invalid(format!("dataset {dataset_name}: {e:#}")))?;
        let (train_set, test_set) = decoded;
        let config = ModelConfig {
            architecture: options.architecture.clone(),
            input: train_set.shape,
            classes: train_set.classes.clone(),
        };
        check(&config).map_err(|e| invalid(format!("train: {e}")))?;

        let (device, cancel, events) = (self.device.clone(), job.cancel.clone(), job.sender());
        let started = Instant::now();
        let epochs = options.epochs;
        let epoch_stride = epochs.div_ceil(EPOCH_POINTS).max(1);
        let trained = tokio::task::spawn_blocking(move || {
            let mut last_sent: Option<Instant> = None;
            training::train(&train_set, test_set.as_ref(), &options, &device, |p| {
                if cancel.is_cancelled() {
                    return false;
                }
                let finished = p.step == p.steps;
                let epoch_point = p.epoch_end && (p.epoch % epoch_stride == 0 || finished);
                if epoch_point || finished || last_sent.is_none_or(|t| t.elapsed() >= PROGRESS_INTERVAL) {
                    last_sent = Some(Instant::now());
                    let mut metrics = std::collections::HashMap::from([
                        ("loss".to_string(), p.loss),
                        ("train_accuracy".to_string(), p.train_accuracy),
                        ("images_per_second".to_string(), p.images_per_second),
                        ("epoch".to_string(), p.epoch as f64),
                        ("step".to_string(), p.step as f64),
                    ]);
                    if epoch_point && let Some(accuracy) = p.validation_accuracy {
                        metrics.insert("validation_accuracy".into(), accuracy);
                    }
                    let _ = events.send(Event::Progress(Progress {
                        fraction: p.step as f64 / p.steps.max(1) as f64,
                        message: match p.validation_accuracy {
                            Some(accuracy) => format!(
                                "epoch {}/{epochs}: loss {:.4}, validation accuracy {:.3}",
                                p.epoch, p.loss, accuracy
                            ),
                            None => format!("epoch {}/{epochs}: loss {:.4}", p.epoch, p.loss),
                        },
                        metrics,
                    }));
                }
                true
            })
        })
        .await
        .map_err(|e| JobError::failed(Code::Internal, e.to_string()))?;
        let trained = match trained {
            Ok(trained) => trained,
            Err(Stopped::Cancelled) => return Err(JobError::Cancelled),
            Err(Stopped::Failed(e)) => return Err(JobError::failed(Code::Internal, format!("training failed: {e:#}"))),
        };
        let epoch_ms = started.elapsed().as_secs_f64() * 1000.0 / epochs.max(1) as f64;
        let last = trained.last.clone();

        // The files as `Classifier::load` reads them, sent in one message.
        let dir = tempfile::tempdir().map_err(|e| JobError::failed(Code::Internal, e.to_string()))?;
        let files = Classifier::save(&trained, dir.path()).and_then(|()| {
            Ok((std::fs::read(dir.path().join("config.json"))?, std::fs::read(dir.path().join("model.safetensors"))?))
        });
        let (config_json, weights) = files.map_err(|e| JobError::failed(Code::Internal, format!("{e:#}")))?;
        let (architecture, hidden_sizes) = match &trained.config.architecture {
            Architecture::Mlp { hidden } => ("mlp", hidden.iter().map(|&h| h as u32).collect()),
            Architecture::Cnn => ("cnn", Vec::new()),
        };
        let description = TrainedModel {
            architecture: architecture.into(),
            hidden_sizes,
            input_size: trained.config.input.size as u32,
            channels: trained.config.input.channels as u32,
            labels: trained.config.classes.clone(),
            dataset: dataset_name,
            validation_accuracy: last.validation_accuracy.unwrap_or(0.0),
            ..Default::default()
        };
        let published = job
            .service
            .clone()
            .publish_model(PublishModelRequest {
                job_id: job.assignment.job_id.clone(),
                fence: job.assignment.fence,
                model: Some(description),
                config: config_json,
                weights,
            })
            .await
            .map_err(|s| JobError::failed(s.code(), format!("cannot publish the trained model: {}", s.message())))?
            .into_inner();
        Ok(JobResult {
            value: Some(job_result::Value::Train(TrainResult {
                model: published.name,
                version: published.version,
                loss: last.loss,
                train_accuracy: last.train_accuracy,
                validation_accuracy: last.validation_accuracy.unwrap_or(0.0),
                validation_images: last.validation_images as u32,
                epoch_ms,
            })),
        })
    }
}
