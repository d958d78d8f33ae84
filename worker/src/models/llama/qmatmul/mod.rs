//! Quantized matrix multiplication for the CPU (Q4_1 and Q8_0 weights), with an AVX2
//! kernel, the same kernel with AVX-VNNI's `vpdpbusd` where the CPU has it, an AVX-512
//! VNNI one that takes two groups at once on 512-bit vectors (`avx512`), Intel AMX tiles
//! for twelve activation rows or more (`amx`, bit for bit the AVX-512 kernel's results),
//! and a scalar one.
//!
//! candle 0.11 multiplies Q4_1 weights (what SmolLM2's GGUF uses for every layer) with a
//! scalar loop, about six times slower than llama.cpp, and its Q8_0 kernel (the output
//! layer) works one row pair at a time, converting f16 scales in the inner loop. This
//! module multiplies both against activations quantized to Q8_1 with the same integer
//! arithmetic as llama.cpp's `ggml_vec_dot_q4_1_q8_1` and `ggml_vec_dot_q8_0_q8_0`, so
//! results stay within float rounding of llama.cpp's.
//!
//! At load time the GGUF's blocks are repacked into groups of eight weight rows,
//! interleaved four elements at a time: one 32-byte vector holds four consecutive
//! elements of each of the eight rows. Multiplied with those four activation bytes
//! broadcast to every lane (`vpmaddubsw`, then `vpmaddwd`; or one `vpdpbusd`), it leaves lane `j` holding row
//! `j`'s partial sum, so a block's eight sums come out in one register with no horizontal
//! reduction, and the rows' scales (stored beside the quants as f16, exactly as the GGUF
//! has them) multiply them lane by lane. A group's blocks lie back to back, so a thread
//! reads one sequential stream of 20 bytes per Q4_1 block (34 per Q8_0 block), the GGUF's
//! own size. (The layout the kernels had before, one row at a time with separate f32
//! scale arrays, read 20% more and spent its time on per-row broadcasts and reductions:
//! about 0.65× llama.cpp's single-stream speed on an AVX2 machine.)
//!
//! The work is spread over candle's own CPU thread pool, so `--threads` governs it like
//! every other candle op, and it is wrapped as a candle [`CustomOp1`] so the model code
//! stays plain tensor code. Up to four activation rows (sequences decoded together) are
//! multiplied while a group is in cache: that is what makes batched decoding cheaper per
//! token than one sequence at a time. Each activation row has its own accumulators, so a
//! row's result is bit for bit the same whatever it is batched with.

#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;

use candle_core::{
    CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, bail,
    quantized::{GgmlDType, QTensor},
};
use std::ops::Range;

use half::f16;

use crate::models::disjoint::DisjointSlice;

/// Elements per block, in Q4_1, Q8_0 and Q8_1 alike.
const BLOCK: usize = 32;

/// Weight rows per interleaved group: one f32 lane each in a 256-bit register.
const GROUP_ROWS: usize = 8;

/// Elements of a row that sit together in a group's vector: one i32 lane's worth of bytes.
const RUN: usize = 4;

/// Activation rows multiplied at once against a group while it is in cache.
const MAX_TILE_ACTIVATIONS: usize = 4;

/// Groups a kernel call multiplies, one after another: enough that the call's checks and
/// dispatch are small beside the work (one group of a 576-column matrix is a few hundred
/// nanoseconds), few enough that they stay in cache for the next activation tile.
const GROUPS_PER_CALL: usize = 4;

/// The weight formats the kernels take, and how a group stores one block of its rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    /// `d * q + m`, `q` in 0..16. Per block of a group: 128 bytes of quants (four vectors;
    /// byte `4j + e` of vector `p` holds element `8p + e` of row `j` in its low nibble and
    /// element `8p + 4 + e` in its high one), then eight f16 `d`, then eight f16 `m`.
    Q4_1,
    /// `d * q`, `q` in -128..128. Per block of a group: 256 bytes of quants (eight vectors;
    /// byte `4j + e` of vector `g` holds element `4g + e` of row `j`), then eight f16 `d`.
    Q8_0,
}

impl Format {
    const fn quant_bytes(self) -> usize {
        match self {
            Format::Q4_1 => GROUP_ROWS * BLOCK / 2,
            Format::Q8_0 => GROUP_ROWS * BLOCK,
        }
    }

    /// Bytes of one block of a group: quants, scales and (Q4_1) offsets.
    const fn group_block_bytes(self) -> usize {
        match self {
            Format::Q4_1 => self.quant_bytes() + 2 * GROUP_ROWS * 2,
            Format::Q8_0 => self.quant_bytes() + GROUP_ROWS * 2,
        }
    }
}

