//! The store on a real etcd cluster, so that many service replicas share one queue.
//!
//! The trait was modelled on etcd, so most operations map one to one onto the v3 API
//! through `etcd-client`. The caveats:
//! - etcd enforces a minimum lease TTL (1.5 × its election timeout, rounded up: 2 s with
//!   the default 1 s election timeout); a shorter lease lives that long.
//! - A transaction may not touch the same key twice (etcd: "duplicate key given in txn
//!   request"); that fails as [`StoreError::Internal`]. Writes that change nothing (a
//!   delete of a missing key) do not bump the revision.
//! - Every request is bounded by a timeout (10 s): `etcd-client` balances over its
//!   endpoints and, when none of them can be reached, waits forever instead of failing.
//!   A timeout is reported as [`StoreError::Unavailable`]; a write may still have landed.
//! - A watch holds its own gRPC stream to etcd; dropping the stream closes it, which ends
//!   the watch on the server.

use std::{
    collections::{HashMap, VecDeque},
    future::Future,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use etcd_client::{
    Client, CompareOp, ConnectOptions, GetOptions, KvClient, LeaseClient, LeaseKeepAliveStream, LeaseKeeper,
    PutOptions, TxnOp, WatchClient, WatchOptions,
};

use super::{
    Compare, EventKind, KeyValue, LeaseId, Op, RangeResult, Store, StoreError, Txn, TxnOutcome, WatchEvent, WatchStream,
};

/// How long to wait for etcd to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long any one request may take before the store is reported unavailable.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest response we accept (a range over many jobs, a watch batch); etcd itself
/// sends responses of any size, tonic's default limit is 4 MiB.
const MAX_RESPONSE_BYTES: usize = 256 << 20;
/// A lease's keep-alive stream is closed after this long without use.
const KEEPER_IDLE: Duration = Duration::from_secs(60);

/// A store on an etcd cluster.
pub struct EtcdStore {
    kv: KvClient,
    watch: WatchClient,
    lease: LeaseClient,
    /// For error messages: "http://a:2379,http://b:2379".
    endpoints: String,
    /// One open keep-alive stream per lease, reused across `lease_keep_alive` calls: a
    /// renewal is then one message each way rather than a new gRPC stream. The price is an
    /// open stream per live lease, closed once idle for [`KEEPER_IDLE`] or on revoke.
    keepers: Mutex<HashMap<LeaseId, KeeperSlot>>,
}

struct KeeperSlot {
    last_used: Instant,
    keeper: Arc<tokio::sync::Mutex<Option<Keeper>>>,
}

struct Keeper {
    requests: LeaseKeeper,
    responses: LeaseKeepAliveStream,
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

    /// Connects with TLS and credentials, and checks that etcd answers and lets this user
    /// read under the store's prefix. A refused certificate, a wrong password or a missing
    /// permission fails here, with what etcd said.
    pub async fn connect_with(endpoints: &[String], access: &EtcdAccess) -> Result<EtcdStore, StoreError> {
        let names = endpoints.join(",");
        let unavailable = |why: String| StoreError::Unavailable(format!("cannot reach etcd at {names}: {why}"));
        if endpoints.is_empty() {
            return Err(StoreError::Unavailable("no etcd endpoints given".into()));
        }
        let mut options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
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
        let client = match tokio::time::timeout(CONNECT_TIMEOUT, Client::connect(endpoints, Some(options))).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => return Err(refused(e)),
            Err(_) => return Err(unavailable(format!("no answer within {CONNECT_TIMEOUT:?}"))),
        };
        let store = EtcdStore {
            kv: client.kv_client().max_decoding_message_size(MAX_RESPONSE_BYTES),
            watch: client.watch_client().max_decoding_message_size(MAX_RESPONSE_BYTES),
            lease: client.lease_client(),
            endpoints: names.clone(),
            keepers: Mutex::new(HashMap::new()),
        };
        // The client connects lazily; one request proves that etcd is there.
        let mut kv = store.kv.clone();
        match tokio::time::timeout(CONNECT_TIMEOUT, kv.get(PROBE_KEY, Some(GetOptions::new().with_count_only()))).await
        {
            Ok(Ok(_)) => Ok(store),
            Ok(Err(e)) => Err(refused(e)),
            Err(_) => Err(unavailable(format!("no answer within {CONNECT_TIMEOUT:?}"))),
        }
    }

    /// Runs one request under [`REQUEST_TIMEOUT`]. `lease` names the lease the request
    /// uses, for [`StoreError::LeaseNotFound`].
    async fn request<T>(
        &self,
        lease: LeaseId,
        request: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
            Ok(result) => result.map_err(|e| store_error(e, lease)),
            Err(_) => Err(StoreError::Unavailable(format!(
                "etcd at {} did not answer within {REQUEST_TIMEOUT:?}",
                self.endpoints
            ))),
        }
    }

    /// The keep-alive slot of a lease, created if needed; forgets slots idle too long.
    fn keeper_slot(&self, lease: LeaseId) -> Arc<tokio::sync::Mutex<Option<Keeper>>> {
        let now = Instant::now();
        let mut keepers = self.keepers.lock().expect("keepers lock");
        keepers.retain(|id, slot| *id == lease || now.duration_since(slot.last_used) < KEEPER_IDLE);
        let slot = keepers.entry(lease).or_insert_with(|| KeeperSlot { last_used: now, keeper: Arc::default() });
        slot.last_used = now;
        slot.keeper.clone()
    }

    fn forget_keeper(&self, lease: LeaseId) {
        self.keepers.lock().expect("keepers lock").remove(&lease);
    }

    /// Fails with `Compacted` if history at `revision` is gone (a range read at a
    /// compacted revision fails; one in the future is fine: the watch will wait for it).
    async fn check_not_compacted(&self, prefix: &str, revision: i64) -> Result<(), StoreError> {
        let mut kv = self.kv.clone();
        let options = GetOptions::new().with_prefix().with_keys_only().with_limit(1).with_revision(revision);
        match tokio::time::timeout(REQUEST_TIMEOUT, kv.get(prefix, Some(options))).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(etcd_client::Error::GRpcStatus(status))) if status.message().contains("compacted") => {
                Err(self.compaction_of(prefix, revision).await)
            }
            Ok(Err(etcd_client::Error::GRpcStatus(status))) if status.message().contains("future revision") => Ok(()),
            Ok(Err(e)) => Err(store_error(e, 0)),
            Err(_) => Err(StoreError::Unavailable(format!(
                "etcd at {} did not answer within {REQUEST_TIMEOUT:?}",
                self.endpoints
            ))),
        }
    }

    /// The `Compacted` error for a start revision known to be compacted. Only a watch
    /// tells the compaction revision, so open one and read its cancellation.
    async fn compaction_of(&self, prefix: &str, requested: i64) -> StoreError {
        let mut watch = self.watch.clone();
        let options = WatchOptions::new().with_prefix().with_start_revision(requested);
        let oldest = tokio::time::timeout(REQUEST_TIMEOUT, async {
            let mut stream = watch.watch(prefix, Some(options)).await.ok()?;
            while let Ok(Some(response)) = stream.message().await {
                if response.compact_revision() > 0 {
                    return Some(response.compact_revision());
                }
                if response.canceled() || !response.events().is_empty() {
                    return None;
                }
            }
            None
        })
        .await
        .ok()
        .flatten();
        let oldest = match oldest {
            Some(oldest) => oldest,
            // The current revision is always kept, so it is a safe place to resume.
            None => match self.revision().await {
                Ok(revision) => revision,
                Err(e) => return e,
            },
        };
        StoreError::Compacted { requested, oldest }
    }
}

