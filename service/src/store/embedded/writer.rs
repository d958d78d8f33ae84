//! The writer thread: the one owner of every write, lease and watcher.
//!
//! It takes every request waiting in its channel, applies them in one redb write
//! transaction (each store transaction still gets its own revision), commits once, then
//! answers and notifies watchers — group commit. Watch registrations are handled after
//! the batch's commit, replaying the log, so no change falls between replay and live.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, PoisonError, mpsc as std_mpsc},
    time::{Duration, Instant},
};

use redb::{ReadableDatabase, ReadableTable};
use tokio::sync::{mpsc, oneshot};

use super::{
    KV, LEASE_KEYS, LEASE_TICK, LEASES, LOG, META,
    encoding::{Entry, decode_changes, encode_changes},
    file::{self, FileLimits, SharedDb},
    history::{History, HistoryLimits},
    internal, now_ms,
};
use crate::store::{Compare, EventKind, KeyValue, LeaseId, Op, StoreError, Txn, TxnOutcome, WatchEvent};

pub(super) enum Request {
    Txn(Txn, oneshot::Sender<Result<TxnOutcome, StoreError>>),
    LeaseGrant(Duration, oneshot::Sender<Result<LeaseId, StoreError>>),
    LeaseKeepAlive(LeaseId, oneshot::Sender<Result<(), StoreError>>),
    LeaseRevoke(LeaseId, oneshot::Sender<Result<(), StoreError>>),
    Watch {
        prefix: String,
        start_revision: i64,
        events: mpsc::Sender<WatchEvent>,
        ack: oneshot::Sender<Result<(), StoreError>>,
    },
}

struct Watcher {
    prefix: String,
    events: mpsc::Sender<WatchEvent>,
}

/// The writer thread's state.
pub(super) struct Writer {
    db: SharedDb,
    path: PathBuf,
    file_limits: FileLimits,
    last_file_check: Instant,
    revision: i64,
    compacted: i64,
    /// The log's revisions and sizes, and its bounds.
    history: History,
    limits: HistoryLimits,
    next_lease: i64,
    /// Lease deadlines, mirrored in memory so expiry needs no scan.
    deadlines: HashMap<LeaseId, i64>,
    watchers: Vec<Watcher>,
}

/// What a batch produced, sent out after its commit.
enum Reply {
    Txn(oneshot::Sender<Result<TxnOutcome, StoreError>>, Result<TxnOutcome, StoreError>),
    Lease(oneshot::Sender<Result<LeaseId, StoreError>>, Result<LeaseId, StoreError>),
    Unit(oneshot::Sender<Result<(), StoreError>>, Result<(), StoreError>),
}

impl Reply {
    /// Answers the request with what it got (the batch committed).
    fn send(self) {
        match self {
            Reply::Txn(tx, r) => drop(tx.send(r)),
            Reply::Lease(tx, r) => drop(tx.send(r)),
            Reply::Unit(tx, r) => drop(tx.send(r)),
        }
    }

    /// Fails the request: its batch did not commit.
    fn fail(self, cause: &StoreError) {
        let err = || StoreError::Internal(format!("embedded store commit failed: {cause}"));
        match self {
            Reply::Txn(tx, _) => drop(tx.send(Err(err()))),
            Reply::Lease(tx, _) => drop(tx.send(Err(err()))),
            Reply::Unit(tx, _) => drop(tx.send(Err(err()))),
        }
    }
}

impl Writer {
    pub fn new(
        db: SharedDb,
        path: PathBuf,
        limits: HistoryLimits,
        file_limits: FileLimits,
    ) -> Result<Writer, StoreError> {
        let txn = file::hold(&db).begin_read().map_err(internal)?;
        let meta = txn.open_table(META).map_err(internal)?;
        let get = |k: &str| -> Result<i64, StoreError> { Ok(meta.get(k).map_err(internal)?.map_or(0, |v| v.value())) };
        let (revision, compacted, next_lease) = (get("revision")?, get("compacted")?, get("next_lease")?);
        let leases = txn.open_table(LEASES).map_err(internal)?;
        let mut deadlines = HashMap::new();
        for item in leases.iter().map_err(internal)? {
            let (id, v) = item.map_err(internal)?;
            deadlines.insert(id.value(), v.value().1);
        }
        let history = History::load(&txn.open_table(LOG).map_err(internal)?, limits)?;
        let next_lease = next_lease.max(1);
        Ok(Writer {
            db,
            path,
            file_limits,
            last_file_check: Instant::now(),
            revision,
            compacted,
            history,
            limits,
            next_lease,
            deadlines,
            watchers: Vec::new(),
        })
    }

