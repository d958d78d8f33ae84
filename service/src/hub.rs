//! The replica's one watch on the store, fanned out in memory.
//!
//! Every replica opens a single watch on `/dhw/` and routes what it sees: job events go
//! to the `WatchJob` streams subscribed to that job (ten thousand browser tabs cost ten
//! thousand channel sends, not ten thousand store watches); changes to job records, the
//! queue and claims go to the replica's own consumers (live job lists, worker sessions,
//! the dispatcher, the reaper) as typed [`Change`]s through a broadcast channel, decoded
//! once here rather than by every consumer. If the watch breaks it resumes from the
//! next revision; if that revision was compacted away, every subscriber is dropped so
//! that it re-lists. The hub also keeps the replica's [`QueueView`] current: it loads
//! the queues with the same range that sets the watch's start, and applies each queue
//! and claim event before routing the rest of its revision.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use deephardway::v1::{Job, JobEvent};
use futures::StreamExt;
use prost::Message;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::{
    keys,
    queue_view::QueueView,
    store::{EventKind, SharedStore, StoreError, WatchEvent},
};

/// Events buffered per subscriber before it is considered too slow and dropped (it then
/// re-lists from the store, so a slow client loses nothing).
const SUBSCRIBER_BUFFER: usize = 1024;
/// Changes buffered for the replica's background tasks; one that lags resynchronises.
const CHANGES_BUFFER: usize = 16 * 1024;
/// Subscribers whose stream ended (the receiver was dropped) are pruned at least this
/// often, and also after every [`PRUNE_EVERY`] subscribes, so a finished job that gets no
/// more events does not keep its closed senders: memory is O(open streams).
const PRUNE_INTERVAL: Duration = Duration::from_millis(500);
const PRUNE_EVERY: usize = 1024;

/// A change to the job store that the replica's consumers act on. A consumer that lags
/// behind the broadcast is told so (`RecvError::Lagged`) and re-reads what it needs.
#[derive(Debug, Clone)]
pub enum Change {
    /// A job's record was written (created, started, progressed, finished, marked for
    /// cancelling, put back in line).
    JobUpdated(Arc<Job>),
    /// A finished job was removed after its retention.
    JobRemoved { job_id: String },
    /// A queue entry appeared or went: the line of `served_model` changed.
    QueueChanged { served_model: String },
    /// The claim on a running job vanished (its worker's lease ended, or the job ended).
    ClaimReleased { job_id: String },
    /// An API key was created or revoked.
    KeysChanged,
}

/// The change a store event means, if it is one that consumers act on.
fn change_of(event: &WatchEvent) -> Option<Change> {
    let key = event.kv.key.as_str();
    if let Some(rest) = key.strip_prefix(keys::JOBS) {
        return match event.kind {
            EventKind::Put => match Job::decode(event.kv.value.as_slice()) {
                Ok(job) => Some(Change::JobUpdated(Arc::new(job))),
                Err(e) => {
                    tracing::error!(key, error = %e, "undecodable job record");
                    None
                }
            },
            EventKind::Delete => Some(Change::JobRemoved { job_id: rest.to_string() }),
        };
    }
    if let Some(rest) = key.strip_prefix(keys::QUEUE) {
        let served_model = rest.split('/').next().unwrap_or_default().to_string();
        return Some(Change::QueueChanged { served_model });
    }
    if key.starts_with(keys::API_KEYS) {
        return Some(Change::KeysChanged);
    }
    if event.kind == EventKind::Delete && key.starts_with(keys::CLAIMS) {
        return Some(Change::ClaimReleased { job_id: keys::last_segment(key).to_string() });
    }
    None
}

enum Command {
    Subscribe { job_id: String, tx: mpsc::Sender<Arc<JobEvent>>, ack: oneshot::Sender<()> },
}

/// A cheap handle to the replica's watch.
#[derive(Clone)]
pub struct Hub {
    commands: mpsc::Sender<Command>,
    changes: broadcast::Sender<Change>,
    subscriber_count: Arc<AtomicUsize>,
    queues: QueueView,
}

impl Hub {
    /// Loads the queues and starts watching from the revision after that read.
    pub async fn start(store: SharedStore, shutdown: CancellationToken) -> Result<Hub, StoreError> {
        let queues = QueueView::new();
        let start = load_queues(&store, &queues).await? + 1;
        let (commands, rx) = mpsc::channel(256);
        let (changes, _) = broadcast::channel(CHANGES_BUFFER);
        let subscriber_count = Arc::new(AtomicUsize::new(0));
        let task = HubTask {
            store,
            subscribers: HashMap::new(),
            changes: changes.clone(),
            next_revision: start,
            count: subscriber_count.clone(),
            total: 0,
            subscribes_since_prune: 0,
            queues: queues.clone(),
        };
        tokio::spawn(task.run(rx, shutdown));
        Ok(Hub { commands, changes, subscriber_count, queues })
    }

    /// The replica's live view of the queues (positions and dispatch rates).
    pub fn queues(&self) -> &QueueView {
        &self.queues
    }

