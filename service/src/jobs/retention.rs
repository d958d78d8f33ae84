//! Removing finished jobs once their retention has passed: the record, its request, its
//! trace context, its events, its idempotency key and its done-index entry, oldest first,
//! a page at a time.

use std::time::SystemTime;

use futures::StreamExt;
use prost_types::Timestamp;
use tonic::Status;

use super::JobLifecycle;
use crate::time::micros;
use crate::{
    auth::tenant_of,
    keys,
    store::{KeyValue, Op, Txn},
};

/// Finished jobs removed at once: their writes overlap, so that the store commits them
/// together (one fsync for many on the embedded store, pipelined round trips on etcd).
/// Removed one after the other, a job cost two commits, and a service finishing jobs
/// faster than that (a few hundred a second) outran its retention: the store grew
/// without bound.
const PURGE_CONCURRENCY: usize = 64;

impl JobLifecycle {
    /// Deletes finished jobs older than the retention, with their events. Returns how many.
    pub async fn purge_expired(&self) -> Result<usize, Status> {
        let cutoff = SystemTime::now().checked_sub(self.config.retention).unwrap_or(SystemTime::UNIX_EPOCH);
        let cutoff = micros(&Some(Timestamp::from(cutoff)));
        const PAGE: usize = 512;
        let mut purged = 0;
        // Oldest first, a page at a time (purged keys leave the range), up to the cutoff.
        loop {
            let done = self.store.range(keys::DONE, PAGE).await?;
            let page = done.kvs.len();
            let expired: Vec<KeyValue> = done
                .kvs
                .into_iter()
                .take_while(|kv| {
                    let finished = kv.key[keys::DONE.len()..].split('/').next().and_then(|t| t.parse().ok());
                    finished.unwrap_or(0_i64) <= cutoff
                })
                .collect();
            let expired_here = expired.len();
            let mut removals = futures::stream::iter(expired)
                .map(|kv| async move { self.purge(&kv).await })
                .buffer_unordered(PURGE_CONCURRENCY);
            while let Some(removed) = removals.next().await {
                removed?;
                purged += 1;
            }
            if expired_here < page || page < PAGE {
                return Ok(purged);
            }
        }
    }

    /// Removes one finished job (`kv` is its done-index entry), events first.
    async fn purge(&self, kv: &KeyValue) -> Result<(), Status> {
        let id = keys::last_segment(&kv.key).to_string();
        let prefix = keys::events(&id);
        let (events, found) = tokio::join!(self.store.range(&prefix, 0), self.find(&id));
        for chunk in events?.kvs.chunks(crate::store::MAX_TXN_OPS) {
            let txn = Txn { compares: vec![], ops: chunk.iter().map(|e| Op::delete(&e.key)).collect() };
            self.store.txn(txn).await?;
        }
        let mut txn = Txn::new()
            .then(Op::delete(keys::job(&id)))
            .then(Op::delete(keys::spec(&id)))
            .then(Op::delete(keys::trace(&id)))
            .then(Op::delete(&kv.key))
            .then(Op::delete(keys::counted(&id)));
        if let Some((job, _)) = found?
            && !job.request_id.is_empty()
        {
            txn = txn.then(Op::delete(keys::request(tenant_of(&job.tenant), &job.request_id)));
        }
        self.store.txn(txn).await?;
        Ok(())
    }
}
