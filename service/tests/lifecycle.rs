//! The job state machine's guarantees, driven directly on a real store: fencing of
//! stale workers, and the attempt limit. (The RPC-level behaviour is in end_to_end.rs.)

mod support;

use std::time::Duration;

use deephardway::v1::{DiagnosticResult, JobProgress, JobResult, JobState, job_event::Event};
use deephardway_service::{
    jobs::{JobLifecycle, Rejected},
    keys,
    store::{SharedStore, Txn},
};
use support::*;

fn result() -> Event {
    Event::Result(JobResult {
        value: Some(deephardway::v1::job_result::Value::Diagnostic(DiagnosticResult { steps: 1, echo: String::new() })),
    })
}

async fn on_both(test: impl AsyncFn(SharedStore)) {
    for backend in [Backend::embedded().await, Backend::etcd().await] {
        test(backend.open().await).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_worker_cannot_overwrite_a_rerun() {
    on_both(async |store: SharedStore| {
        let lifecycle = JobLifecycle::new(store.clone(), test_config());
        let (a, b) = (diagnostic_worker("a"), diagnostic_worker("b"));
        let lease_a = connect_worker(&store, &a).await;
        let lease_b = connect_worker(&store, &b).await;
        let (job, _) =
            lifecycle.submit(diagnostic(1, 1), "", &deephardway_service::auth::Caller::anonymous()).await.unwrap();

        let first = lifecycle.claim(&queue_head(&store).await, &a, lease_a).await.unwrap().expect("claimed by a");
        // a is presumed dead: its lease goes, the job goes back in line, b takes it.
        store.lease_revoke(lease_a).await.unwrap();
        lifecycle.recover_orphan(&job.id).await.unwrap();
        assert_eq!(lifecycle.get(&job.id).await.unwrap().state, JobState::Queued as i32);
        let second = lifecycle.claim(&queue_head(&store).await, &b, lease_b).await.unwrap().expect("claimed by b");
        assert_ne!(first.fence, second.fence);

        // a comes back from the dead with progress and a result: both are refused.
        let progress = Event::Progress(JobProgress { fraction: 0.9, ..Default::default() });
        assert!(matches!(lifecycle.report(&job.id, &first.fence, vec![progress]).await, Err(Rejected::StaleFence)));
        assert!(matches!(lifecycle.report(&job.id, &first.fence, vec![result()]).await, Err(Rejected::StaleFence)));
        let current = lifecycle.get(&job.id).await.unwrap();
        assert_eq!((current.state, current.worker_id.as_str(), current.attempts), (JobState::Running as i32, "b", 2));

        // b's result is accepted, once.
        let done = lifecycle.report(&job.id, &second.fence, vec![result()]).await.unwrap();
        assert_eq!(done.state, JobState::Succeeded as i32);
        assert!(matches!(lifecycle.report(&job.id, &second.fence, vec![result()]).await, Err(Rejected::Finished)));
        let (events, _) = lifecycle.events(&job.id).await.unwrap();
        assert_eq!(events.iter().filter(|e| matches!(e.event, Some(Event::Result(_)))).count(), 1);
        assert_contiguous(&events, 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_fails_after_its_last_attempt() {
    on_both(async |store: SharedStore| {
        let lifecycle = JobLifecycle::new(store.clone(), test_config());
        let w = diagnostic_worker("w");
        // Some worker must serve the model for a submit to be accepted.
        connect_worker(&store, &diagnostic_worker("registry")).await;
        let mut request = diagnostic(1, 1);
        request.max_attempts = 2;
        let (job, _) = lifecycle.submit(request, "", &deephardway_service::auth::Caller::anonymous()).await.unwrap();
        for attempt in 1..=2 {
            let lease = connect_worker(&store, &w).await;
            let claimed = lifecycle.claim(&queue_head(&store).await, &w, lease).await.unwrap().expect("claimed");
            assert_eq!(claimed.job.attempts, attempt);
            store.lease_revoke(lease).await.unwrap();
            lifecycle.recover_orphan(&job.id).await.unwrap();
        }
        let job = lifecycle.get(&job.id).await.unwrap();
        assert_eq!(job.state, JobState::Failed as i32);
        let deephardway::errors::RpcStatus { code, message, .. } = job.error.unwrap();
        assert_eq!(code, tonic::Code::Unavailable as i32);
        assert!(message.contains("attempt 2 of 2"), "{message}");
        assert_eq!(store.count(keys::QUEUE).await.unwrap(), 0, "not left in line");
    })
    .await;
}

/// A report write whose outcome was unknown is tried again with the job's last event
/// from before it: if the first try landed, the retry adds nothing (a streamed text must
/// not repeat a chunk); if it did not, the retry writes it; one with the result after a
/// try that landed finds the job finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_report_that_landed_is_not_written_twice() {
    on_both(async |store: SharedStore| {
        use deephardway::v1::JobOutput;
        let lifecycle = JobLifecycle::new(store.clone(), test_config());
        let w = diagnostic_worker("w");
        let lease = connect_worker(&store, &w).await;
        let (job, _) =
            lifecycle.submit(diagnostic(1, 1), "", &deephardway_service::auth::Caller::anonymous()).await.unwrap();
        let claimed = lifecycle.claim(&queue_head(&store).await, &w, lease).await.unwrap().expect("claimed");
        let before = claimed.job.last_seq;
        let chunk = vec![
            Event::Output(JobOutput { text: "Hello".into() }),
            Event::Progress(JobProgress { fraction: 0.5, ..Default::default() }),
        ];
        // The first try landed; its answer was lost; the retry adds nothing.
        let landed = lifecycle.report(&job.id, &claimed.fence, chunk.clone()).await.unwrap();
        assert_eq!(landed.last_seq, before + 2);
        let retried = lifecycle.report_after(&job.id, &claimed.fence, Some(before), chunk.clone()).await.unwrap();
        assert_eq!(retried.last_seq, before + 2, "the retry of a write that landed wrote again");
        // A retry of a write that did not land is written.
        let next = vec![Event::Output(JobOutput { text: ", world".into() })];
        let written = lifecycle.report_after(&job.id, &claimed.fence, Some(before + 2), next).await.unwrap();
        assert_eq!(written.last_seq, before + 3);
        // The result landed, then its retry: the job is finished, with one result.
        lifecycle.report(&job.id, &claimed.fence, vec![result()]).await.unwrap();
        let again = lifecycle.report_after(&job.id, &claimed.fence, Some(before + 3), vec![result()]).await;
        assert!(matches!(again, Err(Rejected::Finished)), "{again:?}");
        let (events, _) = lifecycle.events(&job.id).await.unwrap();
        assert_contiguous(&events, 1);
        let text: String = events
            .iter()
            .filter_map(|e| match &e.event {
                Some(Event::Output(o)) => Some(o.text.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(text, "Hello, world");
        assert_eq!(events.iter().filter(|e| matches!(e.event, Some(Event::Result(_)))).count(), 1);
    })
    .await;
}

/// Counts the store transactions in flight at once, each held a moment (as a commit
/// takes), while `counting` is on.
#[derive(Clone, Default)]
struct CountsOverlap {
    counting: std::sync::Arc<std::sync::atomic::AtomicBool>,
    now: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    most: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl support::hooked::TxnHook for CountsOverlap {
    fn hold(&self, _txn: &Txn) -> Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>> {
        use std::sync::atomic::Ordering::SeqCst;
        if !self.counting.load(SeqCst) {
            return None;
        }
        let in_flight = self.now.fetch_add(1, SeqCst) + 1;
        self.most.fetch_max(in_flight, SeqCst);
        let now = self.now.clone();
        Some(Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            now.fetch_sub(1, SeqCst);
        }))
    }
}

/// Retention removes finished jobs with their events and requests, and its writes overlap
/// so that the store commits them together: removed one after another (two commits a
/// job), a service that finished jobs faster than a few hundred a second outran its
/// retention, and the store grew without bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_removes_finished_jobs_with_writes_that_overlap() {
    on_both(async |inner: SharedStore| {
        let hook = CountsOverlap::default();
        let store: SharedStore = std::sync::Arc::new(support::hooked::Hooked { inner, hook: hook.clone() });
        let config = deephardway_service::ServiceConfig { retention: Duration::ZERO, ..test_config() };
        let lifecycle = JobLifecycle::new(store.clone(), config);
        let w = diagnostic_worker("w");
        let lease = connect_worker(&store, &w).await;
        const JOBS: usize = 100;
        for _ in 0..JOBS {
            let caller = deephardway_service::auth::Caller::anonymous();
            let (job, _) = lifecycle.submit(diagnostic(1, 1), "", &caller).await.unwrap();
            let claimed = lifecycle.claim(&queue_head(&store).await, &w, lease).await.unwrap().expect("claimed");
            lifecycle.report(&job.id, &claimed.fence, vec![result()]).await.unwrap();
        }
        hook.counting.store(true, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(lifecycle.purge_expired().await.unwrap(), JOBS);
        for prefix in [keys::DONE, keys::JOBS, keys::EVENTS, keys::SPECS] {
            assert_eq!(store.count(prefix).await.unwrap(), 0, "{prefix} left after retention");
        }
        let most = hook.most.load(std::sync::atomic::Ordering::SeqCst);
        eprintln!("{} store: at most {most} retention writes in flight at once", store.name());
        assert!(most > 1, "retention wrote one job at a time");
    })
    .await;
}
