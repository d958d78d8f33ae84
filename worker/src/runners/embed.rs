//! The `embed` job: sentence embeddings from a [`SentenceEmbedder`], with jobs batched
//! dynamically.
//!
//! One thread owns the forward pass, and while it is busy, jobs that arrive wait for it;
//! it then takes every waiting job at once (up to [`BatchOptions::max_texts`] texts,
//! waiting up to [`BatchOptions::max_wait`] for jobs this worker is already running but
//! that have not reached it yet), runs all their texts as one call (on the CPU one
//! matrix of all their tokens, with no padding), and hands each job its own vectors. A
//! text's vector is the same whatever it is batched with.

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use candle_core::Device;
use deephardway::{
    v1::{EmbedResult, Embedding, JobKind, JobResult, job_result, job_spec::Input},
    worker::v1::{ModelActivity, ServedModel},
};

use crate::{
    activity::Activity,
    models::bert::SentenceEmbedder,
    runner::{JobContext, JobError, Runner, wrong_kind},
};

/// How embed jobs are batched together.
#[derive(Debug, Clone)]
pub struct BatchOptions {
    /// The most texts in one forward pass.
    pub max_texts: usize,
    /// How long a batch may wait for jobs that are running on this worker but have not
    /// handed over their texts yet.
    pub max_wait: Duration,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions { max_texts: 64, max_wait: Duration::from_millis(5) }
    }
}

/// A loaded embedding model.
pub struct EmbedRunner {
    name: String,
    embedder: Arc<SentenceEmbedder>,
    batches: mpsc::Sender<Pending>,
    /// Jobs that have handed over (or are about to hand over) their texts and not yet
    /// been answered.
    in_flight: Arc<AtomicUsize>,
    /// The batch sizes, for the heartbeats.
    activity: Arc<Activity>,
}

/// One job's texts, waiting for a batch.
struct Pending {
    texts: Vec<String>,
    reply: tokio::sync::oneshot::Sender<Result<Embedded, String>>,
}

/// A job's vectors, and how many tokens its texts made.
type Embedded = (Vec<Vec<f32>>, usize);

impl EmbedRunner {
    /// Loads the model in `dir`, served under `name`, with default batching.
    pub fn load(name: &str, dir: &Path, device: &Device) -> anyhow::Result<EmbedRunner> {
        Self::load_with(name, dir, device, BatchOptions::default())
    }

    /// Loads the model in `dir`, served under `name`, batching jobs as `options` says.
    pub fn load_with(name: &str, dir: &Path, device: &Device, options: BatchOptions) -> anyhow::Result<EmbedRunner> {
        let embedder = Arc::new(SentenceEmbedder::load(dir, device)?);
        let (batches, pending) = mpsc::channel();
        let in_flight = Arc::new(AtomicUsize::new(0));
        let activity = Arc::new(Activity::default());
        let (thread_embedder, thread_in_flight, thread_activity) =
            (embedder.clone(), in_flight.clone(), activity.clone());
        let model = name.to_string();
        let on_batch = move |texts: usize| thread_activity.batch(&model, texts);
        std::thread::Builder::new()
            .name(format!("embed-{name}"))
            .spawn(move || batch_loop(&thread_embedder, &pending, &thread_in_flight, &options, &on_batch))
            .context("cannot start the embedding thread")?;
        Ok(EmbedRunner { name: name.to_string(), embedder, batches, in_flight, activity })
    }

    /// Embeds texts directly (no batching with other jobs): one L2-normalised vector per
    /// text, in order.
    pub fn embed(&self, texts: &[String]) -> anyhow::Result<Vec<Vec<f32>>> {
        self.embedder.embed(texts)
    }
}

