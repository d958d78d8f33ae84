//! Hands queued jobs to this replica's connected workers.
//!
//! The [`Dispatcher`] handle holds the workers connected here and their free slots; worker
//! sessions register with it and free their slots through it. Its task runs a dispatch
//! round whenever something may have changed (a queue entry appeared, a slot freed, a
//! worker connected) and once a second regardless. A round claims, for each worker with
//! free slots, the best queued jobs among the models it serves; claims are transactions,
//! so replicas racing for the same job cannot both win. Submits take free slots too
//! (through [`FreeSlots`], for a job that finds a slot left over by the jobs in line), so
//! a slot is held before its claim is written and given back if the claim took nothing.
//!
//! The dispatcher never waits for a worker session: it hands a claimed job over with
//! `try_send` on a channel with room for all the worker's slots. A closed or full channel
//! means the session is gone or stuck: the worker is dropped from the list (which ends a
//! stuck session, whose end revokes its lease), and the job's claim, held under that
//! lease, vanishes with it, so the reaper puts the job back in line. A claim whose outcome
//! is unknown (the store failed to answer) is read back, never dropped: see
//! [`JobLifecycle::resolve_claim`].
//!
//! A claim that takes nothing (another replica was first, or the job's key already runs
//! as many jobs as its quota allows) leaves the entry to be skipped for the rest of the
//! wake-up, so that the jobs behind a key at its limit still start.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use tokio::sync::{
    Notify,
    broadcast::error::RecvError,
    mpsc::{self, error::TrySendError},
};
use tokio_util::sync::CancellationToken;

use crate::{
    hub::{Change, Hub},
    jobs::{Claimed, FreeSlots, HeldSlot, JobLifecycle, WorkerRecord},
    keys,
    store::KeyValue,
};

/// A handle to the replica's dispatcher: the workers connected here and their free slots,
/// shared by the dispatch task, the worker sessions and the submits that start a job at
/// once (see [`FreeSlots`]).
#[derive(Clone)]
pub struct Dispatcher {
    workers: Arc<Mutex<HashMap<String, Arc<LocalWorker>>>>,
    /// Wakes the dispatch task: a worker connected, a slot was freed.
    wake: Arc<Notify>,
}

struct LocalWorker {
    record: WorkerRecord,
    lease: i64,
    /// Free slots. Taken before a claim or a submit's start is written (so that two
    /// cannot both use the last one), given back if it took nothing.
    free: AtomicU32,
    assignments: mpsc::Sender<Claimed>,
}

impl LocalWorker {
    /// Takes up to `wanted` free slots; returns how many it took.
    fn take(&self, wanted: u32) -> u32 {
        let mut taken = 0;
        let _ = self.free.fetch_update(Ordering::AcqRel, Ordering::Acquire, |free| {
            taken = free.min(wanted);
            Some(free - taken)
        });
        taken
    }

    fn give_back(&self, slots: u32) {
        let capacity = self.record.slots.max(1);
        let _ = self.free.fetch_update(Ordering::AcqRel, Ordering::Acquire, |free| Some((free + slots).min(capacity)));
    }

    fn free(&self) -> u32 {
        self.free.load(Ordering::Acquire)
    }

    fn serves(&self, served_model: &str) -> bool {
        self.record.models.iter().any(|m| m.name == served_model)
    }
}

impl Dispatcher {
    pub fn start(lifecycle: JobLifecycle, hub: &Hub, shutdown: CancellationToken) -> Dispatcher {
        let dispatcher = Dispatcher { workers: Default::default(), wake: Default::default() };
        tokio::spawn(run(dispatcher.clone(), lifecycle, hub.clone(), shutdown));
        dispatcher
    }

    /// Starts offering jobs to a worker; they arrive on `assignments`.
    pub fn register(&self, worker: WorkerRecord, lease: i64, assignments: mpsc::Sender<Claimed>) {
        let free = AtomicU32::new(worker.slots.max(1));
        let id = worker.worker_id.clone();
        let worker = Arc::new(LocalWorker { record: worker, lease, free, assignments });
        self.workers.lock().expect("dispatcher lock").insert(id, worker);
        self.wake.notify_one();
    }

