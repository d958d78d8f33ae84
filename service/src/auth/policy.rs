//! Which roles may call which method: one table, so that a method nobody listed is
//! refused rather than open. Tenancy is not decided here but by the handlers, which see
//! the caller's tenant (see [`super::Caller`]).

use super::Role;

/// Who may call a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, without a key: health checks, and reflection (it shows the API's shape,
    /// which `proto/` publishes anyway, so grpcurl works before a key is at hand).
    Public,
    /// Callers with one of these roles.
    Roles(&'static [Role]),
    /// Nobody: a method this table does not know.
    Unknown,
}

const READ: &[Role] = &[Role::Admin, Role::Submitter, Role::Viewer];
const WRITE: &[Role] = &[Role::Admin, Role::Submitter];
const ADMIN: &[Role] = &[Role::Admin];
/// Prometheus's scrape: operators' keys (a viewer key is the usual choice for it).
const METRICS: &[Role] = &[Role::Admin, Role::Viewer];
/// The worker protocol is for worker keys only: an admin key is a person's, and a
/// client key must never receive other people's jobs.
const WORKER: &[Role] = &[Role::Worker];

/// The access rule for a gRPC path (`/package.Service/Method`), `/metrics`, or a path of
/// the OpenAI-compatible API (`/v1/…`, see `openai`).
pub fn access(path: &str) -> Access {
    if path == "/metrics" {
        return Access::Roles(METRICS);
    }
    if let Some(rest) = path.strip_prefix("/v1/") {
        return match rest.split('/').collect::<Vec<_>>().as_slice() {
            ["models"] => Access::Roles(READ),
            ["chat", "completions"] | ["completions"] | ["embeddings"] | ["responses"] => Access::Roles(WRITE),
            ["responses", _] => Access::Roles(READ),
            ["responses", _, "cancel"] => Access::Roles(WRITE),
            _ => Access::Unknown,
        };
    }
    let Some((service, method)) = path.strip_prefix('/').and_then(|p| p.split_once('/')) else {
        return Access::Unknown;
    };
    match (service, method) {
        ("grpc.health.v1.Health", _)
        | ("grpc.reflection.v1.ServerReflection", _)
        | ("grpc.reflection.v1alpha.ServerReflection", _) => Access::Public,
        ("deephardway.v1.JobService", "CreateJob" | "RunJob" | "CancelJob") => Access::Roles(WRITE),
        ("deephardway.v1.JobService", "GetJob" | "ListJobs" | "WatchJob" | "WatchJobs") => Access::Roles(READ),
        ("deephardway.v1.ModelService", "ListModels") => Access::Roles(READ),
        ("deephardway.v1.DatasetService", "CreateDataset" | "DeleteDataset") => Access::Roles(WRITE),
        ("deephardway.v1.DatasetService", "ListDatasets" | "GetDataset") => Access::Roles(READ),
        ("deephardway.v1.KeyService", "CreateKey" | "ListKeys" | "RevokeKey") => Access::Roles(ADMIN),
        ("deephardway.v1.UsageService", "ListUsage") => Access::Roles(READ),
        ("deephardway.worker.v1.WorkerService", "Connect" | "FetchArtifact" | "PublishModel") => Access::Roles(WORKER),
        _ => Access::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_get_what_the_issue_says_and_unknown_methods_nothing() {
        let allows = |path: &str, role: Role| matches!(access(path), Access::Roles(roles) if roles.contains(&role));
        assert!(allows("/deephardway.v1.JobService/CreateJob", Role::Submitter));
        assert!(!allows("/deephardway.v1.JobService/CreateJob", Role::Viewer));
        assert!(!allows("/deephardway.v1.JobService/CreateJob", Role::Worker));
        assert!(allows("/deephardway.v1.JobService/ListJobs", Role::Viewer));
        assert!(!allows("/deephardway.v1.JobService/ListJobs", Role::Worker));
        assert!(allows("/deephardway.worker.v1.WorkerService/Connect", Role::Worker));
        assert!(!allows("/deephardway.worker.v1.WorkerService/Connect", Role::Submitter));
        assert!(!allows("/deephardway.worker.v1.WorkerService/Connect", Role::Admin));
        assert!(allows("/deephardway.v1.KeyService/CreateKey", Role::Admin));
        assert!(!allows("/deephardway.v1.KeyService/CreateKey", Role::Submitter));
        assert_eq!(access("/grpc.health.v1.Health/Check"), Access::Public);
        assert_eq!(access("/deephardway.v1.JobService/DropTables"), Access::Unknown);
        assert_eq!(access("/nonsense"), Access::Unknown);
        assert!(allows("/metrics", Role::Viewer) && !allows("/metrics", Role::Submitter));
        assert!(allows("/v1/chat/completions", Role::Submitter) && !allows("/v1/chat/completions", Role::Viewer));
        assert!(allows("/v1/responses/resp_1", Role::Viewer) && !allows("/v1/responses/resp_1/cancel", Role::Viewer));
        assert!(!allows("/v1/embeddings", Role::Worker));
        assert_eq!(access("/v1/files"), Access::Unknown);
    }
}
