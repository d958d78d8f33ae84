//! The key layout in the store. Everything deephardway writes lives under `/dhw/`, so one
//! watch on that prefix shows a replica every change.
//!
//! ```text
//! /dhw/jobs/<id>                              Job record (protobuf), without its input
//! /dhw/specs/<id>                             the job's request (protobuf JobSpec, input
//!                                             included), written once at submit
//! /dhw/events/<id>/<seq:020>                  one event of the job (protobuf), append-only
//! /dhw/traces/<id>                            the job's trace context (a W3C traceparent),
//!                                             written at submit while traces are on
//! /dhw/queue/<model>/<rank:03><created:020>/<id>  a queued job; key order = dispatch order
//! /dhw/claims/<id>                            the worker running the job, on its lease
//! /dhw/running/<id>                           index of running jobs (not on a lease)
//! /dhw/workers/<worker-id>                    a connected worker (JSON), on its lease
//! /dhw/done/<finished:020>/<id>               finished jobs by time, for retention
//! /dhw/keys/<name>                            an API key (JSON, with its secret's hash)
//! /dhw/counted/<id>                           the job's usage was counted (see `usage`)
//! /dhw/tenants/<tenant>/requests/<request-id> idempotency key → job id
//! /dhw/tenants/<tenant>/datasets/<name>       an uploaded dataset (protobuf Dataset)
//! /dhw/tenants/<tenant>/models/<name>/<version:010>  a trained model version (protobuf TrainedModel)
//! /dhw/tenants/<tenant>/active/<key>/<id>     a queued or running job of an API key (quotas)
//! /dhw/tenants/<tenant>/running/<key>/<id>    a running job of an API key (quotas)
//! /dhw/usage/<tenant>/<key>                   what an API key used (protobuf Usage)
//! /dhw/served/<kind>/<model>                  a model a worker served lately (JSON), kept
//!                                             so jobs for it queue while no worker is connected
//! ```
//!
//! Dataset archives and model weights are not in the store but in the artifact store
//! (see `artifacts`), at the paths their records name.
//!
//! What a tenant names (request ids, datasets, trained models) lives under the tenant's
//! prefix, so names never collide across tenants and a lookup cannot reach another
//! tenant's. Jobs are found by id (a UUIDv7 with 74 random bits, made by the service)
//! and carry their tenant in the record, which every read checks
//! (`JobLifecycle::get_for`).
//!
//! A job's record is rewritten on every transition and progress report, so it holds
//! only what changes and what lists need; its request, which can be megabytes of input,
//! is written once under `/dhw/specs/` (see `jobs::specs`). Records written before that
//! split hold their whole spec and have no spec key.
//!
//! `rank` is `100 - priority`, so higher priorities sort first; `created` is the job's
//! submission time in microseconds, so equal priorities run first-come first-served,
//! and a job put back in line after a worker was lost keeps its original place.

pub const ROOT: &str = "/dhw/";
pub const JOBS: &str = "/dhw/jobs/";
pub const SPECS: &str = "/dhw/specs/";
pub const EVENTS: &str = "/dhw/events/";
pub const QUEUE: &str = "/dhw/queue/";
pub const CLAIMS: &str = "/dhw/claims/";
pub const RUNNING: &str = "/dhw/running/";
pub const WORKERS: &str = "/dhw/workers/";
pub const DONE: &str = "/dhw/done/";
pub const API_KEYS: &str = "/dhw/keys/";
pub const COUNTED: &str = "/dhw/counted/";
pub const TENANTS: &str = "/dhw/tenants/";
pub const USAGE: &str = "/dhw/usage/";
pub const SERVED: &str = "/dhw/served/";
pub const TRACES: &str = "/dhw/traces/";

pub fn job(id: &str) -> String {
    format!("{JOBS}{id}")
}

/// A job's request, apart from its often-rewritten record.
pub fn spec(id: &str) -> String {
    format!("{SPECS}{id}")
}

/// A job's trace context (see `traces`).
pub fn trace(id: &str) -> String {
    format!("{TRACES}{id}")
}

pub fn events(id: &str) -> String {
    format!("{EVENTS}{id}/")
}

