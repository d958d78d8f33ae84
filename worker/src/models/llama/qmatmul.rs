//! Quantized matrix multiplication for the CPU (Q4_1 and Q8_0 weights), with AVX-512 VNNI
//! and AVX2 kernels.
//!
//! candle 0.11 multiplies Q4_1 weights (what SmolLM2's GGUF uses for every layer) with a
//! scalar loop, about six times slower than llama.cpp, and its Q8_0 kernel (the output
//! layer) works one row pair at a time, converting f16 scales in the inner loop. This
//! module multiplies both against activations quantized to Q8_1 with the same integer
//! arithmetic as llama.cpp's `ggml_vec_dot_q4_1_q8_1` and `ggml_vec_dot_q8_0_q8_0`, so
//! results stay within float rounding of llama.cpp's.
//!
//! At load time the GGUF's blocks are repacked: per weight row, the quants of all blocks
//! back to back, the scales and offsets as separate f32 arrays (activations are laid out
//! the same way when quantized). Every block is then `d * q + m` with unsigned `q`: Q4_1 as
//! it is, Q8_0 as `q + 128` with `m = -128 d`. So one kernel shape serves both: unsigned
//! weight bytes × signed activation bytes (`vpdpbusd`) scaled per block by `d_w d_x`, plus
//! the offset term `Σ m_w s_x`, a plain vector dot product. The kernels load two blocks'
//! quants in one instruction and never convert f16 in the inner loop.
//!
//! The work is spread over candle's own CPU thread pool, so `--threads` governs it like
//! every other candle op, and it is wrapped as a candle [`CustomOp1`] so the model code
//! stays plain tensor code. Several activation rows (sequences decoded together) are
//! multiplied while a weight row is in cache: that is what makes batched decoding cheaper
//! per token than one sequence at a time. A row's result is bit for bit the same whatever
//! it is batched with.

use candle_core::{
    CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, bail,
    quantized::{GgmlDType, QTensor},
};
use half::f16;

use crate::models::disjoint::DisjointSlice;

/// Elements per block, in Q4_1, Q8_0 and Q8_1 alike.
const BLOCK: usize = 32;

/// The largest tile the kernels compute at once: weight rows × activation rows, each
/// pair with its own accumulator, so that the fused multiply-adds do not wait on one
/// another and each unpacked weight block and loaded activation block is used several times.
const MAX_TILE_WEIGHTS: usize = 4;
const MAX_TILE_ACTIVATIONS: usize = 4;

/// How a block's quants are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Quants {
    /// 16 bytes per block, repacked by pairs of blocks: byte `j` of a pair's 32 holds
    /// element `j` of the first block in its low nibble and element `j` of the second in
    /// its high nibble, so one 32-byte load, a shift and a mask give both blocks' quants in
    /// element order. An odd last block keeps GGML's Q4_1 layout: byte `j` holds element `j`
    /// in its low nibble and element `j + 16` in its high nibble.
    Nibbles,
    /// 32 bytes, one per element.
    Bytes,
}

impl Quants {
    const fn bytes_per_block(self) -> usize {
        match self {
            Quants::Nibbles => BLOCK / 2,
            Quants::Bytes => BLOCK,
        }
    }
}

/// A quantized weight matrix of `rows × cols`, multiplied as `x · Wᵀ`.
pub struct QMatrix {
    rows: usize,
    cols: usize,
    quants: Quants,
    /// `rows × blocks × bytes_per_block` unsigned quants.
    qs: Vec<u8>,
    /// `rows × blocks` scales and offsets: element = `d * q + m`.
    d: Vec<f32>,
    m: Vec<f32>,
}

/// Activation rows quantized to Q8_1: per block, `x ≈ d * q` with `q` in -127..=127.
struct Q8_1Rows {
    /// `rows × blocks × 32` quants.
    qs: Vec<i8>,
    d: Vec<f32>,
    /// `d * Σq` rounded through f16, as llama.cpp's Q8_1 stores it (Q4_1's offset term).
    s: Vec<f32>,
    /// `d * Σq` in f32: Q8_0's offset term (`-128 d_w` times it) must cancel exactly.
    s_exact: Vec<f32>,
}

