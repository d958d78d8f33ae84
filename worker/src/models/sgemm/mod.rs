//! f32 matrix multiplication for the CPU: linear layers (`y = x · Wᵀ + b`) with the
//! weight packed once at load time ([`PackedLinear`]), and products of any two matrices
//! read in place, transposed or not ([`multiply`], [`multiply_here`]), for training's
//! forward and backward passes.
//!
//! candle multiplies f32 matrices with the `gemm` crate, which packs both operands on
//! every call, splits small products among threads at a cost that BERT's matrices (a few
//! hundred tokens × 384 × 384 to 1,536) do not repay, runs them on a second thread pool
//! (rayon) beside candle's own, and has no AVX-512 kernels in its stable build: profiled,
//! packing and thread hand-offs took as long as the arithmetic, and in training the two
//! pools' spinning threads took turns on two cores. Here the right-hand matrix is packed
//! in panels of `NR` columns laid out k-major (a linear layer's weight once, when the
//! model loads), so the kernel streams one panel with one or two vector loads per step,
//! and the left-hand rows in micro-panels of `MR` rows, depth-major. The AVX2 kernel
//! computes `MR` rows × `NR` columns with twelve accumulators (six rows × two 8-lane
//! vectors), broadcasting one input value per row per step: twelve fused multiply-adds
//! per eight loads, so it is bound by the multiply-add units, not memory. With AVX-512 a
//! row's `NR` columns are one vector, and the kernel takes two micro-panels at once
//! (twelve rows, twelve accumulators, each input value broadcast inside its
//! multiply-add): half the instructions for the same products. A bias (per column or
//! per row) or the output's own values start the accumulators, and an optional GELU or
//! ReLU is applied to each tile while it is still in cache.
//!
//! [`PackedLinear::forward`] and [`multiply`] split the work among candle's CPU thread
//! pool (`--threads`) by tiles of a block of rows × one panel; consecutive tiles share
//! their rows, which stay in the L2 cache while the panels stream past. A row's result
//! does not depend on the other rows. [`multiply_here`] runs on the calling thread, for
//! callers that split their work themselves (a convolution, image by image).
//!
//! A linear layer can instead round its weight and inputs to bfloat16 ([`Precision::Bf16`])
//! and run on Intel AMX's tiles (three to four times the f32 kernels' speed on the BERT
//! encoder's products, measured on two cores) or with AVX-512 BF16's dot products (AMD
//! Zen 4), where the CPU has either.
//!
//! - `packing`: the two operands laid out as the kernels read them;
//! - `kernels`: the micro-kernels (AVX-512, AVX2 with FMA, portable), chosen at run time;
//! - `bf16`: bfloat16 linear layers, on AMX tiles or AVX-512 BF16 dot products.

mod bf16;
mod kernels;
mod packing;

use std::ops::Range;

use self::{bf16::Engine, kernels::Kernel};
use crate::models::{disjoint::DisjointSlice, vector_math};

/// Output columns per packed panel: one AVX-512 vector, two AVX vectors.
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

/// What is applied to each output after the start and the product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    None,
    /// GELU with the error function, as BERT's `hidden_act: gelu`.
    Gelu,
    Relu,
}

/// What a product is added to.
#[derive(Clone, Copy, Debug)]
pub enum Start<'a> {
    Zero,
    /// One value per output column (a linear layer's bias).
    ColumnBias(&'a [f32]),
    /// One value per output row (a convolution's bias, channels being rows).
    RowBias(&'a [f32]),
    /// What the output holds already: the product is accumulated into it.
    Output,
}

/// A matrix read where it lies: element `(r, c)` is `data[r * row_stride + c *
/// col_stride]`, so a row-major matrix and its transpose are the same data.
#[derive(Clone, Copy, Debug)]
pub struct Matrix<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> Matrix<'a> {
    /// `data` as `rows × cols`, row-major. Panics if it is not that long.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        assert_eq!(data.len(), rows * cols, "not a {rows} × {cols} matrix");
        Matrix { data, rows, cols, row_stride: cols, col_stride: 1 }
    }

    /// The transpose, reading the same data.
    pub fn t(self) -> Self {
        Matrix { rows: self.cols, cols: self.rows, row_stride: self.col_stride, col_stride: self.row_stride, ..self }
    }

    fn at(&self, r: usize, c: usize) -> f32 {
        self.data[r * self.row_stride + c * self.col_stride]
    }
}

