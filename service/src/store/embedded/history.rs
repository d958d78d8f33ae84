//! How much of the log the embedded store keeps for watches to resume from, and which
//! revisions go when it is too much.
//!
//! The log holds every revision's changes with their full values, so a bound in
//! revisions alone is no bound on disk: 100,000 revisions of 1 MiB values are 100 GB.
//! History is bounded both ways: at most [`HistoryLimits::revisions`] revisions and at most
//! [`HistoryLimits::bytes`] of encoded changes. Past either, the oldest revisions are
//! compacted (deleted from the log; a watch from them fails with `Compacted` and the
//! watcher re-lists, as after any compaction). redb reuses the freed pages, so the file
//! stops growing once history is at its bound; live data is what remains.
//!
//! The size of every logged revision is kept in memory (16 bytes a revision), so that
//! choosing what to compact reads nothing from disk.

use std::collections::VecDeque;

use redb::ReadableTable;

use super::internal;
use crate::store::StoreError;

/// Revisions of history kept for watches, by default.
pub const HISTORY: i64 = 100_000;
/// Bytes of history kept for watches, by default. A watcher that fell behind resumes from
/// this much of recent changes before it has to re-list instead: tens of thousands of
/// ordinary job updates (a progress report logs about 500 bytes), several times what a
/// watcher may fall behind before it is dropped (8,192 events).
pub const HISTORY_BYTES: u64 = 32 << 20;
/// History is compacted in steps of at most this many revisions per commit.
const COMPACTION_STEP: usize = 10_000;

/// The bounds on history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    /// The most revisions kept (at least 1).
    pub revisions: i64,
    /// The most bytes of logged changes kept; the newest revision is kept whatever its size.
    pub bytes: u64,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        HistoryLimits { revisions: HISTORY, bytes: HISTORY_BYTES }
    }
}

/// The logged revisions and their sizes, oldest first, mirroring the log table.
pub(super) struct History {
    limits: HistoryLimits,
    sizes: VecDeque<(i64, u64)>,
    bytes: u64,
}

impl History {
    /// Reads the log's revisions and sizes (once, when the store opens).
    pub fn load(log: &impl ReadableTable<i64, &'static [u8]>, limits: HistoryLimits) -> Result<History, StoreError> {
        let mut history = History {
            limits: HistoryLimits { revisions: limits.revisions.max(1), bytes: limits.bytes },
            sizes: VecDeque::with_capacity(log.len().map_err(internal)? as usize),
            bytes: 0,
        };
        for item in log.iter().map_err(internal)? {
            let (revision, value) = item.map_err(internal)?;
            history.push(revision.value(), value.value().len());
        }
        Ok(history)
    }

    /// A revision was logged with `len` bytes of changes.
    pub fn push(&mut self, revision: i64, len: usize) {
        self.sizes.push_back((revision, len as u64));
        self.bytes += len as u64;
    }

    /// Bytes of logged changes kept.
    #[cfg(test)]
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Takes out of the mirror the oldest revisions that must go, and returns the newest
    /// of them (the log up to it is to be deleted), or `None` if nothing must.
    ///
    /// Compaction happens in steps, so that most commits delete nothing: by count, once a
    /// tenth of the kept revisions (at most 1,000) is over the bound; by bytes, once the
    /// bound is passed, down to seven eighths of it. At most [`COMPACTION_STEP`]
    /// revisions per call, so one commit never deletes much; the next catches up.
    pub fn compact(&mut self, revision: i64) -> Option<i64> {
        let floor = revision - self.limits.revisions;
        let oldest = self.sizes.front()?.0;
        let over_count = floor >= oldest + (self.limits.revisions / 10).clamp(1, 1000);
        let over_bytes = self.bytes > self.limits.bytes;
        if !over_count && !over_bytes {
            return None;
        }
        let target = if over_bytes { self.limits.bytes - self.limits.bytes / 8 } else { u64::MAX };
        let mut upto = None;
        for _ in 0..COMPACTION_STEP {
            let Some(&(oldest, len)) = self.sizes.front() else { break };
            // The newest revision stays, so a watch from it can always start.
            let must = oldest <= floor || (self.bytes > target && self.sizes.len() > 1);
            if !must {
                break;
            }
            self.sizes.pop_front();
            self.bytes -= len;
            upto = Some(oldest);
        }
        upto
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(revisions: i64, bytes: u64) -> History {
        History { limits: HistoryLimits { revisions, bytes }, sizes: VecDeque::new(), bytes: 0 }
    }

    #[test]
    fn compacts_by_count_in_steps() {
        let mut h = history(100, u64::MAX);
        for r in 1..=110 {
            h.push(r, 10);
            assert_eq!(h.compact(r), None, "within a step of the bound at {r}");
        }
        h.push(111, 10);
        assert_eq!(h.compact(111), Some(11), "a step over: down to the bound");
        assert_eq!(h.compact(111), None);
    }

    #[test]
    fn compacts_by_bytes_down_to_seven_eighths() {
        let mut h = history(1_000_000, 800);
        for r in 1..=8 {
            h.push(r, 100);
            assert_eq!(h.compact(r), None);
        }
        h.push(9, 100);
        assert_eq!(h.compact(9), Some(2), "900 bytes > 800: down to 700");
        assert_eq!(h.bytes(), 700);
    }

    #[test]
    fn keeps_the_newest_revision_whatever_its_size() {
        let mut h = history(1_000_000, 100);
        h.push(1, 10);
        h.push(2, 1000);
        assert_eq!(h.compact(2), Some(1));
        assert_eq!(h.bytes(), 1000);
        assert_eq!(h.compact(2), None, "the newest stays");
    }
}
