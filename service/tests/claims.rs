//! Claims: one whose outcome is unknown (the store committed the claim's transaction but
//! its answer was lost) is read back and handed over, not left running on a worker that
//! never got it; a fence proves only the current claim; a replica claims the jobs it
//! queued from its submit's copy, and drops the copies of jobs that left the line elsewhere.

mod support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use deephardway::v1::JobState;
use deephardway_service::{
    dispatch::Dispatcher,
    hub::Hub,
    jobs::JobLifecycle,
    keys,
    store::{Op, SharedStore, StoreError, Txn, TxnOutcome},
};
use support::{
    hooked::{CountsReads, Hooked, TxnHook},
    *,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A real store whose first claim transaction commits and then answers UNAVAILABLE, as
/// etcd does when the connection breaks after the commit.
struct LosesFirstClaimReply {
    lost: AtomicBool,
}

impl TxnHook for LosesFirstClaimReply {
    fn after(&self, txn: &Txn, outcome: &TxnOutcome) -> Option<StoreError> {
        let claims = txn.ops.iter().any(|op| matches!(op, Op::Put { key, .. } if key.starts_with(keys::CLAIMS)));
        (claims && outcome.succeeded && !self.lost.swap(true, Ordering::SeqCst))
            .then(|| StoreError::Unavailable("transport error: the reply was lost".into()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_that_committed_without_an_answer_is_handed_over() {
    let backend = Backend::embedded().await;
    let hook = LosesFirstClaimReply { lost: AtomicBool::new(false) };
    let wrapper = Arc::new(Hooked { inner: backend.open().await, hook });
    let store: SharedStore = wrapper.clone();
    let shutdown = CancellationToken::new();
    let hub = Hub::start(store.clone(), shutdown.clone()).await.unwrap();
    let lifecycle = JobLifecycle::new(store.clone(), test_config());
    let dispatcher = Dispatcher::start(lifecycle.clone(), &hub, shutdown.clone());

    let worker = diagnostic_worker("w");
    let lease = connect_worker(&store, &worker).await;
    let (job, _) =
        lifecycle.submit(diagnostic(1, 1), "", &deephardway_service::auth::Caller::anonymous()).await.unwrap();
    let (assignments, mut handed) = mpsc::channel(1);
    dispatcher.register(worker.clone(), lease, assignments);

    let claimed = tokio::time::timeout(Duration::from_secs(5), handed.recv())
        .await
        .expect("the job is handed over although the claim's answer was lost")
        .expect("a claimed job");
    assert!(wrapper.hook.lost.load(Ordering::SeqCst), "the claim's answer was lost");
    assert_eq!(claimed.job.id, job.id);
    assert_eq!(claimed.job.state, JobState::Running as i32);
    assert_eq!(claimed.job.attempts, 1);
    let claim = store.get(&keys::claim(&job.id)).await.unwrap().expect("the claim committed");
    assert_eq!(claimed.fence.revision, claim.create_revision, "the fence is the claim's");
    let record: serde_json::Value = serde_json::from_slice(&claim.value).unwrap();
    assert_eq!(record["secret"].as_u64(), Some(claimed.fence.secret), "with the claim's secret");
    // The fence works: the worker's report ends the job.
    let result = deephardway::v1::job_event::Event::Result(deephardway::v1::JobResult {
        value: Some(deephardway::v1::job_result::Value::Diagnostic(Default::default())),
    });
    let done = lifecycle.report(&job.id, &claimed.fence, vec![result]).await.expect("the report is accepted");
    assert_eq!(done.state, JobState::Succeeded as i32);
    shutdown.cancel();
}

/// A claim's fence is a secret that proves the claim only while it is current: guesses
/// (small numbers, the claim's store revision) prove nothing, and neither does the right
/// secret once the holder's session (its lease) is gone or the job was claimed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_current_claims_secret_proves_it() {
    let backend = Backend::embedded().await;
    let store = backend.open().await;
    let lifecycle = JobLifecycle::new(store.clone(), test_config());
    let (a, b) = (diagnostic_worker("a"), diagnostic_worker("b"));
    let lease_a = connect_worker(&store, &a).await;
    let anonymous = deephardway_service::auth::Caller::anonymous();
    let (job, _) = lifecycle.submit(diagnostic(1, 1), "", &anonymous).await.unwrap();
    let first = lifecycle.claim(&queue_head(&store).await, &a, lease_a).await.unwrap().expect("claimed by a");

    let (held, fence) = lifecycle.held(&job.id, first.fence.secret, "").await.expect("the secret proves the claim");
    assert_eq!((held.id.as_str(), fence), (job.id.as_str(), first.fence));
    let revision = first.fence.revision as u64;
    for guess in (0..=1000).chain([revision]).filter(|&g| g != first.fence.secret) {
        let refused = lifecycle.held(&job.id, guess, "").await.expect_err("a guess proves nothing");
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{guess}");
    }
    assert_eq!(
        lifecycle.held("not-a-job", first.fence.secret, "").await.unwrap_err().code(),
        tonic::Code::PermissionDenied
    );

    // a's session ends: its claim goes with its lease, and the job is claimed by b.
    store.lease_revoke(lease_a).await.unwrap();
    let refused = lifecycle.held(&job.id, first.fence.secret, "").await.expect_err("the session is gone");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    lifecycle.recover_orphan(&job.id).await.unwrap();
    let lease_b = connect_worker(&store, &b).await;
    let second = lifecycle.claim(&queue_head(&store).await, &b, lease_b).await.unwrap().expect("claimed by b");
    assert_ne!(first.fence.secret, second.fence.secret);
    assert_eq!(
        lifecycle.held(&job.id, first.fence.secret, "").await.unwrap_err().code(),
        tonic::Code::PermissionDenied
    );
    lifecycle.held(&job.id, second.fence.secret, "").await.expect("b's secret proves b's claim");
}

/// A job is claimed as the replica that queued it wrote it, with no read of its record or
/// request; one queued by another replica is read. A copy made stale by another
/// replica's change (a cancel) does not get the job claimed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_claims_the_jobs_it_queued_without_reading_them() {
    let backend = Backend::embedded().await;
    // Job records and requests.
    let wrapper =
        Arc::new(Hooked { inner: backend.open().await, hook: CountsReads::under(&[keys::JOBS, keys::SPECS]) });
    let store: SharedStore = wrapper.clone();
    let reads = || wrapper.hook.reads();
    let (here, elsewhere) =
        (JobLifecycle::new(store.clone(), test_config()), JobLifecycle::new(store.clone(), test_config()));
    let worker = diagnostic_worker("w");
    let lease = connect_worker(&store, &worker).await;
    let anonymous = deephardway_service::auth::Caller::anonymous();

    // Queued and claimed here: no read of the job.
    let (job, _) = here.submit(diagnostic(3, 1), "", &anonymous).await.unwrap();
    let before = reads();
    let claimed = here.claim(&queue_head(&store).await, &worker, lease).await.unwrap().expect("claimed");
    assert_eq!(reads(), before, "the claim read the job it queued");
    assert_eq!((claimed.job.id.as_str(), claimed.job.attempts), (job.id.as_str(), 1));
    assert_eq!(claimed.job.spec, job.spec, "the assignment carries the whole request");
    assert_eq!(here.get(&job.id).await.unwrap().state, JobState::Running as i32);

    // Queued elsewhere, claimed here: read.
    let (other, _) = elsewhere.submit(diagnostic(3, 1), "", &anonymous).await.unwrap();
    let before = reads();
    let claimed = here.claim(&queue_head(&store).await, &worker, lease).await.unwrap().expect("claimed");
    assert!(reads() > before, "a job queued elsewhere is read");
    assert_eq!((claimed.job.id.as_str(), claimed.job.spec.clone()), (other.id.as_str(), other.spec));

    // Queued here, cancelled elsewhere: not claimed from the stale copy. The entry read
    // before the cancel is the one a dispatcher would hold.
    let (cancelled, _) = here.submit(diagnostic(3, 1), "", &anonymous).await.unwrap();
    let entry = queue_head(&store).await;
    elsewhere.cancel(&cancelled.id, "test").await.unwrap();
    assert!(here.claim(&entry, &worker, lease).await.unwrap().is_none(), "a cancelled job is not claimed");
    assert_eq!(here.get(&cancelled.id).await.unwrap().state, JobState::Cancelled as i32);
    assert!(store.get(&keys::claim(&cancelled.id)).await.unwrap().is_none());

    // Queued here, its record rewritten since (the entry still there): the stale copy
    // fails the transaction's comparison, and the claim goes on from the store.
    let (rewritten, _) = here.submit(diagnostic(3, 1), "", &anonymous).await.unwrap();
    let stored = store.get(&keys::job(&rewritten.id)).await.unwrap().expect("stored");
    store.txn(Txn::new().then(Op::put(keys::job(&rewritten.id), stored.value))).await.unwrap();
    let before = reads();
    let claimed = here.claim(&queue_head(&store).await, &worker, lease).await.unwrap().expect("claimed from the store");
    assert!(reads() > before, "read after the stale copy");
    assert_eq!((claimed.job.id.as_str(), claimed.job.spec.clone()), (rewritten.id.as_str(), rewritten.spec));
}

/// A replica forgets the copy of a job it queued once the job leaves the line some other
/// way: claimed by another replica's dispatcher, or cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_forgets_the_copies_of_jobs_that_left_the_line_elsewhere() {
    let backend = Backend::embedded().await;
    let store = backend.open().await;
    let shutdown = CancellationToken::new();
    let anonymous = deephardway_service::auth::Caller::anonymous();
    // Two replicas on one store, each with its watch and dispatcher; a worker on the second.
    let here = JobLifecycle::new(store.clone(), test_config());
    let _here_dispatcher =
        Dispatcher::start(here.clone(), &Hub::start(store.clone(), shutdown.clone()).await.unwrap(), shutdown.clone());
    let there = JobLifecycle::new(store.clone(), test_config());
    let there_dispatcher =
        Dispatcher::start(there.clone(), &Hub::start(store.clone(), shutdown.clone()).await.unwrap(), shutdown.clone());
    let worker = diagnostic_worker("w");
    let lease = connect_worker(&store, &worker).await;

    let (cancelled, _) = here.submit(diagnostic(1, 1), "", &anonymous).await.unwrap();
    assert_eq!(here.submitted_copies(), 1, "the submit keeps its copy");
    there.cancel(&cancelled.id, "test").await.unwrap();
    eventually(|| here.submitted_copies() == 0, "the copy of a job cancelled elsewhere is dropped").await;

    let (claimed, _) = here.submit(diagnostic(1, 1), "", &anonymous).await.unwrap();
    assert_eq!(here.submitted_copies(), 1);
    let (assignments, mut handed) = mpsc::channel(1);
    there_dispatcher.register(worker, lease, assignments);
    let job = tokio::time::timeout(Duration::from_secs(5), handed.recv()).await.unwrap().unwrap();
    assert_eq!(job.job.id, claimed.id, "claimed by the other replica");
    eventually(|| here.submitted_copies() == 0, "the copy of a job claimed elsewhere is dropped").await;
    shutdown.cancel();
}

async fn eventually(done: impl Fn() -> bool, what: &str) {
    for _ in 0..100 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: not within 5 s");
}
