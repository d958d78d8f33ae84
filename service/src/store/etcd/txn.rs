//! Transactions, and what to do when one's outcome is unknown.
//!
//! A transaction sent to a member that then died or froze may or may not have been
//! applied. Sending it again is safe only when it is *guarded*: one of its comparisons
//! is on a key it writes, so once applied, the comparison fails and a second copy
//! changes nothing (a compare-and-swap; Submit's "job key absent" is one). A guarded
//! transaction is therefore sent again to another member, and if that copy's comparisons
//! fail, the keys it puts are read back to tell "the first copy was applied" from
//! "someone else changed them" (as `JobLifecycle::resolve_claim` reads back a claim).
//! An unguarded one (a blind put) is sent again only if it surely never left.

use etcd_client::{CompareOp, GetOptions, PutOptions, TxnOp, TxnOpResponse};

use super::members::{Members, Retry};
use crate::store::{Compare, LeaseId, Op, StoreError, Txn, TxnOutcome};

/// The lease the transaction's puts use (for `LeaseNotFound`); 0 for none.
pub(super) fn lease_of(txn: &Txn) -> LeaseId {
    txn.ops
        .iter()
        .find_map(|op| match op {
            Op::Put { lease, .. } if *lease != 0 => Some(*lease),
            _ => None,
        })
        .unwrap_or(0)
}

/// How many times it may be sent: see the module's comment.
pub(super) fn retry_of(txn: &Txn) -> Retry {
    let written = |key: &str| {
        txn.ops.iter().any(|op| match op {
            Op::Put { key: k, .. } | Op::Delete { key: k } => k == key,
        })
    };
    let guarded = txn.compares.iter().any(|compare| match compare {
        Compare::ModRevision(key, _) | Compare::CreateRevision(key, _) => written(key),
    });
    if guarded { Retry::Idempotent } else { Retry::OnlyIfNotSent }
}

pub(super) fn to_etcd(txn: &Txn) -> etcd_client::Txn {
    let compares: Vec<etcd_client::Compare> = txn
        .compares
        .iter()
        .map(|compare| match compare {
            Compare::ModRevision(key, revision) => {
                etcd_client::Compare::mod_revision(key.as_str(), CompareOp::Equal, *revision)
            }
            Compare::CreateRevision(key, revision) => {
                etcd_client::Compare::create_revision(key.as_str(), CompareOp::Equal, *revision)
            }
        })
        .collect();
    let ops: Vec<TxnOp> = txn
        .ops
        .iter()
        .map(|op| match op {
            Op::Put { key, value, lease: 0 } => TxnOp::put(key.as_str(), value.clone(), None),
            Op::Put { key, value, lease } => {
                TxnOp::put(key.as_str(), value.clone(), Some(PutOptions::new().with_lease(*lease)))
            }
            Op::Delete { key } => TxnOp::delete(key.as_str(), None),
        })
        .collect();
    etcd_client::Txn::new().when(compares).and_then(ops)
}

/// After a guarded transaction was sent again and that copy's comparisons failed: was an
/// earlier copy applied? It was if a key it puts still holds exactly what it put (with its
/// lease), written after what the comparison on that key expected; the transaction's
/// revision is then that key's mod revision. Empty values prove nothing (many writes put
/// them), and a transaction that only deletes cannot be told.
///
/// A copy that was applied and whose keys were all changed again since reads as not
/// applied; with the revision-checked, content-unique records this store holds (job
/// records, claims with secrets, events), that takes another writer within milliseconds.
pub(super) async fn applied_earlier(
    members: &Members,
    txn: &Txn,
    timeout: std::time::Duration,
) -> Result<Earlier, StoreError> {
    let puts: Vec<(&str, &[u8], LeaseId)> = txn
        .ops
        .iter()
        .filter_map(|op| match op {
            Op::Put { key, value, lease } if !value.is_empty() => Some((key.as_str(), value.as_slice(), *lease)),
            _ => None,
        })
        .collect();
    if puts.is_empty() {
        return Ok(Earlier::Unclear);
    }
    // One read of every key, at one revision.
    let gets: Vec<TxnOp> = puts.iter().map(|(key, ..)| TxnOp::get(*key, None::<GetOptions>)).collect();
    let read = etcd_client::Txn::new().and_then(gets);
    let called = members
        .call(Retry::Idempotent, timeout, 0, |attempt| {
            let mut kv = attempt.clients.kv;
            let read = read.clone();
            async move { kv.txn(read).await }
        })
        .await?;
    let mut revisions = Vec::new();
    for ((key, value, lease), response) in puts.iter().zip(called.value.op_responses()) {
        let TxnOpResponse::Get(got) = response else { return Ok(Earlier::Unclear) };
        let Some(kv) = got.kvs().first() else { continue };
        if kv.value() != *value || kv.lease() != *lease {
            continue;
        }
        let unchanged_since_compare = txn.compares.iter().any(|compare| match compare {
            Compare::ModRevision(k, r) => k == key && kv.mod_revision() == *r,
            Compare::CreateRevision(k, r) => {
                k == key && *r != 0 && kv.create_revision() == *r && kv.mod_revision() == *r
            }
        });
        if !unchanged_since_compare {
            revisions.push(kv.mod_revision());
        }
    }
    revisions.sort_unstable();
    revisions.dedup();
    Ok(match revisions.as_slice() {
        [] => Earlier::NotApplied,
        [revision] => Earlier::Applied(*revision),
        _ => Earlier::Unclear,
    })
}

