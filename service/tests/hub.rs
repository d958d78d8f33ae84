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
