//! BERT's encoder on the CPU, on plain f32 buffers, with the packed matrix kernels of
//! [`crate::models::sgemm`] (the products in bfloat16 on AMX, or f32: [`Precision`]).
//!
//! Why not candle-transformers' `BertModel` (which the GPU still uses): on the CPU its
//! time went to candle's general matrix product (operands packed on every call, small
//! products split among threads at a loss), to a scalar `erf` for GELU, and to padding.
//! Here:
//! - the weights are packed once at load, and query, key and value are one product;
//! - no token is padding: the texts of a call are laid end to end as one matrix of
//!   tokens (every product sees all of them at once, which keeps the kernels busy), and
//!   attention runs per text over its own tokens only, so a text's result cannot depend on
//!   what it was run with;
//! - GELU runs on each product tile while it is in cache, residual adds are fused into
//!   the layer norms, and attention, layer norms and products all run on candle's CPU
//!   thread pool, one buffer per step reused by every layer.
//!
//! The arithmetic is BERT's (`hidden_act: gelu`, absolute positions); in f32 results agree
//! with sentence-transformers to float rounding, in bfloat16 to a cosine of 0.99996 (the
//! embed tests hold them to both).

use anyhow::{Context, bail};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{Config, HiddenAct, PositionEmbeddingType};

use crate::models::{
    attention_math,
    disjoint::DisjointSlice,
    sgemm::{Activation, PackedLinear, Precision},
    vector_math,
};

/// One text's tokens, as the tokenizer made them.
#[derive(Clone, Copy)]
pub struct Tokens<'a> {
    pub ids: &'a [u32],
    pub type_ids: &'a [u32],
}

pub struct CpuEncoder {
    hidden: usize,
    heads: usize,
    eps: f32,
    vocab: usize,
    max_positions: usize,
    type_vocab: usize,
    /// `vocab × hidden`, `max_positions × hidden`, `type_vocab × hidden`.
    word_embeddings: Vec<f32>,
    position_embeddings: Vec<f32>,
    type_embeddings: Vec<f32>,
    embeddings_norm: Norm,
    layers: Vec<Layer>,
}

struct Norm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
}

struct Layer {
    /// Query, key and value in one: `3 hidden × hidden`.
    qkv: PackedLinear,
    attention_output: PackedLinear,
    attention_norm: Norm,
    intermediate: PackedLinear,
    output: PackedLinear,
    output_norm: Norm,
}

impl CpuEncoder {
    /// The precision of the products.
    pub fn precision(&self) -> Precision {
        self.layers.first().map_or(Precision::F32, |layer| layer.qkv.precision())
    }

    /// Whether this encoder computes what `config` describes (else candle's model does).
    pub fn supports(config: &Config) -> bool {
        config.hidden_act == HiddenAct::Gelu
            && config.position_embedding_type == PositionEmbeddingType::Absolute
            && config.num_attention_heads > 0
            && config.hidden_size.is_multiple_of(config.num_attention_heads)
    }