    /// Events of `job_id` committed after this call returns. The channel closes if the
    /// subscriber falls behind or the watch had to restart: re-list, then subscribe again.
    pub async fn subscribe(&self, job_id: &str) -> Option<mpsc::Receiver<Arc<JobEvent>>> {
        let (tx, rx) = mpsc::channel(SUBSCRIBER_BUFFER);
        let (ack, acked) = oneshot::channel();
        self.commands.send(Command::Subscribe { job_id: job_id.to_string(), tx, ack }).await.ok()?;
        acked.await.ok()?;
        Some(rx)
    }

    /// How many job-event subscribers the hub holds (open `WatchJob` streams, plus ended
    /// ones not yet pruned: they are pruned within half a second). Cheap, for tests
    /// and metrics.
    pub fn subscriber_count(&self) -> usize {
        self.subscriber_count.load(Ordering::Relaxed)
    }

    /// Every [`Change`] from now on, for the replica's background tasks.
    pub fn changes(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }
}

/// Reads every queue entry into `queues`; returns the revision it read at.
async fn load_queues(store: &SharedStore, queues: &QueueView) -> Result<i64, StoreError> {
    let range = store.range(keys::QUEUE, 0).await?;
    queues.reset(&range.kvs, range.revision);
    Ok(range.revision)
}

struct HubTask {
    store: SharedStore,
    queues: QueueView,
    subscribers: HashMap<String, Vec<mpsc::Sender<Arc<JobEvent>>>>,
    changes: broadcast::Sender<Change>,
    next_revision: i64,
    /// Mirrors the number of senders in `subscribers`, for [`Hub::subscriber_count`].
    count: Arc<AtomicUsize>,
    total: usize,
    subscribes_since_prune: usize,
}

impl HubTask {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        let mut prune = tokio::time::interval(PRUNE_INTERVAL);
        prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mut stream = match self.store.watch(keys::ROOT, self.next_revision).await {
                Ok(stream) => stream,
                Err(StoreError::Compacted { oldest, .. }) => {
                    tracing::warn!(oldest, "watch start was compacted; subscribers will re-list");
                    self.subscribers.clear();
                    self.total = 0;
                    self.update_count();
                    // The queues changed in the revisions missed: read them again, and
                    // watch from the revision read at.
                    self.next_revision = match load_queues(&self.store, &self.queues).await {
                        Ok(revision) => revision,
                        Err(_) => self.store.revision().await.unwrap_or(oldest),
                    } + 1;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "store watch failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            loop {
                tokio::select! {
                    command = commands.recv() => match command {
                        Some(Command::Subscribe { job_id, tx, ack }) => {
                            self.subscribers.entry(job_id).or_default().push(tx);
                            self.total += 1;
                            self.subscribes_since_prune += 1;
                            if self.subscribes_since_prune >= PRUNE_EVERY {
                                self.prune();
                            } else {
                                self.update_count();
                            }
                            // Acknowledged once counted, so a caller sees its own subscription.
                            let _ = ack.send(());
                        }
                        None => return,
                    },
                    _ = prune.tick() => self.prune(),
                    item = stream.next() => match item {
                        Some(Ok(event)) => {
                            backoff = Duration::from_millis(100);
                            self.next_revision = event.kv.mod_revision + 1;
                            self.route(event);
                        }
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "store watch ended; resuming");
                            break;
                        }
                        None => break,
                    },
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    }

    /// Drops the senders whose receiver is gone (the `WatchJob` stream ended).
    fn prune(&mut self) {
        self.subscribes_since_prune = 0;
        let mut total = 0;
        self.subscribers.retain(|_, senders| {
            senders.retain(|tx| !tx.is_closed());
            total += senders.len();
            !senders.is_empty()
        });
        self.total = total;
        self.update_count();
    }

    fn update_count(&self) {
        self.count.store(self.total, Ordering::Relaxed);
    }

    fn route(&mut self, event: WatchEvent) {
        self.queues.apply(&event);
        if let Some(job_id) = keys::event_job_id(&event.kv.key) {
            if event.kind != EventKind::Put {
                return;
            }
            let Some(subscribers) = self.subscribers.get_mut(job_id) else { return };
            let Ok(job_event) = JobEvent::decode(event.kv.value.as_slice()) else {
                tracing::error!(key = %event.kv.key, "undecodable job event");
                return;
            };
            // One event shared by every subscriber: with thousands of watchers on a job, a
            // copy each would be this one task's work, and a slot each of every
            // subscriber's channel would hold a whole event (see `SUBSCRIBER_BUFFER`).
            // A full or closed channel drops the subscriber; a full one re-lists.
            let job_event = Arc::new(job_event);
            let before = subscribers.len();
            subscribers.retain(|tx| tx.try_send(job_event.clone()).is_ok());
            self.total -= before - subscribers.len();
            if subscribers.is_empty() {
                self.subscribers.remove(job_id);
            }
            self.update_count();
            return;
        }
        if let Some(change) = change_of(&event)
            && self.changes.receiver_count() > 0
        {
            let _ = self.changes.send(change);
        }
    }
}
