//! Disk per job is O(its data), not O(its updates) (issue 12, item 5): a job's request is
//! written once under its own key, progress rewrites only the small record, and the
//! embedded store's history is bounded in bytes. Each test drives the job lifecycle the
//! way a worker session does (one store write per flushed report) and measures what the
//! store itself says: the embedded file's size, etcd's database size, and the bytes the
//! service handed to the store (a counting wrapper, the same on both backends).

mod support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use deephardway::v1::{
    EmbedInput, EmbedResult, Embedding, JobKind, JobOutput, JobProgress, JobResult, JobSpec, JobState,
    job_event::Event, job_result, job_spec::Input,
};
use deephardway_service::{
    auth::Caller,
    jobs::{JobLifecycle, ServedModel, WorkerRecord},
    keys,
    store::{Op, SharedStore, StoreError, Txn, TxnOutcome, embedded::EmbeddedStore},
};
use support::{
    hooked::{Hooked, TxnHook},
    *,
};

const MIB: u64 = 1 << 20;
const EMBED_MODEL: &str = "all-minilm-l6-v2";

/// Counts the bytes of every key and value the service asks the store to put: what a
/// backend has to write (and, without compaction, keep) whatever its own layout.
#[derive(Default)]
struct CountsPutBytes(AtomicU64);

impl TxnHook for CountsPutBytes {
    fn after(&self, txn: &Txn, outcome: &TxnOutcome) -> Option<StoreError> {
        if outcome.succeeded {
            let bytes: usize = txn
                .ops
                .iter()
                .map(|op| match op {
                    Op::Put { key, value, .. } => key.len() + value.len(),
                    Op::Delete { .. } => 0,
                })
                .sum();
            self.0.fetch_add(bytes as u64, Ordering::Relaxed);
        }
        None
    }
}

type Counting = Hooked<CountsPutBytes>;

fn counting(inner: SharedStore) -> Arc<Counting> {
    Arc::new(Hooked { inner, hook: CountsPutBytes::default() })
}

fn put_bytes(store: &Counting) -> u64 {
    store.hook.0.load(Ordering::Relaxed)
}

/// 256 texts of 4 KiB: the largest embed input (1 MiB), each text telling its index.
fn large_embed_spec() -> JobSpec {
    let texts = (0..256).map(|i| format!("{i:04}").repeat(1024)).collect();
    JobSpec { input: Some(Input::Embed(EmbedInput { texts })), ..Default::default() }
}

fn embed_result() -> Event {
    let embeddings = (0..256).map(|i| Embedding { values: vec![i as f32, 1.0, 2.0, 3.0] }).collect();
    Event::Result(JobResult { value: Some(job_result::Value::Embed(EmbedResult { embeddings, ..Default::default() })) })
}

/// A queued job claimed by a worker: what the lifecycle tests below report on.
struct Running {
    lifecycle: JobLifecycle,
    id: String,
    fence: deephardway_service::jobs::Fence,
}

/// Submits the 1 MiB embed job and claims it for a worker, as dispatch does.
async fn start_large_job(store: SharedStore) -> Running {
    let lifecycle = JobLifecycle::new(store.clone(), test_config());
    let worker = WorkerRecord {
        worker_id: "w".into(),
        name: "w".into(),
        device: "cpu".into(),
        slots: 1,
        models: vec![ServedModel {
            name: EMBED_MODEL.into(),
            kind: JobKind::Embed as i32,
            description: String::new(),
            context_length: 0,
        }],
        key: String::new(),
    };
    // Long enough for the slowest store (the old layout wrote 2 MiB a report).
    let lease = store.lease_grant(Duration::from_secs(3600)).await.unwrap();
    let put = Op::put_with_lease(keys::worker("w"), serde_json::to_vec(&worker).unwrap(), lease);
    store.txn(Txn::new().then(put)).await.unwrap();
    let (job, _) = lifecycle.submit(large_embed_spec(), "", &Caller::anonymous()).await.unwrap();
    let entry = store.range(keys::QUEUE, 1).await.unwrap().kvs.pop().expect("queued");
    let claimed = lifecycle.claim(&entry, &worker, lease).await.unwrap().expect("claimed");
    assert_eq!(claimed.job.spec, large_embed_spec_with_model(), "the assignment carries the whole request");
    Running { lifecycle, id: job.id, fence: claimed.fence }
}

