//! The replica's watch hub: subscribers whose stream ended are let go.

mod support;

use std::time::Duration;

use deephardway_service::hub::Hub;
use support::*;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_subscriptions_are_pruned_without_events() {
    let backend = Backend::embedded().await;
    let hub = Hub::start(backend.open().await, CancellationToken::new()).await.unwrap();
    // 2,000 WatchJob streams on a finished job (it gets no more events), then they end.
    let mut streams = Vec::new();
    for _ in 0..2_000 {
        streams.push(hub.subscribe("a-finished-job").await.expect("subscribed"));
    }
    let open = hub.subscribe("a-running-job").await.expect("subscribed");
    assert_eq!(hub.subscriber_count(), 2_001);
    drop(streams);
    let mut waited = Duration::ZERO;
    while hub.subscriber_count() > 1 {
        assert!(waited < Duration::from_secs(2), "{} subscribers left after 2 s", hub.subscriber_count());
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += Duration::from_millis(50);
    }
    // An open stream stays subscribed.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(hub.subscriber_count(), 1);
    drop(open);
}

/// The queue view: loaded from the store when the hub starts, then kept current from its
/// watch; a claim (entry deleted, claim put, in one transaction) counts as a start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_view_loads_the_queues_then_follows_the_watch() {
    use deephardway_service::{
        keys,
        store::{Op, Txn},
    };
    let backend = Backend::embedded().await;
    let store = backend.open().await;
    let (a, b, c) =
        (keys::queue_entry("m", 0, 1, "a"), keys::queue_entry("m", 0, 2, "b"), keys::queue_entry("m", 0, 3, "c"));
    store.txn(Txn::new().then(Op::put(a.clone(), "a")).then(Op::put(b.clone(), "b"))).await.unwrap();
    let hub = Hub::start(store.clone(), CancellationToken::new()).await.unwrap();
    let queues = hub.queues();
    assert_eq!(queues.status("b").expect("queued before the hub started").position, 1);
    store.txn(Txn::new().then(Op::put(c.clone(), "c"))).await.unwrap();
    for entry in [&a, &b] {
        let id = keys::last_segment(entry);
        let claim = Txn::new().then(Op::delete(entry.as_str())).then(Op::put(keys::claim(id), "{}"));
        store.txn(claim).await.unwrap();
    }
    // The view applies a transaction's events one by one: between b's entry going and its
    // claim arriving, c is first in line with one start seen. Wait for both starts.
    let mut waited = Duration::ZERO;
    while queues.status("c").is_none_or(|s| s.position != 0 || s.dispatch_rate == 0.0) {
        assert!(waited < Duration::from_secs(2), "two starts not seen: {:?}", queues.status("c"));
        tokio::time::sleep(Duration::from_millis(10)).await;
        waited += Duration::from_millis(10);
    }
    let status = queues.status("c").unwrap();
    assert!(status.estimated_start_time.is_some(), "a rate gives an estimate: {status:?}");
    assert!(queues.status("a").is_none() && queues.status("b").is_none());
}