/// How a linear layer's products are computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    F32,
    /// The weight and each input rounded to bfloat16 (8 bits of mantissa), the sums f32,
    /// on Intel AMX where the CPU has it (and Linux grants it), else with AVX-512 BF16
    /// where the CPU has that; f32 elsewhere (see `bf16`).
    Bf16,
}

impl Precision {
    /// `Bf16` where this CPU and process can run it, else `F32`.
    pub fn fastest() -> Self {
        if Engine::detect().is_some() { Precision::Bf16 } else { Precision::F32 }
    }
}

/// A linear layer's weight (`outputs × inputs`) and bias, packed for the kernels.
pub struct PackedLinear {
    inputs: usize,
    outputs: usize,
    weight: Weight,
    /// `outputs` values, zeros without a bias.
    bias: Vec<f32>,
}

/// A weight packed as the right-hand side of `x · Wᵀ` (see `packing`).
enum Weight {
    F32(Vec<f32>),
    /// Rounded and packed for the bfloat16 engines (see `bf16`).
    Bf16(Engine, Vec<u32>),
}

impl PackedLinear {
    /// Packs `weight` (row-major `outputs × inputs`, as PyTorch and safetensors store a
    /// linear layer's) and `bias` (`outputs`, or none), for f32 products.
    pub fn new(weight: &[f32], bias: Option<&[f32]>, outputs: usize, inputs: usize) -> Self {
        Self::with_precision(weight, bias, outputs, inputs, Precision::F32)
    }

    /// [`PackedLinear::new`] for products in `precision` (`Bf16` only where the CPU has
    /// the kernel: f32 elsewhere).
    pub fn with_precision(
        weight: &[f32],
        bias: Option<&[f32]>,
        outputs: usize,
        inputs: usize,
        precision: Precision,
    ) -> Self {
        Self::with_engine(weight, bias, outputs, inputs, (precision == Precision::Bf16).then(Engine::detect).flatten())
    }

    /// A layer whose products run on `engine`, or in f32 without one.
    fn with_engine(
        weight: &[f32],
        bias: Option<&[f32]>,
        outputs: usize,
        inputs: usize,
        engine: Option<Engine>,
    ) -> Self {
        let weight = match engine {
            Some(engine) => Weight::Bf16(engine, bf16::pack_weight(weight, outputs, inputs)),
            None => {
                let mut panels = Vec::new();
                // As the right-hand side of `x · Wᵀ`.
                packing::panels(Matrix::row_major(weight, outputs, inputs).t(), &mut panels, Parallel::No);
                Weight::F32(panels)
            }
        };
        let bias = match bias {
            Some(bias) => {
                assert_eq!(bias.len(), outputs, "bias is not {outputs} long");
                bias.to_vec()
            }
            None => vec![0.0; outputs],
        };
        PackedLinear { inputs, outputs, weight, bias }
    }

    pub fn inputs(&self) -> usize {
        self.inputs
    }

    pub fn outputs(&self) -> usize {
        self.outputs
    }

    pub fn precision(&self) -> Precision {
        match self.weight {
            Weight::F32(_) => Precision::F32,
            Weight::Bf16(..) => Precision::Bf16,
        }
    }

    /// `out = activation(x · Wᵀ + b)` for `rows` rows: `x` is `rows × inputs` and `out`
    /// `rows × outputs`, both row-major.
    pub fn forward(&self, x: &[f32], rows: usize, activation: Activation, out: &mut [f32]) {
        let (inputs, outputs, bias) = (self.inputs, self.outputs, &self.bias);
        match &self.weight {
            Weight::F32(panels) => PACKED.with_borrow_mut(|packed| {
                packing::rows(Matrix::row_major(x, rows, inputs), &mut packed.rows, Parallel::Yes);
                let operands = Packed::whole(&packed.rows, rows, panels, outputs, inputs);
                operands.multiply(Start::ColumnBias(bias), activation, out, Parallel::Yes);
            }),
            Weight::Bf16(engine, weight) => engine.forward(x, rows, inputs, weight, outputs, bias, activation, out),
        }
    }
}

