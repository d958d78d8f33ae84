//! The etcd store on a three-member cluster ([`LocalEtcdCluster`]) whose member in use
//! freezes (SIGSTOP) mid-request: a compare-and-swap is applied exactly once and reported
//! so, a blind write is not sent twice, and a watch moves to another member without a gap.
//! The service-level tests of the same failures are in cli/tests/etcd_cluster.rs.

use std::time::{Duration, Instant};

use deephardway_service::{
    local_etcd::cluster::LocalEtcdCluster,
    store::{Compare, Op, Store, StoreError, Txn, etcd::EtcdStore},
};
use futures::StreamExt;

/// A cluster and a store whose first (so preferred) endpoint is a follower, which is
/// returned to be frozen. The store has used it once, so its connection is open.
async fn frozen_follower_first() -> (LocalEtcdCluster, EtcdStore, usize) {
    let cluster = LocalEtcdCluster::start(3).await.unwrap_or_else(|e| panic!("{e:#}"));
    let leader = cluster.leader().await.expect("a leader");
    let mut order: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    order.insert(1, leader);
    let endpoints: Vec<String> = order.iter().map(|&i| cluster.endpoint(i)).collect();
    let store = EtcdStore::connect(&endpoints).await.expect("connect");
    store.get("/dhw/warm").await.expect("a read");
    (cluster, store, order[0])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compare_and_swap_sent_to_a_frozen_member_is_applied_once() {
    let (cluster, store, frozen) = frozen_follower_first().await;
    cluster.stop(frozen);
    let t = Instant::now();
    let txn = Txn::new().when(Compare::absent("/dhw/t/job")).then(Op::put("/dhw/t/job", "record"));
    let outcome = store.txn(txn).await.expect("sent again to another member");
    let took = t.elapsed();
    assert!(outcome.succeeded, "{outcome:?}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    cluster.cont(frozen);
    // Whatever the frozen member still held is now applied or dropped: either way the key
    // was written once, by the transaction reported.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let kv = store.get("/dhw/t/job").await.unwrap().expect("the key");
    assert_eq!((kv.create_revision, kv.mod_revision), (outcome.revision, outcome.revision));
    eprintln!("compare-and-swap through a frozen member: applied once in {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blind_write_sent_to_a_frozen_member_is_not_sent_twice() {
    let (cluster, store, frozen) = frozen_follower_first().await;
    cluster.stop(frozen);
    let t = Instant::now();
    let failed = store.txn(Txn::new().then(Op::put("/dhw/t/blind", "v"))).await;
    let took = t.elapsed();
    cluster.cont(frozen);
    assert!(matches!(failed, Err(StoreError::Unavailable(_))), "{failed:?}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    // The store has moved on: the next write goes to a healthy member.
    assert!(store.txn(Txn::new().then(Op::put("/dhw/t/next", "v"))).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_on_a_frozen_member_moves_without_a_gap() {
    let (cluster, store, frozen) = frozen_follower_first().await;
    let mut watch = store.watch("/dhw/t/", 0).await.expect("watch");
    cluster.stop(frozen);
    let mut written = Vec::new();
    for i in 0..10 {
        let key = format!("/dhw/t/{i}");
        written.push(store_put(&store, &key).await);
    }
    let t = Instant::now();
    let mut seen = Vec::new();
    while seen.len() < written.len() {
        let event = tokio::time::timeout(Duration::from_secs(5), watch.next())
            .await
            .expect("the watch delivers within 5 s")
            .expect("the watch goes on")
            .expect("no error");
        seen.push(event.kv.mod_revision);
    }
    cluster.cont(frozen);
    assert_eq!(seen, written, "every write, once, in order");
    eprintln!("watch moved off a frozen member: {} events within {:?}", seen.len(), t.elapsed());
}

async fn store_put(store: &EtcdStore, key: &str) -> i64 {
    let txn = Txn::new().when(Compare::absent(key)).then(Op::put(key, "v"));
    let outcome = store.txn(txn).await.expect("a write");
    assert!(outcome.succeeded);
    outcome.revision
}
