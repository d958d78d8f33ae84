//! The stored files a job's assignment names, and the only ones its worker may fetch.
//!
//! A train job on an uploaded dataset names its dataset's archive; a classify job names
//! its trained model's `config.json` and `model.safetensors`; other jobs name nothing.
//! The assignment and `FetchArtifact` both read them from [`assignment_inputs`], so what
//! a worker is told to fetch is exactly what it is allowed to fetch. A request for any
//! other path, or for a job the caller does not hold (see [`JobLifecycle::held`]), is
//! PERMISSION_DENIED, and nothing is read from the artifact store.

use deephardway::v1::{Dataset, Job, JobKind, TrainedModel, job_spec::Input};
use tonic::Status;

use crate::{
    auth::{Caller, tenant_of},
    datasets,
    jobs::JobLifecycle,
    store::SharedStore,
    trained_models,
};

/// A trained model's files, under its `artifact` folder.
pub const MODEL_FILES: [&str; 2] = ["config.json", "model.safetensors"];

/// What a train job's dataset or a classify job's model is now. If it is gone (deleted
/// after the job was accepted), there is none, and the worker fails the job, saying so.
pub async fn assignment_inputs(store: &SharedStore, job: &Job) -> (Option<Dataset>, Option<TrainedModel>) {
    match job.spec.as_ref().and_then(|r| r.input.as_ref()) {
        Some(Input::Train(train)) if train.dataset_path.is_empty() => {
            (datasets::find(store, tenant_of(&job.tenant), &train.dataset).await.ok(), None)
        }
        Some(Input::Classify(_)) if job.kind == JobKind::Classify as i32 => {
            (None, trained_models::resolve(store, tenant_of(&job.tenant), &job.model).await.ok())
        }
        _ => (None, None),
    }
}

/// Whether `path` is one of the files these inputs name.
fn names(dataset: Option<&Dataset>, model: Option<&TrainedModel>, path: &str) -> bool {
    let dataset_archive = dataset.is_some_and(|d| !d.artifact.is_empty() && d.artifact == path);
    let model_file = model.is_some_and(|m| {
        !m.artifact.is_empty()
            && path
                .strip_prefix(m.artifact.as_str())
                .and_then(|rest| rest.strip_prefix('/'))
                .is_some_and(|file| MODEL_FILES.contains(&file))
    });
    dataset_archive || model_file
}

/// Checks a `FetchArtifact` request: the caller holds `job_id` with `fence`, and `path`
/// is a file that job's assignment names. Otherwise PERMISSION_DENIED.
pub async fn check_fetch(
    lifecycle: &JobLifecycle,
    caller: &Caller,
    job_id: &str,
    fence: u64,
    path: &str,
) -> Result<(), Status> {
    let (job, _) = lifecycle.held(job_id, fence, caller.key()).await?;
    let (dataset, model) = assignment_inputs(lifecycle.store(), &job).await;
    if names(dataset.as_ref(), model.as_ref(), path) {
        Ok(())
    } else {
        Err(Status::permission_denied(format!("job {job_id}'s assignment does not name this artifact")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_named_files_are_allowed() {
        let dataset = Dataset { artifact: "datasets/cats/abc.tar".into(), ..Default::default() };
        let model = TrainedModel { artifact: "models/cats/job-7".into(), ..Default::default() };
        assert!(names(Some(&dataset), None, "datasets/cats/abc.tar"));
        assert!(!names(Some(&dataset), None, "datasets/dogs/def.tar"));
        assert!(!names(Some(&dataset), None, "datasets/cats/abc.tar/x"));
        assert!(names(None, Some(&model), "models/cats/job-7/config.json"));
        assert!(names(None, Some(&model), "models/cats/job-7/model.safetensors"));
        assert!(!names(None, Some(&model), "models/cats/job-7"));
        assert!(!names(None, Some(&model), "models/cats/job-70/config.json"));
        assert!(!names(None, Some(&model), "models/cats/job-7/../job-8/config.json"));
        assert!(!names(None, None, ""));
        let empty = Dataset::default();
        assert!(!names(Some(&empty), None, ""));
    }
}
