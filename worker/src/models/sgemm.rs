//! f32 matrix multiplication for the CPU, `y = x · Wᵀ + b` (a linear layer), with the
//! weight packed once at load time.
//!
//! candle multiplies f32 matrices with the `gemm` crate, which packs both operands on
//! every call and splits small products among threads at a cost that BERT's matrices (a
//! few hundred tokens × 384 × 384 to 1,536) do not repay: profiled, packing and thread
//! hand-offs took as long as the arithmetic. Here the weight, which never changes, is
//! packed when the model loads, in panels of [`NR`] output columns laid out k-major, so
//! the kernel streams one panel with two vector loads per step; the activation rows are
//! read where they are. The AVX2 kernel computes [`MR`] rows × [`NR`] columns with twelve
//! accumulators (six rows × two 8-lane vectors), broadcasting one input value per row
//! per step: twelve fused multiply-adds per eight loads, so it is bound by the
//! multiply-add units, not memory. With AVX-512 a row's [`NR`] columns are one vector,
//! and the kernel takes two micro-panels at once (twelve rows, twelve accumulators, each
//! input value broadcast inside its multiply-add): half the instructions for the same
//! products. The bias starts the accumulators and an optional GELU is applied to each
//! tile while it is still in cache.
//!
//! Work is split among candle's CPU thread pool (`--threads`) by tiles of a block of
//! rows × one panel; consecutive tiles share their rows, which stay in the L2 cache while
//! the panels stream past. A row's result does not depend on the other rows.

use crate::models::{disjoint::DisjointSlice, vector_math};

/// Output columns per packed panel: two AVX vectors.
const NR: usize = 16;
/// Rows per kernel call: with two vectors per row, six rows use twelve of the sixteen
/// AVX registers for accumulators, leaving room for the two weight vectors and the
/// broadcast.
const MR: usize = 6;
/// Inputs per pass over a panel: a panel's slice of this depth takes 16 KiB, which stays
/// in the L1 cache while a block of rows passes over it.
const DEPTH_BLOCK: usize = 256;
/// Rows per block are chosen so that a block's activations at one depth take about this
/// much (they stay in L2 while the panels pass over them).
const ROW_BLOCK_BYTES: usize = 64 * 1024;
const MAX_BLOCK_ROWS: usize = 16 * MR;

/// What is applied to each output after the bias.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    None,
    /// GELU with the error function, as BERT's `hidden_act: gelu`.
    Gelu,
}

/// A linear layer's weight (`outputs × inputs`) and bias, packed for the kernels.
pub struct PackedLinear {
    inputs: usize,
    outputs: usize,
    /// `panels × inputs × NR`: panel `p` holds outputs `p * NR ..` (zeros past `outputs`),
    /// the `NR` weights of one input next to each other.
    panels: Vec<f32>,
    /// `panels × NR`, zeros past `outputs`.
    bias: Vec<f32>,
}

impl PackedLinear {
    /// Packs `weight` (row-major `outputs × inputs`, as PyTorch and safetensors store a
    /// linear layer's) and `bias` (`outputs`, or none).
    pub fn new(weight: &[f32], bias: Option<&[f32]>, outputs: usize, inputs: usize) -> Self {
        assert_eq!(weight.len(), outputs * inputs, "weight is not {outputs} × {inputs}");
        let panels = outputs.div_ceil(NR);
        let mut packed = vec![0f32; panels * inputs * NR];
        for o in 0..outputs {
            let (panel, lane) = (o / NR, o % NR);
            for (k, &w) in weight[o * inputs..(o + 1) * inputs].iter().enumerate() {
                packed[(panel * inputs + k) * NR + lane] = w;
            }
        }
        let mut padded_bias = vec![0f32; panels * NR];
        if let Some(bias) = bias {
            assert_eq!(bias.len(), outputs, "bias is not {outputs} long");
            padded_bias[..outputs].copy_from_slice(bias);
        }
        PackedLinear { inputs, outputs, panels: packed, bias: padded_bias }
    }