/// One weight row, as the kernels see it.
#[derive(Clone, Copy)]
struct WeightRow<'a> {
    qs: &'a [u8],
    d: &'a [f32],
    m: &'a [f32],
}

/// One activation row, with the offset sums its weight format needs.
#[derive(Clone, Copy)]
struct ActivationRow<'a> {
    qs: &'a [i8],
    d: &'a [f32],
    s: &'a [f32],
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
        let (quants, gguf_block) = match tensor.dtype() {
            GgmlDType::Q4_1 => (Quants::Nibbles, 20), // f16 d, f16 m, 16 bytes
            GgmlDType::Q8_0 => (Quants::Bytes, 34),   // f16 d, 32 signed bytes
            other => bail!("no kernel for {other:?} weights"),
        };
        let bytes = tensor.data()?;
        let count = rows * cols / BLOCK;
        if bytes.len() != count * gguf_block {
            bail!("{:?} tensor holds {} bytes, expected {}", tensor.dtype(), bytes.len(), count * gguf_block);
        }
        let mut matrix = QMatrix {
            rows,
            cols,
            quants,
            qs: Vec::with_capacity(count * quants.bytes_per_block()),
            d: Vec::with_capacity(count),
            m: Vec::with_capacity(count),
        };
        for block in bytes.chunks_exact(gguf_block) {
            let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
            matrix.d.push(d);
            match quants {
                Quants::Nibbles => {
                    matrix.m.push(f16::from_le_bytes([block[2], block[3]]).to_f32());
                    matrix.qs.extend_from_slice(&block[4..20]);
                }
                Quants::Bytes => {
                    matrix.m.push(-128.0 * d);
                    matrix.qs.extend(block[2..34].iter().map(|&q| (q as i8 as i16 + 128) as u8));
                }
            }
        }
        if quants == Quants::Nibbles {
            let blocks = cols / BLOCK;
            for row in matrix.qs.chunks_exact_mut(blocks * 16) {
                for pair in row[..blocks / 2 * 32].chunks_exact_mut(32) {
                    let (first, second) = (gguf_nibbles(&pair[..16]), gguf_nibbles(&pair[16..]));
                    for (j, byte) in pair.iter_mut().enumerate() {
                        *byte = first[j] | (second[j] << 4);
                    }
                }
            }
        }
        Ok(matrix)
    }

    /// `x · Wᵀ` for `x` of shape `(…, cols)`; the result has shape `(…, rows)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.apply_op1_no_bwd(self)
    }

    fn blocks(&self) -> usize {
        self.cols / BLOCK
    }

    fn row(&self, r: usize) -> WeightRow<'_> {
        let (n, b) = (self.blocks(), self.quants.bytes_per_block());
        WeightRow {
            qs: &self.qs[r * n * b..(r + 1) * n * b],
            d: &self.d[r * n..(r + 1) * n],
            m: &self.m[r * n..(r + 1) * n],
        }
    }

    /// Multiplies `m` activation rows (`lhs`, row-major, `m × cols`) into `dst` (`m × rows`).
    fn matmul(&self, lhs: &[f32], m: usize, dst: &mut [f32]) {
        let x = Q8_1Rows::quantize(lhs);
        let kernel = Kernel::select();
        let n = self.rows;
        let dst = DisjointSlice::new(dst);
        let activations: Vec<ActivationRow> = (0..m).map(|i| x.row(i, self.blocks(), self.quants)).collect();
        let activations = &activations;
        // Weight rows are the unit of work: each is read from memory once and multiplied
        // against the activation rows in small tiles (see `Kernel::tile`).
        candle_core::utils::barrier_pool().execute_chunked(n, |range| {
            let weight_rows = kernel.weight_rows(m);
            let mut r = range.start;
            while r < range.end {
                let take = if range.end - r >= weight_rows { weight_rows } else { 1 };
                let w: [WeightRow; MAX_TILE_WEIGHTS] = std::array::from_fn(|k| self.row((r + k).min(range.end - 1)));
                let w = &w[..take];
                for (g, group) in activations.chunks(MAX_TILE_ACTIVATIONS).enumerate() {
                    let mut values = [[0f32; MAX_TILE_ACTIVATIONS]; MAX_TILE_WEIGHTS];
                    kernel.tile(self.quants, w, group, &mut values);
                    for (k, row) in values[..take].iter().enumerate() {
                        for (i, value) in row[..group.len()].iter().enumerate() {
                            let index = (g * MAX_TILE_ACTIVATIONS + i) * n + r + k;
                            // SAFETY: output column `r + k` belongs to weight row `r + k`,
                            // which lies in this task's `range` and no other task's: no
                            // other task touches this element.
                            unsafe { dst.write(index, *value) };
                        }
                    }
                }
                r += take;
            }
        });
    }
}

