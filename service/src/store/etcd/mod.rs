//! The store on a real etcd cluster, so that many service replicas share one queue.
//!
//! The trait was modelled on etcd, so most operations map one to one onto the v3 API
//! through `etcd-client`. The caveats:
//! - etcd enforces a minimum lease TTL (1.5 × its election timeout, rounded up: 2 s with
//!   the default 1 s election timeout); a shorter lease lives that long.
//! - A transaction may not touch the same key twice (etcd: "duplicate key given in txn
//!   request"); that fails as [`StoreError::Internal`]. Writes that change nothing (a
//!   delete of a missing key) do not bump the revision.
//! - The store keeps working while a minority of the cluster's members is dead, frozen or
//!   cut off: it probes every member, sends each request to a healthy one, and moves a
//!   request, a watch or a lease's keep-alives to another member when one fails
//!   ([`members`]). Requests that may be sent twice are; a transaction whose outcome is
//!   unknown is sent again only if its comparisons make that safe, and then read back
//!   ([`txn`]). Requests are sent with `require_leader`, so a member without a leader
//!   refuses them at once instead of holding them.
//! - Every request is bounded by [`REQUEST_TIMEOUT`] (failovers included); once no member
//!   is healthy (quorum lost) requests fail after [`members`]' election grace (2 s), and at
//!   once after that. A failure is [`StoreError::Unavailable`]; a write that was not sent
//!   again may still have landed.
//! - Requests go to one member while it is healthy, at first the first in the list given,
//!   so that failover is predictable; replicas that list the members in different orders
//!   spread the reads.
//! - A watch holds its own gRPC stream to one member and moves to another when that one
//!   fails ([`watch`]); dropping the stream closes it, which ends the watch on the server.

mod errors;
mod lease;
mod members;
mod txn;
mod watch;

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use etcd_client::{ConnectOptions, GetOptions};

use self::{
    errors::ErrorChain,
    members::{Members, PROBE_KEY, Retry},
    txn::Earlier,
    watch::header_revision,
};
use super::{KeyValue, LeaseId, RangeResult, Store, StoreError, Txn, TxnOutcome, WatchStream};

/// How long to wait for etcd to accept a connection, and for the first answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest any one call may take, failovers included: shorter than the default
/// worker lease (10 s), so that a call that fails leaves time to renew the lease.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A store on an etcd cluster.
pub struct EtcdStore {
    members: Arc<Members>,
    keepers: lease::Keepers,
}

/// How to get into etcd: TLS for `https://` endpoints (a CA, else the system's roots, and
/// a client certificate where etcd runs with `--client-cert-auth`), and a user and
/// password where etcd has auth enabled. Default: neither.
#[derive(Clone, Default)]
pub struct EtcdAccess {
    pub tls: deephardway::ClientTls,
    /// User name and password.
    pub user: Option<(String, String)>,
}

impl std::fmt::Debug for EtcdAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        f.debug_struct("EtcdAccess").field("tls", &self.tls).field("user", &self.user.as_ref().map(|u| &u.0)).finish()
    }
}

impl EtcdStore {
    /// Connects to an etcd cluster, e.g. `["http://127.0.0.1:2379"]`, and checks that it
    /// answers.
    pub async fn connect(endpoints: &[String]) -> Result<EtcdStore, StoreError> {
        Self::connect_with(endpoints, &EtcdAccess::default()).await
    }