fn large_embed_spec_with_model() -> Option<JobSpec> {
    Some(JobSpec { model: EMBED_MODEL.into(), ..large_embed_spec() })
}

/// `reports` progress reports, one store write each, then the result. Checks that every
/// event and the result are intact.
async fn progress_then_result(job: &Running, reports: usize) {
    for i in 0..reports {
        let progress =
            JobProgress { fraction: i as f64 / reports as f64, message: format!("step {i}"), ..Default::default() };
        job.lifecycle.report(&job.id, &job.fence, vec![Event::Progress(progress)]).await.expect("reported");
    }
    job.lifecycle.report(&job.id, &job.fence, vec![embed_result()]).await.expect("finished");

    let (events, _) = job.lifecycle.events(&job.id).await.unwrap();
    assert_eq!(events.len(), reports + 3, "queued, started, every progress report and the result");
    assert_contiguous(&events, 1);
    for (i, event) in events[2..2 + reports].iter().enumerate() {
        match &event.event {
            Some(Event::Progress(p)) => assert_eq!(p.message, format!("step {i}")),
            other => panic!("event {} is {other:?}, not progress {i}", event.seq),
        }
    }
    assert_eq!(events.last().unwrap().event, Some(embed_result()));
    let done = job.lifecycle.get(&job.id).await.unwrap();
    assert_eq!(done.state, JobState::Succeeded as i32);
    assert_eq!(done.spec, large_embed_spec_with_model(), "the input reads back whole");
    let Event::Result(result) = embed_result() else { unreachable!() };
    assert_eq!(done.result, Some(result));
}

fn file_size(store: &EmbeddedStore) -> u64 {
    std::fs::metadata(store.path()).expect("store file").len()
}

/// The probe's workload on the embedded store: 1 MiB of input, 1,000 progress reports.
/// Before the split every report rewrote the input, and history kept each copy: the file
/// grew by ~1 GiB. Now the input is stored once (1 MiB) and its copy in history once
/// more; progress costs a few hundred bytes a report (1.3 MiB put in all); redb's pages,
/// its allocator's rounding and its growth by doubling make that 8 MiB of file. 32 MiB
/// leaves room for all of that, and would be exceeded by 16 rewrites of the input.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_does_not_rewrite_the_input_on_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let embedded = Arc::new(EmbeddedStore::open(dir.path()).await.unwrap());
    let counting = counting(embedded.clone());
    let before = file_size(&embedded);
    let started = Instant::now();
    let job = start_large_job(counting.clone()).await;
    progress_then_result(&job, 1000).await;
    let grown = file_size(&embedded) - before;
    eprintln!(
        "embedded: 1 MiB input + 1000 progress reports: file grew {:.1} MiB, {:.1} MiB put, in {:?}",
        grown as f64 / MIB as f64,
        put_bytes(&counting) as f64 / MIB as f64,
        started.elapsed()
    );
    assert!(grown < 32 * MIB, "store.redb grew by {} MiB", grown / MIB);
    assert!(put_bytes(&counting) < 4 * MIB, "{} bytes written", put_bytes(&counting));
}

/// The same workload on etcd, which keeps every revision until an operator compacts:
/// what the service writes is what etcd keeps. Before, ~1 GiB; now the input once
/// (1 MiB) and a few hundred bytes a report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_does_not_rewrite_the_input_on_etcd() {
    let backend = Backend::etcd().await;
    let counting = counting(backend.open().await);
    let job = start_large_job(counting.clone()).await;
    progress_then_result(&job, 1000).await;
    eprintln!("etcd: 1 MiB input + 1000 progress reports: {:.1} MiB put", put_bytes(&counting) as f64 / MIB as f64);
    assert!(put_bytes(&counting) < 4 * MIB, "{} bytes written", put_bytes(&counting));
}