impl Q8_1Rows {
    /// Quantizes rows the way llama.cpp does: per block, `d = max|x| / 127` (stored as
    /// f16), `q = round(x / d)` (to even, as its SIMD code does), `s = d * Σq`.
    fn quantize(xs: &[f32]) -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            /// The same code with AVX2 (and so SSE4.1, whose rounding instruction makes
            /// `round` inline instead of a libm call per element).
            #[target_feature(enable = "avx2")]
            fn quantize_avx2(xs: &[f32]) -> Q8_1Rows {
                Q8_1Rows::quantize_generic(xs)
            }
            // SAFETY: the CPU has AVX2.
            return unsafe { quantize_avx2(xs) };
        }
        Self::quantize_generic(xs)
    }

    #[inline(always)]
    fn quantize_generic(xs: &[f32]) -> Self {
        let blocks = xs.len() / BLOCK;
        let mut out = Q8_1Rows {
            qs: vec![0; xs.len()],
            d: Vec::with_capacity(blocks),
            s: Vec::with_capacity(blocks),
            s_exact: Vec::with_capacity(blocks),
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
            out.s_exact.push(d * sum as f32);
        }
        out
    }

    fn row(&self, i: usize, blocks: usize, weights: Quants) -> ActivationRow<'_> {
        let s = match weights {
            Quants::Nibbles => &self.s,
            Quants::Bytes => &self.s_exact,
        };
        ActivationRow {
            qs: &self.qs[i * blocks * BLOCK..(i + 1) * blocks * BLOCK],
            d: &self.d[i * blocks..(i + 1) * blocks],
            s: &s[i * blocks..(i + 1) * blocks],
        }
    }
}

impl CustomOp1 for QMatrix {
    fn name(&self) -> &'static str {
        "quantized-matmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = layout.shape().dims();
        let Some((&cols, batch)) = dims.split_last() else { bail!("quantized-matmul: scalar input") };
        if cols != self.cols {
            bail!("quantized-matmul: input has {cols} columns, the weight {}", self.cols);
        }
        let CpuStorage::F32(data) = storage else { bail!("quantized-matmul: input must be f32") };
        let Some((start, end)) = layout.contiguous_offsets() else {
            bail!("quantized-matmul: input must be contiguous")
        };
        let lhs = &data[start..end];
        let m = lhs.len() / cols;
        let mut dst = vec![0f32; m * self.rows];
        self.matmul(lhs, m, &mut dst);
        let mut shape = batch.to_vec();
        shape.push(self.rows);
        Ok((CpuStorage::F32(dst), Shape::from(shape)))
    }
}

/// The dot-product implementation this CPU can run.
///
/// Invariant: a SIMD variant is only made on a CPU that has the features its kernel
/// enables (by [`Kernel::select`], or by a test after the same detection), so
/// [`Kernel::tile`] can call that kernel.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kernel {
    /// AVX-512 with VNNI: two blocks per instruction, `vpdpbusd` for the byte products.
    #[cfg(target_arch = "x86_64")]
    Avx512Vnni,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Scalar,
}

