//! A llama-architecture decoder loaded from a GGUF file, built to decode many sequences
//! in one forward pass.
//!
//! candle-transformers' `quantized_llama` keeps one key/value cache inside the model, so
//! it runs one sequence at a time. Here each [`Sequence`] owns its cache, and
//! [`Llama::forward`] takes any number of sequences with any number of new tokens each:
//! their tokens are stacked so that every weight matrix is read once per step for all of
//! them (the projections and the MLP, nearly all the work), and only attention runs per
//! sequence, against that sequence's own cache. A prompt is the same call with many
//! tokens for one sequence.
//!
//! On the CPU, Q4_1 and Q8_0 weights go through [`super::qmatmul`]'s SIMD kernels (a
//! layer's query, key and value in one pass, its gate and up in another), and SwiGLU's
//! gate is one fused op; everything else, and every weight on a GPU, through candle's
//! `QMatMul` and ops.

use std::io::{Read, Seek};

use anyhow::Context;
use candle_core::{
    DType, Device, Module, Tensor,
    quantized::{QMatMul, QTensor, gguf_file::Content},
};
use candle_nn::kv_cache::KvCache;

use super::{
    attention,
    qmatmul::{self, QMatrix},
};
use crate::models::vector_math;

/// `silu(gate) · up` in one pass on the CPU (candle's `silu` and product are two passes,
/// two buffers and a libm `exp` per element).
struct SiluTimes;

impl candle_core::CustomOp2 for SiluTimes {
    fn name(&self) -> &'static str {
        "silu-times"
    }

    fn cpu_fwd(
        &self,
        gate: &candle_core::CpuStorage,
        gate_layout: &candle_core::Layout,
        up: &candle_core::CpuStorage,
        up_layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use candle_core::CpuStorage::F32;
        let (F32(gate), F32(up)) = (gate, up) else { candle_core::bail!("silu-times: f32 inputs only") };
        if gate_layout.shape() != up_layout.shape() {
            candle_core::bail!("silu-times: shapes {:?} and {:?} differ", gate_layout.shape(), up_layout.shape());
        }
        let (Some((g0, g1)), Some((u0, u1))) = (gate_layout.contiguous_offsets(), up_layout.contiguous_offsets())
        else {
            candle_core::bail!("silu-times: inputs must be contiguous")
        };
        let mut out = vec![0f32; g1 - g0];
        vector_math::silu_times(&mut out, &gate[g0..g1], &up[u0..u1]);
        Ok((F32(out), gate_layout.shape().clone()))
    }
}

/// Hyper-parameters read from the GGUF's `llama.*` metadata.
#[derive(Debug, Clone)]
pub struct Config {
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub context_length: usize,
    pub rms_eps: f64,
    pub rope_base: f32,
    pub vocab: usize,
}

impl Config {
    fn from_gguf(content: &Content) -> anyhow::Result<Self> {
        let md = |key: &str| content.metadata.get(key).with_context(|| format!("GGUF has no {key}"));
        let architecture = md("general.architecture")?.to_string()?;
        anyhow::ensure!(architecture == "llama", "architecture {architecture}: only llama is supported");
        let heads = md("llama.attention.head_count")?.to_u32()? as usize;
        let hidden = md("llama.embedding_length")?.to_u32()? as usize;
        let head_dim = match content.metadata.get("llama.rope.dimension_count") {
            Some(v) => v.to_u32()? as usize,
            None => hidden / heads,
        };
        anyhow::ensure!(head_dim * heads == hidden, "partial rotary embeddings are not supported");
        Ok(Config {
            layers: md("llama.block_count")?.to_u32()? as usize,
            hidden,
            heads,
            kv_heads: md("llama.attention.head_count_kv")?.to_u32()? as usize,
            head_dim,
            context_length: md("llama.context_length")?.to_u32()? as usize,
            rms_eps: md("llama.attention.layer_norm_rms_epsilon")?.to_f32()? as f64,
            rope_base: content.metadata.get("llama.rope.freq_base").map_or(Ok(10_000.0), |v| v.to_f32())?,
            vocab: content.tensor_infos.get("token_embd.weight").context("GGUF has no token_embd.weight")?.shape.dims()
                [0],
        })
    }
}

/// A weight matrix, multiplied as `x · Wᵀ`.
enum Linear {
    Ours(QMatrix),
    Candle(QMatMul),
}