/// `out = activation(start + a · b)`, `out` row-major `a.rows × b.cols`; the packing and
/// the tiles spread over candle's thread pool.
pub fn multiply(a: Matrix, b: Matrix, start: Start, activation: Activation, out: &mut [f32]) {
    PACKED.with_borrow_mut(|packed| {
        let Packing { rows, panels } = packed;
        product(a, b, start, activation, out, rows, panels, Parallel::Yes);
    });
}

/// [`multiply`] on the calling thread alone, its operands packed in `scratch` (kept by
/// the caller between products, so that each does not allocate).
pub fn multiply_here(
    a: Matrix,
    b: Matrix,
    start: Start,
    activation: Activation,
    out: &mut [f32],
    scratch: &mut Packing,
) {
    let Packing { rows, panels } = scratch;
    product(a, b, start, activation, out, rows, panels, Parallel::No);
}

/// Buffers for the packed operands of a product.
#[derive(Default)]
pub struct Packing {
    rows: Vec<f32>,
    panels: Vec<f32>,
}

thread_local! {
    /// The operands as the kernels read them, kept between calls so that each product
    /// does not allocate (and fault in) fresh buffers.
    static PACKED: std::cell::RefCell<Packing> = std::cell::RefCell::default();
}

/// Whether work is spread over candle's thread pool or done on the calling thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Parallel {
    Yes,
    No,
}

impl Parallel {
    /// Runs `f` over `0..items`, in chunks spread over the pool or all here.
    fn run(self, items: usize, f: impl Fn(Range<usize>) + Sync) {
        match self {
            Parallel::Yes => candle_core::utils::barrier_pool().execute_chunked(items, f),
            Parallel::No => f(0..items),
        }
    }
}

#[allow(clippy::too_many_arguments)] // the two operands, the two buffers and the options
fn product(
    a: Matrix,
    b: Matrix,
    start: Start,
    activation: Activation,
    out: &mut [f32],
    rows: &mut Vec<f32>,
    panels: &mut Vec<f32>,
    parallel: Parallel,
) {
    assert_eq!(a.cols, b.rows, "{} × {} times {} × {}", a.rows, a.cols, b.rows, b.cols);
    packing::rows(a, rows, parallel);
    packing::panels(b, panels, parallel);
    let operands = Packed::whole(rows, a.rows, panels, b.cols, a.cols);
    operands.multiply(start, activation, out, parallel);
}

/// A left-hand matrix packed as the kernels read it: its rows in micro-panels over its
/// whole depth, for products over windows of that depth ([`multiply_windows_here`]).
#[derive(Default)]
pub struct PackedRows {
    data: Vec<f32>,
    rows: usize,
    depth: usize,
}

impl PackedRows {
    /// Packs `a`, on this thread, reusing the buffer.
    pub fn pack(&mut self, a: Matrix) {
        packing::rows(a, &mut self.data, Parallel::No);
        (self.rows, self.depth) = (a.rows, a.cols);
    }

    /// Packs `rows` rows of `depth`, row `r` being `row(r)[..depth]`: a matrix whose rows
    /// lie anywhere, such as shifted windows of one image.
    pub fn pack_slices<'a>(&mut self, rows: usize, depth: usize, row: impl Fn(usize) -> &'a [f32]) {
        packing::rows_of_slices(rows, depth, row, &mut self.data);
        (self.rows, self.depth) = (rows, depth);
    }
}

/// A right-hand matrix packed as the kernels read it: its columns in panels over its
/// whole depth, for products over windows of that depth ([`multiply_windows_here`]).
#[derive(Default)]
pub struct PackedColumns {
    data: Vec<f32>,
    cols: usize,
    depth: usize,
}

impl PackedColumns {
    /// Packs `b`, on this thread, reusing the buffer.
    pub fn pack(&mut self, b: Matrix) {
        packing::panels(b, &mut self.data, Parallel::No);
        (self.cols, self.depth) = (b.cols, b.rows);
    }