impl Kernel {
    fn select() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx512f")
                && has!("avx2")
                && has!("avx512bw")
                && has!("avx512dq")
                && has!("avx512vl")
                && has!("avx512vnni")
                && has!("fma")
            {
                return Kernel::Avx512Vnni;
            }
            if has!("avx2") && has!("fma") {
                return Kernel::Avx2;
            }
        }
        Kernel::Scalar
    }

    /// Weight rows per tile for `m` activation rows: as many accumulators as the
    /// registers hold (AVX-512 has 32, AVX2 16).
    fn weight_rows(self, m: usize) -> usize {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni => 4,
            _ if m == 1 => 4,
            _ => 2,
        }
    }

    /// `out[k][i] = w[k] · xs[i]` for a tile of 1, 2 or 4 weight rows and 1 to 4
    /// activation rows.
    fn tile(
        self,
        quants: Quants,
        w: &[WeightRow],
        xs: &[ActivationRow],
        out: &mut [[f32; MAX_TILE_ACTIVATIONS]; MAX_TILE_WEIGHTS],
    ) {
        let blocks = w[0].d.len();
        for w in w {
            assert!(
                w.d.len() == blocks && w.m.len() == blocks && w.qs.len() == blocks * quants.bytes_per_block(),
                "malformed weight row"
            );
        }
        for x in xs {
            assert!(x.d.len() == blocks && x.s.len() == blocks && x.qs.len() == blocks * BLOCK, "row lengths differ");
        }
        // Turns runtime tile sizes and formats into the const generics the kernels are
        // built for.
        macro_rules! dispatch {
            ($module:ident, $nibbles:literal) => {
                match (w.len(), xs.len()) {
                    (4, 1) => $module::tile::<4, 1, $nibbles>(w, xs, out),
                    (4, 2) => $module::tile::<4, 2, $nibbles>(w, xs, out),
                    (4, 3) => $module::tile::<4, 3, $nibbles>(w, xs, out),
                    (4, 4) => $module::tile::<4, 4, $nibbles>(w, xs, out),
                    (2, 1) => $module::tile::<2, 1, $nibbles>(w, xs, out),
                    (2, 2) => $module::tile::<2, 2, $nibbles>(w, xs, out),
                    (2, 3) => $module::tile::<2, 3, $nibbles>(w, xs, out),
                    (2, 4) => $module::tile::<2, 4, $nibbles>(w, xs, out),
                    (1, 1) => $module::tile::<1, 1, $nibbles>(w, xs, out),
                    (1, 2) => $module::tile::<1, 2, $nibbles>(w, xs, out),
                    (1, 3) => $module::tile::<1, 3, $nibbles>(w, xs, out),
                    (1, 4) => $module::tile::<1, 4, $nibbles>(w, xs, out),
                    (a, b) => unreachable!("no {a}×{b} tile"),
                }
            };
        }
        match (self, quants) {
            (Kernel::Scalar, _) => {
                for (w, out) in w.iter().zip(out) {
                    for (x, out) in xs.iter().zip(out) {
                        *out = dot_scalar(quants, *w, *x);
                    }
                }
            }
            // SAFETY: a SIMD kernel is only chosen on a CPU with every feature its `tile`
            // enables (see `Kernel`), and the rows have the lengths `tile` requires
            // (asserted above).
            #[cfg(target_arch = "x86_64")]
            (simd, quants) => unsafe {
                match (simd, quants) {
                    (Kernel::Avx512Vnni, Quants::Nibbles) => dispatch!(avx512, true),
                    (Kernel::Avx512Vnni, Quants::Bytes) => dispatch!(avx512, false),
                    (Kernel::Avx2, Quants::Nibbles) => dispatch!(avx2, true),
                    (Kernel::Avx2, Quants::Bytes) => dispatch!(avx2, false),
                    (Kernel::Scalar, _) => unreachable!("handled above"),
                }
            },
        }
    }
}

