//! The registry of models trained by train jobs. Each training under a name adds a
//! version; a classify job names the model (`cats`, its latest version when submitted)
//! or one version (`cats@2`), and the version is pinned in the job when it is accepted.
//! Descriptions live in the job store, files (config and weights) in the artifact store.
//! A model's files are checked before they are stored ([`check`]).

pub mod check;

use bytes::Bytes;
use deephardway::{
    errors::invalid_field,
    v1::{Job, TrainInput, TrainedModel, job_spec::Input},
};
use prost::Message;
use tonic::Status;

use crate::{
    artifacts::ArtifactStore,
    auth::tenant_of,
    datasets, keys,
    store::{Compare, Op, SharedStore, Txn},
    time::now,
    validate,
};

/// Splits `name@version`; a bare name has no version.
pub fn parse(model: &str) -> Result<(&str, Option<u32>), Status> {
    match model.split_once('@') {
        None => Ok((model, None)),
        Some((name, version)) => match version.parse::<u32>() {
            Ok(v) if v > 0 => Ok((name, Some(v))),
            _ => Err(invalid_field("model", format!("{model:?}: the version after @ must be a number from 1"))),
        },
    }
}

fn decode(value: &[u8]) -> Result<TrainedModel, Status> {
    TrainedModel::decode(value).map_err(|e| Status::internal(format!("trained model record: {e}")))
}

/// The version `model` names (`name` → the latest) among `tenant`'s models, or NOT_FOUND.
pub async fn resolve(store: &SharedStore, tenant: &str, model: &str) -> Result<TrainedModel, Status> {
    let (name, version) = parse(model)?;
    let missing = || {
        Status::not_found(format!(
            "no trained model {model:?}; train one with a train job (Models.List shows the trained models)"
        ))
    };
    let kv = match version {
        Some(v) => store.get(&keys::model_version(tenant, name, v)).await?,
        None => store.range_rev(&keys::model_versions(tenant, name), None, 1).await?.kvs.pop(),
    };
    decode(&kv.ok_or_else(missing)?.value)
}

/// The latest version of every trained model of `tenant`, by name.
pub async fn latest(store: &SharedStore, tenant: &str) -> Result<Vec<TrainedModel>, Status> {
    let range = store.range(&keys::models(tenant), 0).await?;
    let mut out: Vec<TrainedModel> = Vec::new();
    for kv in &range.kvs {
        let model = decode(&kv.value)?;
        // Keys sort by name, then version: a later key of the same name replaces.
        match out.last_mut() {
            Some(last) if last.name == model.name => *last = model,
            _ => out.push(model),
        }
    }
    Ok(out)
}

/// Stores a trained model's files and registers it as the next version of the name the
/// train job asked for, if the files pass [`check::model_files`] and the job's claim is
/// still the one created at `claim_revision` (the assignment's fence, checked by the
/// caller) when the version is written (else nothing is registered and the files are
/// removed). `description` comes from the worker; the rest is filled here.
pub async fn publish(
    store: &SharedStore,
    artifacts: &ArtifactStore,
    job: &Job,
    claim_revision: i64,
    description: TrainedModel,
    config: Vec<u8>,
    weights: Vec<u8>,
) -> Result<TrainedModel, Status> {
    let Some(Input::Train(train)) = job.spec.as_ref().and_then(|s| s.input.as_ref()) else {
        return Err(Status::failed_precondition(format!("job {} is not a train job", job.id)));
    };
    let name = train.output_model.clone();
    validate::artifact_name("train.output_model", &name)?;
    if description.labels.len() < 2 || config.is_empty() || weights.is_empty() {
        return Err(invalid_field("model", "a trained model needs its labels, config and weights"));
    }
    // An uploaded dataset's classes are known here; a worker's local folder's are not
    // (then the labels are checked against the weights only). A dataset deleted since is
    // no longer known either.
    let dataset_classes = match train.dataset_path.is_empty() {
        true => datasets::find(store, tenant_of(&job.tenant), &train.dataset).await.ok().map(|d| d.classes),
        false => None,
    };
    check::model_files(&description, &config, &weights, dataset_classes.as_deref())?;
    // The files' place is this assignment's own (a claim's revision is unique), so
    // nothing a concurrent or earlier attempt wrote is ever overwritten. Not the fence's
    // secret: the path is shown to every client.
    let artifact = format!("models/{}/{name}/{}-{}", tenant_of(&job.tenant), job.id, claim_revision);
    let config_path = format!("{artifact}/config.json");
    let weights_path = format!("{artifact}/model.safetensors");
    let stored = async {
        artifacts.put(&config_path, Bytes::from(config)).await?;
        artifacts.put(&weights_path, Bytes::from(weights)).await?;
        register(store, job, claim_revision, train, description, &artifact).await
    }
    .await;
    if stored.is_err() {
        // Nothing registered: leave nothing behind.
        let _ = artifacts.delete(&config_path).await;
        let _ = artifacts.delete(&weights_path).await;
    }
    stored
}

/// Writes the next version of the train job's output model, while the job's claim is the
/// one created at `claim_revision`.
async fn register(
    store: &SharedStore,
    job: &Job,
    claim_revision: i64,
    train: &TrainInput,
    mut description: TrainedModel,
    artifact: &str,
) -> Result<TrainedModel, Status> {
    let name = train.output_model.as_str();
    let tenant = tenant_of(&job.tenant);
    let (dataset, dataset_path) = (&train.dataset, &train.dataset_path);
    let claim_holds = Compare::CreateRevision(keys::claim(&job.id), claim_revision);
    // A few tries: two jobs finishing under one name at once each get their own version.
    for _ in 0..16 {
        let latest = store.range_rev(&keys::model_versions(tenant, name), None, 1).await?;
        let version = latest.kvs.first().map_or(Ok(0), |kv| decode(&kv.value).map(|m| m.version))? + 1;
        description.name = name.to_string();
        description.version = version;
        description.dataset = if dataset_path.is_empty() { dataset.to_string() } else { dataset_path.to_string() };
        description.job_id = job.id.clone();
        description.create_time = Some(now());
        description.artifact = artifact.to_string();
        let key = keys::model_version(tenant, name, version);
        let txn = Txn::new()
            .when(Compare::absent(&key))
            .when(claim_holds.clone())
            .then(Op::put(&key, description.encode_to_vec()));
        if store.txn(txn).await?.succeeded {
            tracing::info!(model = %name, version, job = %job.id, "trained model registered");
            return Ok(description);
        }
        let claim = store.get(&keys::claim(&job.id)).await?;
        if claim.is_none_or(|kv| kv.create_revision != claim_revision) {
            return Err(Status::permission_denied(format!(
                "job {}: the assignment ended before the model was registered",
                job.id
            )));
        }
    }
    Err(Status::aborted(format!("could not register {name}: too many concurrent versions")))
}
