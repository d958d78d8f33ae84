//! The stored API keys: one JSON record per key at `/dhw/keys/<name>`, holding the
//! SHA-256 of its secret, never the secret.

use deephardway::{
    errors::invalid_field,
    v1::{CreateKeyRequest, Key, Quota},
};
use serde::{Deserialize, Serialize};
use tonic::Status;

use super::{DEFAULT_TENANT, Role, secret};
use crate::{
    keys,
    store::{Compare, Op, SharedStore, Txn},
    time::{micros, now},
    validate,
};

/// The longest key name and tenant name.
const MAX_NAME: usize = 64;
/// Quotas are sanity-checked so that a typo does not become a limit nobody meant.
const MAX_RATE: f64 = 100_000.0;

/// A key as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredKey {
    pub name: String,
    pub role: Role,
    pub tenant: String,
    #[serde(default)]
    pub max_active_jobs: u32,
    #[serde(default)]
    pub submits_per_second: f64,
    #[serde(default)]
    pub submit_burst: u32,
    #[serde(default)]
    pub max_running_jobs: u32,
    /// Microseconds since the epoch.
    pub create_time_micros: i64,
    pub creator: String,
    /// Hex SHA-256 of the secret.
    pub sha256: String,
}

impl StoredKey {
    pub fn quota(&self) -> Quota {
        Quota {
            max_active_jobs: self.max_active_jobs,
            submits_per_second: self.submits_per_second,
            submit_burst: self.submit_burst,
            max_running_jobs: self.max_running_jobs,
        }
    }

    pub fn to_proto(&self) -> Key {
        Key {
            name: self.name.clone(),
            role: self.role.to_proto() as i32,
            tenant: self.tenant.clone(),
            quota: Some(self.quota()),
            create_time: Some(prost_types::Timestamp {
                seconds: self.create_time_micros.div_euclid(1_000_000),
                nanos: (self.create_time_micros.rem_euclid(1_000_000) * 1_000) as i32,
            }),
            creator: self.creator.clone(),
        }
    }
}

/// A name or tenant: letters, digits and `._-`, not starting with `.`, at most 64 bytes.
pub fn check_name(field: &str, name: &str) -> Result<(), Status> {
    validate::artifact_name(field, name)?;
    if name.len() > MAX_NAME {
        return Err(invalid_field(field, format!("is {} bytes; at most {MAX_NAME}", name.len())));
    }
    Ok(())
}

fn check_quota(quota: &Quota) -> Result<(), Status> {
    let rate = quota.submits_per_second;
    if !rate.is_finite() || !(0.0..=MAX_RATE).contains(&rate) {
        return Err(invalid_field("quota.submits_per_second", format!("is {rate}; must be 0 to {MAX_RATE}")));
    }
    Ok(())
}

/// Stores a new key; returns it and its secret.
pub async fn create(store: &SharedStore, request: CreateKeyRequest, creator: &str) -> Result<(Key, String), Status> {
    check_name("name", &request.name)?;
    let role = validate::known_enum::<deephardway::v1::Role>("role", request.role)?;
    let role = Role::from_proto(role).ok_or_else(|| invalid_field("role", "is required"))?;
    let tenant = if request.tenant.is_empty() { DEFAULT_TENANT.to_string() } else { request.tenant };
    check_name("tenant", &tenant)?;
    let quota = request.quota.unwrap_or_default();
    check_quota(&quota)?;
    let secret = secret::generate();
    let stored = StoredKey {
        name: request.name,
        role,
        tenant,
        max_active_jobs: quota.max_active_jobs,
        submits_per_second: quota.submits_per_second,
        submit_burst: quota.submit_burst,
        max_running_jobs: quota.max_running_jobs,
        create_time_micros: micros(&Some(now())),
        creator: creator.to_string(),
        sha256: secret::to_hex(&secret::hash(&secret)),
    };
    let key = keys::api_key(&stored.name);
    let value = serde_json::to_vec(&stored).expect("a key serialises");
    let outcome = store.txn(Txn::new().when(Compare::absent(&key)).then(Op::put(&key, value))).await?;
    if !outcome.succeeded {
        return Err(Status::already_exists(format!("a key named {:?} exists", stored.name)));
    }
    tracing::info!(name = %stored.name, role = stored.role.name(), tenant = %stored.tenant, creator, "API key created");
    Ok((stored.to_proto(), secret))
}

/// Every stored key, by name (keys that do not decode are skipped and logged).
pub async fn list(store: &SharedStore) -> Result<Vec<StoredKey>, Status> {
    let range = store.range(keys::API_KEYS, 0).await?;
    Ok(range
        .kvs
        .iter()
        .filter_map(|kv| match serde_json::from_slice::<StoredKey>(&kv.value) {
            Ok(key) => Some(key),
            Err(e) => {
                tracing::error!(key = %kv.key, error = %e, "undecodable API key record; ignored");
                None
            }
        })
        .collect())
}

/// The most jobs the stored key `name` may run at once (0: no limit, or no such stored
/// key, as for the bootstrap key).
pub async fn max_running_jobs(store: &SharedStore, name: &str) -> Result<u32, Status> {
    let Some(kv) = store.get(&keys::api_key(name)).await? else { return Ok(0) };
    Ok(serde_json::from_slice::<StoredKey>(&kv.value).map_or(0, |k| k.max_running_jobs))
}

/// Deletes a key; returns it as it was.
pub async fn revoke(store: &SharedStore, name: &str) -> Result<Key, Status> {
    check_name("name", name)?;
    let key = keys::api_key(name);
    let Some(kv) = store.get(&key).await? else {
        return Err(Status::not_found(format!("no key named {name:?}")));
    };
    let stored: StoredKey =
        serde_json::from_slice(&kv.value).map_err(|e| Status::internal(format!("corrupt key record {key}: {e}")))?;
    // Only the version read is deleted, so a key recreated meanwhile under the name stays.
    let outcome =
        store.txn(Txn::new().when(Compare::ModRevision(key.clone(), kv.mod_revision)).then(Op::delete(&key))).await?;
    if !outcome.succeeded {
        return Err(Status::aborted("the key changed while being revoked; retry"));
    }
    tracing::info!(name, "API key revoked");
    Ok(stored.to_proto())
}
