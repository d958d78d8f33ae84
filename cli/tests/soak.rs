//! Chaos soak: a 3-member etcd cluster (real etcd processes), two `deephardway serve`
//! replicas and three `deephardway worker` processes, with clients submitting through
//! random replicas (retrying with the same request id until one acknowledges) and two
//! watchers per job on random replicas, each resuming with `after_seq` when its stream
//! breaks. Meanwhile a fault injector, on a seeded schedule, SIGKILLs and restarts etcd
//! members (the leader too), replicas and workers, and freezes (SIGSTOP) workers and etcd
//! members for a few seconds.
//!
//! The checker then asserts, for every acknowledged job: it reached exactly one final
//! event; at most one result; its event sequence is gapless from 1 and identical for both
//! watchers and for a last read of the log; the store holds it (nothing acknowledged is
//! lost) and no other job (no duplicate from a retried submit).
//!
//! The short form runs in CI (`cargo test`); `scripts/soak` runs the long one. Knobs:
//! `DEEPHARDWAY_SOAK_JOBS` (600 at least), `DEEPHARDWAY_SOAK_MIN_FAULTS` (3: the load goes
//! on past its jobs until that many faults have hit it), `DEEPHARDWAY_SOAK_FAULT_MS` (time
//! between faults, 1500), `DEEPHARDWAY_SOAK_SEED` (1).

mod support;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use deephardway::v1::{GetJobRequest, JobEvent, ListJobsRequest, job_event::Event};
use deephardway_service::local_etcd::cluster::LocalEtcdCluster;
use rand::{Rng, SeedableRng, rngs::StdRng};
use support::*;
use tokio::{process::Child, sync::Semaphore};

const REPLICAS: usize = 2;
const WORKERS: usize = 3;
/// How long one job may take from submit to its final event, faults included.
const JOB_DEADLINE: Duration = Duration::from_secs(120);

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The processes under test.
struct Cluster {
    etcd: LocalEtcdCluster,
    replica_ports: Vec<u16>,
    replicas: Vec<Option<Child>>,
    workers: Vec<Option<Child>>,
    dir: tempfile::TempDir,
}

impl Cluster {
    async fn start() -> Cluster {
        let etcd = LocalEtcdCluster::start(3).await.unwrap_or_else(|e| panic!("{e:#}"));
        let mut cluster = Cluster {
            etcd,
            replica_ports: (0..REPLICAS).map(|_| free_port()).collect(),
            replicas: (0..REPLICAS).map(|_| None).collect(),
            workers: (0..WORKERS).map(|_| None).collect(),
            dir: tempfile::tempdir().unwrap(),
        };
        for i in 0..REPLICAS {
            cluster.start_replica(i).await;
        }
        for i in 0..WORKERS {
            cluster.start_worker(i);
        }
        for url in cluster.urls() {
            wait_for_workers(&url, 1).await;
        }
        cluster
    }

    fn urls(&self) -> Vec<String> {
        self.replica_ports.iter().map(|port| format!("http://127.0.0.1:{port}")).collect()
    }

    async fn start_replica(&mut self, i: usize) {
        let listen = format!("127.0.0.1:{}", self.replica_ports[i]);
        // Each replica prefers another member first, as the README advises.
        let mut endpoints = self.etcd.endpoints();
        let first = i % endpoints.len();
        endpoints.rotate_left(first);
        let mut serve = tokio::process::Command::new(binary());
        serve
            .args(["serve", "--listen", &listen, "--store", &format!("etcd:{}", endpoints.join(","))])
            .args(["--worker-lease-s", "3", "--worker-heartbeat-ms", "500", "--max-attempts", "10"])
            .arg("--data-dir")
            .arg(self.dir.path().join(format!("replica-{i}")));
        self.replicas[i] = Some(self.spawn(serve, &format!("replica-{i}")));
        wait_until_serving(&format!("http://{listen}")).await;
    }

    fn start_worker(&mut self, i: usize) {
        let url = &self.urls()[i % REPLICAS];
        let mut worker = tokio::process::Command::new(binary());
        worker
            .args(["worker", "--server", url, "--name", &format!("soak-{i}"), "--device", "cpu", "--slots", "4"])
            .arg("--models-dir")
            .arg(self.dir.path().join("no-models"))
            .arg("--artifact-cache")
            .arg(self.dir.path().join(format!("cache-{i}")));
        self.workers[i] = Some(self.spawn(worker, &format!("worker-{i}")));
    }

