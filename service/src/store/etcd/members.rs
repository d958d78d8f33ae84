//! The members of the etcd cluster, each with its own connection, and which of them can
//! serve right now.
//!
//! etcd-client balances requests over all its endpoints and keeps sending to one that is
//! down or frozen (its issues #12 and #39): with one member of three dead, most requests
//! failed with "tcp connect error"; with one frozen, requests hung until their timeout and
//! worker leases expired. So the store holds one client per member and chooses itself:
//!
//! - a **prober** reads from every member every [`PROBE_EVERY`] (a linearizable read, so
//!   only a member that has a leader and reaches a quorum passes) and marks each healthy
//!   or not; a request that fails to reach a member marks it too;
//! - a request goes to the member last used if it is healthy, else to the next healthy
//!   one; it gives up on a member the moment that member is marked unhealthy (a frozen
//!   member is noticed within [`PROBE_EVERY`] + [`PROBE_TIMEOUT`]), and is sent again to
//!   another when [`Retry`] allows;
//! - when no member is healthy (quorum lost, or a leader election), a request waits up to
//!   [`ELECTION_GRACE`] for one; once none has been healthy for that long, requests fail
//!   at once, until the prober sees one again.

use std::{
    future::Future,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use etcd_client::{Client, ConnectOptions, GetOptions, KvClient, LeaseClient, WatchClient};
use tokio::{sync::watch, time::Instant};

use super::errors::{ErrorChain, Failure, classify, store_error};
use crate::store::{LeaseId, StoreError};

/// How often every member is probed.
const PROBE_EVERY: Duration = Duration::from_millis(250);
/// A member that does not answer a probe within this is unhealthy. Generous next to a
/// healthy etcd's milliseconds, short next to a worker lease (10 s by default, 1 s least).
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a request waits for some member to become healthy: long enough to ride out a
/// leader election (a second or two), short enough that a lost quorum fails requests fast.
const ELECTION_GRACE: Duration = Duration::from_secs(2);
/// How long to wait for a member's connection (a TLS handshake, an auth token).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest response we accept (a range over many jobs, a watch batch); etcd itself
/// sends responses of any size, tonic's default limit is 4 MiB.
const MAX_RESPONSE_BYTES: usize = 256 << 20;

/// A key read by probes only for their answer: under the store's prefix, which is all an
/// etcd user for the service needs to be granted.
pub(super) const PROBE_KEY: &str = crate::keys::ROOT;

/// Whether a request may be sent again after an attempt whose outcome is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Retry {
    /// Reads, keep-alives, revokes, watches, lease grants (a stray lease expires): sending
    /// them twice does no harm.
    Idempotent,
    /// A write that must not be applied twice: sent again only if it surely never arrived.
    OnlyIfNotSent,
}

/// One member's clients, cheap to clone.
#[derive(Clone)]
pub(super) struct Clients {
    pub kv: KvClient,
    pub watch: WatchClient,
    pub lease: LeaseClient,
}

struct Member {
    endpoint: String,
    /// Connected on first use: with auth, connecting asks for a token, which a dead member
    /// cannot give, and one dead member must not stop the store from starting.
    clients: tokio::sync::OnceCell<Clients>,
    healthy: watch::Sender<bool>,
}

/// The cluster's members and their health. Shared by the store, its watches and keepers.
pub(super) struct Members {
    members: Vec<Member>,
    options: ConnectOptions,
    /// The member requests go to first: the last one that served.
    preferred: AtomicUsize,
    /// Since when no member has been healthy; `None` while one is.
    all_down_since: Mutex<Option<Instant>>,
    /// Bumped whenever a member's health changes, for requests waiting for a healthy one.
    changed: watch::Sender<u64>,
    /// For error messages: "http://a:2379,http://b:2379".
    pub names: String,
    /// Watches reopened after their stream broke or their member stopped answering
    /// (`deephardway_store_watch_restarts_total`).
    pub watch_restarts: AtomicU64,
}

/// What a request attempt gets: the chosen member's clients.
pub(super) struct Attempt {
    pub clients: Clients,
}

