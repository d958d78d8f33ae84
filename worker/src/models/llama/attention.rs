//! Attention on the CPU over per-sequence key/value caches held in plain vectors.
//!
//! With many sequences decoding together, attention is little arithmetic (one query row
//! per sequence and head against that sequence's cached keys) but, as tensor operations,
//! a dozen small ops per sequence and layer: appending to the cache, transposes, two
//! matmuls, a softmax. At 16 sequences that is thousands of op dispatches per step and
//! outweighed the batched matrix multiplications. Here one call per layer appends every
//! sequence's new keys and values and computes every (sequence, head) pair directly,
//! spread over candle's barrier thread pool. Each pair's arithmetic is the same whatever else is
//! in the batch, so batching does not change a sequence's results.
//!
//! Keys are cached transposed, `[kv_head][head_dim][position]`, the layout the SIMD
//! arithmetic of [`attention_math`] takes (see there why). Keys and values are stored as
//! f16, as llama.cpp stores them: half the memory a sequence holds, and half the bytes
//! attention reads per step.

use half::{f16, slice::HalfFloatSliceExt};

use crate::models::{attention_math, disjoint::DisjointSlice, vector_math};

/// One layer's keys and values for one sequence, room for `capacity` positions: keys
/// `[kv_head][head_dim][position]`, values `[kv_head][position][head_dim]`, in f16.
pub struct LayerCache {
    keys: Vec<f16>,
    values: Vec<f16>,
    capacity: usize,
}

impl LayerCache {
    pub fn new(kv_heads: usize, head_dim: usize, capacity: usize) -> Self {
        // A multiple of eight: the SIMD scores read whole chunks of eight positions.
        let capacity = capacity.next_multiple_of(8);
        LayerCache {
            keys: vec![f16::ZERO; kv_heads * capacity * head_dim],
            values: vec![f16::ZERO; kv_heads * capacity * head_dim],
            capacity,
        }
    }
}

/// The shapes attention needs.
#[derive(Clone, Copy)]
pub struct Shape {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// One sequence's part of a step: its cache, how many positions it already holds, and
/// which rows of the stacked `q`/`k`/`v` are its new tokens.
pub struct Part<'a> {
    pub cache: &'a mut LayerCache,
    pub past: usize,
    pub rows: std::ops::Range<usize>,
}

/// Appends each part's new keys and values (`k`, `v`: `(rows, kv_heads, head_dim)`) to its
/// cache and returns causal attention of the queries (`q`: `(rows, heads, head_dim)`)
/// as `(rows, heads * head_dim)`. The parts' rows follow one another from row 0.
pub fn attend(shape: Shape, parts: &mut [Part], q: &[f32], k: &[f32], v: &[f32]) -> Vec<f32> {
    let Shape { heads, kv_heads, head_dim } = shape;
    let rows: usize = parts.iter().map(|p| p.rows.len()).sum();
    assert_eq!(q.len(), rows * heads * head_dim);
    assert_eq!(k.len(), rows * kv_heads * head_dim);
    assert_eq!(v.len(), rows * kv_heads * head_dim);
    let mut next = 0;
    for part in parts.iter() {
        assert!(part.rows.start == next && part.rows.end >= next, "the parts' rows must follow one another");
        next = part.rows.end;
    }
    for part in parts.iter() {
        assert!(part.past + part.rows.len() <= part.cache.capacity, "the cache is full");
    }
    // The new keys and values into each sequence's cache, the sequences spread over the
    // pool when there are several: a key's elements land `capacity` apart (the keys are
    // stored transposed), one cache line each, which on one thread took a tenth of a
    // 16-sequence decoding step.
    let count = parts.len();
    let shared = DisjointSlice::new(parts);
    let write = |range: std::ops::Range<usize>| {
        // SAFETY: each part is in one range only, and each range is handed to one task.
        for part in unsafe { shared.slice_mut(range) } {
            for (t, row) in part.rows.clone().enumerate() {
                let position = part.past + t;
                for h in 0..kv_heads {
                    let from = (row * kv_heads + h) * head_dim;
                    let to = (h * part.cache.capacity + position) * head_dim;
                    part.cache.values[to..to + head_dim].convert_from_f32_slice(&v[from..from + head_dim]);
                    for (d, &key) in k[from..from + head_dim].iter().enumerate() {
                        part.cache.keys[(h * head_dim + d) * part.cache.capacity + position] = f16::from_f32(key);
                    }
                }
            }
        }
    };
    if count > 1 {
        candle_core::utils::barrier_pool().execute_chunked(count, write);
    } else {
        write(0..count);
    }

    let mut out = vec![0f32; rows * heads * head_dim];
    let shared_out = DisjointSlice::new(&mut out);
    let parts: &[Part] = parts;
    let items: Vec<(usize, usize)> = (0..parts.len()).flat_map(|p| (0..heads).map(move |h| (p, h))).collect();
    let work = |&(p, h): &(usize, usize)| {
        let part = &parts[p];
        let group = heads / kv_heads;
        let kv = h / group;
        let capacity = part.cache.capacity;
        let base = kv * capacity * head_dim;
        let keys = Keys { transposed: &part.cache.keys[base..base + capacity * head_dim], capacity };
        let values = &part.cache.values[base..base + (part.past + part.rows.len()) * head_dim];
        let mut scores = Vec::with_capacity(part.past + part.rows.len());
        for (t, row) in part.rows.clone().enumerate() {
            let query = &q[(row * heads + h) * head_dim..][..head_dim];
            let start = (row * heads + h) * head_dim;
            // SAFETY: the (row, head) slice of the output belongs to the item (part, head)
            // alone: each row belongs to one part (the parts' rows follow one another, as
            // asserted above) and each item runs once.
            let target = unsafe { shared_out.slice_mut(start..start + head_dim) };
            head_attention(query, keys, values, part.past + t + 1, &mut scores, target);
        }
    };
    // Decoding steps are tiny per item; only fan out when there is enough to share. The
    // pool is the one the matrix multiplications use (see `qmatmul`): a second pool's
    // threads would compete with its spinning workers for the same cores.
    let total: usize = parts.iter().map(|p| p.rows.len() * (p.past + p.rows.len())).sum();
    if total * heads * head_dim >= 1 << 16 {
        candle_core::utils::barrier_pool().execute_chunked(items.len(), |range| items[range].iter().for_each(work));
    } else {
        items.iter().for_each(work);
    }
    out
}