/// A key read only for its response header (the current revision): under the store's
/// prefix, which is all an etcd user for the service needs to be granted.
const PROBE_KEY: &str = crate::keys::ROOT;

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let mut kv = self.kv.clone();
        let mut response = self.request(0, kv.get(key, None)).await?;
        response.take_kvs().into_iter().next().map(key_value).transpose()
    }

    async fn range(&self, prefix: &str, limit: usize) -> Result<RangeResult, StoreError> {
        let mut options = GetOptions::new().with_prefix();
        if limit > 0 {
            options = options.with_limit(i64::try_from(limit).unwrap_or(i64::MAX));
        }
        let mut kv = self.kv.clone();
        let mut response = self.request(0, kv.get(prefix, Some(options))).await?;
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
        let mut kv = self.kv.clone();
        let mut response = self.request(0, kv.get(prefix, Some(options))).await?;
        let revision = header_revision(response.header())?;
        let kvs = response.take_kvs().into_iter().map(key_value).collect::<Result<_, _>>()?;
        Ok(RangeResult { kvs, revision })
    }

    async fn count(&self, prefix: &str) -> Result<usize, StoreError> {
        let mut kv = self.kv.clone();
        let response = self.request(0, kv.get(prefix, Some(GetOptions::new().with_prefix().with_count_only()))).await?;
        Ok(usize::try_from(response.count()).unwrap_or(0))
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        let lease = txn
            .ops
            .iter()
            .find_map(|op| match op {
                Op::Put { lease, .. } if *lease != 0 => Some(*lease),
                _ => None,
            })
            .unwrap_or(0);
        let compares: Vec<etcd_client::Compare> = txn
            .compares
            .into_iter()
            .map(|compare| match compare {
                Compare::ModRevision(key, revision) => {
                    etcd_client::Compare::mod_revision(key, CompareOp::Equal, revision)
                }
                Compare::CreateRevision(key, revision) => {
                    etcd_client::Compare::create_revision(key, CompareOp::Equal, revision)
                }
            })
            .collect();
        let ops: Vec<TxnOp> = txn
            .ops
            .into_iter()
            .map(|op| match op {
                Op::Put { key, value, lease: 0 } => TxnOp::put(key, value, None),
                Op::Put { key, value, lease } => TxnOp::put(key, value, Some(PutOptions::new().with_lease(lease))),
                Op::Delete { key } => TxnOp::delete(key, None),
            })
            .collect();
        let mut kv = self.kv.clone();
        let response = self.request(lease, kv.txn(etcd_client::Txn::new().when(compares).and_then(ops))).await?;
        Ok(TxnOutcome { succeeded: response.succeeded(), revision: header_revision(response.header())? })
    }

    async fn watch(&self, prefix: &str, start_revision: i64) -> Result<WatchStream, StoreError> {
        let mut options = WatchOptions::new().with_prefix();
        if start_revision > 0 {
            // etcd would accept the watch and cancel it a moment later; callers want to
            // know now, so that they re-list instead of retrying forever.
            self.check_not_compacted(prefix, start_revision).await?;
            options = options.with_start_revision(start_revision);
        }
        let mut watch = self.watch.clone();
        let opened = async {
            let mut stream = watch.watch(prefix, Some(options)).await?;
            // Wait until etcd has created the watch, so that no write made after this
            // call returns can be missed.
            let created = stream.message().await?;
            Ok::<_, etcd_client::Error>((stream, created))
        };
        let (stream, created) = self.request(0, opened).await?;
        let created = created.ok_or_else(|| StoreError::Unavailable("etcd closed the watch as it opened".into()))?;
        let next_revision = match start_revision {
            0 => header_revision(created.header())? + 1,
            start => start,
        };
        let mut state = WatchState { stream, pending: VecDeque::new(), next_revision, done: false };
        state.take(created);
        Ok(Box::pin(futures::stream::unfold(state, WatchState::next)))
    }

    async fn lease_grant(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let seconds = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        let seconds = i64::try_from(seconds.max(1)).unwrap_or(i64::MAX);
        let mut lease = self.lease.clone();
        Ok(self.request(0, lease.grant(seconds, None)).await?.id())
    }

    async fn lease_keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        let slot = self.keeper_slot(lease);
        let mut slot = slot.lock().await;
        // Taken out while in use: if this call is dropped halfway, the stream (with a
        // response perhaps still on its way) is dropped too rather than reused.
        if let Some(mut keeper) = slot.take() {
            let renewed = self
                .request(lease, async {
                    keeper.requests.keep_alive().await?;
                    Ok(keeper.responses.message().await?.map(|response| response.ttl()))
                })
                .await;
            match renewed {
                Ok(Some(ttl)) if ttl > 0 => {
                    *slot = Some(keeper);
                    return Ok(());
                }
                Ok(Some(_)) => {
                    self.forget_keeper(lease);
                    return Err(StoreError::LeaseNotFound(lease));
                }
                // The stream broke (etcd restarted, a connection dropped): open a new one.
                Ok(None) | Err(_) => {}
            }
        }
        let mut client = self.lease.clone();
        // Opening the stream sends the first keep-alive and fails if the lease is gone.
        match self.request(lease, client.keep_alive(lease)).await {
            Ok((requests, responses)) => {
                *slot = Some(Keeper { requests, responses });
                Ok(())
            }
            Err(e) => {
                self.forget_keeper(lease);
                Err(e)
            }
        }
    }

    async fn lease_revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.forget_keeper(lease);
        let mut client = self.lease.clone();
        match self.request(lease, client.revoke(lease)).await {
            Ok(_) | Err(StoreError::LeaseNotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn revision(&self) -> Result<i64, StoreError> {
        let mut kv = self.kv.clone();
        let response = self.request(0, kv.get(PROBE_KEY, Some(GetOptions::new().with_count_only()))).await?;
        header_revision(response.header())
    }

    fn name(&self) -> &'static str {
        "etcd"
    }
}

