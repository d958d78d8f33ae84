//! Scratch checks of the etcd store against a real etcd, until the conformance suite
//! covers etcd. Delete once `store_conformance` runs on etcd.

#[allow(dead_code)]
#[path = "support/etcd.rs"]
mod etcd_support;

use std::time::{Duration, Instant};

use deephardway_service::store::{
    self, etcd::EtcdStore, Compare, EventKind, Op, Store, StoreError, Txn,
};
use etcd_support::EtcdServer;
use futures::StreamExt;

async fn open() -> (EtcdServer, EtcdStore) {
    let server = EtcdServer::start().await;
    let store = EtcdStore::connect(&[server.endpoint()]).await.expect("connect");
    (server, store)
}

#[tokio::test]
async fn kv_and_txn() {
    let (_server, s) = open().await;
    let r0 = s.revision().await.unwrap();
    assert!(s.get("/a/1").await.unwrap().is_none());
    let r1 = store::put(&s, "/a/1", b"one".to_vec()).await.unwrap();
    assert_eq!(r1, r0 + 1);
    let r2 = store::put(&s, "/a/2", b"two".to_vec()).await.unwrap();
    let r3 = store::put(&s, "/a/1", b"uno".to_vec()).await.unwrap();
    store::put(&s, "/b/1", b"other".to_vec()).await.unwrap();
    let kv = s.get("/a/1").await.unwrap().unwrap();
    assert_eq!((kv.value.as_slice(), kv.create_revision, kv.mod_revision, kv.lease), (&b"uno"[..], r1, r3, 0));
    let range = s.range("/a/", 0).await.unwrap();
    assert_eq!(range.kvs.iter().map(|kv| kv.key.as_str()).collect::<Vec<_>>(), ["/a/1", "/a/2"]);
    assert_eq!(range.revision, r3 + 1);
    let range = s.range("/a/", 1).await.unwrap();
    assert_eq!(range.kvs.len(), 1);
    assert_eq!(range.kvs[0].mod_revision, r3);
    assert_eq!(s.count("/a/").await.unwrap(), 2);
    assert_eq!(s.count("").await.unwrap(), 3);
    assert_eq!(s.range("", 0).await.unwrap().kvs.len(), 3);

    // Compare-and-swap.
    let failed = s.txn(Txn::new().when(Compare::absent("/a/1")).then(Op::put("/a/1", "x"))).await.unwrap();
    assert!(!failed.succeeded);
    assert_eq!(failed.revision, r3 + 1);
    let ok = s
        .txn(
            Txn::new()
                .when(Compare::ModRevision("/a/1".into(), r3))
                .when(Compare::CreateRevision("/a/2".into(), r2))
                .when(Compare::absent("/a/3"))
                .then(Op::delete("/a/1"))
                .then(Op::put("/a/3", "three")),
        )
        .await
        .unwrap();
    assert!(ok.succeeded);
    assert_eq!(ok.revision, r3 + 2);
    assert!(s.get("/a/1").await.unwrap().is_none());
    assert_eq!(s.get("/a/3").await.unwrap().unwrap().mod_revision, ok.revision);
    let stale = s.txn(Txn::new().when(Compare::ModRevision("/a/2".into(), r1)).then(Op::delete("/a/2"))).await.unwrap();
    assert!(!stale.succeeded);
    // Deleting a missing key changes nothing.
    let noop = store::delete(&s, "/nothing").await.unwrap();
    assert_eq!(noop, ok.revision);
    assert_eq!(s.name(), "etcd");
}

#[tokio::test]
async fn watch_history_and_live() {
    let (_server, s) = open().await;
    let r1 = store::put(&s, "/w/1", b"a".to_vec()).await.unwrap();
    store::put(&s, "/x/1", b"elsewhere".to_vec()).await.unwrap();
    let r2 = store::delete(&s, "/w/1").await.unwrap();

    let mut live = s.watch("/w/", 0).await.unwrap();
    let mut history = s.watch("/w/", r1).await.unwrap();
    let e = history.next().await.unwrap().unwrap();
    assert_eq!((e.kind, e.kv.key.as_str(), e.kv.mod_revision, e.kv.value.as_slice()), (EventKind::Put, "/w/1", r1, &b"a"[..]));
    let e = history.next().await.unwrap().unwrap();
    assert_eq!((e.kind, e.kv.key.as_str(), e.kv.mod_revision, e.kv.value.len()), (EventKind::Delete, "/w/1", r2, 0));

    let r3 = s.txn(Txn::new().then(Op::put("/w/2", "b")).then(Op::put("/w/3", "c"))).await.unwrap().revision;
    for stream in [&mut live, &mut history] {
        for key in ["/w/2", "/w/3"] {
            let e = tokio::time::timeout(Duration::from_secs(5), stream.next()).await.unwrap().unwrap().unwrap();
            assert_eq!((e.kind, e.kv.key.as_str(), e.kv.mod_revision, e.kv.create_revision), (EventKind::Put, key, r3, r3));
        }
    }
    // A watch from a future revision waits for it.
    let mut future = s.watch("/w/", r3 + 2).await.unwrap();
    store::put(&s, "/w/4", b"skipped".to_vec()).await.unwrap();
    let r5 = store::put(&s, "/w/5", b"seen".to_vec()).await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(5), future.next()).await.unwrap().unwrap().unwrap();
    assert_eq!((e.kv.key.as_str(), e.kv.mod_revision), ("/w/5", r5));
}