    /// Connects with TLS and credentials, and checks that etcd answers (one member is
    /// enough: the others are probed in the background) and lets this user read under the
    /// store's prefix. A refused certificate, a wrong password or a missing permission
    /// fails here, with what etcd said.
    pub async fn connect_with(endpoints: &[String], access: &EtcdAccess) -> Result<EtcdStore, StoreError> {
        let names = endpoints.join(",");
        let unavailable = |why: String| StoreError::Unavailable(format!("cannot reach etcd at {names}: {why}"));
        if endpoints.is_empty() {
            return Err(StoreError::Unavailable("no etcd endpoints given".into()));
        }
        let mut options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            // A member without a leader refuses requests at once rather than holding them
            // until they time out, and cancels its watches: the store moves to another.
            .with_require_leader(true);
        if endpoints.iter().any(|e| e.starts_with("https://")) {
            options = options.with_tls(access.tls.config());
        }
        if let Some((user, password)) = &access.user {
            // etcd's tokens expire (5 minutes by default): get a new one when one does.
            options = options.with_user(user, password).with_auto_token_refresh(true);
        }
        let refused = |e: etcd_client::Error| {
            let user = access.user.as_ref().map(|(user, _)| format!(" as user {user}")).unwrap_or_default();
            match &e {
                etcd_client::Error::GRpcStatus(status)
                    if matches!(
                        status.code(),
                        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied | tonic::Code::InvalidArgument
                    ) =>
                {
                    StoreError::Unavailable(format!("etcd at {names} refused access{user}: {}", status.message()))
                }
                _ => unavailable(format!("{}", ErrorChain(&e))),
            }
        };
        let members = Members::new(endpoints, options);
        // The members connect lazily; one answer proves that etcd is there.
        let mut last = unavailable("no member answered".into());
        for i in 0..endpoints.len() {
            let answered = tokio::time::timeout(CONNECT_TIMEOUT, async {
                let mut kv = members.clients(i).await?.kv;
                kv.get(PROBE_KEY, Some(GetOptions::new().with_count_only())).await
            })
            .await;
            match answered {
                Ok(Ok(_)) => return Ok(EtcdStore { members, keepers: lease::Keepers::default() }),
                Ok(Err(e)) => {
                    last = refused(e);
                    // Another member would refuse us the same way.
                    if last.to_string().contains("refused access") {
                        return Err(last);
                    }
                }
                Err(_) => last = unavailable(format!("no answer within {CONNECT_TIMEOUT:?}")),
            }
        }
        Err(last)
    }