impl Linear {
    fn new(tensor: QTensor, device: &Device) -> anyhow::Result<Self> {
        Ok(if device.is_cpu() && QMatrix::supports(tensor.dtype()) {
            Linear::Ours(QMatrix::from_qtensor(&tensor)?)
        } else {
            Linear::Candle(QMatMul::from_qtensor(tensor)?)
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Linear::Ours(m) => m.forward(x),
            Linear::Candle(m) => m.forward(x),
        }
    }

    /// `x · Wᵀ` for each of `weights`, in one pass over the input where all are ours
    /// (see [`qmatmul::forward_stacked`]).
    fn forward_stacked<const N: usize>(x: &Tensor, weights: [&Linear; N]) -> candle_core::Result<[Tensor; N]> {
        let ours: Vec<&QMatrix> = weights
            .iter()
            .filter_map(|w| match w {
                Linear::Ours(m) => Some(m),
                Linear::Candle(_) => None,
            })
            .collect();
        let out = if ours.len() == N {
            qmatmul::forward_stacked(x, &ours)?
        } else {
            weights.iter().map(|w| w.forward(x)).collect::<candle_core::Result<_>>()?
        };
        Ok(out.try_into().unwrap_or_else(|_| unreachable!("one result per weight")))
    }
}

struct Layer {
    attn_norm: Tensor,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    ffn_norm: Tensor,
    gate: Linear,
    up: Linear,
    down: Linear,
}

/// The model's weights; shared by every sequence, never mutated.
pub struct Llama {
    pub config: Config,
    embeddings: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    output: Linear,
    cos: Tensor,
    sin: Tensor,
    device: Device,
}

/// One sequence's state: its key/value caches and how many tokens they hold.
pub struct Sequence {
    caches: Caches,
    len: usize,
}

/// Per layer: plain vectors on the CPU (see [`super::attention`]), tensors elsewhere.
enum Caches {
    Cpu(Vec<attention::LayerCache>),
    Tensors(Vec<KvCache>),
}

impl Sequence {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Llama {
    pub fn load<R: Read + Seek>(content: &Content, reader: &mut R, device: &Device) -> anyhow::Result<Self> {
        let config = Config::from_gguf(content)?;
        let mut tensor = |name: &str| content.tensor(reader, name, device).with_context(|| format!("tensor {name}"));
        let embedding_weights = tensor("token_embd.weight")?;
        let embeddings = embedding_weights.dequantize(device)?;
        // Models with tied embeddings have no output.weight and reuse the embeddings.
        let output = match tensor("output.weight") {
            Ok(output) => output,
            Err(_) => embedding_weights,
        };
        let output = Linear::new(output, device)?;
        let norm = tensor("output_norm.weight")?.dequantize(device)?;
        let mut layers = Vec::with_capacity(config.layers);
        for i in 0..config.layers {
            let mut get = |part: &str| tensor(&format!("blk.{i}.{part}"));
            layers.push(Layer {
                attn_norm: get("attn_norm.weight")?.dequantize(device)?,
                q: Linear::new(get("attn_q.weight")?, device)?,
                k: Linear::new(get("attn_k.weight")?, device)?,
                v: Linear::new(get("attn_v.weight")?, device)?,
                o: Linear::new(get("attn_output.weight")?, device)?,
                ffn_norm: get("ffn_norm.weight")?.dequantize(device)?,
                gate: Linear::new(get("ffn_gate.weight")?, device)?,
                up: Linear::new(get("ffn_up.weight")?, device)?,
                down: Linear::new(get("ffn_down.weight")?, device)?,
            });
        }
        let (cos, sin) = rope_tables(&config, device)?;
        Ok(Llama { config, embeddings, layers, norm, output, cos, sin, device: device.clone() })
    }

    /// A new, empty sequence whose caches can hold `capacity` tokens.
    pub fn new_sequence(&self, capacity: usize) -> Sequence {
        let cfg = &self.config;
        let capacity = capacity.clamp(1, cfg.context_length);
        let caches = if self.device.is_cpu() {
            Caches::Cpu(
                (0..cfg.layers).map(|_| attention::LayerCache::new(cfg.kv_heads, cfg.head_dim, capacity)).collect(),
            )
        } else {
            Caches::Tensors((0..cfg.layers).map(|_| KvCache::new(2, capacity)).collect())
        };
        Sequence { caches, len: 0 }
    }