    /// The worker finished (or lost) one job and can take another.
    pub fn slot_freed(&self, worker_id: &str) {
        if let Some(worker) = self.workers.lock().expect("dispatcher lock").get(worker_id) {
            worker.give_back(1);
        }
        self.wake.notify_one();
    }

    pub fn deregister(&self, worker_id: &str) {
        self.workers.lock().expect("dispatcher lock").remove(worker_id);
    }

    fn snapshot(&self) -> Vec<Arc<LocalWorker>> {
        self.workers.lock().expect("dispatcher lock").values().cloned().collect()
    }

    fn any_free(&self) -> bool {
        self.workers.lock().expect("dispatcher lock").values().any(|w| w.free() > 0)
    }

    /// Gives a claimed job to its worker; false if the worker's session cannot take it, and
    /// it was dropped.
    fn hand_over(&self, worker: &Arc<LocalWorker>, claimed: Claimed) -> bool {
        match worker.assignments.try_send(claimed) {
            Ok(()) => true,
            // The session has ended: its lease revocation puts the job back.
            Err(TrySendError::Closed(_)) => {
                self.drop_worker(worker, "its session has ended");
                false
            }
            // Room for every slot, yet full: the session is stuck. Dropping the channel
            // ends it, and its lease, which holds this claim.
            Err(TrySendError::Full(_)) => {
                self.drop_worker(worker, "its session is not taking assignments");
                false
            }
        }
    }

    /// Forgets `worker` (that session, not a later one under its id): its assignments
    /// channel closes, which ends the session.
    fn drop_worker(&self, worker: &Arc<LocalWorker>, why: &str) {
        tracing::warn!(worker = %worker.record.worker_id, "dropping the worker from dispatch: {why}");
        let mut workers = self.workers.lock().expect("dispatcher lock");
        if workers.get(&worker.record.worker_id).is_some_and(|w| Arc::ptr_eq(w, worker)) {
            workers.remove(&worker.record.worker_id);
        }
    }
}

impl FreeSlots for Dispatcher {
    fn hold(&self, served_model: &str, waiting: usize) -> Option<Box<dyn HeldSlot>> {
        let worker = {
            let workers = self.workers.lock().expect("dispatcher lock");
            let serving = || workers.values().filter(|w| w.serves(served_model) && !w.assignments.is_closed());
            if serving().map(|w| w.free() as usize).sum::<usize>() <= waiting {
                return None;
            }
            // The worker with the most free slots, so that jobs spread over the workers.
            serving().max_by_key(|w| w.free())?.clone()
        };
        (worker.take(1) == 1).then(|| Box::new(Held { worker, dispatcher: self.clone(), used: false }) as _)
    }
}

/// A slot a submit holds (see [`FreeSlots`]).
struct Held {
    worker: Arc<LocalWorker>,
    dispatcher: Dispatcher,
    used: bool,
}

impl HeldSlot for Held {
    fn worker(&self) -> &WorkerRecord {
        &self.worker.record
    }

    fn lease(&self) -> i64 {
        self.worker.lease
    }

    fn hand_over(mut self: Box<Self>, claimed: Claimed) {
        self.used = true;
        self.dispatcher.hand_over(&self.worker, claimed);
    }

    fn drop_worker(mut self: Box<Self>, why: &str) {
        self.used = true;
        self.dispatcher.drop_worker(&self.worker, why);
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if !self.used {
            self.worker.give_back(1);
            self.dispatcher.wake.notify_one();
        }
    }
}

