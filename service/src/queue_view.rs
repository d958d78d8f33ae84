//! The replica's in-memory view of every queue: where each queued job stands in line,
//! and how fast each line moves, for live positions and start estimates.
//!
//! Positions are not stored: storing them would cost a write per queued job on every
//! dispatch (O(queue length)). Every replica already sees every change to `/dhw/queue/`
//! through its one store watch ([`crate::hub`]), and queue keys sort in dispatch order,
//! so each replica keeps an ordered set of keys per served model and answers
//! "position of job X" as a rank query. The hub feeds it from its watch task, each
//! event in the order the store wrote it and before it routes the next. A claim deletes
//! the queue entry before it writes `started`, so a watcher that receives `started` never
//! sees the job in line afterwards; a requeue writes `queued` before the entry (see
//! `rpc::jobs`, which sends that place when the view has it). The hub loads the queues
//! with one range at start and again whenever the watch had to restart from a newer
//! revision (compaction).
//!
//! A line is a sorted `VecDeque` of order keys, so a rank is a binary search: O(log n)
//! for every watcher that asks, however long the line. Dispatch takes from the front
//! and ordinary submits add at the back, both O(1) in a deque; an entry with a higher
//! priority is inserted in the middle, moving at most half the line's keys (pointers).
//!
//! Every change to a line moves the place of every job behind it, so a watcher that woke
//! at each one would cost the replica (waiting watchers × dispatches) wake-ups. A watcher
//! follows [`QueueView::changes`] only until it has a status to send (sent at most every
//! 250 ms); until then it waits on its job's [`QueueView::next_signal`], which changes
//! only when that job becomes first in its line, so that "next" still goes out at once.
//!
//! The dispatch rate counts claims: a queue entry deleted in the same revision as the
//! job's claim was put (one claim transaction does both). Cancels and dropped stale
//! entries also delete entries but are not starts, so they do not count.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use deephardway::v1::QueueStatus;
use tokio::sync::watch;

use crate::{
    keys,
    store::{EventKind, KeyValue, WatchEvent},
};

/// The dispatch rate is the number of starts over this window.
pub const RATE_WINDOW: Duration = Duration::from_secs(60);
/// Starts remembered per line: enough for the window at thousands of starts a second.
const MAX_STARTS: usize = 100_000;

/// A cheap handle to the replica's queue view.
#[derive(Clone)]
pub struct QueueView {
    state: Arc<Mutex<State>>,
    /// Bumped on every change to any line, so that watchers wake up and re-ask.
    version: Arc<watch::Sender<u64>>,
    /// The store revision of the last watch event the hub handed over (whatever its
    /// key), so that a submit can wait until the view has this replica's latest write.
    seen: Arc<watch::Sender<i64>>,
}

#[derive(Default)]
struct State {
    lines: HashMap<String, Line>,
    /// Job id → (served model, the entry's order key), to find a job's line and place.
    entries: HashMap<String, (String, String)>,
    /// Entries deleted and claims put in the revision being applied, to pair them up
    /// into starts whatever the order of a transaction's events.
    revision: i64,
    departed: HashMap<String, String>,
    claimed: HashSet<String>,
    /// Job id → the signal its watchers wait on to learn, without following every
    /// change to the lines, that it became first in its line (see [`QueueView::next_signal`]).
    next_signals: HashMap<String, watch::Sender<()>>,
}

#[derive(Default)]
struct Line {
    /// Order keys (`<rank><created>/<id>`), sorted: key order is dispatch order.
    order: SortedKeys,
    /// When jobs of this line started, oldest first, within [`RATE_WINDOW`].
    starts: VecDeque<Instant>,
}

/// Sorted, distinct keys with O(log n) rank.
#[derive(Default)]
struct SortedKeys(VecDeque<String>);

