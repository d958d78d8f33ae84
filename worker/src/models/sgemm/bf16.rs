//! Linear layers in bfloat16: the weight and each input row rounded to bfloat16, the sums
//! f32, on whichever of two engines the CPU has.
//!
//! - Intel AMX (Advanced Matrix Extensions; Xeons since Sapphire Rapids): one `tdpbf16ps`
//!   multiplies a 16 × 32 tile of inputs by a 32 × 16 tile of weights into a 16 × 16 tile
//!   of f32 sums: 16,384 multiply-adds, where an AVX-512 multiply-add does 16. Measured on
//!   the Xeon this was written on, a chain of them ran at 3.7 TFLOP/s on one core, against
//!   about 150 GFLOP/s for the f32 kernels; a product is then bound by moving its operands
//!   into the tiles.
//! - AVX-512 BF16 (AMD Zen 4 and later, Intel Cooper Lake): one `vdpbf16ps` adds to each
//!   of sixteen f32 sums the products of a pair of bfloat16 inputs and a pair of weights:
//!   32 multiply-adds where an f32 AVX-512 multiply-add does 16, and the weights take half
//!   the bytes to stream.
//!
//! Either way each task computes blocks of 32 rows × 32 columns: on AMX four sum tiles,
//! two tiles of input rows and two of weight columns loaded per 32 depths; with
//! `vdpbf16ps` eight rows at a time, two vectors of sums a row, each input pair
//! broadcast to all sixteen lanes.
//!
//! Layouts (both padded with zeros, so that every tile is whole):
//! - input rows: row-major, each value bfloat16 and each row's depth padded to a multiple
//!   of 32, the rows to a multiple of 32;
//! - weight: the f32 kernels' panels of 16 columns, each pair of depths one `u32` of two
//!   bfloat16 (the "VNNI" layout both instructions read their right-hand side in), the
//!   pairs padded to a multiple of 16 and the panels to an even number.
//!
//! `DEEPHARDWAY_NO_BF16=1` in the environment keeps every layer f32; `DEEPHARDWAY_NO_AMX=1`
//! (see [`crate::models::amx`]) leaves AMX aside for `vdpbf16ps` where the CPU has it.

use super::{Activation, NR, vector_math};
use crate::models::{
    amx::{self as tiles, Feature, TileConfig},
    disjoint::DisjointSlice,
};

/// Rows and columns of a block: two tiles each way.
const BLOCK: usize = 32;
/// Pairs of depths per tile: 32 bfloat16, one 64-byte tile row.
const TILE_PAIRS: usize = 16;

/// The engine a bfloat16 layer's blocks run on.
///
/// Invariant: [`Engine::Amx`] is made only where [`tiles::available`] says so for
/// bfloat16 (a CPU with AMX-TILE, AMX-BF16, AVX-512F and AVX-512 BF16, in a process Linux
/// has granted the tile state), and [`Engine::DotProducts`] only on a CPU with AVX-512F
/// and AVX-512 BF16.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Engine {
    Amx,
    DotProducts,
}

/// Eight tiles of 16 rows of 64 bytes: four of sums, two of inputs, two of weights.
const CONFIG: TileConfig = TileConfig::new([(16, 64); 8]);

impl Engine {
    /// The fastest engine this process may use, if any.
    pub(super) fn detect() -> Option<Self> {
        Self::available().first().copied()
    }

