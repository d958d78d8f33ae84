//! API keys, roles and tenants against a real server with auth on: every RPC answers each
//! kind of caller with the exact status and changes nothing when it refuses; the attacks
//! a security probe found (a client key acting as a worker, a worker key submitting,
//! reading another tenant's jobs, reusing its request ids) fail; quotas hold; usage adds
//! up; a revoked key's open stream ends.

mod support;

use std::{sync::Arc, time::Duration};

use deephardway::{
    v1::{
        CancelJobRequest, CreateJobRequest, CreateKeyRequest, GetDatasetRequest, GetJobRequest, JobKind, JobState,
        ListDatasetsRequest, ListJobsRequest, ListKeysRequest, ListModelsRequest, ListUsageRequest, Quota,
        RevokeKeyRequest, Role, WatchJobRequest, WatchJobsRequest, dataset_service_client::DatasetServiceClient,
        job_service_client::JobServiceClient, key_service_client::KeyServiceClient,
        model_service_client::ModelServiceClient, usage_service_client::UsageServiceClient,
    },
    worker::v1::{
        ConnectRequest, FetchArtifactRequest, Hello, PublishModelRequest, ServedModel, connect_request,
        worker_service_client::WorkerServiceClient,
    },
};
use deephardway_service::{
    ServiceConfig,
    auth::{AuthConfig, FixedKey, Role as KeyRole},
};
use deephardway_worker::runners::diagnostic::DiagnosticRunner;
use futures::{FutureExt, StreamExt, future::BoxFuture};
use support::*;
use tonic::{Code, Request, Status, transport::Channel};
use tonic_types::StatusExt;

const ADMIN: &str = "bootstrap-admin-secret-for-tests-0123456789";

fn secured_config() -> ServiceConfig {
    let mut config = test_config();
    config.auth = AuthConfig {
        enabled: true,
        fixed_keys: vec![FixedKey {
            name: "bootstrap".into(),
            role: KeyRole::Admin,
            tenant: "default".into(),
            secret: ADMIN.into(),
        }],
    };
    config
}

/// A request carrying `key` (none: no authorization metadata at all).
fn authed<T>(message: T, key: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(key) = key {
        request.metadata_mut().insert("authorization", format!("Bearer {key}").parse().unwrap());
    }
    request
}

async fn channel(url: &str) -> Channel {
    deephardway::connect(url).await.expect("connect")
}

async fn create_key(url: &str, name: &str, role: Role, tenant: &str, quota: Option<Quota>) -> String {
    let request = CreateKeyRequest { name: name.into(), role: role as i32, tenant: tenant.into(), quota };
    let created = KeyServiceClient::new(channel(url).await).create_key(authed(request, Some(ADMIN))).await;
    let created = created.expect("the admin creates a key").into_inner();
    assert_eq!(created.key.as_ref().unwrap().name, name);
    created.secret
}

async fn submit(url: &str, key: &str, steps: u32, request_id: &str) -> Result<deephardway::v1::Job, Status> {
    let request = CreateJobRequest { spec: Some(diagnostic(steps, 10)), request_id: request_id.into() };
    let response = JobServiceClient::new(channel(url).await).create_job(authed(request, Some(key))).await?;
    Ok(response.into_inner().job.unwrap())
}

