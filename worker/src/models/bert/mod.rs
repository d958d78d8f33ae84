//! A sentence embedder on a BERT-family model (sentence-transformers layout), e.g.
//! all-MiniLM-L6-v2: the BERT encoder, then mean pooling over each text's tokens and L2
//! normalisation, as the model's own `1_Pooling/config.json` asks.
//!
//! A model directory holds `config.json`, `tokenizer.json`, `model.safetensors` and,
//! optionally, `1_Pooling/config.json` and `sentence_bert_config.json` (for the maximum
//! sequence length; 256 tokens for MiniLM, longer texts are truncated as
//! sentence-transformers does). A text's vector does not depend on what it is batched
//! with; batching jobs together is the embed runner's business.
//!
//! Two encoders: on the CPU, `cpu_encoder` (packed kernels, no padding; its products in
//! bfloat16 on Intel AMX where the CPU has it, else f32); on a GPU, candle-transformers'
//! `BertModel`, fed texts sorted by length in padded sub-batches.

mod cpu_encoder;

use std::path::Path;

use anyhow::{Context, bail};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{Encoding, Tokenizer, TruncationParams};

use self::cpu_encoder::{CpuEncoder, Tokens};
use crate::models::sgemm::Precision;

/// Texts per forward pass of candle's model (GPU): sorted by length, neighbours pad
/// little.
const SUB_BATCH: usize = 8;
/// Tokens per forward pass of the CPU encoder: every matrix product sees this many rows
/// at most, which bounds the pass's buffers (about 40 KiB per token for MiniLM).
const CPU_TOKENS_PER_PASS: usize = 4096;

/// A loaded model and its tokenizer.
pub struct SentenceEmbedder {
    encoder: Encoder,
    tokenizer: Tokenizer,
    device: Device,
    dimensions: usize,
}

enum Encoder {
    Cpu(CpuEncoder),
    Candle(BertModel),
}

/// Which encoder runs the model.
#[derive(Clone, Copy)]
enum Choice {
    Cpu(Precision),
    Candle,
}

impl SentenceEmbedder {
    /// Loads the model in `dir` (the sentence-transformers layout above). On the CPU its
    /// products run in bfloat16 where this CPU has AMX or AVX-512 BF16 (embeddings within
    /// a cosine of 0.99996 of sentence-transformers' on the reference texts, faster;
    /// `DEEPHARDWAY_NO_BF16=1` keeps f32), else in f32.
    pub fn load(dir: &Path, device: &Device) -> anyhow::Result<Self> {
        let choice = if device.is_cpu() { Choice::Cpu(Precision::fastest()) } else { Choice::Candle };
        Self::load_with(dir, device, choice)
    }

    /// Loads the model for the CPU encoder with f32 products on any CPU.
    pub fn load_f32(dir: &Path) -> anyhow::Result<Self> {
        Self::load_with(dir, &Device::Cpu, Choice::Cpu(Precision::F32))
    }

    /// Loads the model with candle-transformers' BERT even on the CPU: the encoder a GPU
    /// runs, so that tests can hold the two encoders to each other on any machine.
    pub fn load_with_candle(dir: &Path, device: &Device) -> anyhow::Result<Self> {
        Self::load_with(dir, device, Choice::Candle)
    }

    /// The CPU encoder's precision; none for candle's encoder.
    pub fn precision(&self) -> Option<Precision> {
        match &self.encoder {
            Encoder::Cpu(encoder) => Some(encoder.precision()),
            Encoder::Candle(_) => None,
        }
    }

    fn load_with(dir: &Path, device: &Device, choice: Choice) -> anyhow::Result<Self> {
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
        // No padding: the CPU encoder takes texts as they are, and the GPU path pads
        // its own sub-batches.
        tokenizer.with_padding(None);

        let weights = dir.join("model.safetensors");
        // SAFETY: a mapped file must not change while mapped. Model files are written
        // once (scripts/fetch-models, or copied in by hand) and nothing in deephardway
        // writes them afterwards; the mapping is read-only.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, device) }
            .with_context(|| format!("cannot load {}", weights.display()))?;
        let encoder = match choice {
            Choice::Cpu(precision) if CpuEncoder::supports(&config) => {
                let encoder =
                    CpuEncoder::load(vb, &config, precision).context("the weights do not fit a BERT model")?;
                tracing::info!(precision = ?encoder.precision(), "the CPU encoder's products");
                Encoder::Cpu(encoder)
            }
            _ => Encoder::Candle(BertModel::load(vb, &config).context("the weights do not fit a BERT model")?),
        };
        Ok(SentenceEmbedder { encoder, tokenizer, device: device.clone(), dimensions: config.hidden_size })
    }