impl Members {
    /// The members of `endpoints`, all presumed healthy until probed, with a prober
    /// running for as long as the returned handle lives.
    pub fn new(endpoints: &[String], options: ConnectOptions) -> Arc<Members> {
        let members = endpoints
            .iter()
            .map(|endpoint| Member {
                endpoint: endpoint.clone(),
                clients: tokio::sync::OnceCell::new(),
                healthy: watch::Sender::new(true),
            })
            .collect();
        let members = Arc::new(Members {
            members,
            options,
            preferred: AtomicUsize::new(0),
            all_down_since: Mutex::new(None),
            changed: watch::Sender::new(0),
            names: endpoints.join(","),
            watch_restarts: AtomicU64::new(0),
        });
        for i in 0..endpoints.len() {
            tokio::spawn(probe_forever(Arc::downgrade(&members), i));
        }
        members
    }

    /// Member `i`'s clients, connecting if this is the first use.
    pub async fn clients(&self, i: usize) -> Result<Clients, etcd_client::Error> {
        let member = &self.members[i];
        let connect = async {
            let client = tokio::time::timeout(
                CONNECT_TIMEOUT,
                Client::connect([member.endpoint.as_str()], Some(self.options.clone())),
            )
            .await
            .map_err(|_| etcd_client::Error::InvalidArgs(format!("no answer within {CONNECT_TIMEOUT:?}")))??;
            Ok::<_, etcd_client::Error>(Clients {
                kv: client.kv_client().max_decoding_message_size(MAX_RESPONSE_BYTES),
                watch: client.watch_client().max_decoding_message_size(MAX_RESPONSE_BYTES),
                lease: client.lease_client(),
            })
        };
        member.clients.get_or_try_init(|| connect).await.cloned()
    }

    /// Whether any member is healthy: the store can commit.
    pub fn any_healthy(&self) -> bool {
        self.members.iter().any(|m| *m.healthy.borrow())
    }

    pub fn is_healthy(&self, i: usize) -> bool {
        *self.members[i].healthy.borrow()
    }

    /// Resolves once member `i` is marked unhealthy.
    pub async fn unhealthy(&self, i: usize) {
        let mut healthy = self.members[i].healthy.subscribe();
        let _ = healthy.wait_for(|healthy| !healthy).await;
    }

    /// Marks member `i` healthy or not; says why in the log when it changes.
    pub fn mark(&self, i: usize, healthy: bool, why: &dyn std::fmt::Display) {
        let changed = self.members[i].healthy.send_if_modified(|h| std::mem::replace(h, healthy) != healthy);
        if !changed {
            return;
        }
        let endpoint = &self.members[i].endpoint;
        if healthy {
            tracing::info!(endpoint, "etcd member is healthy again");
        } else {
            tracing::warn!(endpoint, reason = %why, "etcd member is unhealthy; using the others");
        }
        let mut down_since = self.all_down_since.lock().expect("health lock");
        match (self.any_healthy(), *down_since) {
            (true, Some(_)) => *down_since = None,
            (false, None) => {
                tracing::warn!(endpoints = %self.names, "no etcd member can serve (quorum lost?)");
                *down_since = Some(Instant::now());
            }
            _ => {}
        }
        drop(down_since);
        self.changed.send_modify(|generation| *generation += 1);
    }

    /// A healthy member to send to, the preferred one first. When none is, waits (until
    /// `deadline`) for one within [`ELECTION_GRACE`] of the last one going down; `None`
    /// after that.
    pub async fn pick(&self, deadline: Instant) -> Option<usize> {
        let mut changes = self.changed.subscribe();
        loop {
            changes.borrow_and_update();
            let start = self.preferred.load(Ordering::Relaxed);
            let n = self.members.len();
            if let Some(i) = (0..n).map(|k| (start + k) % n).find(|&i| self.is_healthy(i)) {
                self.preferred.store(i, Ordering::Relaxed);
                return Some(i);
            }
            let down_since = (*self.all_down_since.lock().expect("health lock")).unwrap_or_else(Instant::now);
            let give_up = deadline.min(down_since + ELECTION_GRACE);
            if Instant::now() >= give_up {
                return None;
            }
            if tokio::time::timeout_at(give_up, changes.changed()).await.is_err() {
                return None;
            }
        }
    }