/// The reference: Σ over blocks of `d_w d_x Σ q_w q_x + m_w s_x`.
fn dot_scalar(quants: Quants, w: WeightRow, x: ActivationRow) -> f32 {
    let mut total = 0f32;
    for b in 0..w.d.len() {
        let sum = block_dot(&weight_quants(quants, w, b), &x.qs[b * BLOCK..]);
        total += w.d[b] * x.d[b] * sum as f32 + w.m[b] * x.s[b];
    }
    total
}

/// The 32 quants of a Q4_1 block in GGML's layout, in element order.
fn gguf_nibbles(bytes: &[u8]) -> [u8; BLOCK] {
    std::array::from_fn(|j| if j < 16 { bytes[j] & 0x0f } else { bytes[j - 16] >> 4 })
}

/// Block `b`'s weight quants, in element order, from either layout.
fn weight_quants(quants: Quants, w: WeightRow, b: usize) -> [u8; BLOCK] {
    match quants {
        Quants::Bytes => w.qs[b * BLOCK..(b + 1) * BLOCK].try_into().expect("32 bytes"),
        Quants::Nibbles if b / 2 < w.d.len() / 2 => {
            let pair = &w.qs[b / 2 * 32..][..32];
            std::array::from_fn(|j| if b.is_multiple_of(2) { pair[j] & 0x0f } else { pair[j] >> 4 })
        }
        Quants::Nibbles => gguf_nibbles(&w.qs[b * 16..][..16]),
    }
}