    pub fn inputs(&self) -> usize {
        self.inputs
    }

    pub fn outputs(&self) -> usize {
        self.outputs
    }

    /// `out = activation(x · Wᵀ + b)` for `rows` rows: `x` is `rows × inputs` and `out`
    /// `rows × outputs`, both row-major.
    pub fn forward(&self, x: &[f32], rows: usize, activation: Activation, out: &mut [f32]) {
        let (k, n) = (self.inputs, self.outputs);
        assert_eq!(x.len(), rows * k, "input is not {rows} × {k}");
        assert_eq!(out.len(), rows * n, "output is not {rows} × {n}");
        let kernel = Kernel::select();
        let panels = n.div_ceil(NR);
        let block_rows = (ROW_BLOCK_BYTES / (4 * DEPTH_BLOCK.min(k).max(1))).clamp(MR, MAX_BLOCK_ROWS) / MR * MR;
        let tiles = rows.div_ceil(block_rows) * panels;
        PACKED_ROWS.with_borrow_mut(|packed| {
            pack_rows(x, rows, k, packed);
            let packed = &packed[..];
            let out = DisjointSlice::new(out);
            candle_core::utils::barrier_pool().execute_chunked(tiles, |range| {
                let mut sums = [0f32; MAX_BLOCK_ROWS * NR];
                for t in range {
                    let (block, p) = (t / panels, t % panels);
                    let (first, last) = (block * block_rows, rows.min((block + 1) * block_rows));
                    let (c0, cols) = (p * NR, NR.min(n - p * NR));
                    let panel = &self.panels[p * k * NR..(p + 1) * k * NR];
                    // Whole micro-panels: the rows past `rows` in the last one are zeros.
                    let sums = &mut sums[..(last - first).next_multiple_of(MR) * NR];
                    let bias: &[f32; NR] = self.bias[p * NR..(p + 1) * NR].try_into().expect("NR wide");
                    for row in sums.as_chunks_mut::<NR>().0 {
                        // Whole-array copies: a slice copy of 16 floats is a `memcpy` call.
                        *row = *bias;
                    }
                    // Depth by depth, so that the panel's slice stays in L1 while every row
                    // of the block passes over it.
                    for depth in (0..k).step_by(DEPTH_BLOCK) {
                        let kc = DEPTH_BLOCK.min(k - depth);
                        let slice = &panel[depth * NR..(depth + kc) * NR];
                        let rows_at = |i: usize| {
                            let micro_panel = (first / MR + i) * k * MR;
                            &packed[micro_panel + depth * MR..micro_panel + (depth + kc) * MR]
                        };
                        // Two micro-panels at a time (the AVX-512 kernel's tile), then the
                        // odd one.
                        let (pairs, odd) = sums.as_chunks_mut::<{ 2 * MR * NR }>();
                        for (i, pair) in pairs.iter_mut().enumerate() {
                            let (a, b) = pair.split_at_mut(MR * NR);
                            let sums = [a.try_into().expect("MR × NR"), b.try_into().expect("MR × NR")];
                            kernel.accumulate_pair([rows_at(2 * i), rows_at(2 * i + 1)], kc, slice, sums);
                        }
                        if !odd.is_empty() {
                            kernel.accumulate(rows_at(2 * pairs.len()), kc, slice, odd.try_into().expect("MR × NR"));
                        }
                    }
                    let sums = &mut sums[..(last - first) * NR];
                    if activation == Activation::Gelu {
                        vector_math::gelu_in_place(sums);
                    }
                    for (i, values) in sums.as_chunks::<NR>().0.iter().enumerate() {
                        let start = (first + i) * n + c0;
                        // SAFETY: row `first + i`'s columns of panel `p` belong to tile `t`
                        // alone, and each tile is handed to exactly one task.
                        let row = unsafe { out.slice_mut(start..start + cols) };
                        if cols == NR {
                            *<&mut [f32; NR]>::try_from(row).expect("NR wide") = *values;
                        } else {
                            row.copy_from_slice(&values[..cols]);
                        }
                    }
                }
            });
        });
    }
}