/// A quantized weight matrix of `rows × cols`, multiplied as `x · Wᵀ`.
pub struct QMatrix {
    rows: usize,
    cols: usize,
    format: Format,
    /// `ceil(rows / 8)` groups × `cols / 32` blocks × `format.group_block_bytes()`; a last
    /// group short of eight rows is padded with zero rows, whose results are dropped.
    groups: Vec<u8>,
}

/// Activation rows quantized to Q8_1: per block, `x ≈ d * q` with `q` in -127..=127.
struct Q8_1Rows {
    /// `rows × blocks × 32` quants.
    qs: Vec<i8>,
    d: Vec<f32>,
    /// `d * Σq` rounded through f16, as llama.cpp's Q8_1 stores it (Q4_1's offset term).
    s: Vec<f32>,
    /// `Σq` itself (what the AVX-512 Q8_0 kernel takes back off its offset products).
    sums: Vec<i32>,
}

/// One activation row, as the kernels see it.
#[derive(Clone, Copy)]
struct ActivationRow<'a> {
    qs: &'a [i8],
    d: &'a [f32],
    s: &'a [f32],
    sums: &'a [i32],
}

/// One block of one weight row, unpacked: element = `d * q + m`.
struct RowBlock {
    q: [i32; BLOCK],
    d: f32,
    m: f32,
}

impl QMatrix {
    /// Whether [`QMatrix::from_qtensor`] takes tensors of this type.
    pub fn supports(dtype: GgmlDType) -> bool {
        matches!(dtype, GgmlDType::Q4_1 | GgmlDType::Q8_0)
    }

    /// Repacks a Q4_1 or Q8_0 tensor of shape `(rows, cols)`.
    pub fn from_qtensor(tensor: &QTensor) -> Result<Self> {
        let (rows, cols) = tensor.shape().dims2()?;
        if cols % BLOCK != 0 {
            bail!("quantized row length {cols} is not a multiple of {BLOCK}");
        }
        let (format, gguf_block) = match tensor.dtype() {
            GgmlDType::Q4_1 => (Format::Q4_1, 20), // f16 d, f16 m, 16 bytes of nibbles
            GgmlDType::Q8_0 => (Format::Q8_0, 34), // f16 d, 32 signed bytes
            other => bail!("no kernel for {other:?} weights"),
        };
        let bytes = tensor.data()?;
        let blocks = cols / BLOCK;
        if bytes.len() != rows * blocks * gguf_block {
            bail!("{:?} tensor holds {} bytes, expected {}", tensor.dtype(), bytes.len(), rows * blocks * gguf_block);
        }
        let group_count = rows.div_ceil(GROUP_ROWS);
        let mut groups = vec![0u8; group_count * blocks * format.group_block_bytes()];
        for (g, group) in groups.chunks_exact_mut(blocks * format.group_block_bytes()).enumerate() {
            for (b, out) in group.chunks_exact_mut(format.group_block_bytes()).enumerate() {
                let (quants, scales) = out.split_at_mut(format.quant_bytes());
                for j in 0..GROUP_ROWS.min(rows - g * GROUP_ROWS) {
                    let row = g * GROUP_ROWS + j;
                    let gguf = &bytes[(row * blocks + b) * gguf_block..][..gguf_block];
                    // d, then (Q4_1) m: f16 as the GGUF stores them, copied unchanged.
                    scales[2 * j..2 * j + 2].copy_from_slice(&gguf[..2]);
                    match format {
                        Format::Q4_1 => {
                            scales[16 + 2 * j..16 + 2 * j + 2].copy_from_slice(&gguf[2..4]);
                            // GGML's Q4_1: byte `e` holds element `e` low, `e + 16` high.
                            let q = |e: usize| if e < 16 { gguf[4 + e] & 0x0f } else { gguf[4 + e - 16] >> 4 };
                            for p in 0..BLOCK / (2 * RUN) {
                                for e in 0..RUN {
                                    quants[32 * p + RUN * j + e] = q(8 * p + e) | (q(8 * p + RUN + e) << 4);
                                }
                            }
                        }
                        Format::Q8_0 => {
                            for (e, &q) in gguf[2..].iter().enumerate() {
                                quants[32 * (e / RUN) + RUN * j + e % RUN] = q;
                            }
                        }
                    }
                }
            }
        }
        Ok(QMatrix { rows, cols, format, groups })
    }