    /// Appends `tokens[i]` to `sequences[i]` for every `i` and returns logits of shape
    /// `(rows, vocab)`: one row per sequence for its last token, or, with `every_position`,
    /// one row per token.
    pub fn forward(
        &self,
        sequences: &mut [&mut Sequence],
        tokens: &[&[u32]],
        every_position: bool,
    ) -> candle_core::Result<Tensor> {
        // On the CPU this runs the pass inside candle's thread pool, so its hundreds of
        // short parallel ops find their threads awake instead of waking them each time.
        self.device.with_context(|| self.forward_in_context(sequences, tokens, every_position))
    }

    fn forward_in_context(
        &self,
        sequences: &mut [&mut Sequence],
        tokens: &[&[u32]],
        every_position: bool,
    ) -> candle_core::Result<Tensor> {
        let cfg = &self.config;
        let ids: Vec<u32> = tokens.iter().flat_map(|t| t.iter().copied()).collect();
        let positions: Vec<u32> =
            sequences.iter().zip(tokens).flat_map(|(s, t)| (s.len..s.len + t.len()).map(|p| p as u32)).collect();
        let total = ids.len();
        let ids = Tensor::new(ids.as_slice(), &self.device)?;
        let positions = Tensor::new(positions.as_slice(), &self.device)?;
        let cos = self.cos.index_select(&positions, 0)?.unsqueeze(1)?;
        let sin = self.sin.index_select(&positions, 0)?.unsqueeze(1)?;

        let mut x = self.embeddings.index_select(&ids, 0)?;
        for (layer_index, layer) in self.layers.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &layer.attn_norm, cfg.rms_eps as f32)?;
            // Rotary embeddings per token: each token is its own "batch" row, so tokens
            // at different positions of different sequences rotate in one call.
            let rotate = |t: Tensor, heads: usize| -> candle_core::Result<Tensor> {
                let t = t.reshape((total, heads, 1, cfg.head_dim))?;
                candle_nn::rotary_emb::rope_i(&t, &cos, &sin)?.reshape((total, heads, cfg.head_dim))
            };
            let [q, k, v] = Linear::forward_stacked(&h, [&layer.q, &layer.k, &layer.v])?;
            let q = rotate(q, cfg.heads)?;
            let k = rotate(k, cfg.kv_heads)?;
            let v = v.reshape((total, cfg.kv_heads, cfg.head_dim))?;

            let attention = self.attention(layer_index, sequences, tokens, &q, &k, &v)?;
            x = (x + layer.o.forward(&attention)?)?;

            let h = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, cfg.rms_eps as f32)?;
            let [gate, up] = Linear::forward_stacked(&h, [&layer.gate, &layer.up])?;
            let gated = if self.device.is_cpu() {
                gate.apply_op2_no_bwd(&up, &SiluTimes)?
            } else {
                (candle_nn::ops::silu(&gate)? * up)?
            };
            x = (x + layer.down.forward(&gated)?)?;
        }
        for (sequence, new) in sequences.iter_mut().zip(tokens) {
            sequence.len += new.len();
        }