    /// Packs a `depth × cols` matrix whose row `d` is `row(d)[..cols]`: rows that lie
    /// anywhere, such as shifted windows of one image.
    pub fn pack_slices<'a>(&mut self, depth: usize, cols: usize, row: impl Fn(usize) -> &'a [f32]) {
        packing::panels_of_slices(depth, cols, row, &mut self.data);
        (self.cols, self.depth) = (cols, depth);
    }
}

/// `out = activation(start + a[.., a_from .. a_from + k] · b[b_from .. b_from + k, ..])`
/// on the calling thread: the product of a window of `k` along the depth of each packed
/// operand. Products of shifted windows of the same packed data make a convolution's
/// weight gradient without its patches: one per tap, each operand packed once.
#[allow(clippy::too_many_arguments)] // the two operands with their windows and the options
pub fn multiply_windows_here(
    a: &PackedRows,
    a_from: usize,
    b: &PackedColumns,
    b_from: usize,
    k: usize,
    start: Start,
    activation: Activation,
    out: &mut [f32],
) {
    assert!(a_from + k <= a.depth && b_from + k <= b.depth, "windows past the operands' depths");
    let operands = Packed {
        rows: &a.data,
        panels: &b.data,
        rows_depth: a.depth,
        rows_from: a_from,
        m: a.rows,
        panels_depth: b.depth,
        panels_from: b_from,
        n: b.cols,
        k,
    };
    operands.multiply(start, activation, out, Parallel::No);
}

/// Both operands of a product, packed: rows in micro-panels of depth `rows_depth`,
/// columns in panels of depth `panels_depth`, multiplied over `k` of each from
/// `rows_from` and `panels_from`.
struct Packed<'a> {
    rows: &'a [f32],
    panels: &'a [f32],
    rows_depth: usize,
    rows_from: usize,
    m: usize,
    panels_depth: usize,
    panels_from: usize,
    n: usize,
    k: usize,
}

impl<'a> Packed<'a> {
    /// `m × k` rows times `k × n` columns, f32, each packed over exactly that depth.
    fn whole(rows: &'a [f32], m: usize, panels: &'a [f32], n: usize, k: usize) -> Self {
        Packed { rows, panels, rows_depth: k, rows_from: 0, m, panels_depth: k, panels_from: 0, n, k }
    }
}

