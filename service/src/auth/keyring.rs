//! The keys this replica accepts: the stored ones, re-read whenever the hub sees
//! `/dhw/keys/` change (and every few seconds, in case a change was missed), plus the
//! fixed keys the process was started with. Lookups are a hash-map read, so
//! authenticating a call costs no store round trip; a revocation on any replica reaches
//! every replica as fast as its watch does.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::Duration,
};

use tokio::sync::{broadcast::error::RecvError, watch};
use tokio_util::sync::CancellationToken;

use super::{FixedKey, Identity, api_keys, secret, secret::SecretHash};
use crate::{
    hub::{Change, Hub},
    store::SharedStore,
};

/// How often the stored keys are re-read even without a change seen.
const REFRESH: Duration = Duration::from_secs(5);

pub struct KeyRing {
    store: SharedStore,
    fixed: HashMap<SecretHash, Arc<Identity>>,
    stored: RwLock<HashMap<SecretHash, Arc<Identity>>>,
    /// Bumped whenever a key goes away, so that streams opened with it can check.
    revocations: watch::Sender<u64>,
}

impl KeyRing {
    /// Loads the stored keys and keeps them fresh until `shutdown`.
    pub async fn start(
        store: SharedStore,
        hub: &Hub,
        fixed: &[FixedKey],
        shutdown: CancellationToken,
    ) -> anyhow::Result<Arc<KeyRing>> {
        let fixed = fixed
            .iter()
            .map(|key| {
                let hash = secret::hash(&key.secret);
                let identity = Identity {
                    name: key.name.clone(),
                    role: key.role,
                    tenant: key.tenant.clone(),
                    quota: Default::default(),
                    hash,
                };
                (hash, Arc::new(identity))
            })
            .collect();
        let ring =
            Arc::new(KeyRing { store, fixed, stored: RwLock::new(HashMap::new()), revocations: watch::Sender::new(0) });
        // Subscribed before the first load, so that no change falls between the two.
        let changes = hub.changes();
        ring.reload().await?;
        tokio::spawn(ring.clone().keep_fresh(changes, shutdown));
        Ok(ring)
    }

    async fn keep_fresh(
        self: Arc<Self>,
        mut changes: tokio::sync::broadcast::Receiver<Change>,
        shutdown: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(REFRESH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                change = changes.recv() => match change {
                    Ok(Change::KeysChanged) | Err(RecvError::Lagged(_)) => {}
                    Ok(_) => continue,
                    Err(RecvError::Closed) => return,
                },
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            if let Err(e) = self.reload().await {
                tracing::warn!(error = %e, "cannot re-read the API keys; keeping the ones known");
            }
        }
    }

    /// Re-reads the stored keys now.
    pub async fn reload(&self) -> anyhow::Result<()> {
        let keys = api_keys::list(&self.store).await?;
        let mut fresh = HashMap::with_capacity(keys.len());
        for key in keys {
            let Some(hash) = secret::from_hex(&key.sha256) else {
                tracing::error!(name = %key.name, "API key record without a valid hash; ignored");
                continue;
            };
            let identity = Identity { quota: key.quota(), name: key.name, role: key.role, tenant: key.tenant, hash };
            fresh.insert(hash, Arc::new(identity));
        }
        let removed = {
            let mut stored = self.stored.write().expect("key ring lock");
            let removed = stored.keys().any(|hash| !fresh.contains_key(hash));
            *stored = fresh;
            removed
        };
        if removed {
            self.revocations.send_modify(|generation| *generation += 1);
        }
        Ok(())
    }

    /// The key a secret names, if it is valid now.
    pub fn identify(&self, secret: &str) -> Option<Arc<Identity>> {
        let hash = secret::hash(secret);
        if let Some(identity) = self.fixed.get(&hash) {
            return Some(identity.clone());
        }
        self.stored.read().expect("key ring lock").get(&hash).cloned()
    }

    /// Whether the key with this hash is still valid.
    pub fn holds(&self, hash: &SecretHash) -> bool {
        self.fixed.contains_key(hash) || self.stored.read().expect("key ring lock").contains_key(hash)
    }

    pub fn revocations(&self) -> watch::Receiver<u64> {
        self.revocations.subscribe()
    }
}