        let x = if every_position {
            x
        } else {
            let mut last = Vec::with_capacity(tokens.len());
            let mut end = 0;
            for new in tokens {
                end += new.len();
                last.push(end as u32 - 1);
            }
            x.index_select(&Tensor::new(last.as_slice(), &self.device)?, 0)?
        };
        let x = candle_nn::ops::rms_norm(&x, &self.norm, cfg.rms_eps as f32)?;
        self.output.forward(&x)?.to_dtype(DType::F32)
    }

    /// Attention of every sequence's new tokens over its own cache, `(rows, hidden)`.
    fn attention(
        &self,
        layer: usize,
        sequences: &mut [&mut Sequence],
        tokens: &[&[u32]],
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let cfg = &self.config;
        let total = q.dim(0)?;
        if self.device.is_cpu() {
            let flat = |t: &Tensor| t.flatten_all()?.to_vec1::<f32>();
            let (q, k, v) = (flat(q)?, flat(k)?, flat(v)?);
            let mut row = 0;
            let mut parts = Vec::with_capacity(sequences.len());
            for (sequence, new) in sequences.iter_mut().zip(tokens) {
                let Caches::Cpu(caches) = &mut sequence.caches else { candle_core::bail!("a GPU sequence on the CPU") };
                parts.push(attention::Part {
                    cache: &mut caches[layer],
                    past: sequence.len,
                    rows: row..row + new.len(),
                });
                row += new.len();
            }
            let shape = attention::Shape { heads: cfg.heads, kv_heads: cfg.kv_heads, head_dim: cfg.head_dim };
            let out = attention::attend(shape, &mut parts, &q, &k, &v);
            return Tensor::from_vec(out, (total, cfg.hidden), &self.device);
        }
        let mut outputs = Vec::with_capacity(sequences.len());
        let mut row = 0;
        for (sequence, new) in sequences.iter_mut().zip(tokens) {
            let n = new.len();
            let Caches::Tensors(caches) = &mut sequence.caches else { candle_core::bail!("a CPU sequence on a GPU") };
            let (q, k, v) = (q.narrow(0, row, n)?, k.narrow(0, row, n)?, v.narrow(0, row, n)?);
            outputs.push(self.attend(&mut caches[layer], &q, &k, &v)?);
            row += n;
        }
        Tensor::cat(&outputs, 0)
    }

    /// Attention of one sequence's `n` new tokens (`q`: `(n, heads, head_dim)`, `k`/`v`:
    /// `(n, kv_heads, head_dim)`) over its cache, returning `(n, hidden)`.
    fn attend(&self, cache: &mut KvCache, q: &Tensor, k: &Tensor, v: &Tensor) -> candle_core::Result<Tensor> {
        let cfg = &self.config;
        let n = q.dim(0)?;
        let group = cfg.heads / cfg.kv_heads;
        let k = k.transpose(0, 1)?.unsqueeze(0)?.contiguous()?;
        let v = v.transpose(0, 1)?.unsqueeze(0)?.contiguous()?;
        let (k, v) = cache.append(&k, &v)?;
        let (k, v) = (k.squeeze(0)?, v.squeeze(0)?);
        let total = k.dim(1)?;
        // Grouped-query attention without copying keys: the query heads that share a
        // key/value head are stacked along the row axis, `(kv_heads, group * n, head_dim)`.
        let q = q.transpose(0, 1)?.contiguous()?.reshape((cfg.kv_heads, group * n, cfg.head_dim))?;
        let scale = 1.0 / (cfg.head_dim as f64).sqrt();
        let mut scores = (q.matmul(&k.t()?)? * scale)?;
        if n > 1 {
            scores = scores.broadcast_add(&causal_mask(n, total, group, &self.device)?)?;
        }
        let weights = candle_nn::ops::softmax_last_dim(&scores)?;
        let out = weights.matmul(&v)?; // (kv_heads, group * n, head_dim)
        out.reshape((cfg.heads, n, cfg.head_dim))?.transpose(0, 1)?.reshape((n, cfg.hidden))
    }
}

/// `(group * n, total)`: new token `i` (the last `n` of `total`) sees keys up to its own
/// position; the pattern repeats for each query head of a group.
fn causal_mask(n: usize, total: usize, group: usize, device: &Device) -> candle_core::Result<Tensor> {
    let past = total - n;
    let mask: Vec<f32> = (0..group * n)
        .flat_map(|row| {
            let i = row % n;
            (0..total).map(move |j| if j <= past + i { 0.0 } else { f32::NEG_INFINITY })
        })
        .collect();
    Tensor::from_vec(mask, (group * n, total), device)
}

/// cos/sin of every position and frequency, `(context_length, head_dim / 2)`.
fn rope_tables(cfg: &Config, device: &Device) -> candle_core::Result<(Tensor, Tensor)> {
    let inverse: Vec<f32> =
        (0..cfg.head_dim).step_by(2).map(|i| 1.0 / cfg.rope_base.powf(i as f32 / cfg.head_dim as f32)).collect();
    let inverse = Tensor::new(inverse.as_slice(), device)?;
    let positions = Tensor::arange(0u32, cfg.context_length as u32, device)?.to_dtype(DType::F32)?;
    let angles = positions.unsqueeze(1)?.broadcast_mul(&inverse.unsqueeze(0)?)?;
    Ok((angles.cos()?, angles.sin()?))
}

/// The index of the largest value in each row of `(rows, vocab)` logits, with the margin
/// over the runner-up; used by the correctness tests.
pub fn top2(logits: &Tensor) -> candle_core::Result<Vec<(u32, f32, f32)>> {
    let rows = logits.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    Ok(rows
        .iter()
        .map(|row| {
            let (mut best, mut first, mut second) = (0, f32::NEG_INFINITY, f32::NEG_INFINITY);
            for (i, &v) in row.iter().enumerate() {
                if v > first {
                    second = first;
                    first = v;
                    best = i;
                } else if v > second {
                    second = v;
                }
            }
            (best as u32, first, first - second)
        })
        .collect())
}