#[tokio::test]
async fn compacted_start() {
    let (server, s) = open().await;
    let r1 = store::put(&s, "/c/1", b"a".to_vec()).await.unwrap();
    let r2 = store::put(&s, "/c/1", b"b".to_vec()).await.unwrap();
    store::put(&s, "/c/1", b"c".to_vec()).await.unwrap();
    let mut client = etcd_client::Client::connect([server.endpoint()], None).await.unwrap();
    client.compact(r2, Some(etcd_client::CompactionOptions::new().with_physical())).await.unwrap();
    match s.watch("/c/", r1).await {
        Err(StoreError::Compacted { requested, oldest }) => assert_eq!((requested, oldest), (r1, r2)),
        Err(e) => panic!("expected Compacted, got {e}"),
        Ok(_) => panic!("expected Compacted, got a stream"),
    }
    let mut ok = s.watch("/c/", r2).await.unwrap();
    assert_eq!(ok.next().await.unwrap().unwrap().kv.mod_revision, r2);
}

#[tokio::test]
async fn leases() {
    let (_server, s) = open().await;
    let lease = s.lease_grant(Duration::from_millis(1100)).await.unwrap();
    let mut watch = s.watch("/l/", 0).await.unwrap();
    s.txn(Txn::new().then(Op::put_with_lease("/l/1", "held", lease))).await.unwrap();
    assert_eq!(s.get("/l/1").await.unwrap().unwrap().lease, lease);
    // Kept alive past its TTL (2 s, rounded up from 1.1 s).
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        s.lease_keep_alive(lease).await.unwrap();
    }
    assert!(s.get("/l/1").await.unwrap().is_some());
    // Then left to expire: the key goes, and watchers see it go.
    let started = Instant::now();
    let e = watch.next().await.unwrap().unwrap();
    assert_eq!(e.kind, EventKind::Put);
    let e = tokio::time::timeout(Duration::from_secs(10), watch.next()).await.unwrap().unwrap().unwrap();
    assert_eq!((e.kind, e.kv.key.as_str()), (EventKind::Delete, "/l/1"));
    eprintln!("lease expired {:?} after the last keep-alive", started.elapsed());
    assert!(s.get("/l/1").await.unwrap().is_none());
    assert!(matches!(s.lease_keep_alive(lease).await, Err(StoreError::LeaseNotFound(id)) if id == lease));
    assert!(matches!(
        s.txn(Txn::new().then(Op::put_with_lease("/l/2", "x", lease))).await,
        Err(StoreError::LeaseNotFound(id)) if id == lease
    ));
    s.lease_revoke(lease).await.unwrap();

    // Revoking deletes the keys now.
    let other = s.lease_grant(Duration::from_secs(30)).await.unwrap();
    s.txn(Txn::new().then(Op::put_with_lease("/l/3", "y", other))).await.unwrap();
    s.lease_keep_alive(other).await.unwrap();
    s.lease_revoke(other).await.unwrap();
    assert!(s.get("/l/3").await.unwrap().is_none());
    assert!(matches!(s.lease_keep_alive(other).await, Err(StoreError::LeaseNotFound(_))));
    s.lease_revoke(12345).await.unwrap();
}

#[tokio::test]
async fn unreachable_and_lost() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let started = Instant::now();
    match EtcdStore::connect(&[format!("http://127.0.0.1:{port}")]).await {
        Err(StoreError::Unavailable(message)) => {
            assert!(message.contains(&port.to_string()), "{message}");
            eprintln!("unreachable after {:?}: {message}", started.elapsed());
        }
        Err(e) => panic!("expected Unavailable, got {e}"),
        Ok(_) => panic!("connected to nothing"),
    }

    let (server, s) = open().await;
    let mut watch = s.watch("/", 0).await.unwrap();
    drop(server);
    let end = tokio::time::timeout(Duration::from_secs(30), watch.next()).await.expect("watch ends");
    assert!(matches!(end, Some(Err(StoreError::Unavailable(_)))), "{end:?}");
    let started = Instant::now();
    let got = s.revision().await;
    assert!(matches!(got, Err(StoreError::Unavailable(_))), "{got:?}");
    eprintln!("request to a dead etcd failed after {:?}: {got:?}", started.elapsed());
}
