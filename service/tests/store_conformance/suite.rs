//! The behaviour every `Store` must have, written once; `store_conformance.rs` runs it on
//! each backend. etcd is the reference: where a test and etcd disagree, the test is wrong.

use std::{collections::HashSet, sync::Arc, time::Duration};

use deephardway_service::store::{Compare, EventKind, Op, SharedStore, StoreError, Txn, WatchEvent, WatchStream};
use futures::StreamExt;

/// A store under test. `restart` closes and reopens it on the same data, where the
/// backend can (the embedded store); others return `None`.
#[async_trait::async_trait]
pub trait Backend: Send + Sync {
    fn store(&self) -> SharedStore;
    async fn restart(&mut self) -> Option<()>;
}

async fn put(store: &SharedStore, key: &str, value: &str) -> i64 {
    store.txn(Txn::new().then(Op::put(key, value))).await.expect("put").revision
}

async fn next(stream: &mut WatchStream) -> WatchEvent {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("a watch event within 10 s")
        .expect("stream open")
        .expect("no error")
}

/// Waits up to `within` for `key` to disappear.
async fn gone_within(store: &SharedStore, key: &str, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if store.get(key).await.expect("get").is_none() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

pub async fn put_get_range_and_revisions(backend: &mut dyn Backend) {
    let store = backend.store();
    let start = store.revision().await.unwrap();
    let r1 = put(&store, "/t/a/1", "one").await;
    let r2 = put(&store, "/t/a/2", "two").await;
    let r3 = put(&store, "/t/b/1", "three").await;
    assert!(start < r1 && r1 < r2 && r2 < r3, "revisions grow: {start} {r1} {r2} {r3}");
    let r4 = put(&store, "/t/a/1", "uno").await;

    let a1 = store.get("/t/a/1").await.unwrap().expect("present");
    assert_eq!(a1.value, b"uno");
    assert_eq!((a1.create_revision, a1.mod_revision), (r1, r4));
    assert!(store.get("/t/a/3").await.unwrap().is_none());

    let range = store.range("/t/a/", 0).await.unwrap();
    let keys: Vec<&str> = range.kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["/t/a/1", "/t/a/2"], "prefix, in key order");
    assert_eq!(range.revision, r4);
    let limited = store.range("/t/", 2).await.unwrap();
    assert_eq!(limited.kvs.len(), 2);
    assert_eq!(store.count("/t/").await.unwrap(), 3);
    assert_eq!(store.count("/nothing/").await.unwrap(), 0);
    assert_eq!(store.revision().await.unwrap(), r4);

    // Deleting bumps the revision; deleting a missing key changes nothing.
    let r5 = store.txn(Txn::new().then(Op::delete("/t/a/2"))).await.unwrap().revision;
    assert!(r5 > r4);
    let r6 = store.txn(Txn::new().then(Op::delete("/t/a/2"))).await.unwrap().revision;
    assert_eq!(r6, r5, "a no-op delete does not bump the revision");
    // A re-created key gets a new create revision.
    let r7 = put(&store, "/t/a/2", "again").await;
    assert_eq!(store.get("/t/a/2").await.unwrap().unwrap().create_revision, r7);
}

pub async fn reverse_ranges_page_backwards(backend: &mut dyn Backend) {
    let store = backend.store();
    for i in 0..25 {
        put(&store, &format!("/rev/{i:03}"), &i.to_string()).await;
    }
    put(&store, "/rew", "outside the prefix").await;
    put(&store, "/re", "outside too").await;
    let mut seen = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let page = store.range_rev("/rev/", before.as_deref(), 10).await.unwrap();
        seen.extend(page.kvs.iter().map(|kv| kv.key.clone()));
        match page.kvs.last() {
            Some(last) if page.kvs.len() == 10 => before = Some(last.key.clone()),
            _ => break,
        }
    }
    let expected: Vec<String> = (0..25).rev().map(|i| format!("/rev/{i:03}")).collect();
    assert_eq!(seen, expected, "newest first, every key once, nothing outside the prefix");
    let all = store.range_rev("/rev/", None, 0).await.unwrap();
    assert_eq!(all.kvs.len(), 25);
    assert_eq!(all.kvs[0].value, b"24");
}

