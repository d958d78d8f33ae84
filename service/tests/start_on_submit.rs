//! A job submitted while a worker connected to the replica has a free slot, and no job
//! waits in its line, starts in the submit's own transaction: one commit instead of a
//! submit and a claim, and no dispatch round between them. Jobs that find no free slot,
//! or whose worker's session has just ended, wait in line as before.

mod support;

use std::{sync::Arc, time::Duration};

use deephardway::v1::{JobState, job_event::Event};
use deephardway_service::{
    auth::Caller,
    dispatch::Dispatcher,
    hub::Hub,
    jobs::{Claimed, JobLifecycle},
    keys,
    store::SharedStore,
};
use support::*;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A replica's lifecycle as the server wires it: queue view, dispatcher, free slots.
struct Replica {
    store: SharedStore,
    lifecycle: JobLifecycle,
    dispatcher: Dispatcher,
    shutdown: CancellationToken,
}

impl Replica {
    async fn start(backend: &Backend) -> Replica {
        let store = backend.open().await;
        let shutdown = CancellationToken::new();
        let hub = Hub::start(store.clone(), shutdown.clone()).await.unwrap();
        let lifecycle = JobLifecycle::new(store.clone(), test_config()).with_queues(hub.queues().clone());
        let dispatcher = Dispatcher::start(lifecycle.clone(), &hub, shutdown.clone());
        let lifecycle = lifecycle.with_free_slots(Arc::new(dispatcher.clone()));
        Replica { store, lifecycle, dispatcher, shutdown }
    }

    /// A worker with `slots` connected to this replica: its record under a lease, and
    /// registered with the dispatcher. Returns its lease and its assignments.
    async fn connect(&self, id: &str, slots: u32) -> (i64, mpsc::Receiver<Claimed>) {
        let worker = deephardway_service::jobs::WorkerRecord { slots, ..diagnostic_worker(id) };
        let lease = connect_worker(&self.store, &worker).await;
        let (tx, rx) = mpsc::channel(slots as usize);
        self.dispatcher.register(worker, lease, tx);
        (lease, rx)
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn handed(assignments: &mut mpsc::Receiver<Claimed>) -> Claimed {
    tokio::time::timeout(Duration::from_secs(5), assignments.recv())
        .await
        .expect("a job is handed to the worker")
        .expect("the dispatcher keeps the worker")
}

fn result() -> Event {
    Event::Result(deephardway::v1::JobResult {
        value: Some(deephardway::v1::job_result::Value::Diagnostic(Default::default())),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_finds_a_free_slot_starts_in_its_submits_transaction() {
    let backend = Backend::embedded().await;
    let replica = Replica::start(&backend).await;
    let (_, mut assignments) = replica.connect("w", 2).await;

    let before = replica.store.revision().await.unwrap();
    let (job, _) = replica.lifecycle.submit(diagnostic(1, 1), "", &Caller::anonymous()).await.unwrap();
    assert_eq!(job.state, JobState::Running as i32, "started on submit: {job:?}");
    assert_eq!((job.attempts, job.worker_id.as_str()), (1, "w"));
    assert_eq!(replica.store.revision().await.unwrap(), before + 1, "one transaction queued and started it");
    assert!(replica.store.range(&keys::queue("diagnostic"), 0).await.unwrap().kvs.is_empty(), "it never waited");

    let claimed = handed(&mut assignments).await;
    assert_eq!(claimed.job.id, job.id);
    assert!(claimed.job.spec.as_ref().is_some_and(|s| s.input.is_some()), "the worker gets the whole request");
    let claim = replica.store.get(&keys::claim(&job.id)).await.unwrap().expect("a claim under the worker's lease");
    assert_eq!(claimed.fence.revision, claim.create_revision, "the fence is the claim's");

    // Its event log is a queued job's: queued, then started.
    let (events, _) = replica.lifecycle.events(&job.id).await.unwrap();
    assert_contiguous(&events, 1);
    assert!(matches!(events[0].event, Some(Event::Queued(ref q)) if q.position == 0), "{events:?}");
    assert!(matches!(events[1].event, Some(Event::Started(ref s)) if s.worker_id == "w" && s.attempt == 1));

    // The fence works: the worker's report ends the job.
    let done = replica.lifecycle.report(&job.id, &claimed.fence, vec![result()]).await.expect("the report is accepted");
    assert_eq!(done.state, JobState::Succeeded as i32);
}

/// The slots a submit takes are the dispatcher's: with the only one taken, the next job
/// waits in line, and starts when the slot is freed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_finds_no_free_slot_waits_for_one() {
    let backend = Backend::embedded().await;
    let replica = Replica::start(&backend).await;
    let (_, mut assignments) = replica.connect("w", 1).await;

    let (first, _) = replica.lifecycle.submit(diagnostic(1, 1), "", &Caller::anonymous()).await.unwrap();
    assert_eq!(first.state, JobState::Running as i32);
    let first = handed(&mut assignments).await;
    let (second, _) = replica.lifecycle.submit(diagnostic(1, 1), "", &Caller::anonymous()).await.unwrap();
    assert_eq!(second.state, JobState::Queued as i32, "the only slot is taken: {second:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(assignments.try_recv().is_err(), "nothing more for a worker without a free slot");

    replica.lifecycle.report(&first.job.id, &first.fence, vec![result()]).await.unwrap();
    replica.dispatcher.slot_freed("w");
    let claimed = handed(&mut assignments).await;
    assert_eq!(claimed.job.id, second.id, "the freed slot takes the job in line");
    assert_eq!(replica.lifecycle.get(&second.id).await.unwrap().state, JobState::Running as i32);
}

/// A worker whose session (lease) ended just before the submit: the job is accepted and
/// waits in line, not refused, and no slot stays taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_worker_just_left_waits_in_line() {
    let backend = Backend::embedded().await;
    let replica = Replica::start(&backend).await;
    let (lease, _assignments) = replica.connect("gone", 1).await;
    // The worker record stays (a second worker keeps the model served); the lease the
    // dispatcher knows for "gone" does not.
    connect_worker(&replica.store, &diagnostic_worker("other")).await;
    replica.store.lease_revoke(lease).await.unwrap();

    let (job, _) = replica.lifecycle.submit(diagnostic(1, 1), "", &Caller::anonymous()).await.unwrap();
    assert_eq!(job.state, JobState::Queued as i32, "{job:?}");
    assert!(replica.store.get(&keys::claim(&job.id)).await.unwrap().is_none());
    assert_eq!(replica.store.range(&keys::queue("diagnostic"), 0).await.unwrap().kvs.len(), 1, "it waits in line");
}
