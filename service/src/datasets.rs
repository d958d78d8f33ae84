//! Uploaded datasets: an archive is checked (layout, limits, every image's header) while
//! the client waits, so a bad upload is refused with the reason and changes nothing; a
//! good one goes to the artifact store, then its description to the job store.

use bytes::Bytes;
use deephardway::{datasets::Source, errors::invalid_field, v1::Dataset};
use prost::Message;
use sha2::{Digest, Sha256};
use tonic::Status;

use crate::{
    artifacts::ArtifactStore,
    keys,
    store::{Compare, Op, SharedStore, Txn},
    time::now,
    validate,
};

/// The dataset of `tenant` named `name`, or NOT_FOUND.
pub async fn find(store: &SharedStore, tenant: &str, name: &str) -> Result<Dataset, Status> {
    let kv = store.get(&keys::dataset(tenant, name)).await?;
    let kv = kv.ok_or_else(|| {
        Status::not_found(format!(
            "no dataset named {name:?}; upload it with DatasetService.CreateDataset (ListDatasets shows them)"
        ))
    })?;
    Dataset::decode(kv.value.as_slice()).map_err(|e| Status::internal(format!("dataset record {name}: {e}")))
}

/// Every dataset of `tenant`, by name.
pub async fn list(store: &SharedStore, tenant: &str) -> Result<Vec<Dataset>, Status> {
    let range = store.range(&keys::datasets(tenant), 0).await?;
    Ok(range.kvs.iter().filter_map(|kv| Dataset::decode(kv.value.as_slice()).ok()).collect())
}

/// Checks and stores an uploaded archive.
pub async fn upload(
    store: &SharedStore,
    artifacts: &ArtifactStore,
    tenant: &str,
    name: &str,
    archive: Bytes,
    max_bytes: usize,
) -> Result<Dataset, Status> {
    validate::artifact_name("name", name)?;
    if archive.is_empty() {
        return Err(invalid_field("archive", "is empty"));
    }
    if archive.len() > max_bytes {
        return Err(invalid_field(
            "archive",
            format!("{} bytes; at most {max_bytes} (the service's --max-upload-mb)", archive.len()),
        ));
    }
    let sha256 = format!("{:x}", Sha256::digest(&archive));
    if let Some(existing) = store.get(&keys::dataset(tenant, name)).await? {
        return same_or_taken(name, &existing.value, &sha256);
    }
    let checked = archive.clone();
    // Streamed: memory stays bounded however large the archive unpacks (see
    // `Source::check_archive` for the limits: ratio, total size, pixels, PNG structure).
    let summary = tokio::task::spawn_blocking(move || Source::check_archive(&checked))
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| invalid_field("archive", format!("{e:#}")))?;

    let artifact = format!("datasets/{tenant}/{name}/{sha256}");
    let dataset = Dataset {
        name: name.to_string(),
        classes: summary.classes,
        train_images: summary.train_images as u32,
        test_images: summary.test_images as u32,
        archive_bytes: archive.len() as u64,
        sha256: sha256.clone(),
        create_time: Some(now()),
        artifact: artifact.clone(),
    };
    artifacts.put(&artifact, archive).await?;
    let key = keys::dataset(tenant, name);
    let txn = Txn::new().when(Compare::absent(&key)).then(Op::put(&key, dataset.encode_to_vec()));
    if !store.txn(txn).await?.succeeded {
        // Another upload of this name won the race.
        let existing = store.get(&key).await?.map(|kv| kv.value).unwrap_or_default();
        return same_or_taken(name, &existing, &sha256);
    }
    tracing::info!(
        dataset = name,
        classes = dataset.classes.len(),
        images = dataset.train_images + dataset.test_images,
        "dataset stored"
    );
    Ok(dataset)
}

/// An upload of a name already taken: the same archive is the stored dataset again.
fn same_or_taken(name: &str, record: &[u8], sha256: &str) -> Result<Dataset, Status> {
    let existing = Dataset::decode(record).map_err(|e| Status::internal(format!("dataset record {name}: {e}")))?;
    if existing.sha256 == sha256 {
        return Ok(existing);
    }
    Err(Status::already_exists(format!(
        "a different dataset is already named {name:?}; delete it first or pick another name"
    )))
}

/// Removes a dataset's description, then its archive.
pub async fn delete(
    store: &SharedStore,
    artifacts: &ArtifactStore,
    tenant: &str,
    name: &str,
) -> Result<Dataset, Status> {
    validate::artifact_name("name", name)?;
    let dataset = find(store, tenant, name).await?;
    crate::store::delete(store.as_ref(), &keys::dataset(tenant, name)).await?;
    artifacts.delete(&dataset.artifact).await?;
    Ok(dataset)
}
