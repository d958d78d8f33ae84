//! The `classify` job: label images with a trained model, fetched from the service the
//! first time this worker uses it and kept loaded for the next jobs. An image that is not
//! a readable PNG or JPEG fails the job with INVALID_ARGUMENT naming it
//! (`classify.images[3]`).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use anyhow::Context;
use candle_core::Device;
use deephardway::{
    errors::invalid_field,
    v1::{ClassifyInput, ClassifyResult, JobKind, JobResult, Prediction, job_result, job_spec::Input},
    worker::v1::ServedModel,
};
use image::DynamicImage;
use tonic::{Code, Status};

use crate::{
    artifacts::ArtifactCache,
    models::vision::{classifier::Classifier, dataset},
    runner::{FailJob, JobContext, JobError, Runner, wrong_kind},
};

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

    /// The classifier stored at `artifact`, loaded now unless it still is.
    async fn classifier(&self, job: &JobContext, artifact: &str) -> Result<Arc<Classifier>, JobError> {
        let tick = || std::time::UNIX_EPOCH.elapsed().map_or(0, |d| d.as_nanos() as u64);
        if let Some((classifier, used)) = self.loaded.lock().expect("no poisoned lock").get_mut(artifact) {
            *used = tick();
            return Ok(classifier.clone());
        }
        let config = self.cache.get(job, &format!("{artifact}/config.json")).await.fail_with(Code::Unavailable)?;
        self.cache.get(job, &format!("{artifact}/model.safetensors")).await.fail_with(Code::Unavailable)?;
        let dir = config.parent().expect("a file has a folder").to_path_buf();
        let device = self.device.clone();
        let classifier = tokio::task::spawn_blocking(move || Classifier::load(&dir, &device))
            .await
            .internal()?
            .context("cannot load the model")
            .internal()?;
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
    fn models(&self) -> Vec<ServedModel> {
        vec![ServedModel {
            name: deephardway::CLASSIFIER_MODEL.into(),
            kind: JobKind::Classify as i32,
            description: "classifies images with any model trained by a train job".into(),
            context_length: 0,
        }]
    }

    async fn run(&self, job: JobContext) -> Result<JobResult, JobError> {
        let Some(Input::Classify(input)) = job.input().cloned() else {
            return Err(wrong_kind("classify"));
        };
        let Some(trained) = job.assignment.trained_model.clone() else {
            return Err(Status::failed_precondition("the assignment names no trained model").into());
        };
        let classifier = self.classifier(&job, &trained.artifact).await?;
        let cancel = job.cancel.clone();
        let predictions = tokio::task::spawn_blocking(move || label(&classifier, &input, || cancel.is_cancelled()))
            .await
            .internal()??;
        Ok(JobResult { value: Some(job_result::Value::Classify(ClassifyResult { predictions })) })
    }
}

/// Labels the input's images a batch at a time, stopping when `cancelled` says so.
fn label(
    classifier: &Classifier,
    input: &ClassifyInput,
    cancelled: impl Fn() -> bool,
) -> Result<Vec<Prediction>, JobError> {
    let mut out = Vec::with_capacity(input.images.len());
    for (batch_index, batch) in input.images.chunks(BATCH).enumerate() {
        if cancelled() {
            return Err(JobError::Cancelled);
        }
        let images = batch
            .iter()
            .enumerate()
            .map(|(i, bytes)| decode(bytes, batch_index * BATCH + i))
            .collect::<Result<Vec<_>, _>>()?;
        let predicted = classifier.label(&images).internal()?;
        out.extend(
            predicted
                .into_iter()
                .map(|p| Prediction { label: p.label, probabilities: p.probabilities.into_iter().collect() }),
        );
    }
    Ok(out)
}

/// Image `index` of the input, decoded, or INVALID_ARGUMENT naming it.
fn decode(bytes: &[u8], index: usize) -> Result<DynamicImage, Status> {
    let field = format!("classify.images[{index}]");
    dataset::decode(bytes, &field).map_err(|e| {
        // The error begins with the name it was given; the violation names the field apart.
        let message = format!("{e:#}");
        invalid_field(&field, message.strip_prefix(&format!("{field}: ")).unwrap_or(&message))
    })
}

#[cfg(test)]
mod tests {
    use deephardway::errors::{FieldViolation, violations};
    use tonic::Code;

    #[test]
    fn a_bad_image_is_named_by_its_field() {
        let status = super::decode(b"not an image", 3).unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().starts_with("classify.images[3]: not a PNG or JPEG image"), "{}", status.message());
        let FieldViolation { field, description } = violations(&status).remove(0);
        assert_eq!(field, "classify.images[3]");
        assert!(description.starts_with("not a PNG or JPEG image"), "{description}");
    }
}