impl Packed<'_> {
    /// `out = activation(start + rows · panels)`, tile by tile.
    fn multiply(&self, start: Start, activation: Activation, out: &mut [f32], parallel: Parallel) {
        let (m, n, k) = (self.m, self.n, self.k);
        assert_eq!(out.len(), m * n, "output is not {m} × {n}");
        match start {
            Start::ColumnBias(bias) => assert_eq!(bias.len(), n, "a bias for {n} columns"),
            Start::RowBias(bias) => assert_eq!(bias.len(), m, "a bias for {m} rows"),
            Start::Zero | Start::Output => {}
        }
        let kernel = Kernel::select();
        let panels = n.div_ceil(NR);
        let block_rows = (ROW_BLOCK_BYTES / (4 * DEPTH_BLOCK.min(k).max(1))).clamp(MR, MAX_BLOCK_ROWS) / MR * MR;
        let tiles = m.div_ceil(block_rows) * panels;
        let out = DisjointSlice::new(out);
        parallel.run(tiles, |range| {
            let mut sums = [0f32; MAX_BLOCK_ROWS * NR];
            for t in range {
                let (block, p) = (t / panels, t % panels);
                let rows = block * block_rows..m.min((block + 1) * block_rows);
                // SAFETY: tile `t` (its rows' columns of panel `p`) is handed to exactly
                // one task, and no two tiles share an output element.
                unsafe { self.tile(kernel, rows, p, start, activation, &out, &mut sums) };
            }
        });
    }

    /// One tile: rows `rows` × the columns of panel `p`.
    ///
    /// # Safety
    ///
    /// No other task may read or write this tile's elements of `out` meanwhile.
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile(
        &self,
        kernel: Kernel,
        rows: Range<usize>,
        p: usize,
        start: Start,
        activation: Activation,
        out: &DisjointSlice<f32>,
        sums: &mut [f32; MAX_BLOCK_ROWS * NR],
    ) {
        let (n, k) = (self.n, self.k);
        let (c0, cols) = (p * NR, NR.min(n - p * NR));
        // Whole micro-panels: the rows past `m` in the last one are zeros.
        let sums = &mut sums[..rows.len().next_multiple_of(MR) * NR];
        let (row_sums, _) = sums.as_chunks_mut::<NR>();
        // SAFETY: the rows of this tile's columns, which the caller promises no other task
        // touches meanwhile.
        let out_row = |r: usize| unsafe { out.slice_mut(r * n + c0..r * n + c0 + cols) };
        match start {
            Start::Zero => sums.fill(0.0),
            Start::ColumnBias(bias) => {
                let mut first = [0f32; NR];
                first[..cols].copy_from_slice(&bias[c0..c0 + cols]);
                // Whole-array copies: a slice copy of 16 floats is a `memcpy` call.
                row_sums.iter_mut().for_each(|row| *row = first);
            }
            Start::RowBias(bias) => {
                for (i, row) in row_sums.iter_mut().enumerate() {
                    *row = [bias.get(rows.start + i).copied().unwrap_or(0.0); NR];
                }
            }
            Start::Output => {
                for (i, row) in row_sums.iter_mut().enumerate() {
                    *row = [0.0; NR];
                    if i < rows.len() && cols == NR {
                        *row = *<&[f32; NR]>::try_from(&*out_row(rows.start + i)).expect("NR wide");
                    } else if i < rows.len() {
                        row[..cols].copy_from_slice(out_row(rows.start + i));
                    }
                }
            }
        }
        // Depth by depth, so that the panel's slice stays in L1 while every row of the
        // block passes over it; two micro-panels at a time (the AVX-512 kernel's tile),
        // then the odd one.
        let panel_start = (p * self.panels_depth + self.panels_from) * NR;
        let micro_panel_start = |i: usize| ((rows.start / MR + i) * self.rows_depth + self.rows_from) * MR;
        let panel = &self.panels[panel_start..][..k * NR];
        for depth in (0..k).step_by(DEPTH_BLOCK) {
            let kc = DEPTH_BLOCK.min(k - depth);
            let slice = &panel[depth * NR..(depth + kc) * NR];
            let rows_at = |i: usize| &self.rows[micro_panel_start(i) + depth * MR..][..kc * MR];
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
        let sums = &mut sums[..rows.len() * NR];
        match activation {
            Activation::None => {}
            Activation::Gelu => vector_math::gelu_in_place(sums),
            Activation::Relu => sums.iter_mut().for_each(|v| *v = v.max(0.0)),
        }
        for (i, values) in sums.as_chunks::<NR>().0.iter().enumerate() {
            let row = out_row(rows.start + i);
            if cols == NR {
                *<&mut [f32; NR]>::try_from(row).expect("NR wide") = *values;
            } else {
                row.copy_from_slice(&values[..cols]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `a · b` in f64, `a` `m × k` and `b` `k × n` row-major.
    fn reference(a: &[f32], b: &[f32], m: usize, n: usize, k: usize) -> Vec<f64> {
        let mut out = vec![0f64; m * n];
        for r in 0..m {
            for c in 0..n {
                out[r * n + c] = (0..k).map(|i| f64::from(a[r * k + i]) * f64::from(b[i * n + c])).sum();
            }
        }
        out
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) % 2001) as f32 / 1000.0 - 1.0)
            .collect()
    }

    /// A row-major `rows × cols` matrix's transpose, row-major.
    fn transposed(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
        (0..cols * rows).map(|i| x[(i % rows) * cols + i / rows]).collect()
    }

    fn assert_close(got: &[f32], want: impl IntoIterator<Item = f64>, what: &str) {
        for (g, w) in got.iter().zip(want) {
            assert!((f64::from(*g) - w).abs() <= 1e-4 * (1.0 + w.abs()), "{what}: {g} vs {w}");
        }
    }

    /// Rows and columns that fill no tile, one tile, and leave remainders of each size;
    /// depths past one depth block.
    const SHAPES: [(usize, usize, usize); 7] =
        [(1, 1, 1), (5, 17, 3), (6, 16, 8), (13, 33, 384), (700, 40, 64), (3, 1536, 384), (97, 18, 600)];

    #[test]
    fn every_kernel_matches_a_plain_product_at_every_edge() {
        for (m, n, k) in SHAPES {
            let (a, b) = (values(m * k, 1), values(k * n, 2));
            let want = reference(&a, &b, m, n, k);
            let (mut rows, mut panels) = (Vec::new(), Vec::new());
            packing::rows(Matrix::row_major(&a, m, k), &mut rows, Parallel::No);
            packing::panels(Matrix::row_major(&b, k, n), &mut panels, Parallel::No);
            for kernel in Kernel::available() {
                let mut got = vec![f32::NAN; m * n];
                // The kernel alone, over the whole depth: two micro-panels at a time, then
                // one.
                let micro_panels = m.div_ceil(MR);
                for p in 0..n.div_ceil(NR) {
                    let panel = &panels[p * k * NR..(p + 1) * k * NR];
                    let mut sums = vec![[0f32; MR * NR]; micro_panels];
                    let rows_of = |q: usize| &rows[q * MR * k..(q + 1) * MR * k];
                    for q in (0..micro_panels).step_by(2) {
                        if q + 1 < micro_panels {
                            let [x, y] = sums.get_disjoint_mut([q, q + 1]).expect("two micro-panels");
                            kernel.accumulate_pair([rows_of(q), rows_of(q + 1)], k, panel, [x, y]);
                        } else {
                            kernel.accumulate(rows_of(q), k, panel, &mut sums[q]);
                        }
                    }
                    for (q, sums) in sums.iter().enumerate() {
                        for i in 0..MR.min(m - q * MR) {
                            for j in 0..NR.min(n - p * NR) {
                                got[(q * MR + i) * n + p * NR + j] = sums[i * NR + j];
                            }
                        }
                    }
                }
                assert_close(&got, want.iter().copied(), &format!("{kernel:?} {m}×{n}×{k}"));
            }
        }
    }

    #[test]
    fn products_of_transposed_operands_match_and_start_where_they_are_told() {
        for (m, n, k) in SHAPES {
            let (a, b) = (values(m * k, 3), values(k * n, 4));
            let (at, bt) = (transposed(&a, m, k), transposed(&b, k, n));
            let want = reference(&a, &b, m, n, k);
            let operands = [
                (Matrix::row_major(&a, m, k), Matrix::row_major(&b, k, n)),
                (Matrix::row_major(&at, k, m).t(), Matrix::row_major(&b, k, n)),
                (Matrix::row_major(&a, m, k), Matrix::row_major(&bt, n, k).t()),
                (Matrix::row_major(&at, k, m).t(), Matrix::row_major(&bt, n, k).t()),
            ];
            for (i, (x, y)) in operands.into_iter().enumerate() {
                let what = format!("{m}×{n}×{k}, operands {i}");
                let mut out = vec![f32::NAN; m * n];
                multiply(x, y, Start::Zero, Activation::None, &mut out);
                assert_close(&out, want.iter().copied(), &what);
                // Accumulated into what is there, on this thread alone.
                let mut scratch = Packing::default();
                multiply_here(x, y, Start::Output, Activation::None, &mut out, &mut scratch);
                assert_close(&out, want.iter().map(|w| 2.0 * w), &format!("{what}, accumulated"));
            }
            let (row_bias, column_bias) = (values(m, 5), values(n, 6));
            let mut out = vec![f32::NAN; m * n];
            let (x, y) = (Matrix::row_major(&a, m, k), Matrix::row_major(&b, k, n));
            multiply(x, y, Start::RowBias(&row_bias), Activation::Relu, &mut out);
            let biased = want.iter().enumerate().map(|(i, w)| (w + f64::from(row_bias[i / n])).max(0.0));
            assert_close(&out, biased, &format!("{m}×{n}×{k}, row bias and ReLU"));
            multiply(x, y, Start::ColumnBias(&column_bias), Activation::None, &mut out);
            let biased = want.iter().enumerate().map(|(i, w)| w + f64::from(column_bias[i % n]));
            assert_close(&out, biased, &format!("{m}×{n}×{k}, column bias"));
        }
    }

    #[test]
    fn products_of_windows_match_the_products_of_the_windows() {
        // Windows that start anywhere, end before the operands do, and span depth blocks.
        for (m, n, depth, k, a_from, b_from) in
            [(13, 33, 700, 600, 7, 91), (6, 16, 10, 3, 0, 7), (5, 40, 300, 1, 299, 0)]
        {
            let (a, b) = (values(m * depth, 7), values(depth * n, 8));
            let window_a: Vec<f32> = a.chunks_exact(depth).flat_map(|row| row[a_from..a_from + k].to_vec()).collect();
            let window_b = &b[b_from * n..(b_from + k) * n];
            let want = reference(&window_a, window_b, m, n, k);
            let (mut rows, mut columns) = (PackedRows::default(), PackedColumns::default());
            rows.pack(Matrix::row_major(&a, m, depth));
            columns.pack(Matrix::row_major(&b, depth, n));
            let mut out = vec![1.0; m * n];
            multiply_windows_here(&rows, a_from, &columns, b_from, k, Start::Output, Activation::None, &mut out);
            assert_close(&out, want.iter().map(|w| w + 1.0), &format!("{m}×{n}×{k} from {a_from} and {b_from}"));
            // The same operands packed from their rows' slices.
            rows.pack_slices(m, depth, |r| &a[r * depth..(r + 1) * depth]);
            columns.pack_slices(depth, n, |d| &b[d * n..(d + 1) * n]);
            multiply_windows_here(&rows, a_from, &columns, b_from, k, Start::Zero, Activation::None, &mut out);
            assert_close(&out, want.iter().copied(), &format!("{m}×{n}×{k}, packed from slices"));
        }
    }

    #[test]
    fn bfloat16_layers_compute_the_product_of_their_rounded_operands() {
        let round = |v: f32| f32::from_bits(u32::from(bf16::bf16_bits(v)) << 16);
        // Rows, inputs and outputs that fill no block, one block, and leave remainders
        // (an odd depth included).
        for (rows, n, k) in [(1, 1, 1), (5, 17, 3), (32, 32, 32), (33, 70, 385), (100, 1536, 384)] {
            let (x, w, b) = (values(rows * k, 9), values(n * k, 10), values(n, 11));
            let layer = PackedLinear::with_precision(&w, Some(&b), n, k, Precision::Bf16);
            let engines = Engine::available();
            if engines.is_empty() {
                assert_eq!(layer.precision(), Precision::F32, "f32 where the CPU has no bfloat16 engine");
                return;
            }
            assert_eq!(layer.precision(), Precision::Bf16);
            let rounded = |v: &[f32]| v.iter().map(|&v| round(v)).collect::<Vec<_>>();
            let want = reference(&rounded(&x), &transposed(&rounded(&w), n, k), rows, n, k);
            for engine in engines {
                let layer = PackedLinear::with_engine(&w, Some(&b), n, k, Some(engine));
                for activation in [Activation::None, Activation::Gelu] {
                    let mut out = vec![f32::NAN; rows * n];
                    layer.forward(&x, rows, activation, &mut out);
                    let want = want.iter().enumerate().map(|(i, v)| {
                        let v = (*v + f64::from(b[i % n])) as f32;
                        f64::from(if activation == Activation::Gelu { vector_math::gelu(v) } else { v })
                    });
                    assert_close(&out, want, &format!("bf16 {engine:?} {rows}×{n}×{k} {activation:?}"));
                }
            }
        }
    }

    #[test]
    fn a_linear_layer_adds_its_bias_and_applies_gelu() {
        let (rows, n, k) = (7, 20, 12);
        let (x, w, b) = (values(rows * k, 4), values(n * k, 5), values(n, 6));
        let layer = PackedLinear::new(&w, Some(&b), n, k);
        let want = reference(&x, &transposed(&w, n, k), rows, n, k);
        for activation in [Activation::None, Activation::Gelu] {
            let mut out = vec![0f32; rows * n];
            layer.forward(&x, rows, activation, &mut out);
            let want = want.iter().enumerate().map(|(i, v)| {
                let v = (*v + f64::from(b[i % n])) as f32;
                f64::from(if activation == Activation::Gelu { vector_math::gelu(v) } else { v })
            });
            assert_close(&out, want, &format!("{activation:?}"));
        }
    }
}