    /// `x · Wᵀ` for `x` of shape `(…, cols)`; the result has shape `(…, rows)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.apply_op1_no_bwd(&Stacked(&[self]))
    }

    fn blocks(&self) -> usize {
        self.cols / BLOCK
    }

    /// Group `g`'s bytes: `blocks × group_block_bytes`.
    fn group(&self, g: usize) -> &[u8] {
        let size = self.blocks() * self.format.group_block_bytes();
        &self.groups[g * size..(g + 1) * size]
    }

    /// Block `b` of row `row`, unpacked from its group (the scalar reference reads this).
    fn row_block(&self, row: usize, b: usize) -> RowBlock {
        let (g, j) = (row / GROUP_ROWS, row % GROUP_ROWS);
        let block = &self.group(g)[b * self.format.group_block_bytes()..][..self.format.group_block_bytes()];
        let (quants, scales) = block.split_at(self.format.quant_bytes());
        let half = |at: usize| f16::from_le_bytes([scales[at], scales[at + 1]]).to_f32();
        match self.format {
            Format::Q4_1 => RowBlock {
                q: std::array::from_fn(|e| {
                    let byte = quants[32 * (e / 8) + RUN * j + e % RUN];
                    (if e % 8 < RUN { byte & 0x0f } else { byte >> 4 }) as i32
                }),
                d: half(2 * j),
                m: half(16 + 2 * j),
            },
            Format::Q8_0 => RowBlock {
                q: std::array::from_fn(|e| quants[32 * (e / RUN) + RUN * j + e % RUN] as i8 as i32),
                d: half(2 * j),
                m: 0.0,
            },
        }
    }
}

/// Several matrices that take the same input (a layer's query, key and value, or its gate
/// and up projections), multiplied in one pass: the input is quantized once and the
/// threads are handed out once for all of them.
struct Stacked<'a>(&'a [&'a QMatrix]);

/// `x · Wᵀ` for each of `matrices`, `x` of shape `(rows, cols)`: one `(rows, matrix rows)`
/// tensor each, computed together: one quantized input, one hand-out to the threads.
pub fn forward_stacked(x: &Tensor, matrices: &[&QMatrix]) -> Result<Vec<Tensor>> {
    let (rows, _) = x.dims2()?;
    let flat = x.apply_op1_no_bwd(&Stacked(matrices))?;
    let mut offset = 0;
    let mut out = Vec::with_capacity(matrices.len());
    for w in matrices {
        // Each result is a contiguous run of the flat output: no copy.
        out.push(flat.narrow(0, offset, rows * w.rows)?.reshape((rows, w.rows))?);
        offset += rows * w.rows;
    }
    Ok(out)
}

impl Stacked<'_> {
    /// Multiplies `m` activation rows (`lhs`, row-major, `m × cols`) by each matrix into
    /// `dst`: matrix `k`'s `m × rows_k` results after those of the matrices before it.
    fn matmul(&self, lhs: &[f32], m: usize, dst: &mut [f32]) {
        let matrices = self.0;
        let blocks = matrices[0].blocks();
        let x = Q8_1Rows::quantize(lhs);
        let kernel = Kernel::select();
        let dst = DisjointSlice::new(dst);
        let activations: Vec<ActivationRow> = (0..m).map(|i| x.row(i, blocks)).collect();
        let activations = &activations;
        // Per matrix: its first group's index among all matrices' groups, and where its
        // results start in `dst`.
        let mut starts = Vec::with_capacity(matrices.len());
        let (mut groups, mut offset) = (0, 0);
        for w in matrices {
            starts.push((groups, offset));
            groups += w.rows.div_ceil(GROUP_ROWS);
            offset += m * w.rows;
        }
        let starts = &starts;
        // Groups of eight weight rows are the unit of work: each is read from memory once
        // and multiplied against the activation rows a few at a time. The pool hands out
        // pairs of groups: the AVX-512 kernel takes two at once, and a share of an odd
        // number of groups (the pool's shares are a sixteenth of the items, rounded up:
        // 5 of a 576-row matrix's 72 groups) left one of every share to the AVX2 kernel.
        let pairs = groups.div_ceil(2);
        let amx = Amx::for_rows(kernel, m);
        let x = &x;
        candle_core::utils::barrier_pool().execute_chunked(pairs, |pairs| {
            let range = 2 * pairs.start..(2 * pairs.end).min(groups);
            // The activation rows the AMX tiles are configured for on this thread.
            let mut configured = None;
            let mut item = range.start;
            while item < range.end {
                // The run of this range's groups that belong to one matrix, a few at a
                // time: each is multiplied by every activation tile while it is in cache.
                let k = starts.partition_point(|&(first, _)| first <= item) - 1;
                let (w, (first, offset)) = (matrices[k], starts[k]);
                let end = range.end.min(first + w.rows.div_ceil(GROUP_ROWS)).min(item + GROUPS_PER_CALL);
                let groups = item - first..end - first;
                // Writes the results of `groups` × activation rows `first_row..` (one per
                // group and row, as the kernels give them) into `dst`.
                let write = &|groups: Range<usize>, first_row: usize, values: &[[f32; GROUP_ROWS]]| {
                    let n = values.len() / groups.len();
                    for (g, values) in groups.zip(values.chunks_exact(n)) {
                        let rows = g * GROUP_ROWS..((g + 1) * GROUP_ROWS).min(w.rows);
                        for (i, values) in values.iter().enumerate() {
                            let start = offset + (first_row + i) * w.rows + rows.start;
                            // SAFETY: these outputs are the rows of matrix `k`'s group `g`,
                            // an item in this task's `range` and no other task's.
                            let out = unsafe { dst.slice_mut(start..start + rows.len()) };
                            out.copy_from_slice(&values[..rows.len()]);
                        }
                    }
                };
                // Groups × activation rows `first_row..` on this CPU's kernel, a few rows at
                // a time.
                let by_kernel = |groups: Range<usize>, first_row: usize| {
                    if groups.is_empty() {
                        return;
                    }
                    for (t, tile) in activations[first_row..].chunks(MAX_TILE_ACTIVATIONS).enumerate() {
                        let mut values = [[0f32; GROUP_ROWS]; GROUPS_PER_CALL * MAX_TILE_ACTIVATIONS];
                        let values = &mut values[..groups.len() * tile.len()];
                        kernel.tile(w, groups.clone(), tile, values);
                        write(groups.clone(), first_row + t * MAX_TILE_ACTIVATIONS, values);
                    }
                };
                // On AMX the whole pairs of groups by tiles of sixteen activation rows; the
                // rows those leave (fewer than AMX is worth) and an odd group go to the
                // kernel.
                let (mut paired, mut amx_rows) = (groups.start..groups.start, 0);
                #[cfg(target_arch = "x86_64")]
                if let Some(amx) = amx {
                    paired.end += groups.len() / 2 * 2;
                    amx_rows = amx.product(w, paired.clone(), x, &mut configured, write);
                }
                by_kernel(paired.clone(), amx_rows);
                by_kernel(paired.end..groups.end, 0);
                item = end;
            }
            if configured.is_some() {
                // SAFETY: as for `load` above.
                unsafe { crate::models::amx::release() };
            }
        });
    }
}