/// Large outputs are the job's data, and are kept (as events); what must not grow
/// without bound is history. 100 outputs of 1 MiB: 100 MiB of events, each rounded up
/// by redb's buddy allocator to 2 MiB (a value just over 1 MiB takes the next power of
/// two), history's byte bound (32 MiB) of old values, rounded likewise, and pages freed
/// but not yet reusable. redb grows its file by doubling, so sizes come in steps (260,
/// 520, 1040 MiB): today's workload ends at 520 MiB, the probe's layout at 1040 MiB
/// (every report rewrote the 1 MiB input too, and history kept every copy).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_outputs_cost_their_size_and_bounded_history() {
    let dir = tempfile::tempdir().unwrap();
    let embedded = Arc::new(EmbeddedStore::open(dir.path()).await.unwrap());
    let before = file_size(&embedded);
    let started = Instant::now();
    let job = start_large_job(embedded.clone()).await;
    let chunk = "x".repeat(MIB as usize - 64);
    for i in 0..100 {
        let output = Event::Output(JobOutput { text: format!("{i:04}{chunk}") });
        job.lifecycle.report(&job.id, &job.fence, vec![output]).await.expect("reported");
    }
    job.lifecycle.report(&job.id, &job.fence, vec![embed_result()]).await.expect("finished");
    let (events, _) = job.lifecycle.events(&job.id).await.unwrap();
    assert_eq!(events.len(), 103);
    for (i, event) in events[2..102].iter().enumerate() {
        let Some(Event::Output(output)) = &event.event else { panic!("event {} is not output", event.seq) };
        assert!(output.text.starts_with(&format!("{i:04}")) && output.text.len() == MIB as usize - 60);
    }
    let grown = file_size(&embedded) - before;
    eprintln!(
        "embedded: 100 x 1 MiB outputs: file grew {:.1} MiB in {:?}",
        grown as f64 / MIB as f64,
        started.elapsed()
    );
    assert!(grown < 600 * MIB, "store.redb grew by {} MiB", grown / MIB);
}

/// Records written before the split hold their whole spec and have no spec key: they read
/// whole, and their first transition moves the input out, so an upgrade loses no job
/// and their later reports are small too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_from_before_the_split_read_whole_and_move_their_input_out() {
    use prost::Message;
    let backend = Backend::embedded().await;
    let store = backend.open().await;
    let lifecycle = JobLifecycle::new(store.clone(), test_config());
    let worker = diagnostic_worker("w");
    let lease = connect_worker(&store, &worker).await;
    let (submitted, _) = lifecycle.submit(diagnostic(5, 1), "", &Caller::anonymous()).await.unwrap();
    let id = submitted.id.clone();

    // Rewrite it as the old layout stored it: the whole job in its record, no spec key.
    let record = store.get(&keys::job(&id)).await.unwrap().unwrap();
    let mut old = deephardway::v1::Job::decode(record.value.as_slice()).unwrap();
    assert_eq!(old.spec.as_ref().unwrap().input, None, "new records hold no input");
    old.spec = submitted.spec.clone();
    let rewrite = Txn::new().then(Op::put(keys::job(&id), old.encode_to_vec())).then(Op::delete(keys::spec(&id)));
    store.txn(rewrite).await.unwrap();
    assert_eq!(lifecycle.get(&id).await.unwrap().spec, submitted.spec, "an old record reads whole");

    // Claiming it (its first transition) moves the input out; the assignment has it all.
    let entry = store.range(keys::QUEUE, 1).await.unwrap().kvs.pop().expect("queued");
    let claimed = lifecycle.claim(&entry, &worker, lease).await.unwrap().expect("claimed");
    assert_eq!(claimed.job.spec, submitted.spec);
    let record = store.get(&keys::job(&id)).await.unwrap().unwrap();
    let record = deephardway::v1::Job::decode(record.value.as_slice()).unwrap();
    assert_eq!(record.spec.as_ref().unwrap().input, None, "the input moved out");
    assert_eq!(record.spec.as_ref().unwrap().model, "diagnostic", "the rest stays");
    let progress = Event::Progress(JobProgress { fraction: 0.5, ..Default::default() });
    lifecycle.report(&id, &claimed.fence, vec![progress]).await.unwrap();
    let job = lifecycle.get(&id).await.unwrap();
    assert_eq!((job.spec, job.progress), (submitted.spec, 0.5));
}