async fn run(dispatcher: Dispatcher, lifecycle: JobLifecycle, hub: Hub, shutdown: CancellationToken) {
    let mut changes = hub.changes();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = dispatcher.wake.notified() => {}
            change = changes.recv() => match change {
                Ok(Change::QueueChanged { .. }) | Err(RecvError::Lagged(_)) => {}
                // Claims read the copies of jobs this replica queued: one claimed elsewhere
                // or cancelled needs its copy no more.
                Ok(Change::JobUpdated(job)) => {
                    lifecycle.left_the_line(&job);
                    continue;
                }
                Ok(_) => continue,
                Err(RecvError::Closed) => return,
            },
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        if dispatcher.any_free() {
            // Changes that arrived during this round are covered by it.
            while changes.try_recv().is_ok() {}
            // A few more passes when claims were lost to other replicas or skipped; then wait.
            let mut skip = HashSet::new();
            for _ in 0..8 {
                match round(&lifecycle, &dispatcher, &mut skip).await {
                    Ok(true) => continue,
                    Ok(false) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "dispatch round failed");
                        break;
                    }
                }
            }
        }
    }
}

/// The most queue entries skipped in one wake-up (jobs of keys at their running limit).
const MAX_LOOKAHEAD: usize = 1024;

/// The part of a queue key after the model, which orders jobs across models.
fn order_key(kv: &KeyValue) -> &str {
    let rest = &kv.key[keys::QUEUE.len()..];
    rest.split_once('/').map_or(rest, |(_, tail)| tail)
}

/// One pass over the local workers. Returns true if another pass may find more to do
/// (some claims were lost to another replica while slots are still free).
async fn round(
    lifecycle: &JobLifecycle,
    dispatcher: &Dispatcher,
    skip: &mut HashSet<String>,
) -> Result<bool, tonic::Status> {
    let store = lifecycle.store();
    let mut more = false;
    for worker in dispatcher.snapshot() {
        let free = worker.free();
        if free == 0 || worker.assignments.is_closed() {
            continue;
        }
        let mut candidates = Vec::new();
        let mut models: Vec<&str> = worker.record.models.iter().map(|m| m.name.as_str()).collect();
        models.dedup();
        for model in models {
            // Read past the entries skipped this wake-up (a bounded look-ahead).
            let limit = free as usize + skip.len().min(MAX_LOOKAHEAD);
            let range = store.range(&keys::queue(model), limit).await?;
            candidates.extend(range.kvs.into_iter().filter(|kv| !skip.contains(&kv.key)));
        }
        candidates.sort_by(|a, b| order_key(a).cmp(order_key(b)));
        // As many as there are free slots, held first (a submit may take one meanwhile),
        // claimed concurrently so that the store commits them together; candidates another
        // replica took are skipped next round.
        candidates.truncate(free as usize);
        let held = worker.take(candidates.len() as u32);
        candidates.truncate(held as usize);
        let claims = futures::future::join_all(
            candidates.iter().map(|entry| lifecycle.claim(entry, &worker.record, worker.lease)),
        )
        .await;
        let mut used = 0;
        for (entry, claim) in candidates.iter().zip(claims) {
            let claimed = match claim {
                Ok(claimed) => claimed,
                Err(e) => {
                    // The claim may have committed although the answer was lost: read it back.
                    tracing::warn!(worker = %worker.record.worker_id, error = %e, "claim failed; reading back its outcome");
                    match lifecycle.resolve_claim(entry, &worker.record).await {
                        Ok(claimed) => claimed,
                        Err(e) => {
                            // Still unknown: end the worker's session; its lease goes with it,
                            // and with the lease any claim that did commit.
                            tracing::warn!(worker = %worker.record.worker_id, error = %e, "claim outcome unknown");
                            dispatcher.drop_worker(&worker, "a claim's outcome could not be read back");
                            break;
                        }
                    }
                }
            };
            let Some(claimed) = claimed else {
                if skip.len() < MAX_LOOKAHEAD {
                    skip.insert(entry.key.clone());
                }
                continue;
            };
            used += 1;
            if !dispatcher.hand_over(&worker, claimed) {
                break;
            }
        }
        worker.give_back(held - used);
        if worker.free() > 0 && !candidates.is_empty() {
            more = true;
        }
    }
    Ok(more)
}