    /// The length of the vectors.
    pub fn dimensions(&self) -> usize {
        self.dimensions
    }

    /// One L2-normalised vector per text, in order.
    pub fn embed(&self, texts: &[String]) -> anyhow::Result<Vec<Vec<f32>>> {
        Ok(self.embed_counting(texts)?.0)
    }

    /// [`SentenceEmbedder::embed`], and how many tokens each text made, special tokens
    /// included (what the model read).
    pub fn embed_counting(&self, texts: &[String]) -> anyhow::Result<(Vec<Vec<f32>>, Vec<usize>)> {
        if texts.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let encodings = self.tokenize(texts.iter().map(String::as_str).collect())?;
        let mut vectors = match &self.encoder {
            Encoder::Cpu(encoder) => {
                let mut vectors = Vec::with_capacity(texts.len());
                let mut pass: Vec<Tokens> = Vec::new();
                let mut tokens = 0;
                for encoding in &encodings {
                    if tokens + encoding.len() > CPU_TOKENS_PER_PASS && !pass.is_empty() {
                        vectors.extend(encoder.mean_pooled(&pass)?);
                        (pass, tokens) = (Vec::new(), 0);
                    }
                    pass.push(Tokens { ids: encoding.get_ids(), type_ids: encoding.get_type_ids() });
                    tokens += encoding.len();
                }
                vectors.extend(encoder.mean_pooled(&pass)?);
                vectors
            }
            // On the CPU (tests) this runs the pass inside candle's thread pool, so its many
            // short parallel ops find their threads awake instead of waking them each time.
            Encoder::Candle(model) => {
                self.device.with_context(|| embed_padded_batches(model, &self.device, &encodings))?
            }
        };
        for vector in &mut vectors {
            let norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            vector.iter_mut().for_each(|v| *v /= norm);
        }
        Ok((vectors, encodings.iter().map(Encoding::len).collect()))
    }

    fn tokenize(&self, texts: Vec<&str>) -> anyhow::Result<Vec<Encoding>> {
        self.tokenizer.encode_batch(texts, true).map_err(|e| anyhow::anyhow!("tokenize: {e}"))
    }
}

/// Mean-pooled vectors (not normalised) from candle's model: texts sorted by length and
/// run in sub-batches padded to their longest, so padding wastes little; results put
/// back in order.
fn embed_padded_batches(model: &BertModel, device: &Device, encodings: &[Encoding]) -> anyhow::Result<Vec<Vec<f32>>> {
    let mut order: Vec<usize> = (0..encodings.len()).collect();
    order.sort_by_key(|&i| encodings[i].len());
    let mut out = vec![Vec::new(); encodings.len()];
    for indices in order.chunks(SUB_BATCH) {
        let width = indices.iter().map(|&i| encodings[i].len()).max().unwrap_or(0);
        let padded = |f: &dyn Fn(&Encoding) -> &[u32]| -> Vec<u32> {
            let mut flat = Vec::with_capacity(indices.len() * width);
            for &i in indices {
                flat.extend_from_slice(f(&encodings[i]));
                flat.resize(flat.len() + width - encodings[i].len(), 0);
            }
            flat
        };
        let shape = (indices.len(), width);
        let ids = Tensor::from_vec(padded(&|e| e.get_ids()), shape, device)?;
        let types = Tensor::from_vec(padded(&|e| e.get_type_ids()), shape, device)?;
        let mask = Tensor::from_vec(padded(&|e| e.get_attention_mask()), shape, device)?;

        let hidden = model.forward(&ids, &types, Some(&mask))?; // (rows, width, dims)
        let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?; // (rows, width, 1)
        let summed = hidden.broadcast_mul(&mask)?.sum(1)?; // (rows, dims)
        let counts = mask.sum(1)?.clamp(1e-9, f64::MAX)?; // (rows, 1)
        for (vector, &index) in summed.broadcast_div(&counts)?.to_vec2::<f32>()?.into_iter().zip(indices) {
            out[index] = vector;
        }
    }
    Ok(out)
}