    /// Starts `command` (killed when dropped), its stderr appended to `name`.log, kept
    /// for a failure's diagnosis.
    fn spawn(&self, mut command: tokio::process::Command, name: &str) -> tokio::process::Child {
        let path = self.dir.path().join(format!("{name}.log"));
        let log = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
        command.env("RUST_LOG", "warn").stdin(Stdio::null()).stderr(log).kill_on_drop(true);
        command.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"))
    }

    fn pid(child: &Option<Child>) -> String {
        child.as_ref().and_then(Child::id).expect("a running process").to_string()
    }

    /// One fault, chosen by `rng`; returns what it did.
    async fn fault(&mut self, rng: &mut StdRng) -> String {
        let signal = |pid: &str, sig: &str| {
            let _ = std::process::Command::new("kill").args([sig, pid]).status();
        };
        match rng.random_range(0..6) {
            0 => {
                let i = rng.random_range(0..3);
                self.etcd.kill(i).await;
                tokio::time::sleep(Duration::from_millis(1500)).await;
                self.etcd.restart(i, true).await.unwrap_or_else(|e| panic!("{e:#}"));
                format!("SIGKILL etcd member {i}, restarted")
            }
            1 => {
                let leader = self.etcd.leader().await.unwrap_or(0);
                self.etcd.kill(leader).await;
                tokio::time::sleep(Duration::from_millis(1500)).await;
                self.etcd.restart(leader, true).await.unwrap_or_else(|e| panic!("{e:#}"));
                format!("SIGKILL etcd leader (member {leader}), restarted")
            }
            2 => {
                let i = rng.random_range(0..3);
                self.etcd.stop(i);
                tokio::time::sleep(Duration::from_secs(3)).await;
                self.etcd.cont(i);
                format!("SIGSTOP etcd member {i} for 3 s")
            }
            3 => {
                let i = rng.random_range(0..REPLICAS);
                let mut child = self.replicas[i].take().expect("running");
                child.kill().await.unwrap();
                tokio::time::sleep(Duration::from_millis(500)).await;
                self.start_replica(i).await;
                format!("SIGKILL replica {i}, restarted")
            }
            4 => {
                let i = rng.random_range(0..WORKERS);
                let mut child = self.workers[i].take().expect("running");
                child.kill().await.unwrap();
                tokio::time::sleep(Duration::from_millis(500)).await;
                self.start_worker(i);
                format!("SIGKILL worker {i}, restarted")
            }
            _ => {
                let i = rng.random_range(0..WORKERS);
                let pid = Self::pid(&self.workers[i]);
                signal(&pid, "-STOP");
                tokio::time::sleep(Duration::from_secs(4)).await;
                signal(&pid, "-CONT");
                format!("SIGSTOP worker {i} for 4 s")
            }
        }
    }

    /// The logs of every process, for a failure.
    fn logs(&self) -> String {
        let mut all = self.etcd.logs();
        for entry in std::fs::read_dir(self.dir.path()).unwrap().flatten() {
            let path: PathBuf = entry.path();
            if path.extension().is_some_and(|e| e == "log") {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let tail: String =
                    text.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
                all.push_str(&format!("\n--- {} (last 30 lines)\n{tail}", path.display()));
            }
        }
        all
    }
}

/// What one watcher saw of a job: every event it received, in order.
type Seen = Vec<JobEvent>;