thread_local! {
    /// The input rows as the kernel reads them (see [`pack_rows`]), kept between calls so
    /// that each product does not allocate (and fault in) a fresh buffer.
    static PACKED_ROWS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Lays `x` (`rows × k`) out as the kernel reads it: micro-panels of [`MR`] rows (the
/// last padded with zeros), each depth-major, so the kernel's [`MR`] broadcasts at one
/// depth read consecutive floats instead of one from each of six rows far apart.
fn pack_rows(x: &[f32], rows: usize, k: usize, packed: &mut Vec<f32>) {
    let micro_panels = rows.div_ceil(MR);
    packed.clear();
    packed.resize(micro_panels * MR * k, 0.0);
    let target = DisjointSlice::new(packed);
    candle_core::utils::barrier_pool().execute_chunked(micro_panels, |range| {
        // SAFETY: micro-panels `range` belong to this task alone.
        let target = unsafe { target.slice_mut(range.start * MR * k..range.end * MR * k) };
        for (q, panel) in range.zip(target.chunks_exact_mut(MR * k)) {
            for i in 0..MR.min(rows - q * MR) {
                let row = &x[(q * MR + i) * k..(q * MR + i + 1) * k];
                for (depth, &v) in row.iter().enumerate() {
                    panel[depth * MR + i] = v;
                }
            }
        }
    });
}

/// The kernel this CPU can run.
///
/// Invariant: [`Kernel::Avx512`] is only made on a CPU with AVX-512F, and
/// [`Kernel::Avx2`] on one with AVX2 and FMA (by [`Kernel::available`]), so
/// [`Kernel::accumulate`] can call the kernel that enables them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kernel {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Scalar,
}

impl Kernel {
    /// The fastest kernel this CPU can run.
    fn select() -> Self {
        Self::available()[0]
    }

    /// Every kernel this CPU can run, the fastest first (the tests check each).
    fn available() -> Vec<Self> {
        let mut kernels = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx512f") {
                kernels.push(Kernel::Avx512);
            }
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                kernels.push(Kernel::Avx2);
            }
        }
        kernels.push(Kernel::Scalar);
        kernels
    }

    /// [`Kernel::accumulate`] for two micro-panels of rows against the same slice.
    fn accumulate_pair(self, rows: [&[f32]; 2], kc: usize, slice: &[f32], sums: [&mut [f32; MR * NR]; 2]) {
        let [sums0, sums1] = sums;
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => {
                assert!(rows.iter().all(|r| r.len() == kc * MR) && slice.len() == kc * NR);
                // SAFETY: `Avx512` is only made on a CPU with AVX-512F (the invariant), and
                // the lengths the kernel indexes by were checked above.
                unsafe { avx512::accumulate(rows, kc, slice, [sums0, sums1]) }
            }
            _ => {
                self.accumulate(rows[0], kc, slice, sums0);
                self.accumulate(rows[1], kc, slice, sums1);
            }
        }
    }

    /// `sums[i * NR + j] += Σ_kk rows[kk * MR + i] · slice[kk * NR + j]` for `kk < kc`:
    /// one micro-panel of packed rows (see [`pack_rows`]) at one depth block.
    fn accumulate(self, rows: &[f32], kc: usize, slice: &[f32], sums: &mut [f32; MR * NR]) {
        assert!(rows.len() == kc * MR && slice.len() == kc * NR);
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Avx512` is only made on a CPU with AVX-512F (the invariant), and
            // the lengths the kernel indexes by were checked above.
            Kernel::Avx512 => unsafe { avx512::accumulate([rows], kc, slice, [sums]) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Avx2` is only made on a CPU with AVX2 and FMA (the invariant), and
            // the lengths the kernel indexes by were checked above.
            Kernel::Avx2 => unsafe { avx2::accumulate(rows, kc, slice, sums) },
            Kernel::Scalar => {
                for kk in 0..kc {
                    let weights = &slice[kk * NR..(kk + 1) * NR];
                    for (i, out) in sums.chunks_exact_mut(NR).enumerate() {
                        let v = rows[kk * MR + i];
                        for (o, &w) in out.iter_mut().zip(weights) {
                            *o += v * w;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{MR, NR};

    /// The `MR × NR` kernel (see [`super::Kernel::accumulate`]).
    ///
    /// # Safety
    ///
    /// The CPU must have AVX2 and FMA; `rows` must hold `kc * MR` values and `slice`
    /// `kc * NR`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn accumulate(rows: &[f32], kc: usize, slice: &[f32], sums: &mut [f32; MR * NR]) {
        debug_assert!(rows.len() >= kc * MR && slice.len() >= kc * NR);
        let (a, w, s) = (rows.as_ptr(), slice.as_ptr(), sums.as_mut_ptr());
        // SAFETY: every pointer step below stays inside its buffer: depth `kk < kc` of
        // `rows` spans `kk * MR .. (kk + 1) * MR` and of the slice `kk * NR .. (kk + 1) *
        // NR`, inside the lengths the caller guarantees, and `sums` is `MR × NR`; the CPU
        // has AVX2 and FMA (the caller's promise).
        unsafe {
            let mut low: [__m256; MR] = std::array::from_fn(|i| _mm256_loadu_ps(s.add(i * NR)));
            let mut high: [__m256; MR] = std::array::from_fn(|i| _mm256_loadu_ps(s.add(i * NR + 8)));
            for kk in 0..kc {
                let w0 = _mm256_loadu_ps(w.add(kk * NR));
                let w1 = _mm256_loadu_ps(w.add(kk * NR + 8));
                for i in 0..MR {
                    let v = _mm256_broadcast_ss(&*a.add(kk * MR + i));
                    low[i] = _mm256_fmadd_ps(v, w0, low[i]);
                    high[i] = _mm256_fmadd_ps(v, w1, high[i]);
                }
            }
            for i in 0..MR {
                _mm256_storeu_ps(s.add(i * NR), low[i]);
                _mm256_storeu_ps(s.add(i * NR + 8), high[i]);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{MR, NR};

    /// `P` micro-panels (one or two) against one slice: `MR` rows each, one 16-lane
    /// vector a row (see [`super::Kernel::accumulate`]). Two give twelve accumulators,
    /// enough independent multiply-adds to keep both AVX-512 units busy through their
    /// latency.
    ///
    /// # Safety
    ///
    /// The CPU must have AVX-512F; each of `rows` must hold `kc * MR` values and `slice`
    /// `kc * NR`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn accumulate<const P: usize>(
        rows: [&[f32]; P],
        kc: usize,
        slice: &[f32],
        sums: [&mut [f32; MR * NR]; P],
    ) {
        debug_assert!(rows.iter().all(|r| r.len() >= kc * MR) && slice.len() >= kc * NR);
        let (a, w, s) = (rows.map(<[f32]>::as_ptr), slice.as_ptr(), sums.map(|s| s.as_mut_ptr()));
        // SAFETY: as in `avx2::accumulate`, for each micro-panel: depth `kk < kc` reads
        // `rows[p][kk * MR ..][..MR]` and `slice[kk * NR ..][..NR]`, within the lengths the
        // caller guarantees; each of `sums` is `MR × NR`; the CPU has AVX-512F (the
        // caller's promise).
        unsafe {
            let mut acc: [[__m512; MR]; P] =
                std::array::from_fn(|p| std::array::from_fn(|i| _mm512_loadu_ps(s[p].add(i * NR))));
            for kk in 0..kc {
                let w0 = _mm512_loadu_ps(w.add(kk * NR));
                // Row by row, the panels' rows side by side: independent multiply-adds
                // follow each other.
                for i in 0..MR {
                    for (acc, a) in acc.iter_mut().zip(a) {
                        acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(*a.add(kk * MR + i)), w0, acc[i]);
                    }
                }
            }
            for (p, acc) in acc.iter().enumerate() {
                for (i, acc) in acc.iter().enumerate() {
                    _mm512_storeu_ps(s[p].add(i * NR), *acc);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(x: &[f32], w: &[f32], b: &[f32], rows: usize, n: usize, k: usize) -> Vec<f32> {
        let mut out = vec![0f32; rows * n];
        for r in 0..rows {
            for o in 0..n {
                let dot: f64 = (0..k).map(|i| f64::from(x[r * k + i]) * f64::from(w[o * k + i])).sum();
                out[r * n + o] = (dot + f64::from(b[o])) as f32;
            }
        }
        out
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) % 2001) as f32 / 1000.0 - 1.0)
            .collect()
    }

    #[test]
    fn matches_a_plain_product_at_every_edge() {
        // Rows and columns that fill no tile, one tile, and leave remainders of each size.
        for (rows, n, k) in [(1, 1, 1), (5, 17, 3), (6, 16, 8), (13, 33, 384), (700, 40, 64), (3, 1536, 384)] {
            let (x, w, b) = (values(rows * k, 1), values(n * k, 2), values(n, 3));
            let want = reference(&x, &w, &b, rows, n, k);
            let layer = PackedLinear::new(&w, Some(&b), n, k);
            for kernel in Kernel::available() {
                let mut got = vec![f32::NAN; rows * n];
                // The kernel alone, over the whole depth, with the bias as the start: two
                // micro-panels at a time, then one.
                let mut packed = Vec::new();
                pack_rows(&x, rows, k, &mut packed);
                let micro_panels = rows.div_ceil(MR);
                for p in 0..n.div_ceil(NR) {
                    let panel = &layer.panels[p * k * NR..(p + 1) * k * NR];
                    let mut sums = vec![[0f32; MR * NR]; micro_panels];
                    for row in sums.as_flattened_mut().chunks_exact_mut(NR) {
                        row.copy_from_slice(&layer.bias[p * NR..(p + 1) * NR]);
                    }
                    let rows_of = |q: usize| &packed[q * MR * k..(q + 1) * MR * k];
                    for q in (0..micro_panels).step_by(2) {
                        if q + 1 < micro_panels {
                            let [a, b] = sums.get_disjoint_mut([q, q + 1]).expect("two micro-panels");
                            kernel.accumulate_pair([rows_of(q), rows_of(q + 1)], k, panel, [a, b]);
                        } else {
                            kernel.accumulate(rows_of(q), k, panel, &mut sums[q]);
                        }
                    }
                    for (q, sums) in sums.iter().enumerate() {
                        for i in 0..MR.min(rows - q * MR) {
                            for j in 0..NR.min(n - p * NR) {
                                got[(q * MR + i) * n + p * NR + j] = sums[i * NR + j];
                            }
                        }
                    }
                }
                for (g, w) in got.iter().zip(&want) {
                    assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "{kernel:?} {rows}×{n}×{k}: {g} vs {w}");
                }
            }
            let mut out = vec![f32::NAN; rows * n];
            layer.forward(&x, rows, Activation::None, &mut out);
            for (g, w) in out.iter().zip(&want) {
                assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "forward {rows}×{n}×{k}: {g} vs {w}");
            }
        }
    }

    #[test]
    fn applies_gelu_after_the_bias() {
        let (rows, n, k) = (7, 20, 12);
        let (x, w, b) = (values(rows * k, 4), values(n * k, 5), values(n, 6));
        let layer = PackedLinear::new(&w, Some(&b), n, k);
        let mut out = vec![0f32; rows * n];
        layer.forward(&x, rows, Activation::Gelu, &mut out);
        for (g, v) in out.iter().zip(reference(&x, &w, &b, rows, n, k)) {
            let want = vector_math::gelu(v);
            assert!((g - want).abs() < 1e-4 * (1.0 + want.abs()), "{g} vs {want}");
        }
    }
}