// `Amx::product` instantiates the kernel for tiles of 12 to 16 rows.
const _: () = assert!(Amx::MIN_ROWS == 12);

/// Proof that this process may multiply on AMX int8 tiles, and that a product is big
/// enough to take them.
#[derive(Clone, Copy)]
struct Amx(());

impl Amx {
    /// Activation rows from which the AMX kernel beats the AVX-512 one. Its cost per
    /// block hardly depends on the rows (storing the sums tile and filling the weight
    /// tile dominate), the AVX-512 kernel's grows with them: on a 2-core Xeon (Sapphire
    /// Rapids or later), the two kernels alone on one core (a probe not kept; see
    /// docs/benchmarks.md) took 21.4 against 16.9 µs for a 576 × 576 Q4_1 product at 8
    /// rows, 29.0 against 34.6 at 16. `examples/qmatmul` compares the whole products from
    /// twelve rows up.
    const MIN_ROWS: usize = 12;

    /// Invariant: made only where the AVX-512 VNNI kernel runs (AVX-512F and BW) and
    /// [`crate::models::amx::available`] says so for int8.
    fn for_rows(kernel: Kernel, rows: usize) -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        if kernel == Kernel::Avx512Vnni
            && rows >= Self::MIN_ROWS
            && crate::models::amx::available(crate::models::amx::Feature::Int8)
        {
            return Some(Amx(()));
        }
        let _ = (kernel, rows);
        None
    }

    /// `groups` (whole pairs) of `w` × the rows of `x` in tiles of sixteen, and a last
    /// tile of at least [`Amx::MIN_ROWS`], handed to `write` as [`Kernel::tile`]'s results
    /// are; returns the rows done (the rest are left to the kernel). `configured` is
    /// what the calling thread's tiles are configured for, loaded here when it changes.
    #[cfg(target_arch = "x86_64")]
    fn product<W>(
        self,
        w: &QMatrix,
        groups: Range<usize>,
        x: &Q8_1Rows,
        configured: &mut Option<usize>,
        write: W,
    ) -> usize
    where
        W: Fn(Range<usize>, usize, &[[f32; GROUP_ROWS]]),
    {
        assert!(groups.len().is_multiple_of(2) && groups.len() <= GROUPS_PER_CALL, "groups {groups:?}");
        let blocks = w.blocks();
        let size = blocks * w.format.group_block_bytes();
        let m = x.d.len() / blocks;
        let mut first_row = 0;
        while !groups.is_empty() && m - first_row >= Self::MIN_ROWS {
            let n = amx::MAX_ROWS.min(m - first_row);
            if *configured != Some(n) {
                // SAFETY: `Amx` is only made where the process may use AMX int8.
                unsafe { amx::config(n).load() };
                *configured = Some(n);
            }
            let mut values = [[0f32; GROUP_ROWS]; GROUPS_PER_CALL * amx::MAX_ROWS];
            let values = &mut values[..groups.len() * n];
            // SAFETY: the tiles are configured for `n` rows just above, on this thread;
            // `Amx` is only made on a CPU with AVX-512F and AVX-512BW; the bytes are
            // whole groups, an even number of them, `values` holds one result per group
            // and row, and `x.tile` is `n` rows of `blocks` blocks.
            unsafe {
                let (bytes, x) = (&w.groups[groups.start * size..groups.end * size], x.tile(first_row, n, blocks));
                // One instance per tile size AMX is used for: `MIN_ROWS` to 16.
                macro_rules! dispatch {
                    ($($rows:literal)*) => {
                        match n {
                            $($rows => amx::product::<$rows>(w.format, bytes, blocks, x, values),)*
                            _ => unreachable!("a tile of {n} rows"),
                        }
                    };
                }
                dispatch!(12 13 14 15 16)
            };
            write(groups.clone(), first_row, values);
            first_row += n;
        }
        first_row
    }
}

