//! The store conformance suite on every backend: the embedded store (in a temp dir) and
//! a real etcd (started per test on free ports). Both must behave the same.

#[path = "store_conformance/suite.rs"]
mod suite;
mod support;

use deephardway_service::store::{SharedStore, embedded::EmbeddedStore, etcd::EtcdStore};
use suite::{Backend, shared};

struct Embedded {
    dir: tempfile::TempDir,
    store: Option<SharedStore>,
}

impl Embedded {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = shared(EmbeddedStore::open(dir.path()).await.unwrap());
        Embedded { dir, store: Some(store) }
    }
}

#[async_trait::async_trait]
impl Backend for Embedded {
    fn store(&self) -> SharedStore {
        self.store.clone().expect("open")
    }

    async fn restart(&mut self) -> Option<()> {
        // Dropping the last handle stops the writer and closes the file.
        let store = self.store.take().expect("open");
        assert_eq!(std::sync::Arc::strong_count(&store), 1, "the test still holds the store");
        drop(store);
        self.store = Some(shared(EmbeddedStore::open(self.dir.path()).await.expect("reopen")));
        Some(())
    }
}

struct Etcd {
    _server: support::etcd::EtcdServer,
    store: SharedStore,
}

impl Etcd {
    async fn new() -> Self {
        let server = support::etcd::EtcdServer::start().await;
        let store = shared(EtcdStore::connect(&[server.endpoint()]).await.unwrap());
        Etcd { _server: server, store }
    }
}

#[async_trait::async_trait]
impl Backend for Etcd {
    fn store(&self) -> SharedStore {
        self.store.clone()
    }

    async fn restart(&mut self) -> Option<()> {
        None // etcd's own durability is etcd's business
    }
}

macro_rules! conformance {
    ($backend:ident, $make:expr, [$($test:ident),* $(,)?]) => {
        mod $backend {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let mut backend = $make.await;
                    suite::$test(&mut backend).await;
                }
            )*
        }
    };
}

macro_rules! all_tests {
    ($backend:ident, $make:expr) => {
        conformance!(
            $backend,
            $make,
            [
                put_get_range_and_revisions,
                reverse_ranges_page_backwards,
                transactions_are_atomic_compare_and_swap,
                transactions_are_bounded_in_operations,
                transactions_under_contention_lose_no_update,
                watch_replays_history_then_follows_live,
                watch_from_zero_starts_at_the_next_write,
                watch_reports_a_transactions_changes_in_operation_order,
                concurrent_writers_are_seen_by_a_watcher_in_revision_order,
                lease_expiry_deletes_keys_and_watchers_see_it,
                keep_alive_holds_and_revoke_ends_a_lease,
                restart_keeps_everything,
            ]
        );
    };
}

all_tests!(embedded, Embedded::new());
all_tests!(etcd, Etcd::new());

/// The embedded store keeps a bounded history: a watch from before it fails clearly,
/// and one from inside it still replays.
#[tokio::test]
async fn embedded_watch_from_a_compacted_revision_fails() {
    use deephardway_service::store::{Op, Store, StoreError, Txn};
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open_with_history(dir.path(), 10).await.unwrap();
    for i in 0..50 {
        store.txn(Txn::new().then(Op::put(format!("/h/{i}"), "v"))).await.unwrap();
    }
    let current = store.revision().await.unwrap();
    match store.watch("/h/", 1).await {
        Err(StoreError::Compacted { requested: 1, oldest }) => assert!(oldest > 1 && oldest <= current - 9, "{oldest}"),
        Err(other) => panic!("expected Compacted, got {other:?}"),
        Ok(_) => panic!("expected Compacted, got a stream"),
    }
    let mut recent = store.watch("/h/", current - 5).await.expect("recent history is kept");
    use futures::StreamExt;
    let first = recent.next().await.unwrap().unwrap();
    assert_eq!(first.kv.mod_revision, current - 5);
}