/// A watch being read: etcd's stream and the events of its last response not yet handed
/// out. Dropping it drops etcd's stream, which cancels the watch on the server.
struct WatchState {
    stream: etcd_client::WatchStream,
    pending: VecDeque<Result<WatchEvent, StoreError>>,
    /// The revision the next event will have at least, for `Compacted::requested`.
    next_revision: i64,
    done: bool,
}

impl WatchState {
    async fn next(mut self) -> Option<(Result<WatchEvent, StoreError>, WatchState)> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Some((item, self));
            }
            if self.done {
                return None;
            }
            match self.stream.message().await {
                Ok(Some(response)) => self.take(response),
                Ok(None) => self.fail(StoreError::Unavailable("etcd closed the watch".into())),
                Err(e) => self.fail(store_error(e, 0)),
            }
        }
    }

    /// Queues a response's events, or the error that ends the watch.
    fn take(&mut self, response: etcd_client::WatchResponse) {
        for event in response.events() {
            match watch_event(event) {
                Ok(event) => {
                    self.next_revision = event.kv.mod_revision + 1;
                    self.pending.push_back(Ok(event));
                }
                Err(e) => return self.fail(e),
            }
        }
        if response.compact_revision() > 0 {
            let requested = self.next_revision;
            self.fail(StoreError::Compacted { requested, oldest: response.compact_revision() });
        } else if response.canceled() {
            let reason = match response.cancel_reason() {
                "" => "no reason given",
                reason => reason,
            };
            self.fail(StoreError::Unavailable(format!("etcd cancelled the watch: {reason}")));
        }
    }

    fn fail(&mut self, error: StoreError) {
        self.pending.push_back(Err(error));
        self.done = true;
    }
}