impl Q8_1Rows {
    /// Quantizes rows the way llama.cpp does: per block, `d = max|x| / 127` (stored as
    /// f16), `q = round(x / d)` (to even, as its SIMD code does), `s = d * Σq`.
    fn quantize(xs: &[f32]) -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2.
            return unsafe { avx2::quantize(xs) };
        }
        Self::quantize_generic(xs)
    }

    /// What [`avx2::quantize`] computes, bit for bit, in plain code.
    fn quantize_generic(xs: &[f32]) -> Self {
        let blocks = xs.len() / BLOCK;
        let mut out = Q8_1Rows {
            qs: vec![0; xs.len()],
            d: Vec::with_capacity(blocks),
            s: Vec::with_capacity(blocks),
            sums: Vec::with_capacity(blocks),
        };
        for (block, qs) in xs.chunks_exact(BLOCK).zip(out.qs.chunks_exact_mut(BLOCK)) {
            // Eight lanes and a plain comparison, so it vectorizes (`f32::max` does not).
            let mut lanes = [0f32; 8];
            for chunk in block.chunks_exact(8) {
                for (lane, x) in lanes.iter_mut().zip(chunk) {
                    let x = x.abs();
                    *lane = if x > *lane { x } else { *lane };
                }
            }
            let amax = lanes.into_iter().fold(0f32, f32::max);
            let d = amax / 127.0;
            let inverse = if d == 0.0 { 0.0 } else { 1.0 / d };
            // Ties to even, as llama.cpp's SIMD quantization rounds (and what vectorizes).
            for (q, x) in qs.iter_mut().zip(block) {
                *q = (x * inverse).round_ties_even() as i32 as i8;
            }
            let sum: i32 = qs.iter().map(|&q| q as i32).sum();
            let d = f16::from_f32(d).to_f32();
            out.d.push(d);
            out.s.push(f16::from_f32(d * sum as f32).to_f32());
            out.sums.push(sum);
        }
        out
    }

    /// Rows `first..first + n`, for the AMX kernel.
    #[cfg(target_arch = "x86_64")]
    fn tile(&self, first: usize, n: usize, blocks: usize) -> amx::Activations<'_> {
        amx::Activations {
            qs: &self.qs[first * blocks * BLOCK..(first + n) * blocks * BLOCK],
            d: &self.d[first * blocks..(first + n) * blocks],
            s: &self.s[first * blocks..(first + n) * blocks],
            rows: n,
        }
    }

    fn row(&self, i: usize, blocks: usize) -> ActivationRow<'_> {
        ActivationRow {
            qs: &self.qs[i * blocks * BLOCK..(i + 1) * blocks * BLOCK],
            d: &self.d[i * blocks..(i + 1) * blocks],
            s: &self.s[i * blocks..(i + 1) * blocks],
            sums: &self.sums[i * blocks..(i + 1) * blocks],
        }
    }
}

impl CustomOp1 for Stacked<'_> {
    fn name(&self) -> &'static str {
        "quantized-matmul"
    }

    /// One matrix: `(…, cols)` to `(…, rows)`. Several: `(m, cols)` to the flat results,
    /// one matrix after another (split by [`forward_stacked`]).
    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let matrices = self.0;
        let Some(first) = matrices.first() else { bail!("quantized-matmul: no matrix") };
        let dims = layout.shape().dims();
        let Some((&cols, batch)) = dims.split_last() else { bail!("quantized-matmul: scalar input") };
        for w in matrices {
            if cols != w.cols {
                bail!("quantized-matmul: input has {cols} columns, the weight {}", w.cols);
            }
        }
        let CpuStorage::F32(data) = storage else { bail!("quantized-matmul: input must be f32") };
        let Some((start, end)) = layout.contiguous_offsets() else {
            bail!("quantized-matmul: input must be contiguous")
        };
        let lhs = &data[start..end];
        let m = lhs.len() / cols;
        let total: usize = matrices.iter().map(|w| m * w.rows).sum();
        let mut dst = vec![0f32; total];
        self.matmul(lhs, m, &mut dst);
        let shape = match matrices {
            [_] => Shape::from(batch.iter().copied().chain([first.rows]).collect::<Vec<_>>()),
            _ => Shape::from(total),
        };
        Ok((CpuStorage::F32(dst), shape))
    }
}

