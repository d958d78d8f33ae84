//! Watches that outlive a member: a watch is one gRPC stream to one member, and a member
//! that dies, loses its leader (etcd then cancels the stream: `require_leader`) or freezes
//! (the stream just goes quiet; only the prober notices) would silence it. So a watch
//! whose stream breaks or whose member is marked unhealthy reopens, on a healthy member,
//! from the revision after the last one it delivered: its reader sees no gap and no
//! repeat. It ends with an error only when no member can take it over within the request
//! timeout, or when the history it needs was compacted.

use std::{collections::VecDeque, sync::Arc, time::Duration};

use etcd_client::{GetOptions, WatchOptions};

use super::{
    errors::store_error,
    members::{Members, PROBE_KEY, Retry},
};
use crate::store::{EventKind, KeyValue, StoreError, WatchEvent, WatchStream};

/// A watch being read: etcd's stream and the events of its last response not yet handed
/// out. Dropping it drops etcd's stream, which cancels the watch on the server.
pub(super) struct WatchState {
    members: Arc<Members>,
    prefix: String,
    timeout: Duration,
    /// The member the stream is open on.
    member: usize,
    stream: etcd_client::WatchStream,
    pending: VecDeque<Result<WatchEvent, StoreError>>,
    /// The revision the next event will have at least: where to reopen, and
    /// `Compacted::requested`.
    next_revision: i64,
    done: bool,
}

/// Opens a watch on `prefix` from `start_revision` (0: from the next write on). Returns
/// once etcd has created it, so that no write made after this returns can be missed.
pub(super) async fn open(
    members: Arc<Members>,
    prefix: &str,
    start_revision: i64,
    timeout: Duration,
) -> Result<WatchStream, StoreError> {
    let (member, stream, created) = open_stream(&members, prefix, start_revision, timeout).await?;
    let next_revision = match start_revision {
        0 => header_revision(created.header())? + 1,
        start => start,
    };
    let mut state = WatchState {
        members,
        prefix: prefix.to_string(),
        timeout,
        member,
        stream,
        pending: VecDeque::new(),
        next_revision,
        done: false,
    };
    state.take(created);
    Ok(Box::pin(futures::stream::unfold(state, WatchState::next)))
}

/// Opens etcd's stream on a healthy member and reads its "created" response.
async fn open_stream(
    members: &Members,
    prefix: &str,
    start_revision: i64,
    timeout: Duration,
) -> Result<(usize, etcd_client::WatchStream, etcd_client::WatchResponse), StoreError> {
    let mut options = WatchOptions::new().with_prefix();
    if start_revision > 0 {
        // etcd would accept the watch and cancel it a moment later; callers want to
        // know now, so that they re-list instead of retrying forever.
        check_not_compacted(members, prefix, start_revision, timeout).await?;
        options = options.with_start_revision(start_revision);
    }
    let called = members
        .call(Retry::Idempotent, timeout, 0, |attempt| {
            let mut watch = attempt.clients.watch;
            let options = options.clone();
            let prefix = prefix.to_string();
            async move {
                let mut stream = watch.watch(prefix, Some(options)).await?;
                let created = stream.message().await?;
                Ok((stream, created))
            }
        })
        .await?;
    let (stream, created) = called.value;
    let created = created.ok_or_else(|| StoreError::Unavailable("etcd closed the watch as it opened".into()))?;
    Ok((called.member, stream, created))
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
            let member = self.member;
            let members = self.members.clone();
            let why = tokio::select! {
                message = self.stream.message() => match message {
                    Ok(Some(response)) => {
                        self.take(response);
                        continue;
                    }
                    Ok(None) => "the stream ended".to_string(),
                    Err(e) => store_error(e, 0).to_string(),
                },
                () = members.unhealthy(member) => "its member is unhealthy".to_string(),
            };
            self.reopen(&why).await;
        }
    }

    /// Reopens the watch from `next_revision` on a healthy member, or ends it with why not.
    async fn reopen(&mut self, why: &str) {
        tracing::info!(prefix = %self.prefix, revision = self.next_revision, reason = why, "reopening etcd watch");
        self.members.watch_restarts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match open_stream(&self.members, &self.prefix, self.next_revision, self.timeout).await {
            Ok((member, stream, created)) => {
                self.member = member;
                self.stream = stream;
                self.take(created);
            }
            Err(e) => self.fail(e),
        }
    }

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

