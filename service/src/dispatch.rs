//! Hands queued jobs to this replica's connected workers.
//!
//! One task owns the list of local workers and their free slots; worker sessions talk
//! to it through a [`Dispatcher`] handle. It runs a dispatch round whenever something
//! may have changed (a queue entry appeared, a slot freed, a worker connected) and once
//! a second regardless. A round claims, for each worker with free slots, the best queued
//! jobs among the models it serves; claims are transactions, so replicas racing for
//! the same job cannot both win.
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
    time::Duration,
};

use tokio::sync::{
    broadcast::error::RecvError,
    mpsc::{self, error::TrySendError},
};
use tokio_util::sync::CancellationToken;

use crate::{
    hub::{Change, Hub},
    jobs::{Claimed, JobLifecycle, WorkerRecord},
    keys,
    store::KeyValue,
};

enum Command {
    Register { worker: WorkerRecord, lease: i64, assignments: mpsc::Sender<Claimed> },
    SlotFreed { worker_id: String },
    Deregister { worker_id: String },
}

/// A handle to the replica's dispatcher.
#[derive(Clone)]
pub struct Dispatcher {
    commands: mpsc::UnboundedSender<Command>,
}

struct LocalWorker {
    record: WorkerRecord,
    lease: i64,
    free_slots: u32,
    assignments: mpsc::Sender<Claimed>,
}

impl Dispatcher {
    pub fn start(lifecycle: JobLifecycle, hub: &Hub, shutdown: CancellationToken) -> Dispatcher {
        let (commands, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(lifecycle, hub.clone(), rx, shutdown));
        Dispatcher { commands }
    }

    /// Starts offering jobs to a worker; they arrive on `assignments`.
    pub fn register(&self, worker: WorkerRecord, lease: i64, assignments: mpsc::Sender<Claimed>) {
        let _ = self.commands.send(Command::Register { worker, lease, assignments });
    }

    /// The worker finished (or lost) one job and can take another.
    pub fn slot_freed(&self, worker_id: &str) {
        let _ = self.commands.send(Command::SlotFreed { worker_id: worker_id.to_string() });
    }

    pub fn deregister(&self, worker_id: &str) {
        let _ = self.commands.send(Command::Deregister { worker_id: worker_id.to_string() });
    }
}

async fn run(
    lifecycle: JobLifecycle,
    hub: Hub,
    mut commands: mpsc::UnboundedReceiver<Command>,
    shutdown: CancellationToken,
) {
    let mut workers: HashMap<String, LocalWorker> = HashMap::new();
    let mut changes = hub.changes();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let wake = tokio::select! {
            command = commands.recv() => {
                let Some(command) = command else { return };
                apply(&mut workers, command);
                while let Ok(command) = commands.try_recv() {
                    apply(&mut workers, command);
                }
                true
            }
            change = changes.recv() => match change {
                Ok(change) => matches!(change, Change::QueueChanged { .. }),
                Err(RecvError::Lagged(_)) => true,
                Err(RecvError::Closed) => return,
            },
            _ = tick.tick() => true,
            _ = shutdown.cancelled() => return,
        };
        if wake && workers.values().any(|w| w.free_slots > 0) {
            // Changes that arrived during this round are covered by it.
            while changes.try_recv().is_ok() {}
            // A few more passes when claims were lost to other replicas or skipped; then wait.
            let mut skip = HashSet::new();
            for _ in 0..8 {
                match round(&lifecycle, &mut workers, &mut skip).await {
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

fn apply(workers: &mut HashMap<String, LocalWorker>, command: Command) {
    match command {
        Command::Register { worker, lease, assignments } => {
            let free_slots = worker.slots.max(1);
            workers.insert(worker.worker_id.clone(), LocalWorker { record: worker, lease, free_slots, assignments });
        }
        Command::SlotFreed { worker_id } => {
            if let Some(w) = workers.get_mut(&worker_id) {
                w.free_slots = (w.free_slots + 1).min(w.record.slots.max(1));
            }
        }
        Command::Deregister { worker_id } => {
            workers.remove(&worker_id);
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
    workers: &mut HashMap<String, LocalWorker>,
    skip: &mut HashSet<String>,
) -> Result<bool, tonic::Status> {
    let store = lifecycle.store();
    let mut more = false;
    let mut dropped: Vec<(String, &'static str)> = Vec::new();
    for worker in workers.values_mut() {
        if worker.free_slots == 0 || worker.assignments.is_closed() {
            continue;
        }
        let mut candidates = Vec::new();
        let mut models: Vec<&str> = worker.record.models.iter().map(|m| m.name.as_str()).collect();
        models.dedup();
        for model in models {
            // Read past the entries skipped this wake-up (a bounded look-ahead).
            let limit = worker.free_slots as usize + skip.len().min(MAX_LOOKAHEAD);
            let range = store.range(&keys::queue(model), limit).await?;
            candidates.extend(range.kvs.into_iter().filter(|kv| !skip.contains(&kv.key)));
        }
        candidates.sort_by(|a, b| order_key(a).cmp(order_key(b)));
        // Claim as many as there are free slots, concurrently, so that the store commits
        // them together; candidates another replica took are skipped next round.
        candidates.truncate(worker.free_slots as usize);
        let claims = futures::future::join_all(
            candidates.iter().map(|entry| lifecycle.claim(entry, &worker.record, worker.lease)),
        )
        .await;
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
                            tracing::warn!(worker = %worker.record.worker_id, error = %e,
                                "claim outcome unknown; dropping the worker so that its lease releases it");
                            dropped.push((worker.record.worker_id.clone(), "a claim's outcome could not be read back"));
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
            worker.free_slots -= 1;
            match worker.assignments.try_send(claimed) {
                Ok(()) => {}
                Err(TrySendError::Closed(_)) => {
                    // The session has ended: its lease revocation puts the job back.
                    dropped.push((worker.record.worker_id.clone(), "its session has ended"));
                    break;
                }
                Err(TrySendError::Full(_)) => {
                    // Room for every slot, yet full: the session is stuck. Dropping the
                    // channel ends it, and its lease, which holds this claim.
                    dropped.push((worker.record.worker_id.clone(), "its session is not taking assignments"));
                    break;
                }
            }
        }
        if worker.free_slots > 0 && !candidates.is_empty() {
            more = true;
        }
    }
    for (worker_id, why) in dropped {
        tracing::warn!(worker = %worker_id, "dropping the worker from dispatch: {why}");
        workers.remove(&worker_id);
    }
    Ok(more)
}