fn watch_event(event: &etcd_client::Event) -> Result<WatchEvent, StoreError> {
    let kv = event.kv().ok_or_else(|| StoreError::Internal("etcd sent a watch event without a key".into()))?;
    Ok(match event.event_type() {
        etcd_client::EventType::Put => WatchEvent { kind: EventKind::Put, kv: key_value(kv.clone())? },
        etcd_client::EventType::Delete => WatchEvent {
            kind: EventKind::Delete,
            kv: KeyValue {
                key: key_string(kv.key().to_vec())?,
                value: Vec::new(),
                create_revision: 0,
                mod_revision: kv.mod_revision(),
                lease: 0,
            },
        },
    })
}

fn key_value(kv: etcd_client::KeyValue) -> Result<KeyValue, StoreError> {
    let (create_revision, mod_revision, lease) = (kv.create_revision(), kv.mod_revision(), kv.lease());
    let (key, value) = kv.into_key_value();
    Ok(KeyValue { key: key_string(key)?, value, create_revision, mod_revision, lease })
}

fn key_string(key: Vec<u8>) -> Result<String, StoreError> {
    String::from_utf8(key).map_err(|e| {
        StoreError::Internal(format!("etcd holds a key that is not UTF-8: {:?}", String::from_utf8_lossy(e.as_bytes())))
    })
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> Result<i64, StoreError> {
    header
        .map(|header| header.revision())
        .ok_or_else(|| StoreError::Internal("etcd sent a response without a header".into()))
}

/// Maps an etcd-client error: lost connections and an etcd that cannot serve (no leader,
/// timeouts) are `Unavailable`; an unknown lease is `LeaseNotFound(lease)`.
fn store_error(error: etcd_client::Error, lease: LeaseId) -> StoreError {
    use etcd_client::Error as E;
    use tonic::Code;
    match error {
        E::GRpcStatus(status) if status.message().contains("requested lease not found") => {
            StoreError::LeaseNotFound(lease)
        }
        E::GRpcStatus(status) => {
            let message = format!("etcd: {}", status.message());
            match status.code() {
                Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => StoreError::Unavailable(message),
                // Transport failures surface as Unknown with the I/O error as source.
                Code::Unknown if std::error::Error::source(&status).is_some() => {
                    StoreError::Unavailable(format!("etcd: {status}"))
                }
                _ => StoreError::Internal(message),
            }
        }
        // etcd-client's own message for a keep-alive answered with TTL 0.
        E::LeaseKeepAliveError(message) if message.contains("lease not found") => StoreError::LeaseNotFound(lease),
        e @ (E::TransportError(_) | E::IoError(_) | E::LeaseKeepAliveError(_) | E::WatchError(_)) => {
            StoreError::Unavailable(format!("etcd: {e}"))
        }
        e => StoreError::Internal(format!("etcd: {e}")),
    }
}

/// An error and its sources, one after another: a TLS failure is three levels down in
/// etcd-client's transport error.
struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}