    /// Sends a request built by `attempt`, to healthy members one after another until
    /// one answers, `retry` forbids another try, or `timeout` passes. Also returns whether
    /// an earlier attempt's outcome is unknown (it may have been applied), and which member
    /// answered. `lease` names the lease the request uses, for `LeaseNotFound`.
    pub async fn call<T, F, Fut>(
        &self,
        retry: Retry,
        timeout: Duration,
        lease: LeaseId,
        mut attempt: F,
    ) -> Result<Called<T>, StoreError>
    where
        F: FnMut(Attempt) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = Instant::now() + timeout;
        let mut maybe_applied = false;
        let mut last_error = None::<String>;
        loop {
            let Some(member) = self.pick(deadline).await else {
                let why = last_error.unwrap_or_else(|| "no member is healthy (quorum lost?)".into());
                return Err(StoreError::Unavailable(format!("etcd at {}: {why}", self.names)));
            };
            let sent = async {
                let clients = self.clients(member).await.map_err(AttemptError::Connect)?;
                attempt(Attempt { clients }).await.map_err(AttemptError::Request)
            };
            let outcome = tokio::select! {
                result = tokio::time::timeout_at(deadline, sent) => match result {
                    Ok(result) => result,
                    Err(_) => {
                        return Err(StoreError::Unavailable(format!(
                            "etcd at {} did not answer within {timeout:?}", self.names
                        )));
                    }
                },
                // Frozen or cut off: the prober noticed. What was sent may still land.
                () = self.unhealthy(member) => Err(AttemptError::Stalled),
            };
            let error = match outcome {
                Ok(value) => return Ok(Called { value, member, maybe_applied }),
                Err(error) => error,
            };
            let (failure, why) = match &error {
                AttemptError::Connect(e) => (Failure::NotSent, format!("cannot connect: {}", ErrorChain(e))),
                AttemptError::Request(e) => (classify(e), ErrorChain(e).to_string()),
                AttemptError::Stalled => (Failure::Unknown, "stopped answering".to_string()),
            };
            match failure {
                Failure::Answered => {
                    let AttemptError::Request(e) = error else { unreachable!("only a request is answered") };
                    return Err(store_error(e, lease));
                }
                Failure::NotSent => self.mark(member, false, &why),
                Failure::Unknown => {
                    self.mark(member, false, &why);
                    if retry == Retry::OnlyIfNotSent {
                        return Err(StoreError::Unavailable(format!(
                            "etcd member {} failed ({why}); the write may or may not have been applied",
                            self.members[member].endpoint
                        )));
                    }
                    maybe_applied = true;
                }
            }
            last_error = Some(why);
        }
    }
}

enum AttemptError {
    /// No connection to the member could be made: nothing was sent.
    Connect(etcd_client::Error),
    Request(etcd_client::Error),
    /// The member was marked unhealthy while the request was out.
    Stalled,
}

/// A request's answer, the member that gave it, and whether an earlier attempt may have
/// been applied too.
pub(super) struct Called<T> {
    pub value: T,
    pub member: usize,
    pub maybe_applied: bool,
}

/// Probes member `i` every [`PROBE_EVERY`] (each member on its own, so that a frozen one
/// does not slow the others' probes), until the store is dropped.
async fn probe_forever(members: Weak<Members>, i: usize) {
    loop {
        let Some(members) = members.upgrade() else { return };
        match tokio::time::timeout(PROBE_TIMEOUT, probe(&members, i)).await {
            Ok(Ok(())) => members.mark(i, true, &"answered"),
            Ok(Err(e)) => members.mark(i, false, &ErrorChain(&e)),
            Err(_) => members.mark(i, false, &format!("no answer within {PROBE_TIMEOUT:?}")),
        }
        drop(members);
        tokio::time::sleep(PROBE_EVERY).await;
    }
}

/// A linearizable read: it needs the member to have a leader that reaches a quorum.
async fn probe(members: &Members, i: usize) -> Result<(), etcd_client::Error> {
    let mut kv = members.clients(i).await?.kv;
    kv.get(PROBE_KEY, Some(GetOptions::new().with_count_only())).await?;
    Ok(())
}