/// The implementation this CPU can run.
///
/// Invariant: [`Kernel::Avx2`] is only made on a CPU that has AVX2, FMA and F16C,
/// [`Kernel::AvxVnni`] on one that also has AVX-VNNI, and [`Kernel::Avx512Vnni`] on one
/// that has AVX2, FMA, F16C, AVX-512F, AVX-512BW and AVX-512 VNNI (by
/// [`Kernel::available`]), so [`Kernel::tile`] can call the kernels that enable them.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kernel {
    /// Groups in pairs on 512-bit vectors (`avx512`), an odd last group on AVX2.
    #[cfg(target_arch = "x86_64")]
    Avx512Vnni,
    #[cfg(target_arch = "x86_64")]
    AvxVnni,
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
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") && has!("fma") && has!("f16c") {
                if has!("avx512f") && has!("avx512bw") && has!("avx512vnni") {
                    kernels.push(Kernel::Avx512Vnni);
                }
                if has!("avxvnni") {
                    kernels.push(Kernel::AvxVnni);
                }
                kernels.push(Kernel::Avx2);
            }
        }
        kernels.push(Kernel::Scalar);
        kernels
    }

    /// `out[n * (g - groups.start) + i][j]` = row `8g + j` of `w` · `xs[i]` for each group
    /// `g` in `groups` and each of the `n` (one to four) activation rows; lanes of padding
    /// rows come out as zeros.
    fn tile(self, w: &QMatrix, groups: Range<usize>, xs: &[ActivationRow], out: &mut [[f32; GROUP_ROWS]]) {
        let blocks = w.blocks();
        assert!(groups.end <= w.rows.div_ceil(GROUP_ROWS), "no groups {groups:?}");
        assert!((1..=MAX_TILE_ACTIVATIONS).contains(&xs.len()), "no tile of {} activation rows", xs.len());
        assert_eq!(out.len(), groups.len() * xs.len(), "one result per group and activation row");
        for x in xs {
            assert!(
                x.d.len() == blocks && x.s.len() == blocks && x.sums.len() == blocks && x.qs.len() == blocks * BLOCK,
                "row lengths differ"
            );
        }
        match self {
            Kernel::Scalar => {
                for (g, out) in groups.zip(out.chunks_exact_mut(xs.len())) {
                    for (x, out) in xs.iter().zip(out) {
                        for (j, out) in out.iter_mut().enumerate() {
                            let row = g * GROUP_ROWS + j;
                            *out = if row < w.rows { dot_scalar(w, row, *x) } else { 0.0 };
                        }
                    }
                }
            }
            // SAFETY: `Avx2` is only made on a CPU with AVX2, FMA and F16C, and `AvxVnni` on
            // one with AVX-VNNI too (see `Kernel`); the groups hold `blocks` blocks each in
            // their format (`QMatrix::group`), every activation row `blocks` blocks and
            // `out` a result per group and row (asserted above): what the kernels require.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 | Kernel::AvxVnni => unsafe {
                let size = blocks * w.format.group_block_bytes();
                let bytes = &w.groups[groups.start * size..groups.end * size];
                macro_rules! dispatch {
                    ($kernel:ident) => {
                        match xs.len() {
                            1 => avx2::$kernel::<1>(bytes, blocks, xs, out),
                            2 => avx2::$kernel::<2>(bytes, blocks, xs, out),
                            3 => avx2::$kernel::<3>(bytes, blocks, xs, out),
                            _ => avx2::$kernel::<4>(bytes, blocks, xs, out),
                        }
                    };
                }
                match (w.format, self == Kernel::AvxVnni) {
                    (Format::Q4_1, false) => dispatch!(q4_1),
                    (Format::Q4_1, true) => dispatch!(q4_1_vnni),
                    (Format::Q8_0, false) => dispatch!(q8_0),
                    (Format::Q8_0, true) => dispatch!(q8_0_vnni),
                }
            },
            // SAFETY: as above: `Avx512Vnni` is only made on a CPU with every feature the
            // AVX-512 and AVX2 kernels enable; the paired groups are whole groups and
            // `out` holds their results, then the odd group's.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni => unsafe {
                let size = blocks * w.format.group_block_bytes();
                let paired = groups.len() / 2 * 2;
                let (pairs, odd) = w.groups[groups.start * size..groups.end * size].split_at(paired * size);
                let (pairs_out, odd_out) = out.split_at_mut(paired * xs.len());
                macro_rules! dispatch {
                    ($module:ident :: $kernel:ident, $bytes:expr, $out:expr) => {
                        match xs.len() {
                            1 => $module::$kernel::<1>($bytes, blocks, xs, $out),
                            2 => $module::$kernel::<2>($bytes, blocks, xs, $out),
                            3 => $module::$kernel::<3>($bytes, blocks, xs, $out),
                            _ => $module::$kernel::<4>($bytes, blocks, xs, $out),
                        }
                    };
                }
                match w.format {
                    Format::Q4_1 => dispatch!(avx512::q4_1, pairs, pairs_out),
                    Format::Q8_0 => dispatch!(avx512::q8_0, pairs, pairs_out),
                }
                // The same integers and float steps on AVX2: the same results.
                if !odd.is_empty() {
                    match w.format {
                        Format::Q4_1 => dispatch!(avx2::q4_1, odd, odd_out),
                        Format::Q8_0 => dispatch!(avx2::q8_0, odd, odd_out),
                    }
                }
            },
        }
    }
}

