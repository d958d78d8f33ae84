//! Writing a session's reports to the store: in order per job, in transactions the
//! store accepts, never lost or repeated on a retry, and overlapping across jobs.
//!
//! A job's reports are written by one write at a time ([`write_reports`], which splits a
//! backlog into transactions of at most [`MAX_EVENTS_PER_WRITE`] events and about
//! [`MAX_EVENT_BYTES_PER_WRITE`] bytes). Different jobs' writes run at once in
//! [`Writes`], beside the session's loop: the loop goes on reading its worker and handing
//! over assignments while the store commits, instead of waiting a commit (an fsync, an
//! etcd round trip) per finished job. With one loop per worker that wait had capped a
//! worker at one job per commit latency, however many slots it had.

use std::{future::Future, pin::Pin};

use deephardway::v1::{Job, job_event::Event};
use futures::{StreamExt, stream::FuturesUnordered};

use super::reports::MAX_OUTPUT_PER_REPORT;
use crate::{
    jobs::{Fence, JobLifecycle, Rejected, StoredRecord},
    store::MAX_TXN_OPS,
};

type Write = Pin<Box<dyn Future<Output = (String, Written)> + Send>>;

/// A session's report writes in flight, at most one per job (the session keeps to that:
/// a job's writes must land in order). Each finishes with the job's id and its
/// [`Written`] outcome, for the session to settle.
#[derive(Default)]
pub(super) struct Writes {
    in_flight: FuturesUnordered<Write>,
}

impl Writes {
    /// Starts writing `events` of job `id`, after what `log` knows of its record.
    pub fn start(&mut self, lifecycle: &JobLifecycle, id: String, fence: Fence, log: ReportLog, events: Vec<Event>) {
        let lifecycle = lifecycle.clone();
        self.in_flight.push(Box::pin(async move {
            let written = write_reports(&lifecycle, &id, &fence, log, events).await;
            (id, written)
        }));
    }

    pub fn is_empty(&self) -> bool {
        self.in_flight.is_empty()
    }

    /// The next write to finish; `None` when none is in flight.
    pub async fn next(&mut self) -> Option<(String, Written)> {
        self.in_flight.next().await
    }
}

/// Reports in one transaction at most: with the job's record and the ops a final event
/// adds, within the store's [`MAX_TXN_OPS`]. A session that fell behind (a burst of
/// progress, a slow store) has more pending than that; one transaction with all of them
/// would be refused by etcd every time, and the job would never move again.
const MAX_EVENTS_PER_WRITE: usize = MAX_TXN_OPS - 16;

/// Bytes of events in one transaction at most (one event alone may be larger: an output
/// of [`MAX_OUTPUT_PER_REPORT`]). With the job's record, a transaction stays within
/// etcd's default request size limit (`--max-request-bytes`, 1.5 MiB): a larger one is
/// refused at every retry, like one with too many operations.
const MAX_EVENT_BYTES_PER_WRITE: usize = 1 << 20;

/// What a session knows of a running job's record and events in the store.
#[derive(Debug, Clone, Default)]
pub(super) struct ReportLog {
    /// The job's last event as of the session's last write that it saw succeed.
    pub last_seq: u64,
    /// A write failed since: it may have landed all the same (the store lost its answer).
    pub uncertain: bool,
    /// The record as that write left it, so that the next write needs no read of it
    /// (none after a failed write: the next one reads it).
    pub record: Option<StoredRecord>,
}

/// The outcome of [`write_reports`].
pub(super) struct Written {
    /// The last write's.
    pub outcome: Result<Job, Rejected>,
    /// The events not written: those of the write that failed and after it.
    pub unwritten: Vec<Event>,
    pub log: ReportLog,
}