    pub fn run(mut self, requests: std_mpsc::Receiver<Request>) {
        loop {
            let first = match requests.recv_timeout(LEASE_TICK) {
                Ok(request) => Some(request),
                Err(std_mpsc::RecvTimeoutError::Timeout) => None,
                Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
            };
            let mut batch: Vec<Request> = first.into_iter().collect();
            while let Ok(request) = requests.try_recv() {
                batch.push(request);
            }
            if let Err(e) = self.apply(batch) {
                tracing::error!(error = %e, "embedded store write failed");
            }
            if self.last_file_check.elapsed() >= self.file_limits.check_every {
                self.last_file_check = Instant::now();
                if let Err(e) = self.compact_file() {
                    tracing::warn!(error = %e, "could not compact the embedded store's file");
                }
            }
        }
    }

    /// Compacts the file if it is worth it (see [`file`](mod@super::file)). Every read and write waits.
    fn compact_file(&mut self) -> Result<(), StoreError> {
        let db = Arc::clone(&self.db);
        if !file::worth_compacting(&file::hold(&db), &self.path, self.file_limits)? {
            return Ok(());
        }
        let mut db = db.write().unwrap_or_else(PoisonError::into_inner);
        file::compact(&mut db, &self.path)
    }

    /// Applies a batch in one write transaction (one fsync), then answers and notifies.
    fn apply(&mut self, batch: Vec<Request>) -> Result<(), StoreError> {
        let now = now_ms();
        let expired: Vec<LeaseId> = self.deadlines.iter().filter(|(_, d)| **d <= now).map(|(id, _)| *id).collect();
        let (writes, watches): (Vec<Request>, Vec<Request>) =
            batch.into_iter().partition(|r| !matches!(r, Request::Watch { .. }));
        if writes.is_empty() && expired.is_empty() {
            for watch in watches {
                self.register(watch);
            }
            return Ok(());
        }

        let start = (self.revision, self.compacted, self.next_lease, self.deadlines.clone());
        let mut replies = Vec::new();
        let mut changes_by_revision: Vec<(i64, Vec<WatchEvent>)> = Vec::new();
        if let Err(e) = self.commit(now, expired, writes, &mut replies, &mut changes_by_revision) {
            // Nothing was committed: forget what this batch did in memory and fail it.
            (self.revision, self.compacted, self.next_lease, self.deadlines) = start;
            self.reload_history();
            for reply in replies {
                reply.fail(&e);
            }
            return Err(e);
        }
        for reply in replies {
            reply.send();
        }
        for (_, changes) in &changes_by_revision {
            for change in changes {
                self.notify(change);
            }
        }
        for watch in watches {
            self.register(watch);
        }
        Ok(())
    }

    /// Applies expired leases and the batch's writes in one redb transaction and commits
    /// it (one fsync). The replies are only collected; they are sent once it committed.
    fn commit(
        &mut self,
        now: i64,
        expired: Vec<LeaseId>,
        writes: Vec<Request>,
        replies: &mut Vec<Reply>,
        changes_by_revision: &mut Vec<(i64, Vec<WatchEvent>)>,
    ) -> Result<(), StoreError> {
        let db = Arc::clone(&self.db);
        let txn = file::hold(&db).begin_write().map_err(internal)?;
        {
            let mut tables = Tables {
                kv: txn.open_table(KV).map_err(internal)?,
                log: txn.open_table(LOG).map_err(internal)?,
                leases: txn.open_table(LEASES).map_err(internal)?,
                lease_keys: txn.open_table(LEASE_KEYS).map_err(internal)?,
            };
            for id in expired {
                let changes = self.revoke(&mut tables, id)?;
                self.record(&mut tables, changes, changes_by_revision)?;
            }
            for request in writes {
                let reply = self.write(&mut tables, now, request, changes_by_revision)?;
                replies.push(reply);
            }
            self.compact(&mut tables)?;
        }
        let mut meta = txn.open_table(META).map_err(internal)?;
        meta.insert("revision", self.revision).map_err(internal)?;
        meta.insert("compacted", self.compacted).map_err(internal)?;
        meta.insert("next_lease", self.next_lease).map_err(internal)?;
        drop(meta);
        txn.commit().map_err(internal)
    }

