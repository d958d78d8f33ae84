//! Jobs this replica submitted that no claim has taken yet: each one's record as written,
//! the revision it was written at, and its whole request.
//!
//! A claim needs the job's record (to compare its revision and write the next one) and
//! its request (the worker's assignment carries it). Read from the store they are two
//! reads a job, a third of the store calls a job makes; on etcd each is a round trip
//! through the leader. A replica's dispatcher mostly claims jobs it queued itself, which
//! it has just written, so the claim takes them from here instead ([`Submitted::take`]).
//!
//! Nothing here can be stale in a way that matters: the claim's transaction still
//! compares the record's revision, so a job changed since (cancelled, say, by another
//! replica) fails that comparison and is not claimed, and the next claim of it reads the
//! store. An entry is taken out by the claim that uses it, whatever its outcome, or when
//! the replica sees the job leave the line otherwise (claimed by another replica,
//! cancelled: see [`JobLifecycle::left_the_line`](super::JobLifecycle::left_the_line)).
//!
//! Bounded: at most [`MAX_JOBS`] jobs and [`MAX_BYTES`] of requests; past either the
//! oldest go (ids are UUIDv7s, so their order is the order of submission), and their
//! claims read the store as before.

use std::{collections::BTreeMap, sync::Mutex};

use deephardway::v1::{Job, JobSpec};
use prost::Message;

const MAX_JOBS: usize = 16_384;
const MAX_BYTES: usize = 32 << 20;

/// A job as its submit wrote it.
pub(super) struct Written {
    /// The record (its spec without the input).
    pub record: Job,
    /// The record's revision, which the claim compares.
    pub revision: i64,
    /// The whole request.
    pub spec: JobSpec,
}

#[derive(Default)]
pub(super) struct Submitted {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    jobs: BTreeMap<String, (Written, usize)>,
    bytes: usize,
}

impl Submitted {
    /// Keeps `written`, dropping the oldest entries past the bounds.
    pub(super) fn insert(&self, written: Written) {
        let size = written.spec.encoded_len() + written.record.encoded_len();
        if size > MAX_BYTES {
            return;
        }
        let mut inner = self.inner.lock().expect("not poisoned");
        let id = written.record.id.clone();
        if let Some((_, old)) = inner.jobs.insert(id, (written, size)) {
            inner.bytes -= old;
        }
        inner.bytes += size;
        while inner.jobs.len() > MAX_JOBS || inner.bytes > MAX_BYTES {
            let Some((_, (_, size))) = inner.jobs.pop_first() else { break };
            inner.bytes -= size;
        }
    }

    /// Takes job `id` out, if it is here.
    pub(super) fn take(&self, id: &str) -> Option<Written> {
        let mut inner = self.inner.lock().expect("not poisoned");
        let (written, size) = inner.jobs.remove(id)?;
        inner.bytes -= size;
        Some(written)
    }

    /// How many jobs are kept.
    pub(super) fn count(&self) -> usize {
        self.inner.lock().expect("not poisoned").jobs.len()
    }

    #[cfg(test)]
    fn len(&self) -> (usize, usize) {
        let inner = self.inner.lock().expect("not poisoned");
        (inner.jobs.len(), inner.bytes)
    }
}

#[cfg(test)]
mod tests {
    use deephardway::v1::{EmbedInput, job_spec::Input};

    use super::*;

    fn written(id: String, text_bytes: usize) -> Written {
        let input = Input::Embed(EmbedInput { texts: vec!["x".repeat(text_bytes)] });
        Written {
            record: Job { id, ..Default::default() },
            revision: 7,
            spec: JobSpec { input: Some(input), ..Default::default() },
        }
    }

    #[test]
    fn a_job_is_taken_once() {
        let submitted = Submitted::default();
        submitted.insert(written("a".into(), 10));
        let taken = submitted.take("a").expect("kept");
        assert_eq!((taken.record.id.as_str(), taken.revision), ("a", 7));
        assert!(submitted.take("a").is_none(), "taken out");
        assert_eq!(submitted.len(), (0, 0));
    }

    #[test]
    fn the_oldest_go_past_the_bounds() {
        let submitted = Submitted::default();
        // By count: ids in submission order, as UUIDv7s are.
        for i in 0..MAX_JOBS + 10 {
            submitted.insert(written(format!("{i:08}"), 1));
        }
        assert_eq!(submitted.len().0, MAX_JOBS);
        assert!(submitted.take("00000009").is_none() && submitted.take("00000010").is_some());
        // By bytes: 1 MiB requests.
        let submitted = Submitted::default();
        for i in 0..40 {
            submitted.insert(written(format!("{i:08}"), 1 << 20));
        }
        let (jobs, bytes) = submitted.len();
        assert!(bytes <= MAX_BYTES && jobs < 32, "{jobs} jobs, {bytes} bytes");
        assert!(submitted.take("00000039").is_some() && submitted.take("00000000").is_none());
        // One request past the bound alone is not kept.
        submitted.insert(written("big".into(), MAX_BYTES + 1));
        assert!(submitted.take("big").is_none());
    }
}