/// The batching thread: takes the first waiting job, gathers the others, runs them as one
/// batch and replies to each.
fn batch_loop(
    embedder: &SentenceEmbedder,
    pending: &mpsc::Receiver<Pending>,
    in_flight: &AtomicUsize,
    options: &BatchOptions,
    on_batch: &dyn Fn(usize),
) {
    while let Ok(first) = pending.recv() {
        let mut batch = vec![first];
        let mut texts = batch[0].texts.len();
        let deadline = Instant::now() + options.max_wait;
        while texts < options.max_texts {
            // Take what is already here; wait only for jobs known to be on their way.
            let next = match pending.try_recv() {
                Ok(next) => Some(next),
                Err(_) if batch.len() < in_flight.load(Ordering::Acquire) => {
                    pending.recv_timeout(deadline.saturating_duration_since(Instant::now())).ok()
                }
                Err(_) => None,
            };
            let Some(next) = next else { break };
            texts += next.texts.len();
            batch.push(next);
        }
        let counts: Vec<usize> = batch.iter().map(|p| p.texts.len()).collect();
        let all: Vec<String> = batch.iter_mut().flat_map(|p| std::mem::take(&mut p.texts)).collect();
        on_batch(all.len());
        let result = embedder.embed_counting(&all);
        // These jobs are answered now: the next batch need not wait for them.
        in_flight.fetch_sub(batch.len(), Ordering::AcqRel);
        match result {
            Ok((vectors, tokens)) => {
                let (mut vectors, mut tokens) = (vectors.into_iter(), tokens.into_iter());
                for (job, count) in batch.into_iter().zip(counts) {
                    let job_tokens = tokens.by_ref().take(count).sum();
                    let _ = job.reply.send(Ok((vectors.by_ref().take(count).collect(), job_tokens)));
                }
            }
            Err(e) => {
                for job in batch {
                    let _ = job.reply.send(Err(format!("{e:#}")));
                }
            }
        }
    }
}

#[tonic::async_trait]
impl Runner for EmbedRunner {
    fn models(&self) -> Vec<ServedModel> {
        vec![ServedModel {
            name: self.name.clone(),
            kind: JobKind::Embed as i32,
            description: format!(
                "sentence embeddings, {} dimensions, mean pooled, L2-normalised",
                self.embedder.dimensions()
            ),
            ..Default::default()
        }]
    }

    fn activity(&self) -> Vec<ModelActivity> {
        self.activity.take()
    }

    async fn run(&self, job: JobContext) -> Result<JobResult, JobError> {
        let Some(Input::Embed(input)) = job.input().cloned() else {
            return Err(wrong_kind("embed"));
        };
        if job.cancel.is_cancelled() {
            return Err(JobError::Cancelled);
        }
        // The batching thread runs the forward pass, off the async threads.
        let (reply, vectors) = tokio::sync::oneshot::channel();
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        if self.batches.send(Pending { texts: input.texts, reply }).is_err() {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(JobError::internal("the embedding thread stopped"));
        }
        let (vectors, tokens) = vectors
            .await
            .map_err(|_| JobError::internal("the embedding thread stopped"))?
            .map_err(|e| JobError::internal(format!("embedding failed: {e}")))?;
        // The result's `prompt_tokens` and the trace's `gen_ai.usage.input_tokens` (the
        // current span is the job's GenAI span; see `traces`), as i64: tracing-
        // opentelemetry exports a u64 as a string.
        tracing::Span::current().record("gen_ai.usage.input_tokens", tokens as i64);
        Ok(JobResult {
            value: Some(job_result::Value::Embed(EmbedResult {
                embeddings: vectors.into_iter().map(|values| Embedding { values }).collect(),
                prompt_tokens: u32::try_from(tokens).unwrap_or(u32::MAX),
            })),
        })
    }
}

/// The texts `deephardway bench --embed` and `examples/embed` time (and
/// `scripts/reference/embed_baseline.py` gives sentence-transformers): `n` ordinary
/// sentences of 6 to 35 words.
pub fn benchmark_texts(n: usize) -> Vec<String> {
    const WORDS: [&str; 9] = ["the", "model", "streams", "tokens", "while", "jobs", "wait", "in", "line"];
    (0..n).map(|i| (0..6 + (i * 7) % 30).map(|w| WORDS[(i + w) % 9]).collect::<Vec<_>>().join(" ")).collect()
}
