//! deephardway's job service: clients submit deep-learning jobs over gRPC and watch them
//! run; workers pull the jobs over a stream of their own. This library holds no model
//! code (no candle): the `deephardway` binary (the `cli/` crate) runs it beside workers.
//! A map of the crate:
//!
//! - [`store`]: the key-value store trait (etcd semantics) and its two backends,
//!   [`store::embedded`] (one machine, the default) and [`store::etcd`] (a cluster).
//! - [`keys`]: where everything lives in the store.
//! - [`artifacts`]: the artifact store (local directory, memory, S3) for the files behind
//!   [`datasets`] (uploaded archives, checked on arrival) and [`trained_models`] (the
//!   registry of classifiers that train jobs publish, by name and version).
//! - [`jobs`]: the job state machine (submit, claim, report, cancel, requeue, retention),
//!   written once on top of the store trait; [`validate`]: the checks every request
//!   passes before anything is written; [`time`]: timestamps as records and keys hold them.
//! - [`auth`]: API keys (roles, tenants), checked in front of every call; [`quota`]: the
//!   per-key limits on submitting; [`usage`]: what each key's jobs used.
//! - [`metrics`]: Prometheus metrics at `GET /metrics`, recorded where each step happens;
//!   [`traces`]: a job's spans (submit, queued, dispatch) in the client's trace.
//! - [`hub`]: the replica's single store watch, fanned out to job watchers and to the
//!   background tasks below.
//! - [`dispatch`]: hands queued jobs to this replica's connected workers, and lends their free
//!   slots to submits that can start a job at once.
//! - [`queue_view`]: every queue in memory, for live positions and start estimates.
//! - [`reaper`]: puts jobs of lost workers back in line; removes expired jobs.
//! - [`rpc`]: the gRPC handlers (`JobService`, `ModelService`, `DatasetService`,
//!   `KeyService`, `UsageService`, and the worker protocol's `WorkerService`).
//! - [`health`]: `grpc.health.v1`, following the store's health, with an entry per served model.
//! - [`openai`]: the OpenAI-compatible HTTP API (`/v1/chat/completions`, `/v1/embeddings`,
//!   `/v1/responses`, …), each request a job in the queue.
//! - [`web`]: what browsers need: CORS for grpc-web, and the built web client's files.
//! - [`server`]: everything above on one port, with grpc-web, reflection and health;
//!   [`decode_errors`]: INVALID_ARGUMENT for a request that does not decode;
//!   [`connections`]: how many connections it keeps, how soon each must speak, and
//!   its writes batched across streams;
//!   [`tls`]: TLS and mutual TLS on that port (rustls).
//! - [`local_etcd`]: a throwaway etcd process (or a cluster of them, to fail members), for
//!   the benchmark and the tests.

pub mod artifacts;
pub mod auth;
pub mod config;
pub mod connections;
pub mod datasets;
pub mod decode_errors;
pub mod dispatch;
pub mod health;
pub mod hub;
pub mod jobs;
pub mod keys;
pub mod local_etcd;
pub mod metrics;
pub mod openai;
pub mod queue_view;
pub mod quota;
pub mod reaper;
pub mod rpc;
pub mod server;
pub mod store;
pub mod time;
pub mod tls;
pub mod traces;
pub mod trained_models;
pub mod usage;
pub mod validate;
pub mod web;

pub use config::ServiceConfig;
pub use server::serve;
pub use web::{Cors, Web};