/// Watches `job` to its final event through random replicas, resuming after the last
/// event received whenever a stream breaks or a replica is down.
async fn watch_to_the_end(urls: &[String], job: &str, seed: u64) -> Result<Seen, String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut seen, started) = (Seen::new(), Instant::now());
    let mut resumes = 0;
    loop {
        if started.elapsed() > JOB_DEADLINE {
            return Err(format!("no final event within {JOB_DEADLINE:?} ({} events, {resumes} resumes)", seen.len()));
        }
        let url = &urls[rng.random_range(0..urls.len())];
        let after = seen.last().map_or(0, |e| e.seq);
        let Ok(Ok(mut client)) = tokio::time::timeout(Duration::from_secs(2), jobs_client_or_err(url)).await else {
            resumes += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(Ok(mut stream)) = tokio::time::timeout(Duration::from_secs(5), watch(&mut client, job, after)).await
        else {
            resumes += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        // Until the stream ends, breaks, or stays silent for long: then resume elsewhere.
        while let Ok(Ok(Some(event))) = tokio::time::timeout(Duration::from_secs(15), next_event(&mut stream)).await {
            let last = event.event.as_ref().is_some_and(deephardway::is_final);
            seen.push(event);
            if last {
                return Ok(seen);
            }
        }
        resumes += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn jobs_client_or_err(url: &str) -> Result<JobsClient, ()> {
    let channel = deephardway::connect(url).await.map_err(|_| ())?;
    Ok(JobsClient::new(channel))
}

/// Submits until a replica acknowledges, always with the same request id; `None` if none
/// did within the deadline (then nothing was acknowledged, and nothing may be counted lost).
async fn submit(urls: &[String], n: u64, seed: u64) -> Option<String> {
    let mut rng = StdRng::seed_from_u64(seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let steps = rng.random_range(1..=5);
    let mut spec = diagnostic(steps, 20);
    spec.max_attempts = 10;
    let request = deephardway::v1::CreateJobRequest { spec: Some(spec), request_id: format!("soak-{seed}-{n}") };
    let started = Instant::now();
    while started.elapsed() < JOB_DEADLINE {
        let url = &urls[rng.random_range(0..urls.len())];
        let created = tokio::time::timeout(Duration::from_secs(10), async {
            let mut client = jobs_client_or_err(url).await.map_err(|_| tonic::Status::unavailable("connect"))?;
            client.create_job(request.clone()).await
        })
        .await;
        if let Ok(Ok(created)) = created {
            return created.into_inner().job.map(|j| j.id);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Why a job's events are wrong, if they are: gapless from 1, one final event and last,
/// at most one result.
fn check_events(events: &[JobEvent]) -> Result<(), String> {
    for (i, event) in events.iter().enumerate() {
        if event.seq != i as u64 + 1 {
            return Err(format!("seq {} at position {i}", event.seq));
        }
    }
    let finals = events.iter().filter(|e| e.event.as_ref().is_some_and(deephardway::is_final)).count();
    let results = events.iter().filter(|e| matches!(e.event, Some(Event::Result(_)))).count();
    if finals != 1 || !events.last().is_some_and(|e| e.event.as_ref().is_some_and(deephardway::is_final)) {
        return Err(format!("{finals} final events, the last is not one"));
    }
    if results > 1 {
        return Err(format!("{results} results"));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chaos_soak_loses_nothing() {
    let jobs = knob("DEEPHARDWAY_SOAK_JOBS", 600);
    let fault_every = Duration::from_millis(knob("DEEPHARDWAY_SOAK_FAULT_MS", 1500));
    let seed = knob("DEEPHARDWAY_SOAK_SEED", 1);
    // Faults the load must see at least: it goes on past its jobs until they have
    // happened (a fast cluster could otherwise finish before the faults it is to survive).
    let min_faults = knob("DEEPHARDWAY_SOAK_MIN_FAULTS", 3) as usize;
    let started = Instant::now();
    let cluster = Arc::new(tokio::sync::Mutex::new(Cluster::start().await));
    let urls = cluster.lock().await.urls();

    // The fault injector, until the clients are done.
    let done = tokio_util::sync::CancellationToken::new();
    let injected = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let faults = tokio::spawn({
        let (cluster, done, injected) = (cluster.clone(), done.clone(), injected.clone());
        async move {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut log = Vec::new();
            loop {
                tokio::select! {
                    () = tokio::time::sleep(fault_every) => {}
                    () = done.cancelled() => return log,
                }
                let at = started.elapsed();
                let what = cluster.lock().await.fault(&mut rng).await;
                log.push(format!("{:>6.1} s  {what}", at.as_secs_f64()));
                injected.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });

    // The clients: at most 32 jobs in flight, each submitted and watched twice; at least
    // `jobs` of them, and more until `min_faults` faults have hit the load.
    let in_flight = Arc::new(Semaphore::new(32));
    let outcomes = Arc::new(Mutex::new(BTreeMap::new()));
    let mut clients = Vec::new();
    let mut never_accepted = 0;
    let (accepted_tx, mut accepted_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut n = 0;
    while n < jobs || injected.load(std::sync::atomic::Ordering::SeqCst) < min_faults {
        let permit = in_flight.clone().acquire_owned().await.unwrap();
        let (urls, outcomes, accepted_tx) = (urls.clone(), outcomes.clone(), accepted_tx.clone());
        clients.push(tokio::spawn(async move {
            let _permit = permit;
            let Some(id) = submit(&urls, n, seed).await else { return false };
            let _ = accepted_tx.send(id.clone());
            let (a, b) = tokio::join!(
                watch_to_the_end(&urls, &id, seed ^ (n << 1)),
                watch_to_the_end(&urls, &id, seed ^ (n << 1 | 1))
            );
            outcomes.lock().unwrap().insert(id, (a, b));
            true
        }));
        n += 1;
    }
    for client in clients {
        if !client.await.unwrap() {
            never_accepted += 1;
        }
    }
    drop(accepted_tx);
    let mut accepted = Vec::new();
    while let Some(id) = accepted_rx.recv().await {
        accepted.push(id);
    }
    done.cancel();
    let fault_log = faults.await.unwrap();
    let load_time = started.elapsed();

    // The checker: every acknowledged job, against what its watchers saw and the store.
    let url = urls[0].clone();
    let mut client = jobs_client(&url).await;
    let outcomes = std::mem::take(&mut *outcomes.lock().unwrap());
    let (mut problems, mut states, mut requeued) = (Vec::new(), BTreeMap::new(), 0);
    for id in &accepted {
        let stored = match client.get_job(GetJobRequest { job_id: id.clone(), ..Default::default() }).await {
            Ok(job) => job.into_inner().job.unwrap(),
            Err(status) => {
                problems.push(format!("{id}: acknowledged but lost ({status:?})"));
                continue;
            }
        };
        *states.entry(format!("{:?}", stored.state())).or_insert(0) += 1;
        if stored.attempts > 1 {
            requeued += 1;
        }
        let log = collect_events(watch(&mut client, id, 0).await.unwrap(), Duration::from_secs(10)).await;
        let log = match log {
            Ok(log) => log,
            Err(e) => {
                problems.push(format!("{id}: the log does not end: {e:?}"));
                continue;
            }
        };
        if let Err(why) = check_events(&log) {
            problems.push(format!("{id}: the stored log: {why}"));
        }
        match outcomes.get(id) {
            Some((Ok(a), Ok(b))) => {
                for (watcher, seen) in [("watcher 1", a), ("watcher 2", b)] {
                    if let Err(why) = check_events(seen) {
                        problems.push(format!("{id}: {watcher}: {why}"));
                    } else if seen != &log {
                        problems.push(format!("{id}: {watcher} saw another sequence than the log holds"));
                    }
                }
            }
            Some((a, b)) => {
                problems.push(format!("{id}: a watcher failed: {:?} / {:?}", a.as_ref().err(), b.as_ref().err()))
            }
            None => problems.push(format!("{id}: never watched")),
        }
    }
    // No duplicates: the store holds exactly the acknowledged jobs.
    let mut listed = 0;
    let mut page_token = String::new();
    loop {
        let page = client
            .list_jobs(ListJobsRequest { page_size: 1000, page_token: page_token.clone(), ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        listed += page.jobs.len();
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let duplicated = listed.saturating_sub(accepted.len());
    eprintln!(
        "soak (seed {seed}): {} jobs acknowledged ({never_accepted} never acknowledged), {listed} in the store, \
         {} problems, {requeued} re-run after a lost worker, final states {states:?}; {} faults in {load_time:.1?}:\n{}",
        accepted.len(),
        problems.len(),
        fault_log.len(),
        fault_log.join("\n")
    );
    if !problems.is_empty() || duplicated > 0 || never_accepted > 0 {
        eprintln!("{}", cluster.lock().await.logs());
    }
    assert!(problems.is_empty(), "{} problems, the first: {:#?}", problems.len(), &problems[..problems.len().min(10)]);
    assert_eq!(duplicated, 0, "{listed} jobs in the store for {} acknowledged", accepted.len());
    assert_eq!(never_accepted, 0, "submits that no replica acknowledged within {JOB_DEADLINE:?}");
    assert!(fault_log.len() >= min_faults, "too few faults to call this a soak: {fault_log:?}");
}

/// The checker itself finds what it is there to find.
#[test]
fn the_checker_finds_gaps_second_results_and_missing_ends() {
    use deephardway::v1::{JobProgress, JobQueued, JobResult};
    let event = |seq, event| JobEvent { seq, event: Some(event), ..Default::default() };
    let queued = |seq| event(seq, Event::Queued(JobQueued::default()));
    let progress = |seq| event(seq, Event::Progress(JobProgress::default()));
    let result = |seq| event(seq, Event::Result(JobResult::default()));
    assert!(check_events(&[queued(1), progress(2), result(3)]).is_ok());
    assert!(check_events(&[queued(1), result(3)]).unwrap_err().contains("seq 3"));
    assert!(check_events(&[queued(1), result(2), result(3)]).is_err());
    assert!(check_events(&[queued(1), progress(2)]).is_err());
}