/// Both stores take at most `MAX_TXN_OPS` operations in one transaction (etcd's default
/// `--max-txn-ops`); one more is refused and changes nothing, and writers that can grow
/// past the bound split their writes.
pub async fn transactions_are_bounded_in_operations(backend: &mut dyn Backend) {
    use deephardway_service::store::MAX_TXN_OPS;
    let store = backend.store();
    let ops = |n: usize| (0..n).fold(Txn::new(), |txn, i| txn.then(Op::put(format!("/ops/{i:03}"), "v")));
    let before = store.revision().await.unwrap();
    let refused = store.txn(ops(MAX_TXN_OPS + 1)).await;
    assert!(refused.is_err(), "{} operations were taken: {refused:?}", MAX_TXN_OPS + 1);
    assert_eq!(store.revision().await.unwrap(), before, "a refused transaction changes nothing");
    assert!(store.range("/ops/", 0).await.unwrap().kvs.is_empty());
    assert!(store.txn(ops(MAX_TXN_OPS)).await.unwrap().succeeded);
    assert_eq!(store.range("/ops/", 0).await.unwrap().kvs.len(), MAX_TXN_OPS);
}

pub async fn transactions_are_atomic_compare_and_swap(backend: &mut dyn Backend) {
    let store = backend.store();
    let r = put(&store, "/t/cas", "0").await;
    // A failed compare changes nothing, even the keys its ops would have touched.
    let failed = store
        .txn(
            Txn::new()
                .when(Compare::ModRevision("/t/cas".into(), r - 1))
                .then(Op::put("/t/cas", "x"))
                .then(Op::put("/t/other", "y")),
        )
        .await
        .unwrap();
    assert!(!failed.succeeded);
    assert_eq!(failed.revision, r);
    assert!(store.get("/t/other").await.unwrap().is_none());
    // All ops of a successful txn share one revision.
    let ok = store
        .txn(
            Txn::new()
                .when(Compare::ModRevision("/t/cas".into(), r))
                .when(Compare::absent("/t/new"))
                .then(Op::put("/t/cas", "1"))
                .then(Op::put("/t/new", "n")),
        )
        .await
        .unwrap();
    assert!(ok.succeeded);
    assert_eq!(ok.revision, r + 1);
    assert_eq!(store.get("/t/new").await.unwrap().unwrap().mod_revision, ok.revision);
    // create_revision compares: absent now fails.
    let again = store.txn(Txn::new().when(Compare::absent("/t/new")).then(Op::put("/t/new", "m"))).await.unwrap();
    assert!(!again.succeeded);
    let created = store.get("/t/new").await.unwrap().unwrap().create_revision;
    let by_create = store
        .txn(Txn::new().when(Compare::CreateRevision("/t/new".into(), created)).then(Op::delete("/t/new")))
        .await
        .unwrap();
    assert!(by_create.succeeded);
}

pub async fn transactions_under_contention_lose_no_update(backend: &mut dyn Backend) {
    let store = backend.store();
    put(&store, "/t/counter", "0").await;
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut conflicts = 0;
                for _ in 0..20 {
                    loop {
                        let kv = store.get("/t/counter").await.unwrap().unwrap();
                        let n: u64 = std::str::from_utf8(&kv.value).unwrap().parse().unwrap();
                        let txn = Txn::new()
                            .when(Compare::ModRevision(kv.key.clone(), kv.mod_revision))
                            .then(Op::put("/t/counter", (n + 1).to_string()));
                        if store.txn(txn).await.unwrap().succeeded {
                            break;
                        }
                        conflicts += 1;
                    }
                }
                conflicts
            })
        })
        .collect();
    let mut conflicts = 0;
    for task in tasks {
        conflicts += task.await.unwrap();
    }
    let value = store.get("/t/counter").await.unwrap().unwrap().value;
    assert_eq!(String::from_utf8(value).unwrap(), "320", "every increment counted once ({conflicts} retries)");
}

