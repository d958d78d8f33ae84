//! Prometheus metrics, served at `GET /metrics` on the service's port (OpenMetrics text).
//!
//! `prometheus-client` (the Prometheus project's own Rust client) rather than the
//! `metrics` facade: the service is a library that tests start many times in one process,
//! so each server owns its registry instead of sharing a global recorder, and the types
//! (label sets as structs) keep names and labels checked by the compiler.
//!
//! Each lifecycle step records where it happens, on the replica that did it: submits in
//! `JobLifecycle::submit`, queue waits when a job is claimed, outcomes, run times and
//! tokens when a job's final transition commits. Sum over replicas in queries. The
//! gauges of waiting and running jobs are read from the store when scraped, so every
//! replica reports the same, cluster-wide values. [`store`] times every store operation.
//!
//! Workers report what their models did (batch sizes, key-value cache in use, training
//! images) in their heartbeats; the replica a worker is connected to exports it labelled
//! `worker` (the session's id; `deephardway_worker_info` maps it to the worker's name and
//! device), so one scrape of every replica sees the whole fleet without scraping workers.
//! A worker's series go when its session ends.
//!
//! Names follow Prometheus conventions: the `deephardway_` prefix, `_total` on counters,
//! `_seconds` and `_bytes` units; labels `kind`, `model`, `outcome`, `state`, `worker`.

pub mod endpoint;
pub mod store;

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
};

use deephardway::{
    v1::{Job, job_result},
    worker::v1::Heartbeat,
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Registry, Unit},
};

use crate::time::micros;

/// A family of histograms with the same buckets.
type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Seconds from 1 ms to about 2.3 hours, doubling: job waits and run times.
fn job_seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 24))
}

/// Seconds from 50 µs to about 1.6 s, doubling: store operations.
fn store_seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

/// Seconds from 0.5 ms to about 16 s, doubling: the time per generated token.
fn token_seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.000_5, 2.0, 16))
}