/// Writes a job's reports in order, in transactions of at most [`MAX_EVENTS_PER_WRITE`]
/// events, so that a retry neither loses nor repeats any: after a failed write the
/// events not written are kept for the next try, which checks (with the job's last
/// event from before) whether the failed write landed after all.
async fn write_reports(
    lifecycle: &JobLifecycle,
    id: &str,
    fence: &Fence,
    mut log: ReportLog,
    mut events: Vec<Event>,
) -> Written {
    loop {
        let rest = events.split_off(first_write(&events));
        let after_seq = log.uncertain.then_some(log.last_seq);
        match lifecycle.report_from(id, fence, after_seq, &events, log.record.take()).await {
            Ok(record) => {
                let job = record.job.clone();
                log = ReportLog { last_seq: job.last_seq, uncertain: false, record: Some(record) };
                if rest.is_empty() || job.end_time.is_some() {
                    return Written { outcome: Ok(job), unwritten: Vec::new(), log };
                }
                events = rest;
            }
            Err(rejected) => {
                log.uncertain |= matches!(rejected, Rejected::Status(_));
                events.extend(rest);
                return Written { outcome: Err(rejected), unwritten: events, log };
            }
        }
    }
}

/// How many of `events` the next transaction writes: at least one, at most
/// [`MAX_EVENTS_PER_WRITE`], and no more than [`MAX_EVENT_BYTES_PER_WRITE`] of them
/// unless a single event is larger.
fn first_write(events: &[Event]) -> usize {
    let mut bytes = 0;
    for (i, event) in events.iter().enumerate().take(MAX_EVENTS_PER_WRITE) {
        bytes += event.encoded_len();
        if i > 0 && bytes > MAX_EVENT_BYTES_PER_WRITE {
            return i;
        }
    }
    events.len().min(MAX_EVENTS_PER_WRITE)
}

/// Merges the output chunks of one flush into as few events as fit
/// [`MAX_OUTPUT_PER_REPORT`] each, the first placed where the first chunk was; every other
/// event keeps its order. Text order is preserved. A session that fell behind holds many
/// chunks, and one merged event of them all could be larger than the store accepts.
pub(super) fn coalesce(events: Vec<Event>) -> Vec<Event> {
    let mut merged: Vec<Event> = Vec::with_capacity(events.len());
    let mut output_at: Option<usize> = None;
    for event in events {
        match (event, output_at) {
            (Event::Output(next), Some(i)) if matches!(&merged[i], Event::Output(o) if o.text.len() + next.text.len() <= MAX_OUTPUT_PER_REPORT) => {
                if let Event::Output(first) = &mut merged[i] {
                    first.text.push_str(&next.text);
                }
            }
            // The first output, or one the last merged output has no room for.
            (event @ Event::Output(_), _) => {
                output_at = Some(merged.len());
                merged.push(event);
            }
            (event, _) => merged.push(event),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use deephardway::v1::{JobOutput, JobProgress};

    #[test]
    fn output_merges_and_other_events_keep_their_order() {
        let out = |t: &str| Event::Output(JobOutput { text: t.into() });
        let progress = |f: f64| Event::Progress(JobProgress { fraction: f, ..Default::default() });
        let merged = coalesce(vec![progress(0.1), out("a"), out("b"), progress(0.5), out("c"), progress(0.9)]);
        assert_eq!(merged, vec![progress(0.1), out("abc"), progress(0.5), progress(0.9)]);
    }

    #[test]
    fn a_backlog_of_output_is_merged_and_written_in_pieces_a_store_accepts() {
        let out = |t: String| Event::Output(JobOutput { text: t });
        let chunk = |i: usize| char::from(b'a' + i as u8).to_string().repeat(300 * 1024);
        let merged = coalesce((0..7).map(|i| out(chunk(i))).collect());
        let texts: Vec<usize> = merged
            .iter()
            .map(|e| match e {
                Event::Output(o) => o.text.len(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(texts, [900 * 1024, 900 * 1024, 300 * 1024], "three chunks fit in 1 MiB, not four");
        let whole: String =
            merged.iter().map(|e| if let Event::Output(o) = e { o.text.as_str() } else { "" }).collect();
        assert_eq!(whole, (0..7).map(chunk).collect::<String>());
        // One write each: two of them would pass the bytes a write may hold.
        assert_eq!(first_write(&merged), 1);
        assert_eq!(first_write(&merged[2..]), 1);
        // Small events: as many as a transaction's operations allow.
        let small = vec![out("x".into()); 500];
        assert_eq!(first_write(&small), MAX_EVENTS_PER_WRITE);
    }
}