impl SortedKeys {
    /// Where `key` is, or would be: the number of keys before it.
    fn search(&self, key: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|k| k.as_str().cmp(key))
    }

    fn insert(&mut self, key: &str) {
        if let Err(at) = self.search(key) {
            self.0.insert(at, key.to_string());
        }
    }

    fn remove(&mut self, key: &str) {
        if let Ok(at) = self.search(key) {
            self.0.remove(at);
        }
    }

    fn rank(&self, key: &str) -> usize {
        self.search(key).unwrap_or_else(|at| at)
    }

    fn first(&self) -> Option<&String> {
        self.0.front()
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

impl Line {
    fn forget_before(&mut self, now: Instant) {
        while self.starts.front().is_some_and(|t| now.duration_since(*t) > RATE_WINDOW) {
            self.starts.pop_front();
        }
    }

    /// Starts per second: with n starts in the window, the first at t1, (n - 1) / (now -
    /// t1). Counting from the first start (not the window's beginning) gives a usable
    /// rate after two starts instead of after a full minute, and the time since the
    /// last start is included, so a line that stopped moving slows down, then unknown.
    fn rate(&mut self, now: Instant) -> Option<f64> {
        self.forget_before(now);
        let n = self.starts.len();
        let first = *self.starts.front()?;
        let span = now.duration_since(first).as_secs_f64();
        (n >= 2 && span > 0.0).then(|| (n - 1) as f64 / span)
    }
}

/// Splits a queue entry key into (served model, order key, job id).
fn parse(key: &str) -> Option<(&str, &str, &str)> {
    let rest = key.strip_prefix(keys::QUEUE)?;
    let (model, order) = rest.split_once('/')?;
    Some((model, order, keys::last_segment(order)))
}

impl Default for QueueView {
    fn default() -> Self {
        Self::new()
    }
}

impl QueueView {
    pub fn new() -> Self {
        Self { state: Default::default(), version: Arc::new(watch::channel(0).0), seen: Arc::new(watch::channel(0).0) }
    }

    /// Replaces every line with the entries of a range of [`keys::QUEUE`] read at
    /// `revision` (rates are kept: they are about the past).
    pub fn reset(&self, entries: &[KeyValue], revision: i64) {
        let mut state = self.state.lock().expect("queue view lock");
        state.entries.clear();
        for line in state.lines.values_mut() {
            line.order.clear();
        }
        for kv in entries {
            if let Some((model, order, id)) = parse(&kv.key) {
                state.entries.insert(id.to_string(), (model.to_string(), order.to_string()));
                state.lines.entry(model.to_string()).or_default().order.insert(order);
            }
        }
        // Every signal fires: a job may have become next, or left the line, in the
        // revisions the view missed (its watchers look again).
        let State { next_signals, entries, .. } = &mut *state;
        next_signals.retain(|id, signal| {
            signal.send_replace(());
            entries.contains_key(id)
        });
        drop(state);
        self.seen_up_to(revision);
        self.bump();
    }

    /// Applies one event of the store watch (events outside the queue and claims are
    /// ignored, but count as seen).
    pub fn apply(&self, event: &WatchEvent) {
        self.apply_entry(event);
        self.seen_up_to(event.kv.mod_revision);
    }

    /// Marks `revision` as seen (a watch event's, or a range read's).
    fn seen_up_to(&self, revision: i64) {
        self.seen.send_if_modified(|seen| std::mem::replace(seen, revision.max(*seen)) < revision);
    }

    /// Waits until the view has seen a change at `revision` or later (the revision of one
    /// of this replica's own writes: the hub's watch sees every one), for at most `within`.
    /// False if it has not by then (the hub's watch is restarting, say).
    pub async fn caught_up(&self, revision: i64, within: Duration) -> bool {
        let mut seen = self.seen.subscribe();
        tokio::time::timeout(within, seen.wait_for(|seen| *seen >= revision)).await.is_ok_and(|r| r.is_ok())
    }

    /// Where a queue entry (a key under [`keys::QUEUE`]) stands or would stand in its
    /// line: the number of entries before it.
    pub fn place(&self, entry_key: &str) -> Option<u32> {
        let (model, order, _) = parse(entry_key)?;
        let state = self.state.lock().expect("queue view lock");
        let ahead = state.lines.get(model).map_or(0, |line| line.order.rank(order));
        Some(u32::try_from(ahead).unwrap_or(u32::MAX))
    }

    /// Jobs waiting in every line.
    pub fn total(&self) -> usize {
        self.state.lock().expect("queue view lock").lines.values().map(|l| l.order.len()).sum()
    }

    fn apply_entry(&self, event: &WatchEvent) {
        let key = event.kv.key.as_str();
        let is_claim = event.kind == EventKind::Put && key.starts_with(keys::CLAIMS);
        let entry = parse(key);
        if !is_claim && entry.is_none() {
            return;
        }
        let mut state = self.state.lock().expect("queue view lock");
        if state.revision != event.kv.mod_revision {
            state.revision = event.kv.mod_revision;
            state.departed.clear();
            state.claimed.clear();
        }
        if is_claim {
            let id = keys::last_segment(key);
            match state.departed.remove(id) {
                Some(model) => state.started(&model),
                None => {
                    state.claimed.insert(id.to_string());
                }
            }
            return;
        }
        let Some((model, order, id)) = entry else { return };
        let head_before = state.lines.get(model).and_then(|line| line.order.first().cloned());
        match event.kind {
            EventKind::Put => {
                state.entries.insert(id.to_string(), (model.to_string(), order.to_string()));
                state.lines.entry(model.to_string()).or_default().order.insert(order);
            }
            EventKind::Delete => {
                state.entries.remove(id);
                if let Some(line) = state.lines.get_mut(model) {
                    line.order.remove(order);
                }
                if state.claimed.remove(id) {
                    state.started(model);
                } else {
                    state.departed.insert(id.to_string(), model.to_string());
                }
                // Out of line: its watchers' signal closes (they stop waiting on it).
                state.next_signals.remove(id);
            }
        }
        // A new first in line: its watchers' signal changes.
        if let Some(head) = state.lines.get(model).and_then(|line| line.order.first())
            && Some(head) != head_before.as_ref()
            && let Some(signal) = state.next_signals.get(keys::last_segment(head))
        {
            signal.send_replace(());
        }
        drop(state);
        self.bump();
    }

    fn bump(&self) {
        self.version.send_modify(|v| *v += 1);
    }

    /// Changes whenever any line changes.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Where `job_id` stands in line now, or `None` if it is not queued.
    pub fn status(&self, job_id: &str) -> Option<QueueStatus> {
        let mut state = self.state.lock().expect("queue view lock");
        let (model, order) = state.entries.get(job_id)?.clone();
        let line = state.lines.get_mut(&model)?;
        let position = line.order.rank(&order);
        let position = u32::try_from(position).unwrap_or(u32::MAX);
        let rate = line.rate(Instant::now());
        // It starts with the (position + 1)-th start from now.
        let estimated_start_time = rate.map(|rate| {
            let wait = Duration::from_secs_f64((f64::from(position) + 1.0) / rate);
            prost_types::Timestamp::from(SystemTime::now() + wait)
        });
        Some(QueueStatus { position, estimated_start_time, dispatch_rate: rate.unwrap_or(0.0) })
    }

    /// A signal that changes when `job_id` becomes first in its line, and closes when it
    /// leaves the line; `None` if it is not in line. A watcher waits on this instead of
    /// on [`QueueView::changes`] between the statuses it sends: with many jobs waiting,
    /// every dispatch changes every line's positions, and waking every watcher at each
    /// one would cost the replica (watchers × dispatches) wake-ups.
    pub fn next_signal(&self, job_id: &str) -> Option<watch::Receiver<()>> {
        let mut state = self.state.lock().expect("queue view lock");
        if !state.entries.contains_key(job_id) {
            return None;
        }
        Some(state.next_signals.entry(job_id.to_string()).or_insert_with(|| watch::channel(()).0).subscribe())
    }

    /// Whether `job_id` is first in its line: cheap (no rank), for watchers deciding
    /// whether a change is worth computing a status for at once.
    pub fn is_next(&self, job_id: &str) -> bool {
        let state = self.state.lock().expect("queue view lock");
        let Some((model, order)) = state.entries.get(job_id) else { return false };
        state.lines.get(model).and_then(|line| line.order.first()) == Some(order)
    }

    /// Jobs in `served_model`'s line.
    pub fn len(&self, served_model: &str) -> usize {
        self.state.lock().expect("queue view lock").lines.get(served_model).map_or(0, |l| l.order.len())
    }

    pub fn is_empty(&self, served_model: &str) -> bool {
        self.len(served_model) == 0
    }
}

impl State {
    fn started(&mut self, model: &str) {
        let line = self.lines.entry(model.to_string()).or_default();
        let now = Instant::now();
        line.forget_before(now);
        if line.starts.len() >= MAX_STARTS {
            line.starts.pop_front();
        }
        line.starts.push_back(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, revision: i64) -> KeyValue {
        KeyValue {
            key: key.to_string(),
            value: Vec::new(),
            create_revision: revision,
            mod_revision: revision,
            lease: 0,
        }
    }

    fn event(kind: EventKind, key: &str, revision: i64) -> WatchEvent {
        WatchEvent { kind, kv: kv(key, revision) }
    }

    #[test]
    fn positions_follow_the_line_and_starts_set_the_rate() {
        let view = QueueView::new();
        let a = keys::queue_entry("m", 0, 1, "a");
        let b = keys::queue_entry("m", 0, 2, "b");
        let urgent = keys::queue_entry("m", 50, 3, "urgent");
        view.reset(&[kv(&a, 1)], 1);
        view.apply(&event(EventKind::Put, &b, 2));
        assert_eq!(view.status("a").unwrap().position, 0);
        assert_eq!(view.status("b").unwrap().position, 1);
        view.apply(&event(EventKind::Put, &urgent, 3));
        assert_eq!(view.status("b").unwrap().position, 2, "a higher priority goes ahead");
        assert!(view.status("b").unwrap().estimated_start_time.is_none(), "no rate yet");
        // A claim: entry deleted and claim put in one revision (either order).
        view.apply(&event(EventKind::Delete, &urgent, 4));
        view.apply(&event(EventKind::Put, &keys::claim("urgent"), 4));
        view.apply(&event(EventKind::Put, &keys::claim("a"), 5));
        view.apply(&event(EventKind::Delete, &a, 5));
        let status = view.status("b").unwrap();
        assert_eq!(status.position, 0);
        assert!(status.dispatch_rate > 0.0 && status.estimated_start_time.is_some(), "{status:?}");
        assert!(view.status("a").is_none(), "started jobs are not in line");
        // A cancel deletes the entry without a claim: not a start.
        let starts = view.state.lock().unwrap().lines["m"].starts.len();
        view.apply(&event(EventKind::Delete, &b, 6));
        assert_eq!(view.state.lock().unwrap().lines["m"].starts.len(), starts);
        assert!(view.is_empty("m"));
    }

    #[test]
    fn a_next_signal_changes_only_when_its_job_becomes_first_and_closes_when_it_leaves() {
        let view = QueueView::new();
        let entries: Vec<String> = (0..4).map(|i| keys::queue_entry("m", 0, i, &format!("j{i}"))).collect();
        view.reset(&entries.iter().map(|key| kv(key, 1)).collect::<Vec<_>>(), 1);
        let mut last = view.next_signal("j3").expect("j3 is in line");
        let mut third = view.next_signal("j2").expect("j2 is in line");
        assert!(view.next_signal("elsewhere").is_none(), "no signal for a job not in line");
        // Jobs join behind and in other lines, the first starts: j3 is not first yet.
        view.apply(&event(EventKind::Put, &keys::queue_entry("m", 0, 9, "late"), 2));
        view.apply(&event(EventKind::Put, &keys::queue_entry("other", 0, 1, "x"), 3));
        view.apply(&event(EventKind::Delete, &entries[0], 4));
        assert!(!last.has_changed().unwrap(), "three moves of the lines, and j3 is still behind");
        assert!(!third.has_changed().unwrap());
        view.apply(&event(EventKind::Delete, &entries[1], 5));
        assert!(third.has_changed().unwrap(), "j2 is first now");
        third.mark_unchanged();
        // A higher priority goes ahead of j2, then starts: j2 is first again.
        let urgent = keys::queue_entry("m", 50, 7, "urgent");
        view.apply(&event(EventKind::Put, &urgent, 6));
        view.apply(&event(EventKind::Delete, &urgent, 7));
        assert!(third.has_changed().unwrap(), "first again after the urgent job");
        view.apply(&event(EventKind::Delete, &entries[2], 8));
        assert!(third.has_changed().is_err(), "j2 left the line: its signal is closed");
        assert!(last.has_changed().unwrap(), "j3 is first now");
        last.mark_unchanged();
        view.apply(&event(EventKind::Delete, &entries[3], 9));
        assert!(last.has_changed().is_err());
        assert!(view.state.lock().unwrap().next_signals.is_empty(), "no signal outlives its job's place in line");
    }

    #[test]
    fn ranks_follow_inserts_and_removals_anywhere_in_a_long_line() {
        let view = QueueView::new();
        let entry = |priority, i: i64| keys::queue_entry("m", priority, i, &format!("job-{i:05}"));
        let entries: Vec<KeyValue> = (0..10_000).map(|i| kv(&entry(0, i), 1)).collect();
        view.reset(&entries, 1);
        assert_eq!(view.status("job-09999").unwrap().position, 9_999);
        assert_eq!(view.status("job-05000").unwrap().position, 5_000);
        // A higher priority goes ahead of everyone; the first two leave.
        view.apply(&event(EventKind::Put, &entry(5, 20_000), 2));
        view.apply(&event(EventKind::Delete, &entry(0, 0), 3));
        view.apply(&event(EventKind::Delete, &entry(0, 1), 3));
        assert_eq!(view.status("job-20000").unwrap().position, 0);
        assert!(view.is_next("job-20000"));
        assert_eq!(view.status("job-05000").unwrap().position, 4_999);
        assert_eq!(view.status("job-09999").unwrap().position, 9_998);
        assert!(view.status("job-00000").is_none());
        assert_eq!(view.len("m"), 9_999);
    }
}
