//! Sentence embeddings with a BERT-family model (sentence-transformers layout), e.g.
//! all-MiniLM-L6-v2: candle-transformers' BERT, then mean pooling over the attention
//! mask and L2 normalisation, as the model's own `1_Pooling/config.json` asks.
//!
//! A model directory holds `config.json`, `tokenizer.json`, `model.safetensors` and,
//! optionally, `1_Pooling/config.json` and `sentence_bert_config.json` (for the maximum
//! sequence length; 256 tokens for MiniLM, longer texts are truncated as
//! sentence-transformers does). The model loads once and stays resident.
//!
//! Jobs are batched dynamically: one thread owns the forward pass, and while it is busy,
//! jobs that arrive wait for it; it then takes every waiting job at once (up to
//! [`BatchOptions::max_texts`] texts, waiting up to [`BatchOptions::max_wait`] for jobs
//! this worker is already running but that have not reached it yet), runs all their texts
//! as one batch sorted by length so padding wastes little, and hands each job its own
//! vectors.

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use deephardway::v1::{EmbedResult, Embedding, JobKind, JobResult, WorkerModel, job_result, submit_request::Input};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};
use tonic::Code;

use crate::runner::{JobContext, JobError, Runner};

/// Texts per forward pass within a batch: sorted by length, neighbours pad little, and
/// candle's CPU matmuls gain nothing from larger batches.
const SUB_BATCH: usize = 8;

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
    embedder: Arc<Embedder>,
    dimensions: usize,
    batches: mpsc::Sender<Pending>,
    /// Jobs that have handed over (or are about to hand over) their texts and not yet
    /// been answered.
    in_flight: Arc<AtomicUsize>,
}

/// The model and tokenizer.
struct Embedder {
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
}

/// One job's texts, waiting for a batch.
struct Pending {
    texts: Vec<String>,
    reply: tokio::sync::oneshot::Sender<Result<Vec<Vec<f32>>, String>>,
}

impl EmbedRunner {
    /// Loads the model in `dir`, served under `name`, with default batching.
    pub fn load(name: &str, dir: &Path, device: &Device) -> anyhow::Result<EmbedRunner> {
        Self::load_with(name, dir, device, BatchOptions::default())
    }

    /// Loads the model in `dir`, served under `name`, batching jobs as `options` says.
    pub fn load_with(name: &str, dir: &Path, device: &Device, options: BatchOptions) -> anyhow::Result<EmbedRunner> {
        let read = |file: &str| {
            std::fs::read_to_string(dir.join(file)).with_context(|| format!("cannot read {}", dir.join(file).display()))
        };
        let config: Config = serde_json::from_str(&read("config.json")?).context("config.json")?;
        if let Ok(pooling) = read("1_Pooling/config.json") {
            let pooling: serde_json::Value = serde_json::from_str(&pooling).context("1_Pooling/config.json")?;
            if pooling["pooling_mode_mean_tokens"] != serde_json::Value::Bool(true) {
                bail!("{}: only mean pooling is supported", dir.display());
            }
        }
        let max_length = read("sentence_bert_config.json")
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .and_then(|v| v["max_seq_length"].as_u64())
            .map_or(config.max_position_embeddings, |n| n as usize);

        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| anyhow::anyhow!("{}: {e}", dir.join("tokenizer.json").display()))?;
        tokenizer
            .with_truncation(Some(TruncationParams { max_length, ..Default::default() }))
            .map_err(|e| anyhow::anyhow!("tokenizer truncation: {e}"))?;
        tokenizer.with_padding(Some(PaddingParams { strategy: PaddingStrategy::BatchLongest, ..Default::default() }));

        let weights = dir.join("model.safetensors");
        // SAFETY of the mmap: the file is opened read-only and not modified while mapped.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, device) }
            .with_context(|| format!("cannot load {}", weights.display()))?;
        let model = BertModel::load(vb, &config).context("the weights do not fit a BERT model")?;
        let embedder = Arc::new(Embedder { model, tokenizer, device: device.clone() });
        let (batches, pending) = mpsc::channel();
        let in_flight = Arc::new(AtomicUsize::new(0));
        let (thread_embedder, thread_in_flight) = (embedder.clone(), in_flight.clone());
        std::thread::Builder::new()
            .name(format!("embed-{name}"))
            .spawn(move || batch_loop(&thread_embedder, &pending, &thread_in_flight, &options))
            .context("cannot start the embedding thread")?;
        Ok(EmbedRunner { name: name.to_string(), embedder, dimensions: config.hidden_size, batches, in_flight })
    }

    /// Embeds texts directly (no batching with other jobs): one L2-normalised vector per
    /// text, in order.
    pub fn embed(&self, texts: &[String]) -> anyhow::Result<Vec<Vec<f32>>> {
        self.embedder.embed(texts)
    }
}