/// One kv head's cached keys, `[head_dim][capacity]`.
#[derive(Clone, Copy)]
struct Keys<'a> {
    transposed: &'a [f16],
    capacity: usize,
}

/// One query against the first `visible` cached positions of one head.
fn head_attention(query: &[f32], keys: Keys, values: &[f16], visible: usize, scores: &mut Vec<f32>, out: &mut [f32]) {
    let scale = 1.0 / (query.len() as f32).sqrt();
    attention_math::scores(query, keys.transposed, keys.capacity, visible, scale, scores);
    vector_math::softmax(scores);
    attention_math::weighted_sum(scores, values, query.len(), out);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against a plain softmax(q kᵀ / √d) v (keys and values rounded to f16, as cached)
    /// with a causal mask, two sequences of different lengths in one call, grouped-query
    /// heads.
    #[test]
    fn matches_the_textbook_formula() {
        let shape = Shape { heads: 4, kv_heads: 2, head_dim: 8 };
        let value = |i: usize| ((i * 37 % 101) as f32 / 50.0) - 1.0;
        let mut caches = [LayerCache::new(2, 8, 10), LayerCache::new(2, 8, 10)];
        // Sequence 0 reads 3 tokens, sequence 1 reads 2; then one more each.
        let mut history: Vec<Vec<(Vec<f32>, Vec<f32>)>> = vec![Vec::new(), Vec::new()];
        let mut past = [0, 0];
        for (step, lengths) in [[3usize, 2usize], [1, 1]].iter().enumerate() {
            let rows: usize = lengths.iter().sum();
            let q: Vec<f32> = (0..rows * 32).map(|i| value(i + step * 1000)).collect();
            let k: Vec<f32> = (0..rows * 16).map(|i| value(i + step * 1000 + 7)).collect();
            let v: Vec<f32> = (0..rows * 16).map(|i| value(i + step * 1000 + 13)).collect();
            let [c0, c1] = &mut caches;
            let mut parts = [
                Part { cache: c0, past: past[0], rows: 0..lengths[0] },
                Part { cache: c1, past: past[1], rows: lengths[0]..rows },
            ];
            let out = attend(shape, &mut parts, &q, &k, &v);
            let mut first = 0;
            for s in 0..2 {
                for row in first..first + lengths[s] {
                    // The cache holds f16: the reference uses the same rounded values.
                    let f16_rounded = |x: &[f32]| x.iter().map(|&x| f16::from_f32(x).to_f32()).collect::<Vec<_>>();
                    history[s]
                        .push((f16_rounded(&k[row * 16..row * 16 + 16]), f16_rounded(&v[row * 16..row * 16 + 16])));
                    for h in 0..4 {
                        let kv = h / 2;
                        let query = &q[(row * 4 + h) * 8..][..8];
                        let visible = &history[s];
                        let scores: Vec<f32> = visible
                            .iter()
                            .map(|(k, _)| {
                                query.iter().zip(&k[kv * 8..kv * 8 + 8]).map(|(a, b)| a * b).sum::<f32>() / 8f32.sqrt()
                            })
                            .collect();
                        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                        let weights: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
                        let total: f32 = weights.iter().sum();
                        for d in 0..8 {
                            let expected: f32 =
                                visible.iter().zip(&weights).map(|((_, v), w)| w / total * v[kv * 8 + d]).sum();
                            let got = out[(row * 4 + h) * 8 + d];
                            assert!(
                                (got - expected).abs() < 1e-5,
                                "step {step} seq {s} row {row} head {h}: {got} vs {expected}"
                            );
                        }
                    }
                }
                first += lengths[s];
                past[s] += lengths[s];
            }
        }
    }
}