    /// Every engine this process may use, the fastest first (the tests check each).
    pub(super) fn available() -> Vec<Self> {
        let mut engines = Vec::new();
        if std::env::var_os("DEEPHARDWAY_NO_BF16").is_some() {
            return engines;
        }
        if tiles::available(Feature::Bf16) {
            engines.push(Engine::Amx);
        }
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bf16") {
            engines.push(Engine::DotProducts);
        }
        engines
    }

    /// `out = activation(x · W + bias)` for `rows` rows of `x` (row-major, `inputs`
    /// wide), `W` packed by [`pack_weight`] (`outputs` columns).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn forward(
        self,
        x: &[f32],
        rows: usize,
        inputs: usize,
        weight: &[u32],
        outputs: usize,
        bias: &[f32],
        activation: Activation,
        out: &mut [f32],
    ) {
        assert_eq!(x.len(), rows * inputs, "input is not {rows} × {inputs}");
        assert_eq!(bias.len(), outputs, "a bias for {outputs} columns");
        assert_eq!(out.len(), rows * outputs, "output is not {rows} × {outputs}");
        let pairs = padded_pairs(inputs);
        let panels = outputs.div_ceil(NR).next_multiple_of(2);
        assert_eq!(weight.len(), panels * pairs * NR, "a weight packed for {outputs} × {inputs}");
        let padded_rows = rows.next_multiple_of(BLOCK);
        ROUNDED.with_borrow_mut(|rounded| {
            if rounded.len() < padded_rows * pairs {
                rounded.resize(padded_rows * pairs, 0);
            }
            let rounded = &mut rounded[..padded_rows * pairs];
            let target = DisjointSlice::new(rounded);
            candle_core::utils::barrier_pool().execute_chunked(padded_rows, |range| {
                for r in range {
                    // SAFETY: row `r` belongs to this task alone.
                    let row = unsafe { target.slice_mut(r * pairs..(r + 1) * pairs) };
                    let live = if r < rows { inputs.div_ceil(2) } else { 0 };
                    if live > 0 {
                        // SAFETY: the invariant: either engine means AVX-512F and BF16.
                        unsafe { kernel::round_pairs(&x[r * inputs..(r + 1) * inputs], &mut row[..live]) };
                    }
                    row[live..].fill(0);
                }
            });
            let rounded = &*rounded;
            let out = DisjointSlice::new(out);
            let blocks = (padded_rows / BLOCK, panels / 2);
            candle_core::utils::barrier_pool().execute_chunked(blocks.0 * blocks.1, |range| {
                let mut sums = [0f32; BLOCK * BLOCK];
                if self == Engine::Amx {
                    // SAFETY: the invariant: the process may use AMX. The tiles are
                    // configured here, on the thread that uses them, and released below.
                    unsafe { CONFIG.load() };
                }
                for b in range {
                    let (row0, col0) = (b / blocks.1 * BLOCK, b % blocks.1 * BLOCK);
                    let cols = BLOCK.min(outputs.saturating_sub(col0));
                    let live_rows = BLOCK.min(rows.saturating_sub(row0));
                    // The sums start at the bias.
                    let mut first = [0f32; BLOCK];
                    first[..cols].copy_from_slice(&bias[col0..col0 + cols]);
                    sums.as_chunks_mut::<BLOCK>().0.iter_mut().for_each(|row| *row = first);
                    let a = &rounded[row0 * pairs..(row0 + BLOCK) * pairs];
                    let panel = |p: usize| &weight[p * pairs * NR..(p + 1) * pairs * NR];
                    let (first, second) = (panel(col0 / NR), panel(col0 / NR + 1));
                    // SAFETY: the invariant (and for AMX, configured above); the slices hold
                    // 32 rows of `pairs` and two panels of `pairs` (a multiple of 16, as
                    // `padded_pairs` makes it).
                    unsafe {
                        match self {
                            Engine::Amx => kernel::block(a, pairs, first, second, &mut sums),
                            Engine::DotProducts => kernel::dot_products(a, pairs, first, second, &mut sums, live_rows),
                        }
                    }
                    for (r, values) in sums.as_chunks_mut::<BLOCK>().0.iter_mut().take(live_rows).enumerate() {
                        let values = &mut values[..cols];
                        match activation {
                            Activation::None => {}
                            Activation::Gelu => vector_math::gelu_in_place(values),
                            Activation::Relu => values.iter_mut().for_each(|v| *v = v.max(0.0)),
                        }
                        let at = (row0 + r) * outputs + col0;
                        // SAFETY: block `b`'s rows and columns belong to this task alone.
                        unsafe { out.slice_mut(at..at + cols) }.copy_from_slice(values);
                    }
                }
                if self == Engine::Amx {
                    // SAFETY: as for `load`.
                    unsafe { tiles::release() };
                }
            });
        });
    }
}

thread_local! {
    /// Input rows rounded to bfloat16, kept between calls.
    static ROUNDED: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Pairs of depths per row or panel, padded to whole tiles.
fn padded_pairs(depth: usize) -> usize {
    depth.div_ceil(2).next_multiple_of(TILE_PAIRS)
}

/// `weight` (row-major `outputs × inputs`) rounded to bfloat16 and packed for
/// [`Engine::forward`].
pub(super) fn pack_weight(weight: &[f32], outputs: usize, inputs: usize) -> Vec<u32> {
    assert_eq!(weight.len(), outputs * inputs, "weight is not {outputs} × {inputs}");
    let pairs = padded_pairs(inputs);
    let panels = outputs.div_ceil(NR).next_multiple_of(2);
    let mut packed = vec![0u32; panels * pairs * NR];
    for (o, row) in weight.chunks_exact(inputs).enumerate() {
        let (p, j) = (o / NR, o % NR);
        for (pp, pair) in row.chunks(2).enumerate() {
            packed[(p * pairs + pp) * NR + j] = bf16_pair(pair[0], pair.get(1).copied().unwrap_or(0.0));
        }
    }
    packed
}

/// `x` rounded to bfloat16, to nearest with ties to even (as `vcvtne2ps2bf16` rounds;
/// the values here are never NaN).
pub(super) fn bf16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    ((bits + 0x7fff + ((bits >> 16) & 1)) >> 16) as u16
}