/// History is bounded in bytes too: overwriting one key with large values (data O(1),
/// updates many) keeps the file at the live value plus the byte bound, however many
/// writes there are; a watch from a compacted revision fails with `Compacted` (watchers
/// re-list), one from the kept history still replays. With history bounded only in
/// revisions, 200 writes of 1 MiB kept 200 MiB of old values (a 520 MiB file).
#[tokio::test]
async fn embedded_history_is_bounded_in_bytes() {
    use deephardway_service::store::{Op, Store, StoreError, Txn, embedded::HistoryLimits};
    use futures::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let limits = HistoryLimits { revisions: 100_000, bytes: 8 << 20 };
    let store = EmbeddedStore::open_with_limits(dir.path(), limits).await.unwrap();
    let first = store.revision().await.unwrap() + 1;
    for i in 0..200u32 {
        let mut value = vec![0u8; 1 << 20];
        value[..4].copy_from_slice(&i.to_le_bytes());
        store.txn(Txn::new().then(Op::put("/big", value))).await.unwrap();
    }
    let size = std::fs::metadata(store.path()).unwrap().len();
    assert!(size <= 64 << 20, "store.redb is {} MiB", size >> 20);
    let current = store.revision().await.unwrap();
    match store.watch("/big", first).await {
        Err(StoreError::Compacted { oldest, .. }) => assert!(oldest > current - 8 && oldest <= current, "{oldest}"),
        Err(other) => panic!("expected Compacted, got {other:?}"),
        Ok(_) => panic!("expected Compacted, got a stream"),
    }
    let mut recent = store.watch("/big", current - 2).await.expect("recent history is kept");
    for revision in current - 2..=current {
        let event = recent.next().await.unwrap().unwrap();
        assert_eq!(event.kv.mod_revision, revision);
        assert_eq!(event.kv.value[..4], ((revision - first) as u32).to_le_bytes());
    }
}

/// A request past etcd's size limit (`--max-request-bytes`, 1.5 MiB by default) is refused
/// as too large, which clients see as INVALID_ARGUMENT, not as an internal error; and it
/// changes nothing.
#[tokio::test]
async fn etcd_refuses_a_request_too_large_clearly() {
    use deephardway_service::store::{Op, StoreError, Txn};
    let backend = Etcd::new().await;
    let store = backend.store();
    let before = store.revision().await.unwrap();
    for size in [2 << 20, 8 << 20] {
        match store.txn(Txn::new().then(Op::put("/big", vec![7u8; size]))).await {
            Err(e @ StoreError::TooLarge(_)) => {
                assert_eq!(tonic::Status::from(e).code(), tonic::Code::InvalidArgument);
            }
            other => panic!("{size} bytes: expected TooLarge, got {other:?}"),
        }
    }
    assert_eq!(store.revision().await.unwrap(), before);
    assert!(store.txn(Txn::new().then(Op::put("/big", vec![7u8; 1 << 20]))).await.unwrap().succeeded);
}

/// The file does not stay at its high-water mark: after a burst of large values that
/// were then deleted, with small ones written after them that stay, a store with
/// compaction gives most of the file back, where the same writes leave a store without
/// it near its peak.
#[tokio::test]
async fn embedded_file_is_compacted_when_mostly_free() {
    use deephardway_service::store::{
        Op, Store, Txn,
        embedded::{FileLimits, HistoryLimits},
    };
    let history = HistoryLimits { revisions: 1_000, bytes: 1 << 20 };
    let burst = async |file: FileLimits| {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open_with_file_limits(dir.path(), history, file).await.unwrap();
        // 16 MiB of large values, then small keys that stay, written after them (so the
        // space the large ones leave is inside the file, not at its end, which redb does
        // give back), then the large values go.
        for batch in 0..8 {
            let puts = (0..8).fold(Txn::new(), |txn, i| {
                txn.then(Op::put(format!("/big/{batch}/{i}"), vec![batch as u8; 256 << 10]))
            });
            store.txn(puts).await.unwrap();
        }
        for i in 0..64 {
            store.txn(Txn::new().then(Op::put(format!("/keep/{i}"), vec![1u8; 100]))).await.unwrap();
        }
        for batch in 0..8 {
            let deletes = (0..8).fold(Txn::new(), |txn, i| txn.then(Op::delete(format!("/big/{batch}/{i}"))));
            store.txn(deletes).await.unwrap();
        }
        // A few quiet commits after the burst, past the check interval.
        for i in 0..20 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            store.txn(Txn::new().then(Op::put("/small", format!("{i}")))).await.unwrap();
        }
        let size = std::fs::metadata(store.path()).unwrap().len();
        assert_eq!(store.get("/small").await.unwrap().unwrap().value, b"19", "the data survives compaction");
        store.close();
        (dir, size)
    };
    let never = FileLimits { compact_above: u64::MAX, ..FileLimits::default() };
    let (_kept, uncompacted) = burst(never).await;
    let eager = FileLimits { compact_above: 1 << 20, check_every: std::time::Duration::from_millis(50) };
    let (dir, compacted) = burst(eager).await;
    eprintln!("file after the burst: {} KiB without compaction, {} KiB with", uncompacted >> 10, compacted >> 10);
    assert!(uncompacted >= 8 << 20, "the burst should leave a large file: {uncompacted}");
    assert!(compacted * 4 <= uncompacted, "{compacted} bytes compacted vs {uncompacted}");
    // And a compacted file reopens with everything in it.
    let store = EmbeddedStore::open(dir.path()).await.unwrap();
    assert_eq!(store.get("/small").await.unwrap().unwrap().value, b"19");
}