/// The reference: Σ over blocks of `d_w d_x Σ q_w q_x + m_w s_x`.
fn dot_scalar(w: &QMatrix, row: usize, x: ActivationRow) -> f32 {
    let mut total = 0f32;
    for b in 0..w.blocks() {
        let block = w.row_block(row, b);
        let sum: i32 = block.q.iter().zip(&x.qs[b * BLOCK..][..BLOCK]).map(|(&w, &x)| w * x as i32).sum();
        total += block.d * x.d[b] * sum as f32 + block.m * x.s[b];
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Module};
    use rand::{Rng, SeedableRng, rngs::StdRng};

    fn random(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..rows * cols).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    fn quantized(rows: usize, cols: usize, seed: u64, dtype: GgmlDType) -> Result<QTensor> {
        let weights = Tensor::from_vec(random(rows, cols, seed), (rows, cols), &Device::Cpu)?;
        QTensor::quantize(&weights, dtype)
    }

    /// The SIMD quantization gives exactly what the plain code does, zero blocks and
    /// ties included.
    #[test]
    fn quantization_kernels_agree() {
        let mut xs = random(5, 96, 9);
        xs[32..64].fill(0.0);
        // Exact halves after scaling by 127 / 1: ties to even.
        xs[64] = 1.0;
        xs[65] = 0.5 / 127.0;
        xs[66] = 1.5 / 127.0;
        xs[67] = -2.5 / 127.0;
        let generic = Q8_1Rows::quantize_generic(&xs);
        let fast = Q8_1Rows::quantize(&xs);
        assert_eq!(fast.qs, generic.qs);
        assert_eq!(fast.d, generic.d);
        assert_eq!(fast.s, generic.s);
        assert_eq!(fast.sums, generic.sums);
    }

    /// The repacked groups hold every row's blocks exactly: `d * q + m` equals candle's
    /// dequantization of the GGUF blocks, element by element, padding rows included.
    #[test]
    fn repacking_keeps_every_element() -> Result<()> {
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q8_0] {
            // 13 rows: a full group and a padded one.
            let (rows, cols) = (13, 96);
            let q = quantized(rows, cols, 7, dtype)?;
            let expected = q.dequantize(&Device::Cpu)?.to_vec2::<f32>()?;
            let w = QMatrix::from_qtensor(&q)?;
            for (row, expected) in expected.iter().enumerate() {
                for b in 0..cols / BLOCK {
                    let block = w.row_block(row, b);
                    for e in 0..BLOCK {
                        let value = block.d * block.q[e] as f32 + block.m;
                        assert_eq!(value, expected[b * BLOCK + e], "{dtype:?} row {row}, element {}", b * BLOCK + e);
                    }
                }
            }
        }
        Ok(())
    }

    /// The whole multiplication against candle's own quantized matmul on the same blocks.
    #[test]
    fn matches_candles_quantized_matmul() -> Result<()> {
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q8_0] {
            let (rows, cols, m) = (67, 288, 5);
            let q = quantized(rows, cols, 1, dtype)?;
            let x = Tensor::from_vec(random(m, cols, 2), (m, cols), &Device::Cpu)?;
            let ours = QMatrix::from_qtensor(&q)?.forward(&x)?;
            let candle = candle_core::quantized::QMatMul::from_qtensor(q)?.forward(&x)?;
            assert_eq!(ours.dims(), &[m, rows]);
            let diff = ours.sub(&candle)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
            let scale = candle.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
            // Activation scales and Q4_1's offset sums are f16 in both, rounded at
            // different points: a few parts in 10⁴ of a result's magnitude.
            assert!(diff < 1e-3 * scale, "{dtype:?}: largest difference {diff} on values up to {scale}");
        }
        Ok(())
    }

    /// Matrices multiplied together (one quantization, one hand-out of the threads) give
    /// what each gives alone, bit for bit, including a padded group between them.
    #[test]
    fn stacked_products_equal_separate_ones() -> Result<()> {
        let cols = 96;
        let matrices = [
            QMatrix::from_qtensor(&quantized(24, cols, 1, GgmlDType::Q4_1)?)?,
            QMatrix::from_qtensor(&quantized(13, cols, 2, GgmlDType::Q8_0)?)?,
            QMatrix::from_qtensor(&quantized(40, cols, 3, GgmlDType::Q4_1)?)?,
        ];
        let x = Tensor::from_vec(random(6, cols, 4), (6, cols), &Device::Cpu)?;
        let stacked = forward_stacked(&x, &matrices.iter().collect::<Vec<_>>())?;
        for (w, together) in matrices.iter().zip(stacked) {
            assert_eq!(together.dims(), &[6, w.rows]);
            assert_eq!(together.to_vec2::<f32>()?, w.forward(&x)?.to_vec2::<f32>()?);
        }
        Ok(())
    }

    /// A row's result is bit for bit the same whatever rows it is multiplied with
    /// (batched decoding must give each sequence what it gets alone). Where the CPU has
    /// AMX, twelve rows or more go through its kernel (sixteen at a time; a last few
    /// through the AVX-512 one), and each row alone through the AVX-512 one.
    #[test]
    fn rows_are_independent() -> Result<()> {
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q8_0] {
            for (rows, cols, m) in [(576, 576, 7), (67, 608, 13), (67, 608, 37), (576, 576, 16)] {
                let w = QMatrix::from_qtensor(&quantized(rows, cols, 5, dtype)?)?;
                let x = Tensor::from_vec(random(m, cols, 6), (m, cols), &Device::Cpu)?;
                let together = w.forward(&x)?.to_vec2::<f32>()?;
                for (i, together) in together.iter().enumerate() {
                    let alone = w.forward(&x.narrow(0, i, 1)?)?.to_vec2::<f32>()?.remove(0);
                    let diff = alone.iter().zip(together).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                    assert_eq!(diff, 0.0, "{dtype:?} {rows}×{cols}, row {i}: differs by {diff}");
                }
            }
        }
        Ok(())
    }

    /// The SIMD kernel agrees with the scalar reference for every tile size, for full and
    /// padded groups and for odd and even block counts, including Q8_0's extreme quant
    /// -128 (which a naive sign trick would overflow).
    #[test]
    fn simd_kernel_agrees_with_scalar() -> Result<()> {
        for kernel in Kernel::available() {
            simd_kernel_agrees_with_scalar_on(kernel)?;
        }
        Ok(())
    }

    fn simd_kernel_agrees_with_scalar_on(kernel: Kernel) -> Result<()> {
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q8_0] {
            for cols in [32, 64, 576, 1536, 608] {
                let rows = 13;
                let mut w = QMatrix::from_qtensor(&quantized(rows, cols, 3, dtype)?)?;
                if dtype == GgmlDType::Q8_0 {
                    // Row 0's first block: every quant -128.
                    w.groups[..Format::Q8_0.quant_bytes()]
                        .iter_mut()
                        .enumerate()
                        .filter(|(k, _)| k % (GROUP_ROWS * RUN) < RUN)
                        .for_each(|(_, q)| *q = 0x80);
                    assert!(w.row_block(0, 0).q.iter().all(|&q| q == -128));
                }
                let x = Q8_1Rows::quantize(&random(4, cols, 4));
                let xs: Vec<ActivationRow> = (0..4).map(|i| x.row(i, cols / BLOCK)).collect();
                // Each group alone, and both in one call.
                for groups in [0..1, 1..2, 0..2] {
                    for n in 1..=MAX_TILE_ACTIVATIONS {
                        let mut out = vec![[0f32; GROUP_ROWS]; groups.len() * n];
                        kernel.tile(&w, groups.clone(), &xs[..n], &mut out);
                        for (g, out) in groups.clone().zip(out.chunks_exact(n)) {
                            for (i, out) in out.iter().enumerate() {
                                for (j, &value) in out.iter().enumerate() {
                                    let row = g * GROUP_ROWS + j;
                                    let scalar = if row < rows { dot_scalar(&w, row, xs[i]) } else { 0.0 };
                                    assert!(
                                        (value - scalar).abs() <= 1e-4 * scalar.abs().max(1.0),
                                        "{kernel:?} {dtype:?}, {cols} columns, groups {groups:?}, {n} rows, row {row} × {i}: {value} vs {scalar}"
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }
}
