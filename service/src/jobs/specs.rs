//! A job's request, stored apart from its record, so that disk per job is O(its data),
//! not O(its updates).
//!
//! The record (`/dhw/jobs/<id>`) is rewritten on every transition and every progress
//! report; the request's input can be megabytes (an embed job's texts, a classify job's
//! images). So the whole `JobSpec` is written once, at submit, to `/dhw/specs/<id>`, and
//! the record keeps the spec *without its input*: the model, priority, timeout and
//! attempts that ordering, lists and the BASIC view need, a few dozen bytes. A progress
//! report then writes a few hundred bytes however large the input is, and a store that
//! keeps history (etcd's revisions, the embedded log) keeps that much per report.
//!
//! The result stays in the record: it is written once, by the transition that finishes
//! the job, and the record is not rewritten after that.
//!
//! Readers that need the input [`join`] it: `GetJob`/`ListJobs`/`WatchJobs` in the FULL
//! view, the worker's assignment and the files it may fetch, request-id deduplication,
//! usage accounting, trained-model publishing. Records written before the split hold
//! their whole spec and have no spec key; they read as they are, and their next
//! transition moves the input out ([`split`] is applied to every record written).

use deephardway::v1::{Job, JobSpec};
use prost::Message;
use tonic::Status;

use crate::{
    keys,
    store::{Op, Store},
};

/// Takes the input out of `job`'s spec, so that `job` is what its record holds. Returns
/// the write of the whole spec to its own key if there was an input to take (at submit,
/// or once for a record from before the split), `None` if the record already is small.
pub(super) fn split(job: &mut Job) -> Option<Op> {
    let spec = job.spec.as_mut()?;
    spec.input.as_ref()?;
    let whole = spec.encode_to_vec();
    spec.input = None;
    Some(Op::put(keys::spec(&job.id), whole))
}

/// Puts the whole request back into `job`, a record as stored: from its spec key, or, for
/// a record from before the split (whose spec still has its input), from the record
/// itself. A job being removed may have lost its spec key already; it keeps the record's.
pub async fn join(store: &dyn Store, job: &mut Job) -> Result<(), Status> {
    if job.spec.as_ref().is_some_and(|s| s.input.is_some()) {
        return Ok(());
    }
    if let Some(spec) = read(store, &job.id).await? {
        job.spec = Some(spec);
    }
    Ok(())
}

/// The whole request of job `id` from its spec key, if it has one.
pub(super) async fn read(store: &dyn Store, id: &str) -> Result<Option<JobSpec>, Status> {
    let key = keys::spec(id);
    let Some(kv) = store.get(&key).await? else { return Ok(None) };
    let spec =
        JobSpec::decode(kv.value.as_slice()).map_err(|e| Status::internal(format!("corrupt spec {key}: {e}")))?;
    Ok(Some(spec))
}

#[cfg(test)]
mod tests {
    use deephardway::v1::{DiagnosticInput, job_spec::Input};

    use super::*;

    fn job() -> Job {
        let input = Input::Diagnostic(DiagnosticInput { steps: 3, ..Default::default() });
        Job {
            id: "j".into(),
            spec: Some(JobSpec { input: Some(input), priority: 7, ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn split_keeps_all_but_the_input_in_the_record() {
        let whole = job();
        let mut record = whole.clone();
        let Some(Op::Put { key, value, .. }) = split(&mut record) else { panic!("the spec is written") };
        assert_eq!(key, keys::spec("j"));
        assert_eq!(JobSpec::decode(value.as_slice()).unwrap(), whole.spec.clone().unwrap());
        assert_eq!(record.spec, Some(JobSpec { input: None, ..whole.spec.unwrap() }));
        assert!(split(&mut record).is_none(), "a split record writes no spec again");
    }
}