/// Two values as one pair of bfloat16, the first in the lower half.
fn bf16_pair(low: f32, high: f32) -> u32 {
    u32::from(bf16_bits(low)) | (u32::from(bf16_bits(high)) << 16)
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod kernel {
    use std::arch::{asm, x86_64::*};

    use super::{BLOCK, TILE_PAIRS};

    /// `sums (32 × 32) += a (32 rows of `pairs`) · [first | second] (two panels of
    /// `pairs` × 16)`, all bfloat16 pairs, sums f32.
    ///
    /// # Safety
    ///
    /// The tiles must be configured on this thread (`CONFIG`); `a` must hold `32 ×
    /// pairs` and each panel `pairs × 16` values, `pairs` a multiple of 16.
    pub(super) unsafe fn block(
        a: &[u32],
        pairs: usize,
        first: &[u32],
        second: &[u32],
        sums: &mut [f32; BLOCK * BLOCK],
    ) {
        debug_assert!(pairs.is_multiple_of(TILE_PAIRS) && a.len() >= BLOCK * pairs);
        debug_assert!(first.len() >= pairs * 16 && second.len() >= pairs * 16);
        let (a, first, second, c) = (a.as_ptr(), first.as_ptr(), second.as_ptr(), sums.as_mut_ptr());
        let (a_stride, c_stride, panel_stride) = (pairs * 4, BLOCK * 4, 64usize);
        // SAFETY: every tile row read or written lies inside the slices (16 rows of 64
        // bytes from each pointer below, with the strides given, within the lengths the
        // caller guarantees); the tiles are configured (the caller's promise).
        unsafe {
            asm!(
                "tileloadd tmm0, [{c0} + {cs}*1]",
                "tileloadd tmm1, [{c1} + {cs}*1]",
                "tileloadd tmm2, [{c2} + {cs}*1]",
                "tileloadd tmm3, [{c3} + {cs}*1]",
                c0 = in(reg) c,
                c1 = in(reg) c.add(16),
                c2 = in(reg) c.add(16 * BLOCK),
                c3 = in(reg) c.add(16 * BLOCK + 16),
                cs = in(reg) c_stride,
                options(nostack, readonly),
            );
            for pp in (0..pairs).step_by(TILE_PAIRS) {
                asm!(
                    "tileloadd tmm4, [{a0} + {as}*1]",
                    "tileloadd tmm5, [{a1} + {as}*1]",
                    "tileloadd tmm6, [{b0} + {bs}*1]",
                    "tileloadd tmm7, [{b1} + {bs}*1]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    a0 = in(reg) a.add(pp),
                    a1 = in(reg) a.add(16 * pairs + pp),
                    b0 = in(reg) first.add(pp * 16),
                    b1 = in(reg) second.add(pp * 16),
                    as = in(reg) a_stride,
                    bs = in(reg) panel_stride,
                    options(nostack, readonly),
                );
            }
            asm!(
                "tilestored [{c0} + {cs}*1], tmm0",
                "tilestored [{c1} + {cs}*1], tmm1",
                "tilestored [{c2} + {cs}*1], tmm2",
                "tilestored [{c3} + {cs}*1], tmm3",
                c0 = in(reg) c,
                c1 = in(reg) c.add(16),
                c2 = in(reg) c.add(16 * BLOCK),
                c3 = in(reg) c.add(16 * BLOCK + 16),
                cs = in(reg) c_stride,
                options(nostack),
            );
        }
    }

    /// Rows in a pass of [`dot_products`]: two vectors of sums a row make sixteen
    /// accumulators, enough independent `vdpbf16ps` to cover their latency, beside the
    /// two weight vectors.
    const PASS_ROWS: usize = 8;

    /// The same block as [`block`] with AVX-512 BF16's `vdpbf16ps`: for each pair of
    /// depths, the two panels' 16 weight pairs are one vector each, and each row's input
    /// pair is broadcast to every lane. Only the first `live_rows` rows (rounded up to a
    /// pass) are computed: the rest of the block is padding.
    ///
    /// # Safety
    ///
    /// The CPU must have AVX-512F and AVX-512 BF16; `a` must hold `32 × pairs` and each
    /// panel `pairs × 16` values.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn dot_products(
        a: &[u32],
        pairs: usize,
        first: &[u32],
        second: &[u32],
        sums: &mut [f32; BLOCK * BLOCK],
        live_rows: usize,
    ) {
        assert!(a.len() >= BLOCK * pairs && first.len() >= pairs * 16 && second.len() >= pairs * 16);
        let (w0, w1) = (first.as_ptr(), second.as_ptr());
        for row0 in (0..live_rows.min(BLOCK)).step_by(PASS_ROWS) {
            let a = a[row0 * pairs..].as_ptr();
            let c = sums[row0 * BLOCK..].as_mut_ptr();
            // SAFETY: the pass reads rows `row0 .. row0 + 8` of `a` (within its 32 rows,
            // `row0` being a multiple of 8 below 32) at pairs `pp < pairs`, the two
            // panels' `pp * 16 .. pp * 16 + 16`, and reads and writes rows `row0 ..
            // row0 + 8` of the 32 × 32 sums: all inside the lengths asserted above. The
            // CPU has the features (the caller's promise); the casts only rename 512 bits.
            unsafe {
                let mut acc: [[__m512; 2]; PASS_ROWS] = std::array::from_fn(|i| {
                    [_mm512_loadu_ps(c.add(i * BLOCK)), _mm512_loadu_ps(c.add(i * BLOCK + 16))]
                });
                for pp in 0..pairs {
                    let left: __m512bh = std::mem::transmute(_mm512_loadu_si512(w0.add(pp * 16).cast()));
                    let right: __m512bh = std::mem::transmute(_mm512_loadu_si512(w1.add(pp * 16).cast()));
                    for (i, acc) in acc.iter_mut().enumerate() {
                        let x: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a.add(i * pairs + pp) as i32));
                        acc[0] = _mm512_dpbf16_ps(acc[0], x, left);
                        acc[1] = _mm512_dpbf16_ps(acc[1], x, right);
                    }
                }
                for (i, acc) in acc.iter().enumerate() {
                    _mm512_storeu_ps(c.add(i * BLOCK), acc[0]);
                    _mm512_storeu_ps(c.add(i * BLOCK + 16), acc[1]);
                }
            }
        }
    }

    /// `values` rounded to bfloat16, two to a `u32` (see [`super::bf16_pair`]); `out`
    /// holds `values.len().div_ceil(2)`.
    ///
    /// # Safety
    ///
    /// The CPU must have AVX-512F and AVX-512 BF16.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn round_pairs(values: &[f32], out: &mut [u32]) {
        assert_eq!(out.len(), values.len().div_ceil(2));
        let (chunks, rest) = values.as_chunks::<32>();
        for (chunk, out) in chunks.iter().zip(out.chunks_exact_mut(16)) {
            // SAFETY: 32 values in, 16 pairs out, both inside the slices; the CPU has the
            // features (the caller's promise). `cvtne2ps` puts its second operand's
            // sixteen first: the values stay in order. The cast only renames 512 bits.
            unsafe {
                let (low, high) = (_mm512_loadu_ps(chunk.as_ptr()), _mm512_loadu_ps(chunk.as_ptr().add(16)));
                let pairs: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(high, low));
                _mm512_storeu_si512(out.as_mut_ptr().cast(), pairs);
            }
        }
        let out = &mut out[chunks.len() * 16..];
        for (out, pair) in out.iter_mut().zip(rest.chunks(2)) {
            *out = super::bf16_pair(pair[0], pair.get(1).copied().unwrap_or(0.0));
        }
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
mod kernel {
    //! Neither engine here: [`super::Engine::detect`] never makes one.
    use super::BLOCK;

    pub(super) unsafe fn block(_: &[u32], _: usize, _: &[u32], _: &[u32], _: &mut [f32; BLOCK * BLOCK]) {
        unreachable!("no AMX")
    }

    pub(super) unsafe fn dot_products(
        _: &[u32],
        _: usize,
        _: &[u32],
        _: &[u32],
        _: &mut [f32; BLOCK * BLOCK],
        _: usize,
    ) {
        unreachable!("no AVX-512 BF16")
    }

    pub(super) unsafe fn round_pairs(_: &[f32], _: &mut [u32]) {
        unreachable!("no AMX")
    }
}