/// `Σ q_w q_x` over one block.
fn block_dot(wq: &[u8; BLOCK], xq: &[i8]) -> i32 {
    wq.iter().zip(xq).map(|(&w, &x)| w as i32 * x as i32).sum()
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{ActivationRow, BLOCK, MAX_TILE_ACTIVATIONS, MAX_TILE_WEIGHTS, WeightRow};

    #[target_feature(enable = "avx2,fma")]
    pub fn sum(v: __m256) -> f32 {
        let half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let quarter = _mm_add_ps(half, _mm_movehl_ps(half, half));
        _mm_cvtss_f32(_mm_add_ss(quarter, _mm_movehdup_ps(quarter)))
    }

    /// A tile of `W` weight rows × `X` activation rows, a block at a time: weight quants
    /// loaded (nibbles unpacked) once per weight row, then multiplied by each activation
    /// row into eight i32 lanes and scaled by `d_w d_x` into eight f32 lanes. Nibbles
    /// (≤ 15) go through `maddubs`; full bytes would saturate it and are widened to 16
    /// bits first.
    ///
    /// # Safety
    ///
    /// The CPU must have AVX2 and FMA, and every row must hold as many blocks as `w[0]`
    /// (`w[0].d.len()`): weight rows `d` and `m` of that length and `qs` of that many
    /// blocks in their layout (16 bytes a block for nibbles, 32 for bytes), activation
    /// rows `d` and `s` of that length and `qs` of 32 bytes a block. The loads below read
    /// within those lengths and no further.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn tile<const W: usize, const X: usize, const NIBBLES: bool>(
        w: &[WeightRow],
        xs: &[ActivationRow],
        out: &mut [[f32; MAX_TILE_ACTIVATIONS]; MAX_TILE_WEIGHTS],
    ) {
        let low_nibbles = _mm256_set1_epi8(0x0f);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_ps(); X]; W];
        let mut offsets = [[0f32; X]; W];
        let blocks = w[0].d.len();
        for b in 0..blocks {
            for k in 0..W {
                let qw = if NIBBLES && b / 2 < blocks / 2 {
                    // Paired layout: this block is the low or the high nibbles of its pair.
                    // SAFETY: the pair's 32 bytes end at (b / 2 + 1) * 32 ≤ blocks / 2 * 32,
                    // within the row's `blocks * 16` (the contract).
                    let packed = unsafe { _mm256_loadu_si256(w[k].qs.as_ptr().add(b / 2 * 32) as *const __m256i) };
                    let packed = if b.is_multiple_of(2) { packed } else { _mm256_srli_epi16(packed, 4) };
                    _mm256_and_si256(packed, low_nibbles)
                } else if NIBBLES {
                    // An odd last block, in GGML's layout.
                    // SAFETY: its 16 bytes end at (b + 1) * 16 ≤ blocks * 16 (the contract).
                    let packed = unsafe { _mm_loadu_si128(w[k].qs.as_ptr().add(b * 16) as *const __m128i) };
                    _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(packed, 4), packed), low_nibbles)
                } else {
                    // SAFETY: the block's 32 bytes end at (b + 1) * 32 ≤ blocks * 32 (the contract).
                    unsafe { _mm256_loadu_si256(w[k].qs.as_ptr().add(b * BLOCK) as *const __m256i) }
                };
                // SAFETY: b < blocks, the length of `d` and `m` (the contract).
                let (wd, wm) = unsafe { (*w[k].d.get_unchecked(b), *w[k].m.get_unchecked(b)) };
                for i in 0..X {
                    let x = xs[i];
                    // SAFETY: the block's 32 bytes end at (b + 1) * 32 ≤ blocks * 32 (the contract).
                    let qx = unsafe { _mm256_loadu_si256(x.qs.as_ptr().add(b * BLOCK) as *const __m256i) };
                    let products = if NIBBLES {
                        _mm256_madd_epi16(_mm256_maddubs_epi16(qw, qx), ones)
                    } else {
                        let widen_w = |h: __m128i| _mm256_cvtepu8_epi16(h);
                        let widen_x = |h: __m128i| _mm256_cvtepi8_epi16(h);
                        let low =
                            _mm256_madd_epi16(widen_w(_mm256_castsi256_si128(qw)), widen_x(_mm256_castsi256_si128(qx)));
                        let high = _mm256_madd_epi16(
                            widen_w(_mm256_extracti128_si256(qw, 1)),
                            widen_x(_mm256_extracti128_si256(qx, 1)),
                        );
                        _mm256_add_epi32(low, high)
                    };
                    let sums = _mm256_cvtepi32_ps(products);
                    // SAFETY: b < blocks, the length of `d` and `s` (the contract).
                    let (xd, xs) = unsafe { (*x.d.get_unchecked(b), *x.s.get_unchecked(b)) };
                    acc[k][i] = _mm256_fmadd_ps(_mm256_set1_ps(wd * xd), sums, acc[k][i]);
                    offsets[k][i] += wm * xs;
                }
            }
        }
        for k in 0..W {
            for i in 0..X {
                out[k][i] = sum(acc[k][i]) + offsets[k][i];
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{ActivationRow, BLOCK, MAX_TILE_ACTIVATIONS, MAX_TILE_WEIGHTS, Quants, WeightRow};

    /// A tile of `W` weight rows × `X` activation rows, two blocks at a time in 512-bit
    /// registers: 64 weight quants (two blocks; nibbles unpacked from 32 bytes) multiplied
    /// with 64 activation quants by `vpdpbusd` into sixteen i32 lanes (eight per block),
    /// scaled per block by `d_w d_x`. The offsets `m_w s_x` are a plain dot product over
    /// blocks. An odd last block's quants go through the scalar reference.
    ///
    /// # Safety
    ///
    /// The CPU must have every feature the function enables, and the rows must be as
    /// [`super::avx2::tile`] requires: the same number of blocks in each, laid out in
    /// full. The loads below read within those lengths and no further.
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma")]
    pub unsafe fn tile<const W: usize, const X: usize, const NIBBLES: bool>(
        w: &[WeightRow],
        xs: &[ActivationRow],
        out: &mut [[f32; MAX_TILE_ACTIVATIONS]; MAX_TILE_WEIGHTS],
    ) {
        let quants = if NIBBLES { Quants::Nibbles } else { Quants::Bytes };
        let blocks = w[0].d.len();
        let low_nibbles = _mm512_set1_epi8(0x0f);
        let upper_by_4 = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(4), 1);
        // Lanes 0..8 take the first block's scale, 8..16 the second's.
        let pick = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
        // Two consecutive block scales, spread over the lanes of their blocks.
        let scales = |pair: &[f32]| {
            assert!(pair.len() >= 2);
            // SAFETY: the load reads 8 bytes, the two f32s asserted above; the CPU has
            // AVX-512 (the function's contract).
            unsafe {
                _mm512_permutexvar_ps(
                    pick,
                    _mm512_castps128_ps512(_mm_castsi128_ps(_mm_loadl_epi64(pair.as_ptr() as *const __m128i))),
                )
            }
        };
        let mut acc = [[_mm512_setzero_ps(); X]; W];
        for b in (0..blocks / 2 * 2).step_by(2) {
            let mut qw = [_mm512_setzero_si512(); W];
            let mut wd = [_mm512_setzero_ps(); W];
            // Every row holds `blocks` blocks (the contract) and b + 1 < blocks.
            for k in 0..W {
                qw[k] = if NIBBLES {
                    // The pair's 32 bytes in both halves; the upper half shifted by a nibble:
                    // first block's quants below, second's above, each in element order.
                    // SAFETY: the pair's 32 bytes end at (b + 2) * 16 ≤ blocks * 16.
                    let packed = unsafe { _mm256_loadu_si256(w[k].qs.as_ptr().add(b * 16) as *const __m256i) };
                    _mm512_and_si512(_mm512_srlv_epi16(_mm512_broadcast_i64x4(packed), upper_by_4), low_nibbles)
                } else {
                    // SAFETY: the two blocks' 64 bytes end at (b + 2) * 32 ≤ blocks * 32.
                    unsafe { _mm512_loadu_si512(w[k].qs.as_ptr().add(b * BLOCK) as *const _) }
                };
                // SAFETY: b + 1 < blocks, the length of `d`.
                wd[k] = scales(unsafe { w[k].d.get_unchecked(b..b + 2) });
            }
            for i in 0..X {
                // SAFETY: the two blocks' 64 bytes end at (b + 2) * 32 ≤ blocks * 32.
                let qx = unsafe { _mm512_loadu_si512(xs[i].qs.as_ptr().add(b * BLOCK) as *const _) };
                // SAFETY: b + 1 < blocks, the length of `d`.
                let xd = scales(unsafe { xs[i].d.get_unchecked(b..b + 2) });
                for k in 0..W {
                    let sums = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), qw[k], qx));
                    acc[k][i] = _mm512_fmadd_ps(_mm512_mul_ps(wd[k], xd), sums, acc[k][i]);
                }
            }
        }
        // The offset terms Σ m_w s_x, sixteen blocks at a time, into the same lanes.
        for k in 0..W {
            for i in 0..X {
                let (m, s) = (w[k].m, xs[i].s);
                let mut j = 0;
                while j < blocks {
                    let mask: __mmask16 = if blocks - j >= 16 { 0xffff } else { (1u16 << (blocks - j)) - 1 };
                    // SAFETY: j < blocks, so both pointers are in bounds, and the mask lets
                    // the loads read only elements below `blocks`, the length of `m` and `s`.
                    let (mv, sv) = unsafe {
                        (_mm512_maskz_loadu_ps(mask, m.as_ptr().add(j)), _mm512_maskz_loadu_ps(mask, s.as_ptr().add(j)))
                    };
                    acc[k][i] = _mm512_fmadd_ps(mv, sv, acc[k][i]);
                    j += 16;
                }
            }
        }
        // Reduce four weight rows at once with a shuffle tree. Every tile shape reduces
        // with the same tree (missing rows are zeros), so a row's result is bit for bit
        // the same whatever it was multiplied with: batched decoding changes nothing.
        for i in 0..X {
            let row = |k: usize| if k < W { acc[k][i] } else { _mm512_setzero_ps() };
            let sums = reduce4(row(0), row(1), row(2), row(3));
            let mut lanes = [0f32; 4];
            // SAFETY: `lanes` holds four f32s.
            unsafe { _mm_storeu_ps(lanes.as_mut_ptr(), sums) };
            out[..W].iter_mut().zip(lanes).for_each(|(out, lane)| out[i] = lane);
        }
        if blocks % 2 == 1 {
            let last = blocks - 1;
            for k in 0..W {
                for i in 0..X {
                    let sum = super::block_dot(&super::weight_quants(quants, w[k], last), &xs[i].qs[last * BLOCK..]);
                    out[k][i] += w[k].d[last] * xs[i].d[last] * sum as f32;
                }
            }
        }
    }

    /// The sums of four vectors' lanes, as the four lanes of one.
    #[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
    fn reduce4(a: __m512, b: __m512, c: __m512, d: __m512) -> __m128 {
        let half = |v: __m512| _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps::<1>(v));
        let (a, b, c, d) = (half(a), half(b), half(c), half(d));
        // [a01 a23 b01 b23 | a45 a67 b45 b67], then the same for c, d.
        let ab = _mm256_hadd_ps(a, b);
        let cd = _mm256_hadd_ps(c, d);
        // [a0123 b0123 c0123 d0123 | a4567 b4567 c4567 d4567]
        let abcd = _mm256_hadd_ps(ab, cd);
        _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps::<1>(abcd))
    }
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

    fn matrix(rows: usize, cols: usize, seed: u64, dtype: GgmlDType) -> Result<QMatrix> {
        let weights = Tensor::from_vec(random(rows, cols, seed), (rows, cols), &Device::Cpu)?;
        QMatrix::from_qtensor(&QTensor::quantize(&weights, dtype)?)
    }

    /// The whole multiplication against candle's own quantized matmul on the same blocks.
    #[test]
    fn matches_candles_quantized_matmul() -> Result<()> {
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q8_0] {
            let (rows, cols, m) = (67, 288, 5);
            let weights = Tensor::from_vec(random(rows, cols, 1), (rows, cols), &Device::Cpu)?;
            let q = QTensor::quantize(&weights, dtype)?;
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

    /// A row's result is bit for bit the same whatever rows it is multiplied with
    /// (batched decoding must give each sequence what it gets alone).
    #[test]
    fn rows_are_independent() -> Result<()> {
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q8_0] {
            for (rows, cols) in [(576, 576), (67, 608)] {
                let w = matrix(rows, cols, 5, dtype)?;
                let x = Tensor::from_vec(random(7, cols, 6), (7, cols), &Device::Cpu)?;
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

    /// Every kernel this CPU can run agrees with the scalar reference, for every tile
    /// shape and for odd and even block counts.
    #[test]
    fn simd_kernels_agree_with_scalar() -> Result<()> {
        #[allow(unused_mut)]
        let mut kernels = vec![Kernel::select()];
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            kernels.push(Kernel::Avx2);
        }
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q8_0] {
            for cols in [32, 64, 576, 1536, 608] {
                let w = matrix(4, cols, 3, dtype)?;
                let weights: Vec<WeightRow> = (0..4).map(|r| w.row(r)).collect();
                let x = Q8_1Rows::quantize(&random(4, cols, 4));
                let rows: Vec<ActivationRow> = (0..4).map(|i| x.row(i, cols / BLOCK, w.quants)).collect();
                for kernel in &kernels {
                    for (nw, nx) in
                        [(4, 1), (4, 2), (4, 3), (4, 4), (2, 1), (2, 2), (2, 3), (2, 4), (1, 1), (1, 2), (1, 3), (1, 4)]
                    {
                        let mut out = [[0f32; MAX_TILE_ACTIVATIONS]; MAX_TILE_WEIGHTS];
                        kernel.tile(w.quants, &weights[..nw], &rows[..nx], &mut out);
                        for k in 0..nw {
                            for i in 0..nx {
                                let scalar = dot_scalar(w.quants, weights[k], rows[i]);
                                assert!(
                                    (out[k][i] - scalar).abs() <= 1e-4 * scalar.abs().max(1.0),
                                    "{kernel:?} {dtype:?}, {cols} columns, {nw}×{nx} tile, ({k}, {i}): {} vs {scalar}",
                                    out[k][i]
                                );
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }
}