/// Fails with `Compacted` if history at `revision` is gone (a range read at a
/// compacted revision fails; one in the future is fine: the watch will wait for it).
async fn check_not_compacted(
    members: &Members,
    prefix: &str,
    revision: i64,
    timeout: Duration,
) -> Result<(), StoreError> {
    let options = GetOptions::new().with_prefix().with_keys_only().with_limit(1).with_revision(revision);
    let read = members
        .call(Retry::Idempotent, timeout, 0, |attempt| {
            let mut kv = attempt.clients.kv;
            let options = options.clone();
            let prefix = prefix.to_string();
            async move {
                match kv.get(prefix, Some(options)).await {
                    Ok(_) => Ok(Ok(())),
                    // Answers, not failures: handled below rather than retried.
                    Err(etcd_client::Error::GRpcStatus(status))
                        if status.message().contains("compacted") || status.message().contains("future revision") =>
                    {
                        Ok(Err(status.message().contains("compacted")))
                    }
                    Err(e) => Err(e),
                }
            }
        })
        .await?;
    match read.value {
        Ok(()) | Err(false) => Ok(()),
        Err(true) => Err(compaction_of(members, prefix, revision, timeout).await),
    }
}

/// The `Compacted` error for a start revision known to be compacted. Only a watch tells
/// the compaction revision, so open one and read its cancellation.
async fn compaction_of(members: &Members, prefix: &str, requested: i64, timeout: Duration) -> StoreError {
    let options = WatchOptions::new().with_prefix().with_start_revision(requested);
    let oldest = members
        .call(Retry::Idempotent, timeout, 0, |attempt| {
            let mut watch = attempt.clients.watch;
            let options = options.clone();
            let prefix = prefix.to_string();
            async move {
                let mut stream = watch.watch(prefix, Some(options)).await?;
                while let Some(response) = stream.message().await? {
                    if response.compact_revision() > 0 {
                        return Ok(Some(response.compact_revision()));
                    }
                    if response.canceled() || !response.events().is_empty() {
                        return Ok(None);
                    }
                }
                Ok(None)
            }
        })
        .await
        .ok()
        .and_then(|called| called.value);
    let oldest = match oldest {
        Some(oldest) => oldest,
        // The current revision is always kept, so it is a safe place to resume.
        None => match current_revision(members, timeout).await {
            Ok(revision) => revision,
            Err(e) => return e,
        },
    };
    StoreError::Compacted { requested, oldest }
}

/// The store's current revision.
pub(super) async fn current_revision(members: &Members, timeout: Duration) -> Result<i64, StoreError> {
    let called = members
        .call(Retry::Idempotent, timeout, 0, |attempt| {
            let mut kv = attempt.clients.kv;
            async move { kv.get(PROBE_KEY, Some(GetOptions::new().with_count_only())).await }
        })
        .await?;
    header_revision(called.value.header())
}

fn watch_event(event: &etcd_client::Event) -> Result<WatchEvent, StoreError> {
    let kv = event.kv().ok_or_else(|| StoreError::Internal("etcd sent a watch event without a key".into()))?;
    Ok(match event.event_type() {
        etcd_client::EventType::Put => WatchEvent { kind: EventKind::Put, kv: super::key_value(kv.clone())? },
        etcd_client::EventType::Delete => WatchEvent {
            kind: EventKind::Delete,
            kv: KeyValue {
                key: super::key_string(kv.key().to_vec())?,
                value: Vec::new(),
                create_revision: 0,
                mod_revision: kv.mod_revision(),
                lease: 0,
            },
        },
    })
}

pub(super) fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> Result<i64, StoreError> {
    header
        .map(|header| header.revision())
        .ok_or_else(|| StoreError::Internal("etcd sent a response without a header".into()))
}