/// 1 to 512 items, doubling: batch sizes.
fn batch_sizes() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 10))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    pub kind: String,
    pub model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub kind: String,
    pub model: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    pub model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: String,
    pub model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabels {
    pub rpc: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreLabels {
    pub operation: String,
    pub backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    pub backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkerLabels {
    pub worker: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkerInfoLabels {
    pub worker: String,
    pub name: String,
    pub device: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelWorkerLabels {
    pub model: String,
    pub worker: String,
}

/// Every metric one server exports, and the registry that encodes them.
pub struct Metrics {
    registry: Registry,
    jobs_submitted: Family<JobLabels, Counter>,
    jobs_finished: Family<OutcomeLabels, Counter>,
    queue_wait: Histograms<JobLabels>,
    run_time: Histograms<OutcomeLabels>,
    latency: Histograms<OutcomeLabels>,
    prompt_tokens: Family<ModelLabels, Counter>,
    generated_tokens: Family<ModelLabels, Counter>,
    embedded_texts: Family<ModelLabels, Counter>,
    time_to_first_output: Histograms<JobLabels>,
    time_per_output_token: Histograms<ModelLabels>,
    jobs: Family<StateLabels, Gauge>,
    /// The (state, model) pairs ever reported, so that a drained queue reads 0.
    seen_states: Mutex<BTreeSet<(String, String)>>,
    workers_connected: Gauge,
    worker_info: Family<WorkerInfoLabels, Gauge>,
    worker_slots: Family<WorkerLabels, Gauge>,
    worker_running_jobs: Family<WorkerLabels, Gauge>,
    batch_size: Histograms<ModelWorkerLabels>,
    kv_cache_tokens: Family<ModelWorkerLabels, Gauge>,
    training_images: Family<ModelWorkerLabels, Counter>,
    open_streams: Family<StreamLabels, Gauge>,
    store_seconds: Histograms<StoreLabels>,
    store_write_bytes: Family<BackendLabels, Counter>,
    store_watch_restarts: Family<BackendLabels, Counter>,
    upload_bytes: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn seconds_between(from: &Option<prost_types::Timestamp>, to: &Option<prost_types::Timestamp>) -> Option<f64> {
    if from.is_none() || to.is_none() {
        return None;
    }
    Some(((micros(to) - micros(from)) as f64 / 1e6).max(0.0))
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("deephardway");
        let jobs_submitted = Family::<JobLabels, Counter>::default();
        registry.register("jobs_submitted", "Jobs accepted, by kind and model", jobs_submitted.clone());
        let jobs_finished = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "jobs_finished",
            "Jobs that reached a final state, by kind, model and outcome (succeeded, failed, cancelled)",
            jobs_finished.clone(),
        );
        let queue_wait = Histograms::<JobLabels>::new_with_constructor(job_seconds as fn() -> Histogram);
        registry.register_with_unit(
            "job_queue_wait",
            "Time from submission to the start of each attempt",
            Unit::Seconds,
            queue_wait.clone(),
        );
        let run_time = Histograms::<OutcomeLabels>::new_with_constructor(job_seconds as fn() -> Histogram);
        registry.register_with_unit(
            "job_run",
            "Time from the start of a job's last attempt to its end",
            Unit::Seconds,
            run_time.clone(),
        );
        let latency = Histograms::<OutcomeLabels>::new_with_constructor(job_seconds as fn() -> Histogram);
        registry.register_with_unit(
            "job_latency",
            "Time from submission to the final event (end to end)",
            Unit::Seconds,
            latency.clone(),
        );
        let prompt_tokens = Family::<ModelLabels, Counter>::default();
        registry.register("prompt_tokens", "Prompt tokens of finished generate jobs", prompt_tokens.clone());
        let generated_tokens = Family::<ModelLabels, Counter>::default();
        registry.register("generated_tokens", "Tokens generated by finished generate jobs", generated_tokens.clone());
        let embedded_texts = Family::<ModelLabels, Counter>::default();
        registry.register("embedded_texts", "Texts embedded by finished embed jobs", embedded_texts.clone());
        let time_to_first_output = Histograms::<JobLabels>::new_with_constructor(job_seconds as fn() -> Histogram);
        registry.register_with_unit(
            "time_to_first_output",
            "Time from the start of a job's attempt to its first output (a generate job's first token)",
            Unit::Seconds,
            time_to_first_output.clone(),
        );
        let time_per_output_token = Histograms::<ModelLabels>::new_with_constructor(token_seconds as fn() -> Histogram);
        registry.register_with_unit(
            "time_per_output_token",
            "Per generate job, the time from its first token to its last over the tokens after the first",
            Unit::Seconds,
            time_per_output_token.clone(),
        );
        let jobs = Family::<StateLabels, Gauge>::default();
        registry.register(
            "jobs",
            "Jobs waiting (state=queued) and running (state=running) per served model, read from the store: \
             every replica reports the cluster's numbers",
            jobs.clone(),
        );
        let workers_connected = Gauge::default();
        registry.register("workers_connected", "Workers connected to this replica", workers_connected.clone());
        let worker_info = Family::<WorkerInfoLabels, Gauge>::default();
        registry.register(
            "worker_info",
            "1 per worker connected to this replica: its session id (worker), name and device",
            worker_info.clone(),
        );
        let worker_slots = Family::<WorkerLabels, Gauge>::default();
        registry.register("worker_slots", "Job slots of each worker connected to this replica", worker_slots.clone());
        let worker_running_jobs = Family::<WorkerLabels, Gauge>::default();
        registry.register(
            "worker_running_jobs",
            "Jobs each worker runs, as its last heartbeat said",
            worker_running_jobs.clone(),
        );
        let batch_size = Histograms::<ModelWorkerLabels>::new_with_constructor(batch_sizes as fn() -> Histogram);
        registry.register(
            "batch_size",
            "Batches each worker ran per model: sequences per decode step (generate), texts per forward pass (embed)",
            batch_size.clone(),
        );
        let kv_cache_tokens = Family::<ModelWorkerLabels, Gauge>::default();
        registry.register(
            "kv_cache_tokens",
            "Tokens held in a generate model's key-value caches on each worker, as its last heartbeat said",
            kv_cache_tokens.clone(),
        );
        let training_images = Family::<ModelWorkerLabels, Counter>::default();
        registry.register(
            "training_images",
            "Images trained on (forward and backward), per training model (the trainer) and worker",
            training_images.clone(),
        );
        let open_streams = Family::<StreamLabels, Gauge>::default();
        registry.register(
            "open_streams",
            "Open job streams on this replica, by RPC (watch_job, run_job, watch_jobs)",
            open_streams.clone(),
        );
        let store_seconds = Histograms::<StoreLabels>::new_with_constructor(store_seconds as fn() -> Histogram);
        registry.register_with_unit(
            "store_operation",
            "Job store operations, by operation and backend",
            Unit::Seconds,
            store_seconds.clone(),
        );
        let store_write_bytes = Family::<BackendLabels, Counter>::default();
        registry.register_with_unit(
            "store_write",
            "Bytes written to the job store (keys and values of committed and attempted transactions)",
            Unit::Bytes,
            store_write_bytes.clone(),
        );
        let store_watch_restarts = Family::<BackendLabels, Counter>::default();
        registry.register(
            "store_watch_restarts",
            "Store watches reopened after their stream broke or their etcd member stopped answering",
            store_watch_restarts.clone(),
        );
        let upload_bytes = Counter::default();
        registry.register_with_unit("upload", "Dataset archive bytes received", Unit::Bytes, upload_bytes.clone());
        Metrics {
            registry,
            jobs_submitted,
            jobs_finished,
            queue_wait,
            run_time,
            latency,
            prompt_tokens,
            generated_tokens,
            embedded_texts,
            time_to_first_output,
            time_per_output_token,
            jobs,
            seen_states: Mutex::new(BTreeSet::new()),
            workers_connected,
            worker_info,
            worker_slots,
            worker_running_jobs,
            batch_size,
            kv_cache_tokens,
            training_images,
            open_streams,
            store_seconds,
            store_write_bytes,
            store_watch_restarts,
            upload_bytes,
        }
    }

    /// A job was accepted.
    pub fn submitted(&self, job: &Job) {
        let labels = JobLabels { kind: deephardway::kind_name(job.kind), model: job.model.clone() };
        self.jobs_submitted.get_or_create(&labels).inc();
    }

    /// A job's attempt started.
    pub fn started(&self, job: &Job) {
        if let Some(wait) = seconds_between(&job.create_time, &job.start_time) {
            let labels = JobLabels { kind: deephardway::kind_name(job.kind), model: job.model.clone() };
            self.queue_wait.get_or_create(&labels).observe(wait);
        }
    }

    /// A job's final transition committed.
    pub fn finished(&self, job: &Job) {
        let outcome = deephardway::state_name(job.state);
        let labels = OutcomeLabels { kind: deephardway::kind_name(job.kind), model: job.model.clone(), outcome };
        self.jobs_finished.get_or_create(&labels).inc();
        if let Some(run) = seconds_between(&job.start_time, &job.end_time) {
            self.run_time.get_or_create(&labels).observe(run);
        }
        if let Some(total) = seconds_between(&job.create_time, &job.end_time) {
            self.latency.get_or_create(&labels).observe(total);
        }
        let model = ModelLabels { model: job.model.clone() };
        match job.result.as_ref().and_then(|r| r.value.as_ref()) {
            Some(job_result::Value::Generate(g)) => {
                self.prompt_tokens.get_or_create(&model).inc_by(u64::from(g.prompt_tokens));
                self.generated_tokens.get_or_create(&model).inc_by(u64::from(g.completion_tokens));
            }
            Some(job_result::Value::Embed(e)) => {
                self.embedded_texts.get_or_create(&model).inc_by(e.embeddings.len() as u64);
            }
            _ => {}
        }
    }

    /// A job's attempt produced its first output `seconds` after it started.
    pub fn first_output(&self, kind: i32, model: &str, seconds: f64) {
        let labels = JobLabels { kind: deephardway::kind_name(kind), model: model.to_string() };
        self.time_to_first_output.get_or_create(&labels).observe(seconds);
    }

    /// A generate job produced `tokens` tokens, `seconds` from its first to its last.
    pub fn generated(&self, model: &str, tokens: u32, seconds: f64) {
        if tokens > 1 {
            let labels = ModelLabels { model: model.to_string() };
            self.time_per_output_token.get_or_create(&labels).observe(seconds / f64::from(tokens - 1));
        }
    }

    /// A worker session started: its series exist until the returned guard is dropped.
    /// Its heartbeats are read only for the models it announced (`served`): a worker
    /// cannot make up model names, each of which would be series of its own.
    pub fn worker_connected(
        self: &Arc<Self>,
        worker: &str,
        name: &str,
        device: &str,
        slots: u32,
        served: impl IntoIterator<Item = String>,
    ) -> WorkerSeries {
        let labels = WorkerLabels { worker: worker.to_string() };
        self.workers_connected.inc();
        let info = WorkerInfoLabels { worker: worker.to_string(), name: name.to_string(), device: device.to_string() };
        self.worker_info.get_or_create(&info).set(1);
        self.worker_slots.get_or_create(&labels).set(i64::from(slots));
        self.worker_running_jobs.get_or_create(&labels).set(0);
        WorkerSeries {
            metrics: self.clone(),
            info,
            served: served.into_iter().collect(),
            models: Mutex::new(BTreeSet::new()),
        }
    }

    /// Reads the store's own counters (watch restarts) into their metrics.
    pub fn observe_store(&self, backend: &str, watch_restarts: u64) {
        let counter = self.store_watch_restarts.get_or_create(&BackendLabels { backend: backend.to_string() });
        counter.inc_by(watch_restarts.saturating_sub(counter.get()));
    }

    /// Counts an open stream of `rpc` until the returned guard is dropped.
    pub fn stream(&self, rpc: &str) -> StreamGuard {
        let gauge = self.open_streams.get_or_create(&StreamLabels { rpc: rpc.to_string() }).clone();
        gauge.inc();
        StreamGuard(gauge)
    }

    pub fn uploaded(&self, bytes: usize) {
        self.upload_bytes.inc_by(bytes as u64);
    }

    /// Sets the waiting and running gauges to `counts` ((state, model) → jobs); pairs
    /// seen before and absent now read 0.
    pub fn set_job_counts(&self, counts: &std::collections::BTreeMap<(String, String), i64>) {
        let mut seen = self.seen_states.lock().expect("metrics lock");
        seen.extend(counts.keys().cloned());
        for (state, model) in seen.iter() {
            let value = counts.get(&(state.clone(), model.clone())).copied().unwrap_or(0);
            self.jobs.get_or_create(&StateLabels { state: state.clone(), model: model.clone() }).set(value);
        }
    }

    /// The exposition, in OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}

/// The most models one heartbeat is read for, and the most batches it may record: a
/// worker decoding 16 sequences at 200 steps a second sends about 400 per heartbeat.
const MAX_MODELS_PER_HEARTBEAT: usize = 64;
const MAX_BATCHES_PER_HEARTBEAT: u64 = 16_384;

/// A connected worker's series: updated by its heartbeats, removed when dropped (the
/// session ended), so that the per-worker series stay as many as the workers.
pub struct WorkerSeries {
    metrics: Arc<Metrics>,
    info: WorkerInfoLabels,
    /// The models it announced; activity for any other is ignored.
    served: BTreeSet<String>,
    /// The models it reported, whose series to remove.
    models: Mutex<BTreeSet<String>>,
}

impl WorkerSeries {
    /// Records what a heartbeat says the worker and its models did.
    pub fn heartbeat(&self, beat: &Heartbeat) {
        let metrics = &self.metrics;
        let worker = WorkerLabels { worker: self.info.worker.clone() };
        metrics.worker_running_jobs.get_or_create(&worker).set(i64::from(beat.running_jobs));
        let mut models = self.models.lock().expect("metrics lock");
        // A worker is trusted to run jobs, not with this replica's CPU: what one heartbeat
        // can make it record is bounded (far above what a real worker sends).
        let mut observations_left = MAX_BATCHES_PER_HEARTBEAT;
        let announced = beat.models.iter().filter(|a| self.served.contains(&a.model));
        for activity in announced.take(MAX_MODELS_PER_HEARTBEAT) {
            let labels = ModelWorkerLabels { model: activity.model.clone(), worker: self.info.worker.clone() };
            models.insert(activity.model.clone());
            if !activity.batch_sizes.is_empty() {
                let histogram = metrics.batch_size.get_or_create(&labels);
                for batches in &activity.batch_sizes {
                    let count = batches.count.min(observations_left);
                    observations_left -= count;
                    for _ in 0..count {
                        histogram.observe(f64::from(batches.size));
                    }
                }
            }
            metrics.kv_cache_tokens.get_or_create(&labels).set(activity.kv_cache_tokens as i64);
            if activity.training_images > 0 {
                metrics.training_images.get_or_create(&labels).inc_by(activity.training_images);
            }
        }
    }
}

impl Drop for WorkerSeries {
    fn drop(&mut self) {
        let metrics = &self.metrics;
        let worker = WorkerLabels { worker: self.info.worker.clone() };
        metrics.workers_connected.dec();
        metrics.worker_info.remove(&self.info);
        metrics.worker_slots.remove(&worker);
        metrics.worker_running_jobs.remove(&worker);
        for model in self.models.lock().expect("metrics lock").iter() {
            let labels = ModelWorkerLabels { model: model.clone(), worker: self.info.worker.clone() };
            metrics.batch_size.remove(&labels);
            metrics.kv_cache_tokens.remove(&labels);
            metrics.training_images.remove(&labels);
        }
    }
}

/// Decrements its stream gauge when dropped.
pub struct StreamGuard(Gauge);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use deephardway::{
        v1::{EmbedResult, Embedding, GenerateResult, JobKind, JobResult, JobState},
        worker::v1::{BatchSizeCount, ModelActivity},
    };
    use prost_types::Timestamp;

    /// A registry with a sample in every family, as a busy server would have.
    /// A registry with a connected worker, and that worker's series.
    struct Busy {
        metrics: Arc<Metrics>,
        worker: WorkerSeries,
    }

    impl std::ops::Deref for Busy {
        type Target = Metrics;
        fn deref(&self) -> &Metrics {
            &self.metrics
        }
    }

    fn busy() -> Busy {
        let metrics = Arc::new(Metrics::new());
        let at = |seconds| Some(Timestamp { seconds, nanos: 0 });
        let mut job = Job {
            kind: JobKind::Generate as i32,
            model: "m".into(),
            state: JobState::Succeeded as i32,
            create_time: at(10),
            start_time: at(12),
            end_time: at(15),
            result: Some(JobResult {
                value: Some(job_result::Value::Generate(GenerateResult {
                    prompt_tokens: 7,
                    completion_tokens: 5,
                    ..Default::default()
                })),
            }),
            ..Default::default()
        };
        metrics.submitted(&job);
        metrics.started(&job);
        metrics.finished(&job);
        job.kind = JobKind::Embed as i32;
        job.result = Some(JobResult {
            value: Some(job_result::Value::Embed(EmbedResult {
                embeddings: vec![Embedding::default(); 3],
                ..Default::default()
            })),
        });
        metrics.finished(&job);
        let worker = metrics.worker_connected("w1", "host", "cpu", 4, ["m".to_string()]);
        worker.heartbeat(&Heartbeat {
            running_jobs: 2,
            models: vec![ModelActivity {
                model: "m".into(),
                batch_sizes: vec![BatchSizeCount { size: 4, count: 3 }],
                kv_cache_tokens: 120,
                training_images: 64,
            }],
        });
        metrics.first_output(job.kind, &job.model, 0.25);
        metrics.generated("m", 11, 1.0);
        metrics.observe_store("etcd", 2);
        let _stream = metrics.stream("watch_job");
        metrics.uploaded(10);
        metrics.set_job_counts(&[(("queued".to_string(), "m".to_string()), 2)].into_iter().collect());
        let store = StoreLabels { operation: "get".into(), backend: "embedded".into() };
        metrics.store_seconds.get_or_create(&store).observe(0.001);
        metrics.store_write_bytes.get_or_create(&BackendLabels { backend: "embedded".into() }).inc_by(3);
        Busy { metrics, worker }
    }

    /// The sample names an exposition holds (`name` of `name{labels} value`).
    fn sample_names(text: &str) -> BTreeSet<String> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
            .collect()
    }

    #[test]
    fn names_follow_prometheus_conventions_and_values_add_up() {
        let text = busy().encode();
        let names = sample_names(&text);
        for name in &names {
            assert!(name.starts_with("deephardway_"), "{name}");
            assert!(name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'), "{name}");
        }
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let mut parts = line.split(' ').skip(2);
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
            match kind {
                "counter" => assert!(names.contains(&format!("{name}_total")), "{name}: no _total sample"),
                "histogram" => {
                    // Batch sizes count items, which have no unit.
                    let unitless = name == "deephardway_batch_size";
                    assert!(unitless || name.ends_with("_seconds") || name.ends_with("_bytes"), "{name}: no unit");
                    assert!(names.contains(&format!("{name}_bucket")), "{name}");
                }
                "gauge" => assert!(names.contains(name), "{name}"),
                other => panic!("{name}: unexpected type {other}"),
            }
        }
        assert!(text.contains(r#"deephardway_prompt_tokens_total{model="m"} 7"#), "{text}");
        assert!(text.contains(r#"deephardway_generated_tokens_total{model="m"} 5"#), "{text}");
        assert!(text.contains(r#"deephardway_embedded_texts_total{model="m"} 3"#), "{text}");
        assert!(text.contains(r#"deephardway_job_queue_wait_seconds_sum{kind="generate",model="m"} 2.0"#), "{text}");
        assert!(text.contains(r#"deephardway_jobs{state="queued",model="m"} 2"#), "{text}");
        // The stream opened in `busy` has ended: its guard gave the gauge back.
        assert!(text.contains(r#"deephardway_open_streams{rpc="watch_job"} 0"#), "{text}");
        assert!(text.trim_end().ends_with("# EOF"), "OpenMetrics ends with # EOF");
        // What the worker's heartbeat said, labelled with it.
        assert!(text.contains(r#"deephardway_worker_info{worker="w1",name="host",device="cpu"} 1"#), "{text}");
        assert!(text.contains(r#"deephardway_worker_slots{worker="w1"} 4"#), "{text}");
        assert!(text.contains(r#"deephardway_worker_running_jobs{worker="w1"} 2"#), "{text}");
        assert!(text.contains(r#"deephardway_batch_size_sum{model="m",worker="w1"} 12.0"#), "{text}");
        assert!(text.contains(r#"deephardway_batch_size_count{model="m",worker="w1"} 3"#), "{text}");
        assert!(text.contains(r#"deephardway_kv_cache_tokens{model="m",worker="w1"} 120"#), "{text}");
        assert!(text.contains(r#"deephardway_training_images_total{model="m",worker="w1"} 64"#), "{text}");
        assert!(text.contains(r#"deephardway_time_per_output_token_seconds_sum{model="m"} 0.1"#), "{text}");
        assert!(text.contains(r#"deephardway_store_watch_restarts_total{backend="etcd"} 2"#), "{text}");
    }

    #[test]
    fn a_worker_series_go_with_its_session() {
        let Busy { metrics, worker } = busy();
        drop(worker);
        let text = metrics.encode();
        assert!(!text.contains(r#"worker="w1""#), "{text}");
        assert!(text.contains("deephardway_workers_connected 0"), "{text}");
    }

    #[test]
    fn a_heartbeat_records_a_bounded_number_of_batches() {
        let metrics = Arc::new(Metrics::new());
        let worker = metrics.worker_connected("w", "n", "cpu", 1, ["m".to_string()]);
        let flood = ModelActivity {
            model: "m".into(),
            batch_sizes: (1..=8).map(|size| BatchSizeCount { size, count: u64::MAX }).collect(),
            ..Default::default()
        };
        // ... and model names it never announced are no series at all.
        let made_up = |i| ModelActivity { model: format!("made-up-{i}"), training_images: 1, ..Default::default() };
        let mut models = vec![flood; 1000];
        models.extend((0..100).map(made_up));
        worker.heartbeat(&Heartbeat { running_jobs: 0, models });
        let text = metrics.encode();
        let count = format!(r#"deephardway_batch_size_count{{model="m",worker="w"}} {MAX_BATCHES_PER_HEARTBEAT}"#);
        assert!(text.contains(&count), "{text}");
        assert!(!text.contains("made-up"), "{text}");
    }

    #[test]
    fn a_drained_queue_reads_zero() {
        let metrics = busy();
        metrics.set_job_counts(&Default::default());
        assert!(metrics.encode().contains(r#"deephardway_jobs{state="queued",model="m"} 0"#));
    }

    /// The Grafana dashboard in deploy/ parses and plots only metrics the service exports.
    #[test]
    fn the_dashboard_uses_only_exported_metrics() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/grafana/deephardway.json");
        let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let exported = sample_names(&busy().encode());
        let mut used = BTreeSet::new();
        for panel in dashboard["panels"].as_array().expect("panels") {
            for target in panel["targets"].as_array().expect("targets") {
                let expr = target["expr"].as_str().expect("an expr");
                let mut rest = expr;
                while let Some(at) = rest.find("deephardway_") {
                    let name: String =
                        rest[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                    rest = &rest[at + name.len()..];
                    used.insert(name);
                }
            }
        }
        assert!(used.len() >= 10, "{used:?}");
        let unknown: Vec<_> = used.difference(&exported).collect();
        assert!(unknown.is_empty(), "the dashboard uses metrics the service does not export: {unknown:?}");
    }
}