    /// Loads the weights from `vb` (a BERT checkpoint, with or without a `bert.` prefix).
    pub fn load(vb: VarBuilder, config: &Config, precision: Precision) -> anyhow::Result<Self> {
        if !Self::supports(config) {
            bail!("the CPU encoder does not support this BERT configuration");
        }
        let word = "embeddings.word_embeddings.weight";
        let vb = match config.model_type.as_deref() {
            _ if vb.contains_tensor(word) => vb,
            Some(prefix) if vb.contains_tensor(&format!("{prefix}.{word}")) => vb.pp(prefix),
            _ => vb.pp("bert"),
        };
        let (h, ffn) = (config.hidden_size, config.intermediate_size);
        let get = |vb: &VarBuilder, shape: &[usize], name: &str| -> anyhow::Result<Vec<f32>> {
            let tensor = vb.get(shape, name).with_context(|| format!("weight {name}"))?;
            Ok(tensor.flatten_all()?.to_vec1::<f32>()?)
        };
        let norm = |vb: VarBuilder| -> anyhow::Result<Norm> {
            Ok(Norm { gamma: get(&vb, &[h], "weight")?, beta: get(&vb, &[h], "bias")? })
        };
        let linear = |vb: VarBuilder, outputs: usize, inputs: usize| -> anyhow::Result<PackedLinear> {
            let (w, b) = (get(&vb, &[outputs, inputs], "weight")?, get(&vb, &[outputs], "bias")?);
            Ok(PackedLinear::with_precision(&w, Some(&b), outputs, inputs, precision))
        };
        let embeddings = vb.pp("embeddings");
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let layer = vb.pp(format!("encoder.layer.{i}"));
            let attention = layer.pp("attention");
            let mut qkv_weight = Vec::with_capacity(3 * h * h);
            let mut qkv_bias = Vec::with_capacity(3 * h);
            for part in ["query", "key", "value"] {
                let part = attention.pp("self").pp(part);
                qkv_weight.extend(get(&part, &[h, h], "weight")?);
                qkv_bias.extend(get(&part, &[h], "bias")?);
            }
            layers.push(Layer {
                qkv: PackedLinear::with_precision(&qkv_weight, Some(&qkv_bias), 3 * h, h, precision),
                attention_output: linear(attention.pp("output").pp("dense"), h, h)?,
                attention_norm: norm(attention.pp("output").pp("LayerNorm"))?,
                intermediate: linear(layer.pp("intermediate").pp("dense"), ffn, h)?,
                output: linear(layer.pp("output").pp("dense"), h, ffn)?,
                output_norm: norm(layer.pp("output").pp("LayerNorm"))?,
            });
        }
        Ok(CpuEncoder {
            hidden: h,
            heads: config.num_attention_heads,
            eps: config.layer_norm_eps as f32,
            vocab: config.vocab_size,
            max_positions: config.max_position_embeddings,
            type_vocab: config.type_vocab_size,
            word_embeddings: get(&embeddings, &[config.vocab_size, h], "word_embeddings.weight")?,
            position_embeddings: get(&embeddings, &[config.max_position_embeddings, h], "position_embeddings.weight")?,
            type_embeddings: get(&embeddings, &[config.type_vocab_size, h], "token_type_embeddings.weight")?,
            embeddings_norm: norm(embeddings.pp("LayerNorm"))?,
            layers,
        })
    }

    /// Each text's last hidden states averaged over its tokens (mean pooling, special
    /// tokens included, as sentence-transformers does).
    pub fn mean_pooled(&self, texts: &[Tokens]) -> anyhow::Result<Vec<Vec<f32>>> {
        let h = self.hidden;
        let mut starts = Vec::with_capacity(texts.len() + 1);
        let mut rows = 0;
        for text in texts {
            if text.ids.is_empty() || text.ids.len() != text.type_ids.len() {
                bail!("a text has no tokens, or token types that do not match its tokens");
            }
            if text.ids.len() > self.max_positions {
                bail!("a text has {} tokens, the model at most {}", text.ids.len(), self.max_positions);
            }
            starts.push(rows);
            rows += text.ids.len();
        }
        starts.push(rows);

        let mut x = self.embed(texts, rows)?;
        // One buffer per step, reused by every layer.
        let mut qkv = vec![0f32; rows * 3 * h];
        let mut context = vec![0f32; rows * h];
        let mut projected = vec![0f32; rows * h];
        let mut intermediate = vec![0f32; rows * self.layers.first().map_or(0, |l| l.intermediate.outputs())];
        for layer in &self.layers {
            layer.qkv.forward(&x, rows, Activation::None, &mut qkv);
            self.attention(&qkv, &starts, &mut context);
            layer.attention_output.forward(&context, rows, Activation::None, &mut projected);
            self.add_and_norm(&mut x, &projected, &layer.attention_norm);
            layer.intermediate.forward(&x, rows, Activation::Gelu, &mut intermediate);
            layer.output.forward(&intermediate, rows, Activation::None, &mut projected);
            self.add_and_norm(&mut x, &projected, &layer.output_norm);
        }
        Ok(starts
            .windows(2)
            .map(|span| {
                let mut mean = vec![0f32; h];
                for row in x[span[0] * h..span[1] * h].chunks_exact(h) {
                    vector_math::add_scaled(&mut mean, 1.0, row);
                }
                let count = (span[1] - span[0]) as f32;
                mean.iter_mut().for_each(|v| *v /= count);
                mean
            })
            .collect())
    }

    /// The embeddings layer: word + position + token type, normalised; `rows × hidden`.
    fn embed(&self, texts: &[Tokens], rows: usize) -> anyhow::Result<Vec<f32>> {
        let h = self.hidden;
        let mut x = Vec::with_capacity(rows * h);
        for text in texts {
            for (position, (&id, &kind)) in text.ids.iter().zip(text.type_ids).enumerate() {
                let (id, kind) = (id as usize, kind as usize);
                if id >= self.vocab || kind >= self.type_vocab {
                    bail!("token {id} (type {kind}) is outside the model's vocabulary");
                }
                let start = x.len();
                x.extend_from_slice(&self.word_embeddings[id * h..(id + 1) * h]);
                let row = &mut x[start..];
                vector_math::add_scaled(row, 1.0, &self.position_embeddings[position * h..(position + 1) * h]);
                vector_math::add_scaled(row, 1.0, &self.type_embeddings[kind * h..(kind + 1) * h]);
                let norm = &self.embeddings_norm;
                vector_math::layer_norm(row, &norm.gamma, &norm.beta, self.eps);
            }
        }
        Ok(x)
    }

    /// Self-attention of each text over its own tokens (`starts`: each text's first row,
    /// then the total), from the fused query/key/value rows into `context`.
    fn attention(&self, qkv: &[f32], starts: &[usize], context: &mut [f32]) {
        let (h, heads) = (self.hidden, self.heads);
        let d = h / heads;
        let context = DisjointSlice::new(context);
        let texts = starts.len() - 1;
        candle_core::utils::barrier_pool().execute_chunked(texts * heads, |range| {
            let (mut keys, mut scores, mut out) = (Vec::new(), Vec::new(), Vec::new());
            for item in range {
                let (text, head) = (item / heads, item % heads);
                let (start, len) = (starts[text], starts[text + 1] - starts[text]);
                let rows = &qkv[start * 3 * h..(start + len) * 3 * h];
                out.resize(len * d, 0.0);
                attend_head(rows, h, head * d, d, &mut keys, &mut scores, &mut out);
                for (i, values) in out.chunks_exact(d).enumerate() {
                    let at = (start + i) * h + head * d;
                    // SAFETY: columns `head * d .. + d` of text `text`'s rows belong to
                    // this (text, head) item alone, and each item goes to one task.
                    unsafe { context.slice_mut(at..at + d) }.copy_from_slice(values);
                }
            }
        });
    }

    /// `x = LayerNorm(x + y)`, row by row.
    fn add_and_norm(&self, x: &mut [f32], y: &[f32], norm: &Norm) {
        let h = self.hidden;
        let rows = x.len() / h;
        let x = DisjointSlice::new(x);
        candle_core::utils::barrier_pool().execute_chunked(rows, |range| {
            // SAFETY: rows `range` belong to this task alone.
            let x = unsafe { x.slice_mut(range.start * h..range.end * h) };
            for (row, add) in x.chunks_exact_mut(h).zip(y[range.start * h..range.end * h].chunks_exact(h)) {
                vector_math::add_scaled(row, 1.0, add);
                vector_math::layer_norm(row, &norm.gamma, &norm.beta, self.eps);
            }
        });
    }
}

/// One head's attention over one text: `rows` are the text's fused query/key/value rows
/// (`3 hidden` wide; the head's query at `offset`, its key at `hidden + offset`, its value
/// at `2 hidden + offset`, each `d` long); `out` gets `len × d`.
fn attend_head(
    rows: &[f32],
    hidden: usize,
    offset: usize,
    d: usize,
    keys: &mut Vec<f32>,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let width = 3 * hidden;
    let len = rows.len() / width;
    let scale = 1.0 / (d as f32).sqrt();
    // The head's keys transposed (`d × stride`, zeros past `len`), as
    // `attention_math::scores` takes them.
    let stride = len.next_multiple_of(8);
    keys.clear();
    keys.resize(d * stride, 0.0);
    for j in 0..len {
        for (c, &k) in rows[j * width + hidden + offset..][..d].iter().enumerate() {
            keys[c * stride + j] = k;
        }
    }
    for (i, out) in out.chunks_exact_mut(d).enumerate() {
        attention_math::scores(&rows[i * width + offset..][..d], keys, stride, len, scale, scores);
        vector_math::softmax(scores);
        attention_math::weighted_sum(scores, &rows[2 * hidden + offset..], width, out);
    }
}