async fn wait_finished(url: &str, key: &str, id: &str) -> deephardway::v1::Job {
    let mut client = JobServiceClient::new(channel(url).await);
    for _ in 0..200 {
        let request = GetJobRequest { job_id: id.into(), ..Default::default() };
        let job = client.get_job(authed(request, Some(key))).await.unwrap().into_inner().job.unwrap();
        if matches!(JobState::try_from(job.state), Ok(JobState::Succeeded | JobState::Failed | JobState::Cancelled)) {
            return job;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("job {id} did not finish");
}

/// One call of one RPC, as `key`, reduced to its status.
type Call = Arc<dyn Fn(Channel, Option<String>) -> BoxFuture<'static, Result<(), Status>> + Send + Sync>;

fn call<F, Fut>(f: F) -> Call
where
    F: Fn(Channel, Option<String>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), Status>> + Send + 'static,
{
    Arc::new(move |channel, key| f(channel, key).boxed())
}

/// One row of the matrix: the RPC's name, the call, a key of a role it refuses, a key of
/// another tenant and what that gets, the right key and what that gets.
type Row = (&'static str, Call, String, Option<String>, Code, String, Code);

/// Who calls, for the matrix.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Who {
    NoKey,
    UnknownKey,
    RevokedKey,
    WrongRole,
    OtherTenant,
    RightKey,
}

/// Every RPC × every kind of caller: the exact status, and a refused call leaves the
/// store's revision where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_answers_each_kind_of_caller_exactly() {
    let backend = Backend::embedded().await;
    let server = TestServer::start_with(backend.open().await, secured_config()).await;
    let url = server.url.clone();
    let submitter = create_key(&url, "acme-submitter", Role::Submitter, "acme", None).await;
    let viewer = create_key(&url, "acme-viewer", Role::Viewer, "acme", None).await;
    let worker = create_key(&url, "acme-worker", Role::Worker, "acme", None).await;
    let other = create_key(&url, "globex-submitter", Role::Submitter, "globex", None).await;
    let revoked = create_key(&url, "revoked", Role::Submitter, "acme", None).await;
    let revoke = RevokeKeyRequest { name: "revoked".into() };
    KeyServiceClient::new(channel(&url).await).revoke_key(authed(revoke, Some(ADMIN))).await.unwrap();

    let _worker = TestWorker::start_keyed(&url, "w1", 2, vec![Arc::new(DiagnosticRunner)], Some(&worker));
    wait_for_workers_keyed(&url, &submitter, 1).await;
    let job = submit(&url, &submitter, 1, "").await.expect("the submitter submits");
    wait_finished(&url, &submitter, &job.id).await;
    // The revoked key is refused on every replica within seconds; here, one.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let job_id = job.id.clone();
    let id = move || job_id.clone();
    let get = {
        let id = id.clone();
        call(move |ch, key| {
            let request = authed(GetJobRequest { job_id: id(), ..Default::default() }, key.as_deref());
            async move { JobServiceClient::new(ch).get_job(request).await.map(drop) }
        })
    };
    let watch = {
        let id = id.clone();
        call(move |ch, key| {
            let request = authed(WatchJobRequest { job_id: id(), after_seq: 0 }, key.as_deref());
            async move {
                let mut stream = JobServiceClient::new(ch).watch_job(request).await?.into_inner();
                stream.message().await.map(drop)
            }
        })
    };
    let cancel = {
        let id = id.clone();
        call(move |ch, key| {
            let request = authed(CancelJobRequest { job_id: id(), reason: String::new() }, key.as_deref());
            async move { JobServiceClient::new(ch).cancel_job(request).await.map(drop) }
        })
    };
    let create = call(|ch, key| {
        let request =
            authed(CreateJobRequest { spec: Some(diagnostic(1, 1)), request_id: String::new() }, key.as_deref());
        async move { JobServiceClient::new(ch).create_job(request).await.map(drop) }
    });
    let list = call(|ch, key| {
        let request = authed(ListJobsRequest::default(), key.as_deref());
        async move { JobServiceClient::new(ch).list_jobs(request).await.map(drop) }
    });
    let watch_jobs = call(|ch, key| {
        let request = authed(WatchJobsRequest { snapshot_size: 1, ..Default::default() }, key.as_deref());
        async move {
            let mut stream = JobServiceClient::new(ch).watch_jobs(request).await?.into_inner();
            tokio::time::timeout(Duration::from_millis(300), stream.message()).await.map_or(Ok(()), |m| m.map(drop))
        }
    });
    let models = call(|ch, key| {
        let request = authed(ListModelsRequest::default(), key.as_deref());
        async move { ModelServiceClient::new(ch).list_models(request).await.map(drop) }
    });
    let datasets = call(|ch, key| {
        let request = authed(ListDatasetsRequest::default(), key.as_deref());
        async move { DatasetServiceClient::new(ch).list_datasets(request).await.map(drop) }
    });
    let get_dataset = call(|ch, key| {
        let request = authed(GetDatasetRequest { name: "absent".into() }, key.as_deref());
        async move { DatasetServiceClient::new(ch).get_dataset(request).await.map(drop) }
    });
    let create_key_call = call(|ch, key| {
        let request =
            CreateKeyRequest { name: "made-in-matrix".into(), role: Role::Viewer as i32, ..Default::default() };
        let request = authed(request, key.as_deref());
        async move { KeyServiceClient::new(ch).create_key(request).await.map(drop) }
    });
    let list_keys = call(|ch, key| {
        let request = authed(ListKeysRequest::default(), key.as_deref());
        async move { KeyServiceClient::new(ch).list_keys(request).await.map(drop) }
    });
    let revoke_key = call(|ch, key| {
        let request = authed(RevokeKeyRequest { name: "absent".into() }, key.as_deref());
        async move { KeyServiceClient::new(ch).revoke_key(request).await.map(drop) }
    });
    let usage = call(|ch, key| {
        let request = authed(ListUsageRequest::default(), key.as_deref());
        async move { UsageServiceClient::new(ch).list_usage(request).await.map(drop) }
    });
    let connect = call(|ch, key| {
        let model = ServedModel { name: "matrix".into(), kind: JobKind::Diagnostic as i32, ..Default::default() };
        let hello =
            Hello { name: "matrix".into(), device: "cpu".into(), slots: 1, models: vec![model], ..Default::default() };
        let first = ConnectRequest { message: Some(connect_request::Message::Hello(hello)) };
        // The stream stays open (a worker's would), so that a refusal is the only answer.
        let requests = futures::stream::iter([first]).chain(futures::stream::pending());
        let request = authed(requests, key.as_deref());
        async move {
            let mut stream = WorkerServiceClient::new(ch).connect(request).await?.into_inner();
            tokio::time::timeout(Duration::from_millis(500), stream.message()).await.map_or(Ok(()), |m| m.map(drop))
        }
    });
    let fetch = call(|ch, key| {
        let request = authed(FetchArtifactRequest { path: "datasets/x".into(), ..Default::default() }, key.as_deref());
        async move {
            let mut stream = WorkerServiceClient::new(ch).fetch_artifact(request).await?.into_inner();
            stream.message().await.map(drop)
        }
    });
    let publish = call(|ch, key| {
        let request = authed(PublishModelRequest { job_id: uuid_like(), ..Default::default() }, key.as_deref());
        async move { WorkerServiceClient::new(ch).publish_model(request).await.map(drop) }
    });

    use Code::{NotFound, Ok as Allowed, PermissionDenied, Unauthenticated};
    use Who::*;
    // (name, call, wrong-role key, expected for: other tenant, right key). The first
    // three kinds of caller are always UNAUTHENTICATED, a wrong role PERMISSION_DENIED.
    let viewer_or_worker = |write: bool| if write { viewer.clone() } else { worker.clone() };
    let rows: Vec<Row> = vec![
        ("CreateJob", create, viewer_or_worker(true), Some(other.clone()), Allowed, submitter.clone(), Allowed),
        ("GetJob", get, viewer_or_worker(false), Some(other.clone()), NotFound, viewer.clone(), Allowed),
        ("WatchJob", watch, viewer_or_worker(false), Some(other.clone()), NotFound, viewer.clone(), Allowed),
        ("CancelJob", cancel, viewer_or_worker(true), Some(other.clone()), NotFound, submitter.clone(), Allowed),
        ("ListJobs", list, viewer_or_worker(false), Some(other.clone()), Allowed, viewer.clone(), Allowed),
        ("WatchJobs", watch_jobs, viewer_or_worker(false), Some(other.clone()), Allowed, viewer.clone(), Allowed),
        ("ListModels", models, viewer_or_worker(false), Some(other.clone()), Allowed, viewer.clone(), Allowed),
        ("ListDatasets", datasets, viewer_or_worker(false), Some(other.clone()), Allowed, viewer.clone(), Allowed),
        ("GetDataset", get_dataset, viewer_or_worker(false), Some(other.clone()), NotFound, viewer.clone(), NotFound),
        ("CreateKey", create_key_call, submitter.clone(), None, Allowed, ADMIN.into(), Allowed),
        ("ListKeys", list_keys, submitter.clone(), None, Allowed, ADMIN.into(), Allowed),
        ("RevokeKey", revoke_key, submitter.clone(), None, Allowed, ADMIN.into(), NotFound),
        ("ListUsage", usage, viewer_or_worker(false), Some(other.clone()), Allowed, viewer.clone(), Allowed),
        ("Connect", connect, submitter.clone(), None, Allowed, worker.clone(), Allowed),
        ("FetchArtifact", fetch, submitter.clone(), None, Allowed, worker.clone(), PermissionDenied),
        ("PublishModel", publish, ADMIN.into(), None, Allowed, worker.clone(), Allowed),
    ];
    // Refusals first, while nothing else writes (an allowed call starts jobs and worker
    // sessions, which write on their own), so that "the store did not change" is exact.
    let mut calls = Vec::new();
    for (name, rpc, wrong_role, other_tenant, other_expected, right, right_expected) in rows {
        let mut cases = vec![
            (NoKey, None, Unauthenticated),
            (UnknownKey, Some("dhw_not-a-key-anybody-made".to_string()), Unauthenticated),
            (RevokedKey, Some(revoked.clone()), Unauthenticated),
            (WrongRole, Some(wrong_role), PermissionDenied),
        ];
        if let Some(other) = other_tenant {
            cases.push((OtherTenant, Some(other), other_expected));
        }
        // PublishModel with a made-up job: the worker key passes the gate and the job is
        // not its to publish for; whichever refusal, nothing is registered.
        let right_expected = if name == "PublishModel" { None } else { Some(right_expected) };
        cases.push((RightKey, Some(right), right_expected.unwrap_or(Allowed)));
        calls.extend(cases.into_iter().map(|(who, key, expected)| (name, rpc.clone(), who, key, expected)));
    }
    calls.sort_by_key(|(_, _, _, _, expected)| *expected == Allowed);
    let mut failures = Vec::new();
    {
        for (name, rpc, who, key, expected) in calls {
            let before = server.store.revision().await.unwrap();
            let got = rpc(channel(&url).await, key).await.map_or_else(|s| s.code(), |()| Allowed);
            let refused = got != Allowed;
            let check_expected = !(name == "PublishModel" && who == RightKey);
            if check_expected && got != expected {
                failures.push(format!("{name} as {who:?}: {got:?}, expected {expected:?}"));
            }
            if name == "PublishModel" && who == RightKey && !refused {
                failures.push("PublishModel for a job the worker does not hold was accepted".into());
            }
            if refused {
                let after = server.store.revision().await.unwrap();
                if after != before {
                    failures.push(format!("{name} as {who:?} was refused ({got:?}) but the store changed"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} wrong answers:\n{}", failures.len(), failures.join("\n"));
    server.shutdown().await;
}

fn uuid_like() -> String {
    "01890000-0000-7000-8000-000000000000".into()
}

async fn wait_for_workers_keyed(url: &str, key: &str, n: usize) {
    let mut client = ModelServiceClient::new(channel(url).await);
    for _ in 0..200 {
        let models = client.list_models(authed(ListModelsRequest::default(), Some(key))).await.unwrap().into_inner();
        if models.models.iter().any(|m| m.name == "diagnostic" && m.workers as usize >= n) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{n} workers did not connect");
}

/// Tenants do not see each other: another tenant's job is NOT_FOUND everywhere, lists
/// and live lists show only the tenant's own jobs, and a request id names a different
/// job in each tenant. An admin sees all, with the tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_see_only_their_own_jobs_and_request_ids() {
    let backend = Backend::embedded().await;
    let server = TestServer::start_with(backend.open().await, secured_config()).await;
    let url = server.url.clone();
    let acme = create_key(&url, "acme", Role::Submitter, "acme", None).await;
    let globex = create_key(&url, "globex", Role::Submitter, "globex", None).await;
    let worker = create_key(&url, "worker", Role::Worker, "default", None).await;
    let _worker = TestWorker::start_keyed(&url, "w1", 2, vec![Arc::new(DiagnosticRunner)], Some(&worker));
    wait_for_workers_keyed(&url, &acme, 1).await;

    let a = submit(&url, &acme, 1, "shared-request-id").await.unwrap();
    let g = submit(&url, &globex, 1, "shared-request-id").await.unwrap();
    assert_ne!(a.id, g.id, "the same request id in two tenants names two jobs");
    assert_eq!((a.tenant.as_str(), a.key.as_str()), ("acme", "acme"));
    assert_eq!(g.tenant, "globex");
    // Within a tenant it still deduplicates.
    assert_eq!(submit(&url, &acme, 1, "shared-request-id").await.unwrap().id, a.id);
    wait_finished(&url, &acme, &a.id).await;

    let mut jobs = JobServiceClient::new(channel(&url).await);
    let listed = || ListJobsRequest { page_size: 100, ..Default::default() };
    let ids = |response: deephardway::v1::ListJobsResponse| -> Vec<String> {
        response.jobs.into_iter().map(|j| j.id).collect()
    };
    let acme_sees = ids(jobs.list_jobs(authed(listed(), Some(&acme))).await.unwrap().into_inner());
    assert_eq!(acme_sees, vec![a.id.clone()]);
    let admin_sees = ids(jobs.list_jobs(authed(listed(), Some(ADMIN))).await.unwrap().into_inner());
    assert!(admin_sees.contains(&a.id) && admin_sees.contains(&g.id), "{admin_sees:?}");

    for (key, foreign) in [(&acme, &g.id), (&globex, &a.id)] {
        let get =
            jobs.get_job(authed(GetJobRequest { job_id: foreign.clone(), ..Default::default() }, Some(key))).await;
        assert_eq!(get.unwrap_err().code(), Code::NotFound);
        let cancel = CancelJobRequest { job_id: foreign.clone(), reason: String::new() };
        assert_eq!(jobs.cancel_job(authed(cancel, Some(key))).await.unwrap_err().code(), Code::NotFound);
        let watch = jobs.watch_job(authed(WatchJobRequest { job_id: foreign.clone(), after_seq: 0 }, Some(key))).await;
        assert_eq!(watch.err().map(|s| s.code()), Some(Code::NotFound));
    }
    // The same message as a job that does not exist: nothing tells the two apart.
    let absent = jobs.get_job(authed(GetJobRequest { job_id: uuid_like(), ..Default::default() }, Some(&acme))).await;
    let foreign = jobs.get_job(authed(GetJobRequest { job_id: g.id.clone(), ..Default::default() }, Some(&acme))).await;
    assert_eq!(
        absent.unwrap_err().message().replace(&uuid_like(), "ID"),
        foreign.unwrap_err().message().replace(&g.id, "ID")
    );

    // The live list: a globex job appears on globex's stream, never on acme's.
    let request = WatchJobsRequest { snapshot_size: 10, ..Default::default() };
    let mut acme_live = jobs.watch_jobs(authed(request, Some(&acme))).await.unwrap().into_inner();
    let later = submit(&url, &globex, 1, "").await.unwrap();
    wait_finished(&url, &globex, &later.id).await;
    let mine = submit(&url, &acme, 1, "").await.unwrap();
    wait_finished(&url, &acme, &mine.id).await;
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while let Ok(Some(Ok(update))) = tokio::time::timeout_at(deadline, acme_live.next()).await {
        let job = update.job.unwrap();
        seen.push(job.id.clone());
        if job.id == mine.id && job.state == JobState::Succeeded as i32 {
            break;
        }
    }
    assert!(seen.contains(&mine.id), "{seen:?}");
    assert!(!seen.contains(&later.id) && !seen.contains(&g.id), "acme's live list showed globex's jobs: {seen:?}");
    server.shutdown().await;
}

/// A key's quota: the N+1-th active job is RESOURCE_EXHAUSTED with a QuotaFailure and
/// nothing written; a burst beyond the rate gets RetryInfo; usage counts what ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_hold_and_usage_adds_up() {
    let backend = Backend::embedded().await;
    let server = TestServer::start_with(backend.open().await, secured_config()).await;
    let url = server.url.clone();
    let worker = create_key(&url, "worker", Role::Worker, "default", None).await;
    let limited =
        create_key(&url, "limited", Role::Submitter, "acme", Some(Quota { max_active_jobs: 2, ..Default::default() }))
            .await;
    let rated = create_key(
        &url,
        "rated",
        Role::Submitter,
        "acme",
        Some(Quota { submits_per_second: 1.0, submit_burst: 3, ..Default::default() }),
    )
    .await;

    // A worker serves the diagnostic model, then leaves: jobs queue and stay queued.
    let first = TestWorker::start_keyed(&url, "w1", 1, vec![Arc::new(DiagnosticRunner)], Some(&worker));
    wait_for_workers_keyed(&url, &limited, 1).await;
    first.stop().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let queued: Vec<_> = [submit(&url, &limited, 1, "").await.unwrap(), submit(&url, &limited, 1, "").await.unwrap()]
        .into_iter()
        .collect();
    let before = server.store.revision().await.unwrap();
    let third = submit(&url, &limited, 1, "").await.unwrap_err();
    assert_eq!(third.code(), Code::ResourceExhausted, "{third:?}");
    let details = third.get_error_details();
    let violations = details.quota_failure().expect("a QuotaFailure").violations.clone();
    assert!(violations[0].description.contains("max_active_jobs 2"), "{violations:?}");
    assert_eq!(server.store.revision().await.unwrap(), before, "a refused submit wrote something");

    // Cancelling one frees a place.
    let cancel = CancelJobRequest { job_id: queued[0].id.clone(), reason: String::new() };
    JobServiceClient::new(channel(&url).await).cancel_job(authed(cancel, Some(&limited))).await.unwrap();
    submit(&url, &limited, 1, "").await.expect("a place is free again");

    // The rate: a burst of 3, then RetryInfo with a wait under a second.
    for _ in 0..3 {
        submit(&url, &rated, 1, "").await.expect("within the burst");
    }
    let over = submit(&url, &rated, 1, "").await.unwrap_err();
    assert_eq!(over.code(), Code::ResourceExhausted, "{over:?}");
    let retry = over.get_error_details().retry_info().expect("RetryInfo").retry_delay.expect("a delay");
    assert!(retry > Duration::ZERO && retry <= Duration::from_secs(1), "{retry:?}");
    tokio::time::sleep(retry + Duration::from_millis(50)).await;
    submit(&url, &rated, 1, "").await.expect("after the wait");

    // A worker comes back and runs everything; usage then shows exactly what ran.
    let _worker = TestWorker::start_keyed(&url, "w2", 4, vec![Arc::new(DiagnosticRunner)], Some(&worker));
    let mut client = JobServiceClient::new(channel(&url).await);
    for _ in 0..300 {
        let request = ListJobsRequest { state: JobState::Queued as i32, page_size: 100, ..Default::default() };
        let running = ListJobsRequest { state: JobState::Running as i32, page_size: 100, ..Default::default() };
        let waiting = client.list_jobs(authed(request, Some(ADMIN))).await.unwrap().into_inner().jobs.len()
            + client.list_jobs(authed(running, Some(ADMIN))).await.unwrap().into_inner().jobs.len();
        if waiting == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut usage = Vec::new();
    for _ in 0..100 {
        let request = authed(ListUsageRequest { tenant: "acme".into() }, Some(ADMIN));
        usage = UsageServiceClient::new(channel(&url).await).list_usage(request).await.unwrap().into_inner().usage;
        let counted: u64 = usage.iter().flat_map(|u| u.jobs.values()).sum();
        if counted == 7 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let of = |key: &str| usage.iter().find(|u| u.key == key).cloned().unwrap_or_default();
    let limited_usage = of("limited");
    assert_eq!(limited_usage.jobs.get("diagnostic/succeeded"), Some(&2), "{usage:?}");
    assert_eq!(limited_usage.jobs.get("diagnostic/cancelled"), Some(&1), "{usage:?}");
    assert_eq!(of("rated").jobs.get("diagnostic/succeeded"), Some(&4), "{usage:?}");
    assert!(of("rated").worker_seconds > 0.0, "{usage:?}");
    // A submitter sees its tenant's usage only; another tenant's is empty, not an error.
    let own = authed(ListUsageRequest::default(), Some(&limited));
    let own = UsageServiceClient::new(channel(&url).await).list_usage(own).await.unwrap().into_inner().usage;
    assert!(own.iter().all(|u| u.tenant == "acme") && own.len() == 2, "{own:?}");
    let foreign = authed(ListUsageRequest { tenant: "default".into() }, Some(&limited));
    let foreign = UsageServiceClient::new(channel(&url).await).list_usage(foreign).await.unwrap().into_inner().usage;
    assert!(foreign.is_empty(), "{foreign:?}");
    server.shutdown().await;
}

/// Revoking a key ends its open Watch and WatchJobs streams within a few seconds, with
/// UNAUTHENTICATED, and its next call is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_key_ends_its_open_streams() {
    let backend = Backend::embedded().await;
    let server = TestServer::start_with(backend.open().await, secured_config()).await;
    let url = server.url.clone();
    let worker = create_key(&url, "worker", Role::Worker, "default", None).await;
    let doomed = create_key(&url, "doomed", Role::Submitter, "default", None).await;
    let _worker = TestWorker::start_keyed(&url, "w1", 1, vec![Arc::new(DiagnosticRunner)], Some(&worker));
    wait_for_workers_keyed(&url, &doomed, 1).await;
    // A long job, so that its watch stays open.
    let job = submit(&url, &doomed, 600, "").await.unwrap();
    let mut jobs = JobServiceClient::new(channel(&url).await);
    let request = authed(WatchJobRequest { job_id: job.id.clone(), after_seq: 0 }, Some(&doomed));
    let mut watch = jobs.watch_job(request).await.unwrap().into_inner();
    let mut live = jobs
        .watch_jobs(authed(WatchJobsRequest { snapshot_size: 1, ..Default::default() }, Some(&doomed)))
        .await
        .unwrap()
        .into_inner();
    assert!(watch.message().await.unwrap().is_some(), "the watch delivers before the revocation");

    let revoked_at = tokio::time::Instant::now();
    let revoke = RevokeKeyRequest { name: "doomed".into() };
    KeyServiceClient::new(channel(&url).await).revoke_key(authed(revoke, Some(ADMIN))).await.unwrap();
    let ended = async {
        loop {
            match watch.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(status) => return Some(status.code()),
            }
        }
    };
    let code = tokio::time::timeout(Duration::from_secs(5), ended).await.expect("the watch ends within 5 s");
    assert_eq!(code, Some(Code::Unauthenticated));
    let live_ended = async {
        loop {
            match live.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(status) => return Some(status.code()),
            }
        }
    };
    let code = tokio::time::timeout(Duration::from_secs(5), live_ended).await.expect("WatchJobs ends within 5 s");
    assert_eq!(code, Some(Code::Unauthenticated));
    eprintln!("streams ended {:?} after the revocation", revoked_at.elapsed());
    let refused = submit(&url, &doomed, 1, "").await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    // The job itself is not the key's to lose: an admin cancels it.
    let cancel = CancelJobRequest { job_id: job.id.clone(), reason: String::new() };
    jobs.cancel_job(authed(cancel, Some(ADMIN))).await.unwrap();
    server.shutdown().await;
}

/// Runs the CLI with `args`; returns (success, stdout, stderr).
async fn cli(args: &[&str]) -> (bool, String, String) {
    let output = tokio::process::Command::new(binary())
        .args(args)
        .env_remove("DEEPHARDWAY_KEY")
        .env("RUST_LOG", "warn")
        .output()
        .await
        .expect("run the CLI");
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).to_string();
    (output.status.success(), text(&output.stdout), text(&output.stderr))
}

/// The operator's path, through the real binary: `up --auth on` with the bootstrap admin
/// key from the environment; its own worker connects with a key of its own; the admin
/// creates a key with the CLI, the key submits with `--key`, usage shows it, and after
/// `keys revoke` it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_manages_keys_on_a_secured_up() {
    let data_dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let url = format!("http://{addr}");
    let _up = tokio::process::Command::new(binary())
        .args(["up", "--listen", &addr, "--auth", "on", "--device", "cpu", "--models-dir", "/nonexistent"])
        .arg("--data-dir")
        .arg(data_dir.path())
        .env("DEEPHARDWAY_ADMIN_KEY", ADMIN)
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .expect("spawn up");
    wait_until_serving(&url).await;
    // Its own worker connects (with the key `up` made for it).
    wait_for_workers_keyed(&url, ADMIN, 1).await;

    let (ok, _, err) = cli(&["jobs", "--server", &url]).await;
    assert!(!ok && err.contains("API key"), "a call without a key: {err}");

    let (ok, secret, err) = cli(&[
        "keys",
        "create",
        "--server",
        &url,
        "--key",
        ADMIN,
        "--name",
        "alice",
        "--role",
        "submitter",
        "--tenant",
        "acme",
    ])
    .await;
    assert!(ok, "{err}");
    let secret = secret.trim().to_string();
    assert!(secret.starts_with("dhw_") && err.contains("shown only now"), "{secret} / {err}");

    let (ok, out, err) = cli(&[
        "submit",
        "--server",
        &url,
        "--key",
        &secret,
        "--watch",
        "diagnostic",
        "--steps",
        "2",
        "--step-ms",
        "10",
    ])
    .await;
    assert!(ok, "{out}\n{err}");
    let (ok, out, err) = cli(&["keys", "list", "--server", &url, "--key", ADMIN]).await;
    assert!(ok && out.contains("alice") && out.contains("submitter") && out.contains("acme"), "{out}{err}");
    // A submitter cannot manage keys.
    let (ok, _, err) = cli(&["keys", "list", "--server", &url, "--key", &secret]).await;
    assert!(!ok && err.contains("may not call deephardway.v1.KeyService/ListKeys"), "{err}");

    let mut usage = String::new();
    for _ in 0..100 {
        let (_, out, _) = cli(&["usage", "--server", &url, "--key", ADMIN]).await;
        usage = out;
        if usage.contains("diagnostic/succeeded 1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(usage.contains("alice") && usage.contains("diagnostic/succeeded 1"), "{usage}");

    let (ok, _, err) = cli(&["keys", "revoke", "--server", &url, "--key", ADMIN, "alice"]).await;
    assert!(ok, "{err}");
    let mut refused = false;
    for _ in 0..50 {
        let (ok, _, _) = cli(&["jobs", "--server", &url, "--key", &secret]).await;
        if !ok {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refused, "the revoked key still works");
}

/// Secure by default: `serve` on an address other machines can reach refuses to start
/// without TLS and auth, saying what is missing, unless the operator says --insecure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_address_needs_tls_and_auth_or_insecure() {
    let data_dir = tempfile::tempdir().unwrap();
    let serve = |extra: &[&str]| {
        let mut command = tokio::process::Command::new(binary());
        command
            .args(["serve", "--listen", "0.0.0.0:0"])
            .args(extra)
            .arg("--data-dir")
            .arg(data_dir.path())
            .env_remove("DEEPHARDWAY_ADMIN_KEY")
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        command
    };
    for (extra, missing) in [
        (&[][..], "TLS (--tls-cert, --tls-key) and auth (--auth on)"),
        (&["--auth", "on"][..], "without TLS (--tls-cert, --tls-key)"),
    ] {
        let output = tokio::time::timeout(Duration::from_secs(20), serve(extra).output())
            .await
            .expect("serve refuses at once")
            .unwrap();
        let err = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "serve {extra:?} started on 0.0.0.0");
        assert!(err.contains("refusing to serve") && err.contains(missing), "{err}");
    }
    // With --insecure it starts (and warns).
    let mut child = serve(&["--insecure"]).spawn().unwrap();
    let exited = tokio::time::timeout(Duration::from_secs(2), child.wait()).await;
    assert!(exited.is_err(), "serve --insecure exited: {exited:?}");
    child.kill().await.unwrap();
    let output = child.wait_with_output().await.unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("--insecure"), "no warning: {err}");
}

/// A key's running limit: its jobs start one at a time while a worker has free slots,
/// and another key's job behind them starts at once rather than waiting its turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_runs_at_most_its_running_limit() {
    let backend = Backend::embedded().await;
    let server = TestServer::start_with(backend.open().await, secured_config()).await;
    let url = server.url.clone();
    let worker = create_key(&url, "worker", Role::Worker, "default", None).await;
    let serial =
        create_key(&url, "serial", Role::Submitter, "acme", Some(Quota { max_running_jobs: 1, ..Default::default() }))
            .await;
    let free = create_key(&url, "free", Role::Submitter, "acme", None).await;
    let _worker = TestWorker::start_keyed(&url, "w1", 4, vec![Arc::new(DiagnosticRunner)], Some(&worker));
    wait_for_workers_keyed(&url, &free, 1).await;

    let mut serial_jobs = Vec::new();
    for _ in 0..3 {
        serial_jobs.push(submit(&url, &serial, 10, "").await.unwrap().id);
    }
    let other = submit(&url, &free, 10, "").await.unwrap().id;
    let mut client = JobServiceClient::new(channel(&url).await);
    let mut most_at_once = 0;
    for _ in 0..1000 {
        let all = ListJobsRequest { page_size: 100, ..Default::default() };
        let jobs = client.list_jobs(authed(all, Some(ADMIN))).await.unwrap().into_inner().jobs;
        let running = |j: &&deephardway::v1::Job| j.key == "serial" && j.state == JobState::Running as i32;
        most_at_once = most_at_once.max(jobs.iter().filter(running).count());
        let ended =
            |j: &deephardway::v1::Job| j.state == JobState::Succeeded as i32 || j.state == JobState::Failed as i32;
        let mine = jobs.iter().filter(|j| serial_jobs.contains(&j.id) || j.id == other);
        if mine.clone().count() == 4 && mine.clone().all(ended) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Sampled, so it may miss a short job; the start and end times below are exact.
    assert!(most_at_once <= 1, "the serial key ran {most_at_once} jobs at once");
    let mut jobs = Vec::new();
    for id in serial_jobs.iter().chain([&other]) {
        jobs.push(wait_finished(&url, ADMIN, id).await);
    }
    assert!(jobs.iter().all(|j| j.state == JobState::Succeeded as i32), "{jobs:?}");
    let started = |j: &deephardway::v1::Job| j.start_time.map(|t| (t.seconds, t.nanos)).unwrap();
    let last_serial = jobs[..3].iter().map(started).max().unwrap();
    assert!(started(&jobs[3]) < last_serial, "the free key's job waited behind the serial key's");
    // One at a time: each serial job started after the one before it (in start order) ended.
    let mut serial_runs = jobs[..3].to_vec();
    serial_runs.sort_by_key(started);
    for pair in serial_runs.windows(2) {
        let ended = pair[0].end_time.map(|t| (t.seconds, t.nanos)).unwrap();
        assert!(started(&pair[1]) >= ended, "serial jobs overlapped: {pair:?}");
    }
    server.shutdown().await;
}

/// Two replicas on one store both see every job finish and both count usage, in
/// batches while jobs finish faster than one count is written: every job is counted
/// exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_counts_each_job_once_while_replicas_race_in_batches() {
    let backend = Backend::embedded().await;
    let store = backend.open().await;
    let a = TestServer::start(store.clone()).await;
    let b = TestServer::start(store).await;
    let worker = TestWorker::start(&a.url, "w", 32);
    wait_for_workers(&a.url, 1).await;
    const JOBS: usize = 200;
    let runs = (0..JOBS).map(|_| {
        let url = a.url.clone();
        async move {
            let mut client = jobs_client(&url).await;
            run(&mut client, diagnostic(1, 0), Duration::from_secs(30)).await
        }
    });
    let results = futures::stream::iter(runs).buffer_unordered(32).collect::<Vec<_>>().await;
    assert_eq!(results.len(), JOBS);
    let list = async || {
        let request = ListUsageRequest::default();
        let usage =
            UsageServiceClient::new(channel(&b.url).await).list_usage(request).await.unwrap().into_inner().usage;
        let counted: u64 = usage.iter().flat_map(|u| u.jobs.values()).sum();
        (counted, usage)
    };
    for _ in 0..100 {
        if list().await.0 >= JOBS as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Settled: a double count would show by now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (counted, usage) = list().await;
    assert_eq!(counted, JOBS as u64, "{usage:?}");
    worker.stop().await;
    a.shutdown().await;
    b.shutdown().await;
}