/// The batching thread: takes the first waiting job, gathers the others, runs them as one
/// batch and replies to each.
fn batch_loop(embedder: &Embedder, pending: &mpsc::Receiver<Pending>, in_flight: &AtomicUsize, options: &BatchOptions) {
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
        let result = embedder.embed(&all);
        // These jobs are answered now: the next batch need not wait for them.
        in_flight.fetch_sub(batch.len(), Ordering::AcqRel);
        match result {
            Ok(vectors) => {
                let mut vectors = vectors.into_iter();
                for (job, count) in batch.into_iter().zip(counts) {
                    let _ = job.reply.send(Ok(vectors.by_ref().take(count).collect()));
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

impl Embedder {
    fn embed(&self, texts: &[String]) -> anyhow::Result<Vec<Vec<f32>>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        // On the CPU this runs the pass inside candle's thread pool, so its many short
        // parallel ops find their threads awake instead of waking them each time.
        self.device.with_context(|| self.embed_in_context(texts))
    }

    fn embed_in_context(&self, texts: &[String]) -> anyhow::Result<Vec<Vec<f32>>> {
        // Sort by length and run texts of similar length together, so padding wastes
        // little; put the results back in order.
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| texts[i].len());
        let mut out = vec![Vec::new(); texts.len()];
        for indices in order.chunks(SUB_BATCH) {
            let chunk: Vec<&str> = indices.iter().map(|&i| texts[i].as_str()).collect();
            for (vector, &index) in self.embed_padded(chunk)?.into_iter().zip(indices) {
                out[index] = vector;
            }
        }
        Ok(out)
    }

    /// One forward pass over texts padded to the longest of them.
    fn embed_padded(&self, texts: Vec<&str>) -> anyhow::Result<Vec<Vec<f32>>> {
        let encodings = self.tokenizer.encode_batch(texts, true).map_err(|e| anyhow::anyhow!("tokenize: {e}"))?;
        let rows = encodings.len();
        let width = encodings[0].get_ids().len();
        let flat = |f: &dyn Fn(&tokenizers::Encoding) -> &[u32]| -> Vec<u32> {
            encodings.iter().flat_map(|e| f(e).iter().copied()).collect()
        };
        let ids = Tensor::from_vec(flat(&|e| e.get_ids()), (rows, width), &self.device)?;
        let types = Tensor::from_vec(flat(&|e| e.get_type_ids()), (rows, width), &self.device)?;
        let mask = Tensor::from_vec(flat(&|e| e.get_attention_mask()), (rows, width), &self.device)?;

        let hidden = self.model.forward(&ids, &types, Some(&mask))?; // (rows, width, dims)
        let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?; // (rows, width, 1)
        let summed = hidden.broadcast_mul(&mask)?.sum(1)?; // (rows, dims)
        let counts = mask.sum(1)?.clamp(1e-9, f64::MAX)?; // (rows, 1)
        let mean = summed.broadcast_div(&counts)?;
        let norms = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
        Ok(mean.broadcast_div(&norms)?.to_vec2::<f32>()?)
    }
}

#[tonic::async_trait]
impl Runner for EmbedRunner {
    fn models(&self) -> Vec<WorkerModel> {
        vec![WorkerModel {
            name: self.name.clone(),
            kind: JobKind::Embed as i32,
            description: format!("sentence embeddings, {} dimensions, mean pooled, L2-normalised", self.dimensions),
            ..Default::default()
        }]
    }

    async fn run(&self, job: JobContext) -> Result<JobResult, JobError> {
        let Some(Input::Embed(input)) = job.assignment.request.as_ref().and_then(|r| r.input.clone()) else {
            return Err(JobError::failed(Code::InvalidArgument, "not an embed job"));
        };
        if job.cancel.is_cancelled() {
            return Err(JobError::Cancelled);
        }
        // The batching thread runs the forward pass, off the async threads.
        let (reply, vectors) = tokio::sync::oneshot::channel();
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        if self.batches.send(Pending { texts: input.texts, reply }).is_err() {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(JobError::failed(Code::Internal, "the embedding thread stopped"));
        }
        let vectors = vectors
            .await
            .map_err(|_| JobError::failed(Code::Internal, "the embedding thread stopped"))?
            .map_err(|e| JobError::failed(Code::Internal, format!("embedding failed: {e}")))?;
        Ok(JobResult {
            value: Some(job_result::Value::Embed(EmbedResult {
                embeddings: vectors.into_iter().map(|values| Embedding { values }).collect(),
            })),
        })
    }
}