    /// Applies one write request inside the batch's transaction. An error of the
    /// request itself (a lease that does not exist) goes in its reply; an error of the
    /// database fails the whole batch.
    fn write(
        &mut self,
        tables: &mut Tables<'_>,
        now: i64,
        request: Request,
        changes_by_revision: &mut Vec<(i64, Vec<WatchEvent>)>,
    ) -> Result<Reply, StoreError> {
        Ok(match request {
            Request::Txn(t, reply) => {
                let outcome = match self.transaction(tables, t) {
                    Ok((outcome, changes)) => {
                        self.record(tables, changes, changes_by_revision)?;
                        Ok(TxnOutcome { revision: self.revision, ..outcome })
                    }
                    Err(e) => Err(e),
                };
                Reply::Txn(reply, outcome)
            }
            Request::LeaseGrant(ttl, reply) => {
                let id = self.next_lease;
                self.next_lease += 1;
                let ttl_ms = ttl.as_millis().max(1) as u64;
                let deadline = now + ttl_ms as i64;
                tables.leases.insert(id, (ttl_ms, deadline)).map_err(internal)?;
                self.deadlines.insert(id, deadline);
                Reply::Lease(reply, Ok(id))
            }
            Request::LeaseKeepAlive(id, reply) => {
                let ttl = tables.leases.get(id).map_err(internal)?.map(|v| v.value().0);
                let result = match ttl {
                    Some(ttl_ms) => {
                        let deadline = now + ttl_ms as i64;
                        tables.leases.insert(id, (ttl_ms, deadline)).map_err(internal)?;
                        self.deadlines.insert(id, deadline);
                        Ok(())
                    }
                    None => Err(StoreError::LeaseNotFound(id)),
                };
                Reply::Unit(reply, result)
            }
            Request::LeaseRevoke(id, reply) => {
                let changes = self.revoke(tables, id)?;
                self.record(tables, changes, changes_by_revision)?;
                Reply::Unit(reply, Ok(()))
            }
            Request::Watch { .. } => unreachable!("watches are registered apart from writes"),
        })
    }

