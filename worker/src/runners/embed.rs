//! Sentence embeddings with a BERT-family model (sentence-transformers layout), e.g.
//! all-MiniLM-L6-v2: candle-transformers' BERT, then mean pooling over the attention
//! mask and L2 normalisation, as the model's own `1_Pooling/config.json` asks.
//!
//! A model directory holds `config.json`, `tokenizer.json`, `model.safetensors` and,
//! optionally, `1_Pooling/config.json` and `sentence_bert_config.json` (for the maximum
//! sequence length; 256 tokens for MiniLM, longer texts are truncated as
//! sentence-transformers does). The model loads once and stays resident; a job's texts
//! run as one batch, sorted by length so padding wastes little.

use std::{path::Path, sync::Arc};

use anyhow::{Context, bail};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use deephardway::v1::{EmbedResult, Embedding, JobKind, JobResult, WorkerModel, job_result, submit_request::Input};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};
use tonic::Code;

use crate::runner::{JobContext, JobError, Runner};

/// A loaded embedding model.
pub struct EmbedRunner {
    name: String,
    model: Arc<BertModel>,
    tokenizer: Arc<Tokenizer>,
    device: Device,
    dimensions: usize,
}

impl EmbedRunner {
    /// Loads the model in `dir`, served under `name`.
    pub fn load(name: &str, dir: &Path, device: &Device) -> anyhow::Result<EmbedRunner> {
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
        Ok(EmbedRunner {
            name: name.to_string(),
            model: Arc::new(model),
            tokenizer: Arc::new(tokenizer),
            device: device.clone(),
            dimensions: config.hidden_size,
        })
    }

    /// Embeds texts: one L2-normalised vector per text, in order.
    pub fn embed(&self, texts: &[String]) -> anyhow::Result<Vec<Vec<f32>>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        // On the CPU this runs the pass inside candle's thread pool, so its many short
        // parallel ops find their threads awake instead of waking them each time.
        self.device.with_context(|| self.embed_in_context(texts))
    }

    fn embed_in_context(&self, texts: &[String]) -> anyhow::Result<Vec<Vec<f32>>> {
        // Sort by length so each batch pads little; put the results back in order.
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| texts[i].len());
        let sorted: Vec<&str> = order.iter().map(|&i| texts[i].as_str()).collect();
        let encodings = self.tokenizer.encode_batch(sorted, true).map_err(|e| anyhow::anyhow!("tokenize: {e}"))?;
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
        let vectors = mean.broadcast_div(&norms)?.to_vec2::<f32>()?;

        let mut out = vec![Vec::new(); rows];
        for (vector, &index) in vectors.into_iter().zip(&order) {
            out[index] = vector;
        }
        Ok(out)
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
        let runner = EmbedRunner {
            name: self.name.clone(),
            model: self.model.clone(),
            tokenizer: self.tokenizer.clone(),
            device: self.device.clone(),
            dimensions: self.dimensions,
        };
        // The forward pass is CPU-bound: keep it off the async threads.
        let vectors = tokio::task::spawn_blocking(move || runner.embed(&input.texts))
            .await
            .map_err(|e| JobError::failed(Code::Internal, format!("embedding crashed: {e}")))?
            .map_err(|e| JobError::failed(Code::Internal, format!("embedding failed: {e:#}")))?;
        Ok(JobResult {
            value: Some(job_result::Value::Embed(EmbedResult {
                embeddings: vectors.into_iter().map(|values| Embedding { values }).collect(),
            })),
        })
    }
}
