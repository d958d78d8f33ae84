//! The registry of models trained by train jobs. Each training under a name adds a
//! version; a classify job names the model (`cats`, its latest version when submitted)
//! or one version (`cats@2`), and the version is pinned in the job when it is accepted.
//! Descriptions live in the job store, files (config and weights) in the artifact store.

use bytes::Bytes;
use deephardway::{
    errors::invalid_field,
    v1::{Job, TrainedModel, job_spec::Input},
};
use prost::Message;
use tonic::Status;

use crate::{
    artifacts::ArtifactStore,
    keys,
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

/// The version `model` names (`name` → the latest), or NOT_FOUND.
pub async fn resolve(store: &SharedStore, model: &str) -> Result<TrainedModel, Status> {
    let (name, version) = parse(model)?;
    let missing = || {
        Status::not_found(format!(
            "no trained model {model:?}; train one with a train job (Models.List shows the trained models)"
        ))
    };
    let kv = match version {
        Some(v) => store.get(&keys::model_version(name, v)).await?,
        None => store.range_rev(&keys::model_versions(name), None, 1).await?.kvs.pop(),
    };
    decode(&kv.ok_or_else(missing)?.value)
}

/// The latest version of every trained model, by name.
pub async fn latest(store: &SharedStore) -> Result<Vec<TrainedModel>, Status> {
    let range = store.range(keys::MODELS, 0).await?;
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
/// train job asked for. `description` comes from the worker; the rest is filled here.
pub async fn publish(
    store: &SharedStore,
    artifacts: &ArtifactStore,
    job: &Job,
    fence: u64,
    mut description: TrainedModel,
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
    // The files' place is this assignment's own (the fence is unique), so nothing a
    // concurrent or earlier attempt wrote is ever overwritten.
    let artifact = format!("models/{name}/{}-{fence}", job.id);
    artifacts.put(&format!("{artifact}/config.json"), Bytes::from(config)).await?;
    artifacts.put(&format!("{artifact}/model.safetensors"), Bytes::from(weights)).await?;
    // A few tries: two jobs finishing under one name at once each get their own version.
    for _ in 0..16 {
        let latest = store.range_rev(&keys::model_versions(&name), None, 1).await?;
        let version = latest.kvs.first().map_or(Ok(0), |kv| decode(&kv.value).map(|m| m.version))? + 1;
        description.name = name.clone();
        description.version = version;
        description.dataset =
            if train.dataset_path.is_empty() { train.dataset.clone() } else { train.dataset_path.clone() };
        description.job_id = job.id.clone();
        description.create_time = Some(now());
        description.artifact = artifact.clone();
        let key = keys::model_version(&name, version);
        let txn = Txn::new().when(Compare::absent(&key)).then(Op::put(&key, description.encode_to_vec()));
        if store.txn(txn).await?.succeeded {
            tracing::info!(model = %name, version, job = %job.id, "trained model registered");
            return Ok(description);
        }
    }
    Err(Status::aborted(format!("could not register {name}: too many concurrent versions")))
}