pub async fn watch_replays_history_then_follows_live(backend: &mut dyn Backend) {
    let store = backend.store();
    let first = put(&store, "/w/a", "1").await;
    put(&store, "/w/b", "2").await;
    put(&store, "/elsewhere", "x").await;
    store.txn(Txn::new().then(Op::delete("/w/a"))).await.unwrap();

    let mut watch = store.watch("/w/", first).await.expect("watch from an old revision");
    let mut seen = Vec::new();
    for _ in 0..3 {
        let e = next(&mut watch).await;
        seen.push((e.kind, e.kv.key.clone(), e.kv.mod_revision));
    }
    assert_eq!(seen[0].0, EventKind::Put);
    assert_eq!(seen[0].1, "/w/a");
    assert_eq!(seen[0].2, first);
    assert_eq!((seen[1].0, seen[1].1.as_str()), (EventKind::Put, "/w/b"));
    assert_eq!((seen[2].0, seen[2].1.as_str()), (EventKind::Delete, "/w/a"));
    // Then live, with no gap and no repeat.
    let mut expected = Vec::new();
    for i in 0..50 {
        expected.push(put(&store, &format!("/w/live/{i:02}"), "v").await);
        put(&store, "/elsewhere", "y").await;
    }
    for want in expected {
        let e = next(&mut watch).await;
        assert_eq!(e.kv.mod_revision, want);
        assert!(e.kv.key.starts_with("/w/"));
    }
    // Values arrive with puts.
    put(&store, "/w/value", "hello").await;
    let e = next(&mut watch).await;
    assert_eq!((e.kv.key.as_str(), e.kv.value.as_slice()), ("/w/value", b"hello".as_slice()));
}

pub async fn watch_from_zero_starts_at_the_next_write(backend: &mut dyn Backend) {
    let store = backend.store();
    put(&store, "/z/old", "1").await;
    let mut watch = store.watch("/z/", 0).await.unwrap();
    let r = put(&store, "/z/new", "2").await;
    let e = next(&mut watch).await;
    assert_eq!((e.kv.key.as_str(), e.kv.mod_revision), ("/z/new", r));
}

/// A transaction's changes reach a watcher in the order of its operations, not of its
/// keys: the service puts a job's queue entry first so that a replica that has seen any
/// change of the submit has the entry (`JobLifecycle::place_in_line`).
pub async fn watch_reports_a_transactions_changes_in_operation_order(backend: &mut dyn Backend) {
    let store = backend.store();
    put(&store, "/o/m", "old").await;
    let mut watch = store.watch("/o/", 0).await.unwrap();
    let txn = Txn::new()
        .then(Op::put("/o/z", "1"))
        .then(Op::delete("/o/m"))
        .then(Op::put("/o/a", "2"))
        .then(Op::put("/o/q", "3"));
    store.txn(txn).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..4 {
        let e = next(&mut watch).await;
        seen.push((e.kind, e.kv.key));
    }
    let expected = [
        (EventKind::Put, "/o/z".to_string()),
        (EventKind::Delete, "/o/m".to_string()),
        (EventKind::Put, "/o/a".to_string()),
        (EventKind::Put, "/o/q".to_string()),
    ];
    assert_eq!(seen, expected);
}