    /// Gives a write its revision and logs it; a write that changed nothing gets none.
    fn record(
        &mut self,
        tables: &mut Tables<'_>,
        changes: Vec<WatchEvent>,
        out: &mut Vec<(i64, Vec<WatchEvent>)>,
    ) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let encoded = encode_changes(&changes);
        tables.log.insert(self.revision, encoded.as_slice()).map_err(internal)?;
        self.history.push(self.revision, encoded.len());
        out.push((self.revision, changes));
        Ok(())
    }

    /// Checks and applies one transaction at revision `self.revision + 1`.
    fn transaction(&mut self, tables: &mut Tables<'_>, txn: Txn) -> Result<(TxnOutcome, Vec<WatchEvent>), StoreError> {
        for compare in &txn.compares {
            let (key, expected, field): (&str, i64, fn(&Entry) -> i64) = match compare {
                Compare::ModRevision(k, r) => (k, *r, |e| e.mod_revision),
                Compare::CreateRevision(k, r) => (k, *r, |e| e.create_revision),
            };
            let actual = match tables.kv.get(key).map_err(internal)? {
                Some(v) => field(&Entry::decode(v.value())?),
                None => 0,
            };
            if actual != expected {
                return Ok((TxnOutcome { succeeded: false, revision: self.revision }, Vec::new()));
            }
        }
        // Check leases before writing anything, so a failed txn changes nothing.
        for op in &txn.ops {
            if let Op::Put { lease, .. } = op
                && *lease != 0
                && tables.leases.get(*lease).map_err(internal)?.is_none()
            {
                return Err(StoreError::LeaseNotFound(*lease));
            }
        }
        let revision = self.revision + 1;
        let mut changes = Vec::new();
        for op in txn.ops {
            match op {
                Op::Put { key, value, lease } => {
                    let previous = match tables.kv.get(key.as_str()).map_err(internal)? {
                        Some(v) => Some(Entry::decode(v.value())?),
                        None => None,
                    };
                    if let Some(prev) = &previous
                        && prev.lease != 0
                        && prev.lease != lease
                    {
                        tables.lease_keys.remove((prev.lease, key.as_str())).map_err(internal)?;
                    }
                    if lease != 0 {
                        tables.lease_keys.insert((lease, key.as_str()), ()).map_err(internal)?;
                    }
                    let entry = Entry {
                        create_revision: previous.map_or(revision, |p| p.create_revision),
                        mod_revision: revision,
                        lease,
                        value,
                    };
                    tables.kv.insert(key.as_str(), entry.encode().as_slice()).map_err(internal)?;
                    changes.push(WatchEvent { kind: EventKind::Put, kv: entry.into_kv(key) });
                }
                Op::Delete { key } => {
                    if let Some(change) = delete_key(tables, &key, revision)? {
                        changes.push(change);
                    }
                }
            }
        }
        if !changes.is_empty() {
            self.revision = revision;
        }
        Ok((TxnOutcome { succeeded: true, revision: self.revision }, changes))
    }

    /// Deletes a lease and its keys at one new revision.
    fn revoke(&mut self, tables: &mut Tables<'_>, id: LeaseId) -> Result<Vec<WatchEvent>, StoreError> {
        self.deadlines.remove(&id);
        if tables.leases.remove(id).map_err(internal)?.is_none() {
            return Ok(Vec::new());
        }
        let mut keys = Vec::new();
        for item in tables.lease_keys.range((id, "")..).map_err(internal)? {
            let (k, _) = item.map_err(internal)?;
            let (lease, key) = k.value();
            if lease != id {
                break;
            }
            keys.push(key.to_string());
        }
        let revision = self.revision + 1;
        let mut changes = Vec::new();
        for key in keys {
            tables.lease_keys.remove((id, key.as_str())).map_err(internal)?;
            if let Some(change) = delete_key(tables, &key, revision)? {
                changes.push(change);
            }
        }
        if !changes.is_empty() {
            self.revision = revision;
        }
        Ok(changes)
    }

    /// Deletes the log's oldest revisions once history is over its bounds, in revisions
    /// or in bytes (see [`History::compact`]).
    fn compact(&mut self, tables: &mut Tables<'_>) -> Result<(), StoreError> {
        if let Some(upto) = self.history.compact(self.revision) {
            let doomed: Vec<i64> = tables
                .log
                .range(..=upto)
                .map_err(internal)?
                .map(|item| item.map(|(k, _)| k.value()).map_err(internal))
                .collect::<Result<_, _>>()?;
            for revision in doomed {
                tables.log.remove(revision).map_err(internal)?;
            }
            self.compacted = self.compacted.max(upto);
        }
        Ok(())
    }

    /// Re-reads the log's sizes after a failed commit, whose pushes and compactions the
    /// mirror already took in.
    fn reload_history(&mut self) {
        let loaded = file::hold(&self.db)
            .begin_read()
            .map_err(internal)
            .and_then(|txn| History::load(&txn.open_table(LOG).map_err(internal)?, self.limits));
        match loaded {
            Ok(history) => self.history = history,
            Err(e) => tracing::error!(error = %e, "cannot re-read the embedded store's history"),
        }
    }

    fn notify(&mut self, change: &WatchEvent) {
        self.watchers.retain(|w| {
            if !change.kv.key.starts_with(&w.prefix) {
                return !w.events.is_closed();
            }
            w.events.try_send(change.clone()).is_ok()
        });
    }

    /// Replays history from the start revision, then adds the watcher for live changes.
    fn register(&mut self, request: Request) {
        let Request::Watch { prefix, start_revision, events, ack } = request else { return };
        if start_revision == 0 || start_revision > self.revision {
            self.watchers.push(Watcher { prefix, events });
            let _ = ack.send(Ok(()));
            return;
        }
        if start_revision <= self.compacted {
            let _ = ack.send(Err(StoreError::Compacted { requested: start_revision, oldest: self.compacted + 1 }));
            return;
        }
        let replay = (|| -> Result<Vec<WatchEvent>, StoreError> {
            let txn = file::hold(&self.db).begin_read().map_err(internal)?;
            let log = txn.open_table(LOG).map_err(internal)?;
            let mut out = Vec::new();
            for item in log.range(start_revision..).map_err(internal)? {
                let (_, v) = item.map_err(internal)?;
                out.extend(decode_changes(v.value())?.into_iter().filter(|c| c.kv.key.starts_with(&prefix)));
            }
            Ok(out)
        })();
        match replay {
            Ok(history) => {
                let _ = ack.send(Ok(()));
                for change in history {
                    if events.try_send(change).is_err() {
                        return; // too much history for the buffer: dropped, it resumes later
                    }
                }
                self.watchers.push(Watcher { prefix, events });
            }
            Err(e) => {
                let _ = ack.send(Err(e));
            }
        }
    }
}

struct Tables<'txn> {
    kv: redb::Table<'txn, &'static str, &'static [u8]>,
    log: redb::Table<'txn, i64, &'static [u8]>,
    leases: redb::Table<'txn, i64, (u64, i64)>,
    lease_keys: redb::Table<'txn, (i64, &'static str), ()>,
}

fn delete_key(tables: &mut Tables<'_>, key: &str, revision: i64) -> Result<Option<WatchEvent>, StoreError> {
    let previous = match tables.kv.remove(key).map_err(internal)? {
        Some(v) => Entry::decode(v.value())?,
        None => return Ok(None),
    };
    if previous.lease != 0 {
        tables.lease_keys.remove((previous.lease, key)).map_err(internal)?;
    }
    Ok(Some(WatchEvent {
        kind: EventKind::Delete,
        kv: KeyValue { key: key.to_string(), value: Vec::new(), create_revision: 0, mod_revision: revision, lease: 0 },
    }))
}