    /// A read, sent to another member if one fails.
    async fn read<T, F, Fut>(&self, read: F) -> Result<T, StoreError>
    where
        F: Fn(etcd_client::KvClient) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let called =
            self.members.call(Retry::Idempotent, REQUEST_TIMEOUT, 0, |attempt| read(attempt.clients.kv)).await?;
        Ok(called.value)
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let mut response = self.read(|mut kv| async move { kv.get(key, None).await }).await?;
        response.take_kvs().into_iter().next().map(key_value).transpose()
    }

    async fn range(&self, prefix: &str, limit: usize) -> Result<RangeResult, StoreError> {
        let mut options = GetOptions::new().with_prefix();
        if limit > 0 {
            options = options.with_limit(i64::try_from(limit).unwrap_or(i64::MAX));
        }
        let options = &options;
        let mut response = self.read(|mut kv| async move { kv.get(prefix, Some(options.clone())).await }).await?;
        let revision = header_revision(response.header())?;
        let kvs = response.take_kvs().into_iter().map(key_value).collect::<Result<_, _>>()?;
        Ok(RangeResult { kvs, revision })
    }

    async fn range_rev(&self, prefix: &str, before: Option<&str>, limit: usize) -> Result<RangeResult, StoreError> {
        // etcd sorts the whole range server-side before applying the limit, but only the
        // page travels back.
        let end = before.map_or_else(|| super::prefix_end(prefix), |b| b.as_bytes().to_vec());
        let mut options =
            GetOptions::new().with_range(end).with_sort(etcd_client::SortTarget::Key, etcd_client::SortOrder::Descend);
        if limit > 0 {
            options = options.with_limit(i64::try_from(limit).unwrap_or(i64::MAX));
        }
        let options = &options;
        let mut response = self.read(|mut kv| async move { kv.get(prefix, Some(options.clone())).await }).await?;
        let revision = header_revision(response.header())?;
        let kvs = response.take_kvs().into_iter().map(key_value).collect::<Result<_, _>>()?;
        Ok(RangeResult { kvs, revision })
    }

    async fn count(&self, prefix: &str) -> Result<usize, StoreError> {
        let options = GetOptions::new().with_prefix().with_count_only();
        let options = &options;
        let response = self.read(|mut kv| async move { kv.get(prefix, Some(options.clone())).await }).await?;
        Ok(usize::try_from(response.count()).unwrap_or(0))
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        let request = txn::to_etcd(&txn);
        let request = &request;
        let called = self
            .members
            .call(txn::retry_of(&txn), REQUEST_TIMEOUT, txn::lease_of(&txn), |attempt| {
                let mut kv = attempt.clients.kv;
                async move { kv.txn(request.clone()).await }
            })
            .await?;
        let outcome = txn::outcome(&called.value)?;
        if outcome.succeeded || !called.maybe_applied {
            return Ok(outcome);
        }
        // Sent again after a copy whose outcome is unknown, and this copy's comparisons
        // failed: perhaps because that copy was applied.
        match txn::applied_earlier(&self.members, &txn, REQUEST_TIMEOUT).await? {
            Earlier::Applied(revision) => Ok(TxnOutcome { succeeded: true, revision }),
            Earlier::NotApplied => Ok(outcome),
            Earlier::Unclear => Err(StoreError::Unavailable(format!(
                "etcd at {}: a member failed during a transaction and whether it was applied cannot be told",
                self.members.names
            ))),
        }
    }

    async fn watch(&self, prefix: &str, start_revision: i64) -> Result<WatchStream, StoreError> {
        watch::open(self.members.clone(), prefix, start_revision, REQUEST_TIMEOUT).await
    }

    async fn lease_grant(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let seconds = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        let seconds = i64::try_from(seconds.max(1)).unwrap_or(i64::MAX);
        // A grant sent twice leaves a spare lease, which expires on its own.
        let called = self
            .members
            .call(Retry::Idempotent, REQUEST_TIMEOUT, 0, |attempt| {
                let mut lease = attempt.clients.lease;
                async move { lease.grant(seconds, None).await }
            })
            .await?;
        Ok(called.value.id())
    }

    async fn lease_keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.keepers.keep_alive(&self.members, lease, REQUEST_TIMEOUT).await
    }

    async fn lease_revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.keepers.forget(lease);
        let revoked = self
            .members
            .call(Retry::Idempotent, REQUEST_TIMEOUT, lease, |attempt| {
                let mut client = attempt.clients.lease;
                async move { client.revoke(lease).await }
            })
            .await;
        match revoked {
            Ok(_) | Err(StoreError::LeaseNotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn revision(&self) -> Result<i64, StoreError> {
        watch::current_revision(&self.members, REQUEST_TIMEOUT).await
    }

    /// Healthy while some member serves linearizable reads (so the cluster has a leader
    /// and a quorum, and can commit), as the background probes last found: no request is
    /// made, so the answer is immediate.
    fn watch_restarts(&self) -> u64 {
        self.members.watch_restarts.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn health(&self) -> Result<(), StoreError> {
        if self.members.any_healthy() {
            Ok(())
        } else {
            Err(StoreError::Unavailable(format!(
                "no etcd member at {} serves linearizable reads (quorum lost, or all unreachable)",
                self.members.names
            )))
        }
    }

    fn name(&self) -> &'static str {
        "etcd"
    }
}

pub(super) fn key_value(kv: etcd_client::KeyValue) -> Result<KeyValue, StoreError> {
    let (create_revision, mod_revision, lease) = (kv.create_revision(), kv.mod_revision(), kv.lease());
    let (key, value) = kv.into_key_value();
    Ok(KeyValue { key: key_string(key)?, value, create_revision, mod_revision, lease })
}

pub(super) fn key_string(key: Vec<u8>) -> Result<String, StoreError> {
    String::from_utf8(key).map_err(|e| {
        StoreError::Internal(format!("etcd holds a key that is not UTF-8: {:?}", String::from_utf8_lossy(e.as_bytes())))
    })
}
