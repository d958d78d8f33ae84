//! The `classify` job: label images with a trained model, fetched from the service the
//! first time this worker uses it and kept loaded for the next jobs.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use candle_core::Device;
use deephardway::v1::{ClassifyResult, JobResult, Prediction, WorkerModel, job_result, submit_request::Input};
use tonic::Code;

use super::vision::classifier::Classifier;
use crate::{JobContext, JobError, Runner, artifacts::ArtifactCache};

/// Loaded models kept in memory; the least recently used is dropped beyond this.
const LOADED_MODELS: usize = 8;
/// Images decoded and run through the network together.
const BATCH: usize = 64;

/// Runs classify jobs on any trained model.
pub struct ClassifyRunner {
    device: Device,
    cache: ArtifactCache,
    /// By artifact path (name and version): the classifier and when it was last used.
    loaded: Mutex<HashMap<String, (Arc<Classifier>, u64)>>,
}

impl ClassifyRunner {
    pub fn new(device: Device, cache: ArtifactCache) -> Self {
        ClassifyRunner { device, cache, loaded: Mutex::new(HashMap::new()) }
    }

    async fn classifier(&self, job: &JobContext, artifact: &str) -> Result<Arc<Classifier>, JobError> {
        let tick = || std::time::UNIX_EPOCH.elapsed().map_or(0, |d| d.as_nanos() as u64);
        if let Some((classifier, used)) = self.loaded.lock().expect("no poisoned lock").get_mut(artifact) {
            *used = tick();
            return Ok(classifier.clone());
        }
        let unavailable = |e: anyhow::Error| JobError::failed(Code::Unavailable, format!("{e:#}"));
        let config = self.cache.get(&job.service, &format!("{artifact}/config.json")).await.map_err(unavailable)?;
        self.cache.get(&job.service, &format!("{artifact}/model.safetensors")).await.map_err(unavailable)?;
        let dir = config.parent().expect("a file has a folder").to_path_buf();
        let device = self.device.clone();
        let classifier = tokio::task::spawn_blocking(move || Classifier::load(&dir, &device))
            .await
            .map_err(|e| JobError::failed(Code::Internal, e.to_string()))?
            .map_err(|e| JobError::failed(Code::Internal, format!("cannot load the model: {e:#}")))?;
        let classifier = Arc::new(classifier);
        let mut loaded = self.loaded.lock().expect("no poisoned lock");
        if loaded.len() >= LOADED_MODELS
            && let Some(oldest) = loaded.iter().min_by_key(|(_, (_, used))| *used).map(|(k, _)| k.clone())
        {
            loaded.remove(&oldest);
        }
        loaded.insert(artifact.to_string(), (classifier.clone(), tick()));
        Ok(classifier)
    }
}

#[tonic::async_trait]
impl Runner for ClassifyRunner {
    fn models(&self) -> Vec<WorkerModel> {
        vec![WorkerModel {
            name: deephardway::CLASSIFIER_MODEL.into(),
            kind: deephardway::v1::JobKind::Classify as i32,
            description: "classifies images with any model trained by a train job".into(),
            context_length: 0,
        }]
    }

    async fn run(&self, job: JobContext) -> Result<JobResult, JobError> {
        let Some(Input::Classify(input)) = job.assignment.request.as_ref().and_then(|r| r.input.clone()) else {
            return Err(JobError::failed(Code::InvalidArgument, "not a classify job"));
        };
        let Some(trained) = job.assignment.trained_model.clone() else {
            return Err(JobError::failed(Code::FailedPrecondition, "the assignment names no trained model"));
        };
        let classifier = self.classifier(&job, &trained.artifact).await?;
        let cancel = job.cancel.clone();
        let predictions = tokio::task::spawn_blocking(move || -> Result<Vec<Prediction>, JobError> {
            let mut out = Vec::with_capacity(input.images.len());
            for (batch_index, batch) in input.images.chunks(BATCH).enumerate() {
                if cancel.is_cancelled() {
                    return Err(JobError::Cancelled);
                }
                let names: Vec<String> =
                    (0..batch.len()).map(|i| format!("classify.images[{}]", batch_index * BATCH + i)).collect();
                let images: Vec<(&str, &[u8])> =
                    names.iter().map(String::as_str).zip(batch.iter().map(Vec::as_slice)).collect();
                let predicted = classifier
                    .classify(&images)
                    .map_err(|e| JobError::failed(Code::InvalidArgument, format!("{e:#}")))?;
                out.extend(
                    predicted
                        .into_iter()
                        .map(|p| Prediction { label: p.label, probabilities: p.probabilities.into_iter().collect() }),
                );
            }
            Ok(out)
        })
        .await
        .map_err(|e| JobError::failed(Code::Internal, e.to_string()))??;
        Ok(JobResult { value: Some(job_result::Value::Classify(ClassifyResult { predictions })) })
    }
}