/// What [`applied_earlier`] found.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Earlier {
    /// An earlier copy was applied, at this revision.
    Applied(i64),
    NotApplied,
    Unclear,
}

/// The outcome of a transaction that was answered: `succeeded` and the revision.
pub(super) fn outcome(response: &etcd_client::TxnResponse) -> Result<TxnOutcome, StoreError> {
    let revision = response
        .header()
        .map(|header| header.revision())
        .ok_or_else(|| StoreError::Internal("etcd sent a response without a header".into()))?;
    Ok(TxnOutcome { succeeded: response.succeeded(), revision })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        local_etcd::LocalEtcd,
        store::{Store, etcd::EtcdStore},
    };

    const TIMEOUT: Duration = Duration::from_secs(5);

    #[test]
    fn only_a_txn_that_compares_a_key_it_writes_is_sent_twice() {
        let cas = Txn::new().when(Compare::absent("/dhw/a")).then(Op::put("/dhw/a", "v"));
        assert_eq!(retry_of(&cas), Retry::Idempotent);
        let delete = Txn::new().when(Compare::ModRevision("/dhw/a".into(), 3)).then(Op::delete("/dhw/a"));
        assert_eq!(retry_of(&delete), Retry::Idempotent);
        let blind = Txn::new().then(Op::put("/dhw/a", "v"));
        assert_eq!(retry_of(&blind), Retry::OnlyIfNotSent);
        // A comparison on another key guards nothing: the write can land twice.
        let elsewhere = Txn::new().when(Compare::absent("/dhw/b")).then(Op::put("/dhw/a", "v"));
        assert_eq!(retry_of(&elsewhere), Retry::OnlyIfNotSent);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_txn_applied_earlier_is_told_by_what_it_put() {
        let etcd = LocalEtcd::start().await.unwrap_or_else(|e| panic!("{e:#}"));
        let store = EtcdStore::connect(&[etcd.endpoint()]).await.expect("connect");
        let members = &store.members;

        let submit = Txn::new()
            .when(Compare::absent("/dhw/t/job"))
            .then(Op::put("/dhw/t/job", "record"))
            .then(Op::put("/dhw/t/flag", Vec::new()));
        let applied = store.txn(submit.clone()).await.unwrap();
        assert!(applied.succeeded);
        assert_eq!(applied_earlier(members, &submit, TIMEOUT).await.unwrap(), Earlier::Applied(applied.revision));

        // Another writer took the key first, with another value: not ours.
        let theirs = Txn::new().when(Compare::absent("/dhw/t/other")).then(Op::put("/dhw/t/other", "theirs"));
        assert!(store.txn(theirs).await.unwrap().succeeded);
        let ours = Txn::new().when(Compare::absent("/dhw/t/other")).then(Op::put("/dhw/t/other", "ours"));
        assert_eq!(applied_earlier(members, &ours, TIMEOUT).await.unwrap(), Earlier::NotApplied);

        // A key that already held the value when compared proves nothing.
        let job = store.get("/dhw/t/job").await.unwrap().unwrap();
        let same = Txn::new()
            .when(Compare::ModRevision("/dhw/t/job".into(), job.mod_revision))
            .then(Op::put("/dhw/t/job", "record"));
        assert_eq!(applied_earlier(members, &same, TIMEOUT).await.unwrap(), Earlier::NotApplied);

        // Deletes leave nothing to recognise.
        let delete =
            Txn::new().when(Compare::ModRevision("/dhw/t/job".into(), job.mod_revision)).then(Op::delete("/dhw/t/job"));
        assert_eq!(applied_earlier(members, &delete, TIMEOUT).await.unwrap(), Earlier::Unclear);
    }
}