pub async fn concurrent_writers_are_seen_by_a_watcher_in_revision_order(backend: &mut dyn Backend) {
    let store = backend.store();
    let mut watch = store.watch("/c/", 0).await.unwrap();
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..25 {
                    store.txn(Txn::new().then(Op::put(format!("/c/{w}/{i}"), "v"))).await.unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let mut last = 0;
    let mut keys = HashSet::new();
    for _ in 0..200 {
        let e = next(&mut watch).await;
        assert!(e.kv.mod_revision > last, "revision order");
        last = e.kv.mod_revision;
        keys.insert(e.kv.key);
    }
    assert_eq!(keys.len(), 200, "every write seen once");
}

pub async fn lease_expiry_deletes_keys_and_watchers_see_it(backend: &mut dyn Backend) {
    let store = backend.store();
    let lease = store.lease_grant(Duration::from_secs(1)).await.unwrap();
    let mut watch = store.watch("/l/", 0).await.unwrap();
    store
        .txn(Txn::new().then(Op::put_with_lease("/l/a", "1", lease)).then(Op::put_with_lease("/l/b", "2", lease)))
        .await
        .unwrap();
    assert_eq!(store.get("/l/a").await.unwrap().unwrap().lease, lease);
    assert!(gone_within(&store, "/l/a", Duration::from_secs(6)).await, "key outlived its lease");
    assert!(store.get("/l/b").await.unwrap().is_none());
    let mut deleted = HashSet::new();
    for _ in 0..4 {
        let e = next(&mut watch).await;
        if e.kind == EventKind::Delete {
            deleted.insert(e.kv.key);
        }
    }
    assert_eq!(deleted, HashSet::from(["/l/a".to_string(), "/l/b".to_string()]));
    // Expired is gone for good.
    assert!(matches!(store.lease_keep_alive(lease).await, Err(StoreError::LeaseNotFound(_))));
    let put_on_dead =
        store.txn(Txn::new().then(Op::put("/l/ok", "x")).then(Op::put_with_lease("/l/c", "3", lease))).await;
    assert!(matches!(put_on_dead, Err(StoreError::LeaseNotFound(_))), "{put_on_dead:?}");
    assert!(store.get("/l/ok").await.unwrap().is_none(), "a failed txn changes nothing");
}

pub async fn keep_alive_holds_and_revoke_ends_a_lease(backend: &mut dyn Backend) {
    let store = backend.store();
    let lease = store.lease_grant(Duration::from_secs(2)).await.unwrap();
    store.txn(Txn::new().then(Op::put_with_lease("/k/held", "1", lease))).await.unwrap();
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        store.lease_keep_alive(lease).await.unwrap();
    }
    assert!(store.get("/k/held").await.unwrap().is_some(), "kept alive for 4 s past a 2 s TTL");
    let mut watch = store.watch("/k/", 0).await.unwrap();
    store.lease_revoke(lease).await.unwrap();
    assert!(store.get("/k/held").await.unwrap().is_none(), "revoke deletes at once");
    let e = next(&mut watch).await;
    assert_eq!((e.kind, e.kv.key.as_str()), (EventKind::Delete, "/k/held"));
    store.lease_revoke(lease).await.expect("revoking twice is fine");
}

/// Only for backends that can restart: data, revision and leases survive it.
pub async fn restart_keeps_everything(backend: &mut dyn Backend) {
    let store = backend.store();
    put(&store, "/r/a", "1").await;
    let lease = store.lease_grant(Duration::from_secs(2)).await.unwrap();
    let r = store.txn(Txn::new().then(Op::put_with_lease("/r/leased", "2", lease))).await.unwrap().revision;
    drop(store);
    if backend.restart().await.is_none() {
        return;
    }
    let store = backend.store();
    assert_eq!(store.revision().await.unwrap(), r);
    assert_eq!(store.get("/r/a").await.unwrap().unwrap().value, b"1");
    let mut watch = store.watch("/r/", r).await.expect("history survives");
    assert_eq!(next(&mut watch).await.kv.key, "/r/leased");
    // The lease of a process that is gone still expires after the restart.
    assert!(gone_within(&store, "/r/leased", Duration::from_secs(6)).await);
    let e = next(&mut watch).await;
    assert_eq!((e.kind, e.kv.key.as_str()), (EventKind::Delete, "/r/leased"));
    assert!(put(&store, "/r/b", "3").await > r);
}

/// Keeps `Arc` in scope for backends.
pub fn shared<S: deephardway_service::store::Store>(store: S) -> SharedStore {
    Arc::new(store)
}