pub fn event(id: &str, seq: u64) -> String {
    format!("{EVENTS}{id}/{seq:020}")
}

pub fn queue(model: &str) -> String {
    format!("{QUEUE}{model}/")
}

pub fn queue_entry(model: &str, priority: i32, created_micros: i64, id: &str) -> String {
    let rank = 100 - priority.clamp(-100, 100);
    format!("{QUEUE}{model}/{rank:03}{created_micros:020}/{id}")
}

pub fn claim(id: &str) -> String {
    format!("{CLAIMS}{id}")
}

/// Running jobs, indexed so that finding ones whose claim vanished needs no full scan.
pub fn running(id: &str) -> String {
    format!("{RUNNING}{id}")
}

pub fn worker(worker_id: &str) -> String {
    format!("{WORKERS}{worker_id}")
}

pub fn request(tenant: &str, request_id: &str) -> String {
    format!("{TENANTS}{tenant}/requests/{request_id}")
}

pub fn api_key(name: &str) -> String {
    format!("{API_KEYS}{name}")
}

/// Marks a finished job whose usage was added to its key's counters.
pub fn counted(id: &str) -> String {
    format!("{COUNTED}{id}")
}

/// A queued or running job of an API key, for its quota.
pub fn active(tenant: &str, key: &str, id: &str) -> String {
    format!("{TENANTS}{tenant}/active/{key}/{id}")
}

pub fn active_jobs(tenant: &str, key: &str) -> String {
    format!("{TENANTS}{tenant}/active/{key}/")
}

/// Usage is kept apart from the tenants' own prefixes so that an admin reads every
/// tenant's in one range.
/// A running job of an API key, for its quota.
pub fn running_of(tenant: &str, key: &str, id: &str) -> String {
    format!("{TENANTS}{tenant}/running/{key}/{id}")
}

pub fn running_jobs_of(tenant: &str, key: &str) -> String {
    format!("{TENANTS}{tenant}/running/{key}/")
}

pub fn usage(tenant: &str, key: &str) -> String {
    format!("{USAGE}{tenant}/{key}")
}

pub fn tenant_usage(tenant: &str) -> String {
    format!("{USAGE}{tenant}/")
}

pub fn done(finished_micros: i64, id: &str) -> String {
    format!("{DONE}{finished_micros:020}/{id}")
}

/// A model served for jobs of `kind` (a `JobKind` number), remembered after its worker left.
pub fn served(kind: i32, model: &str) -> String {
    format!("{SERVED}{kind}/{model}")
}

pub fn datasets(tenant: &str) -> String {
    format!("{TENANTS}{tenant}/datasets/")
}

pub fn dataset(tenant: &str, name: &str) -> String {
    format!("{TENANTS}{tenant}/datasets/{name}")
}

/// Every trained model of a tenant.
pub fn models(tenant: &str) -> String {
    format!("{TENANTS}{tenant}/models/")
}

/// Every version of a trained model.
pub fn model_versions(tenant: &str, name: &str) -> String {
    format!("{TENANTS}{tenant}/models/{name}/")
}

pub fn model_version(tenant: &str, name: &str, version: u32) -> String {
    format!("{TENANTS}{tenant}/models/{name}/{version:010}")
}

/// The job id at the end of a queue entry, claim or done key.
pub fn last_segment(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

/// The job id of an event key (`/dhw/events/<id>/<seq>`).
pub fn event_job_id(key: &str) -> Option<&str> {
    key.strip_prefix(EVENTS)?.split('/').next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_keys_sort_by_priority_then_time() {
        let high_late = queue_entry("m", 5, 2_000, "a");
        let high_early = queue_entry("m", 5, 1_000, "b");
        let low_early = queue_entry("m", -5, 500, "c");
        let mut keys = vec![low_early.clone(), high_late.clone(), high_early.clone()];
        keys.sort();
        assert_eq!(keys, vec![high_early, high_late, low_early]);
    }

    #[test]
    fn ids_come_back_out_of_keys() {
        assert_eq!(last_segment(&queue_entry("m", 0, 1, "job-1")), "job-1");
        assert_eq!(event_job_id(&event("job-1", 7)), Some("job-1"));
    }
}
