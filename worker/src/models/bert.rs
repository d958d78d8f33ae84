//! A sentence embedder on a BERT-family model (sentence-transformers layout), e.g.
//! all-MiniLM-L6-v2: candle-transformers' BERT, then mean pooling over the attention
//! mask and L2 normalisation, as the model's own `1_Pooling/config.json` asks.
//!
//! A model directory holds `config.json`, `tokenizer.json`, `model.safetensors` and,
//! optionally, `1_Pooling/config.json` and `sentence_bert_config.json` (for the maximum
//! sequence length; 256 tokens for MiniLM, longer texts are truncated as
//! sentence-transformers does). Texts of one call run sorted by length in small
//! sub-batches, so padding wastes little; a text's vector does not depend on what it is
//! batched with. Batching jobs together is the embed runner's business.

use std::path::Path;

use anyhow::{Context, bail};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

/// Texts per forward pass: sorted by length, neighbours pad little, and candle's CPU
/// matmuls gain nothing from larger batches.
const SUB_BATCH: usize = 8;

/// A loaded model and its tokenizer.
pub struct SentenceEmbedder {
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
    dimensions: usize,
}

impl SentenceEmbedder {
    /// Loads the model in `dir` (the sentence-transformers layout above).
    pub fn load(dir: &Path, device: &Device) -> anyhow::Result<Self> {
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
        // SAFETY: a mapped file must not change while mapped. Model files are written
        // once (scripts/fetch-models, or copied in by hand) and nothing in deephardway
        // writes them afterwards; the mapping is read-only.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, device) }
            .with_context(|| format!("cannot load {}", weights.display()))?;
        let model = BertModel::load(vb, &config).context("the weights do not fit a BERT model")?;
        Ok(SentenceEmbedder { model, tokenizer, device: device.clone(), dimensions: config.hidden_size })
    }

    /// The length of the vectors.
    pub fn dimensions(&self) -> usize {
        self.dimensions
    }

    /// How many tokens the texts make, special tokens included (what the model reads).
    pub fn count_tokens(&self, texts: &[String]) -> anyhow::Result<usize> {
        let encodings =
            self.tokenizer.encode_batch(texts.to_vec(), true).map_err(|e| anyhow::anyhow!("tokenize: {e}"))?;
        // The tokenizer pads a batch to its longest text: count what the mask keeps.
        Ok(encodings.iter().map(|e| e.get_attention_mask().iter().filter(|&&m| m != 0).count()).sum())
    }

    /// One L2-normalised vector per text, in order.
    pub fn embed(&self, texts: &[String]) -> anyhow::Result<Vec<Vec<f32>>> {
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
