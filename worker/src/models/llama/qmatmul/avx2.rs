//! The AVX2 kernels (and the same with AVX-VNNI's `vpdpbusd`), on groups of eight
//! weight rows.

use std::arch::x86_64::*;

use half::f16;

use super::{ActivationRow, BLOCK, Format, GROUP_ROWS, Q8_1Rows, RUN};

/// How far ahead of the block being multiplied the kernels ask for weights: decoding
/// one sequence streams every weight once per token, and without these hints the
/// loads waited on memory (a 65,536 × 576 Q4_1 product by one row read 16-17 GB/s
/// on the 2-core development machine; 26-35 GB/s with them, 2.5-4 KiB ahead).
const PREFETCH_DISTANCE: usize = 3072;

/// Asks for the bytes of the block `PREFETCH_DISTANCE` after `block` (a block of
/// `SIZE` bytes; the group's blocks, and groups, lie back to back).
#[target_feature(enable = "avx2")]
#[inline]
pub(super) fn prefetch_ahead<const SIZE: usize>(block: *const u8) {
    for line in (0..SIZE).step_by(64) {
        // A prefetch never faults, so the address may lie past the matrix's end;
        // `wrapping_add` computes it without claiming it is in bounds.
        _mm_prefetch::<_MM_HINT_T0>(block.wrapping_add(PREFETCH_DISTANCE + line) as *const i8);
    }
}

/// The four activation quants at `x`, in every i32 lane.
///
/// # Safety
///
/// `x` must point at four readable bytes.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn broadcast_run(x: *const i8) -> __m256i {
    // SAFETY: the caller's contract.
    _mm256_set1_epi32(unsafe { std::ptr::read_unaligned(x as *const i32) })
}

/// Eight f16 at `at`, as f32.
///
/// # Safety
///
/// `at` must point at sixteen readable bytes.
#[target_feature(enable = "avx2,f16c")]
#[inline]
unsafe fn halves(at: *const u8) -> __m256 {
    // SAFETY: the caller's contract.
    _mm256_cvtph_ps(unsafe { _mm_loadu_si128(at as *const __m128i) })
}

/// [`Q8_1Rows::quantize`] a block per step: the largest magnitude by a max tree, the
/// quants rounded ties-to-even (`vroundps`) and packed to bytes, their sum from the
/// i32 lanes. The same operations on the same values as `quantize_generic`.
///
/// # Safety
///
/// The CPU must have AVX2.
#[target_feature(enable = "avx2")]
pub unsafe fn quantize(xs: &[f32]) -> Q8_1Rows {
    let blocks = xs.len() / BLOCK;
    let mut out = Q8_1Rows {
        qs: vec![0; blocks * BLOCK],
        d: Vec::with_capacity(blocks),
        s: Vec::with_capacity(blocks),
        sums: Vec::with_capacity(blocks),
    };
    let sign = _mm256_set1_ps(-0.0);
    // `packs` interleaves 128-bit lanes; this puts the bytes back in element order.
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (block, qs) in xs.chunks_exact(BLOCK).zip(out.qs.chunks_exact_mut(BLOCK)) {
        // SAFETY: a block holds 32 f32s, four loads of eight.
        let v: [__m256; 4] = std::array::from_fn(|k| unsafe { _mm256_loadu_ps(block.as_ptr().add(8 * k)) });
        let magnitudes = v.map(|v| _mm256_andnot_ps(sign, v));
        let lanes =
            _mm256_max_ps(_mm256_max_ps(magnitudes[0], magnitudes[1]), _mm256_max_ps(magnitudes[2], magnitudes[3]));
        let half = _mm_max_ps(_mm256_castps256_ps128(lanes), _mm256_extractf128_ps(lanes, 1));
        let quarter = _mm_max_ps(half, _mm_movehl_ps(half, half));
        let amax = _mm_cvtss_f32(_mm_max_ss(quarter, _mm_movehdup_ps(quarter)));
        let d = amax / 127.0;
        let inverse = _mm256_set1_ps(if d == 0.0 { 0.0 } else { 1.0 / d });
        let q = v.map(|v| {
            _mm256_cvtps_epi32(_mm256_round_ps(
                _mm256_mul_ps(v, inverse),
                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
            ))
        });
        let sum = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
        let half = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
        let quarter = _mm_add_epi32(half, _mm_unpackhi_epi64(half, half));
        let sum = _mm_cvtsi128_si32(_mm_add_epi32(quarter, _mm_shuffle_epi32(quarter, 0b01)));
        let bytes = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
        // SAFETY: `qs` is one block's 32 bytes.
        unsafe { _mm256_storeu_si256(qs.as_mut_ptr() as *mut __m256i, _mm256_permutevar8x32_epi32(bytes, order)) };
        let d = f16::from_f32(d).to_f32();
        out.d.push(d);
        out.s.push(f16::from_f32(d * sum as f32).to_f32());
        out.sums.push(sum);
    }
    out
}

/// Q4_1 groups × `X` activation rows: `out[X * g + i][j]` = row `j` of group `g` ·
/// `xs[i]`.
///
/// Per block and activation row, the eight quant vectors' nibbles times the broadcast
/// activation quants are summed in 16-bit lanes (`vpmaddubsw`, sixteen products of at
/// most 15 × 127 each: no overflow), widened to one i32 lane per weight row, and scaled
/// by `d_w d_x`; the offset term adds `m_w s_x`.
///
/// # Safety
///
/// The CPU must have AVX2, FMA and F16C; `groups` must hold whole groups of `blocks`
/// blocks of `Format::Q4_1.group_block_bytes()` bytes, `out` `X` results per group,
/// `xs` `X` rows of `blocks` blocks (`qs` 32 bytes a block, `d` and `s` one value a
/// block). The loads below read within those lengths.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q4_1<const X: usize>(groups: &[u8], blocks: usize, xs: &[ActivationRow], out: &mut [[f32; GROUP_ROWS]]) {
    // SAFETY: this CPU has what `q4_1_with` without VNNI needs (the caller's promise),
    // and the rest of the contract is passed on.
    unsafe { q4_1_with::<X, false>(groups, blocks, xs, out) }
}

/// [`q4_1`] with AVX-VNNI: each run of four nibbles times four activation quants is
/// summed straight into its row's i32 lane by one `vpdpbusd`, where AVX2 takes
/// `vpmaddubsw`, a 16-bit add and, per block, `vpmaddwd`. The same integers.
///
/// # Safety
///
/// As for [`q4_1`], and the CPU must have AVX-VNNI.
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
pub unsafe fn q4_1_vnni<const X: usize>(
    groups: &[u8],
    blocks: usize,
    xs: &[ActivationRow],
    out: &mut [[f32; GROUP_ROWS]],
) {
    // SAFETY: as in `q4_1`, with AVX-VNNI (the caller's promise).
    unsafe { q4_1_with::<X, true>(groups, blocks, xs, out) }
}

/// The body of [`q4_1`] and [`q4_1_vnni`], inlined into each so that it is compiled
/// with their CPU features.
///
/// # Safety
///
/// As for [`q4_1_vnni`] when `VNNI`, else as for [`q4_1`].
#[inline(always)]
unsafe fn q4_1_with<const X: usize, const VNNI: bool>(
    groups: &[u8],
    blocks: usize,
    xs: &[ActivationRow],
    out: &mut [[f32; GROUP_ROWS]],
) {
    const SIZE: usize = Format::Q4_1.group_block_bytes();
    const SCALES: usize = Format::Q4_1.quant_bytes();
    let xs: &[ActivationRow; X] = xs.try_into().expect("X activation rows");
    // SAFETY: the intrinsics need the CPU features the caller promises. The pointer
    // reads stay within the contract's lengths: block `b` < `blocks` starts within
    // its group; its quants are its first 128 bytes (32 read per step) and its eight
    // d and eight m its last 32; elements 8p..8p + 8 of an activation row's block b
    // lie within its `blocks * 32` quants, and `b` within its `d` and `s`; `out[i]`
    // holds eight f32s.
    unsafe {
        let low_nibbles = _mm256_set1_epi8(0x0f);
        let ones = _mm256_set1_epi16(1);
        for (group, out) in groups.chunks_exact(blocks * SIZE).zip(out.chunks_exact_mut(X)) {
            let mut acc = [_mm256_setzero_ps(); X];
            for b in 0..blocks {
                let block = group.as_ptr().add(b * SIZE);
                prefetch_ahead::<SIZE>(block);
                // 16-bit pair sums without VNNI (sixteen products of at most 15 × 127
                // each: no overflow), one i32 lane per row with it.
                let mut sums = [_mm256_setzero_si256(); X];
                for p in 0..BLOCK / (2 * RUN) {
                    let packed = _mm256_loadu_si256(block.add(32 * p) as *const __m256i);
                    let low = _mm256_and_si256(packed, low_nibbles);
                    let high = _mm256_and_si256(_mm256_srli_epi16(packed, 4), low_nibbles);
                    for i in 0..X {
                        let x = xs[i].qs.as_ptr().add(b * BLOCK + 2 * RUN * p);
                        let (x_low, x_high) = (broadcast_run(x), broadcast_run(x.add(RUN)));
                        sums[i] = if VNNI {
                            _mm256_dpbusd_avx_epi32(_mm256_dpbusd_avx_epi32(sums[i], low, x_low), high, x_high)
                        } else {
                            let products =
                                _mm256_add_epi16(_mm256_maddubs_epi16(low, x_low), _mm256_maddubs_epi16(high, x_high));
                            _mm256_add_epi16(sums[i], products)
                        };
                    }
                }
                let (d, m) = (halves(block.add(SCALES)), halves(block.add(SCALES + 16)));
                for i in 0..X {
                    let (xd, xs) = (*xs[i].d.get_unchecked(b), *xs[i].s.get_unchecked(b));
                    let sums = if VNNI { sums[i] } else { _mm256_madd_epi16(sums[i], ones) };
                    let products = _mm256_cvtepi32_ps(sums);
                    acc[i] = _mm256_fmadd_ps(_mm256_mul_ps(d, _mm256_set1_ps(xd)), products, acc[i]);
                    acc[i] = _mm256_fmadd_ps(m, _mm256_set1_ps(xs), acc[i]);
                }
            }
            for i in 0..X {
                _mm256_storeu_ps(out[i].as_mut_ptr(), acc[i]);
            }
        }
    }
}

/// Q8_0 groups × `X` activation rows, as [`q4_1`].
///
/// `vpmaddubsw` wants one unsigned operand: it gets `|q_w|` (up to 128, which fits a
/// byte unsigned) and the activation quants with the weights' signs (at most 127 in
/// magnitude), so a pair of products is at most 32,512 and never saturates. Each
/// vector's pairs are widened to i32 at once, since two vectors' sums could overflow
/// 16 bits.
///
/// # Safety
///
/// As for [`q4_1`], with `Format::Q8_0.group_block_bytes()` bytes a block.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q8_0<const X: usize>(groups: &[u8], blocks: usize, xs: &[ActivationRow], out: &mut [[f32; GROUP_ROWS]]) {
    // SAFETY: as in `q4_1`.
    unsafe { q8_0_with::<X, false>(groups, blocks, xs, out) }
}

/// [`q8_0`] with AVX-VNNI (`vpdpbusd` on the same operands, as [`q4_1_vnni`]).
///
/// # Safety
///
/// As for [`q8_0`], and the CPU must have AVX-VNNI.
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
pub unsafe fn q8_0_vnni<const X: usize>(
    groups: &[u8],
    blocks: usize,
    xs: &[ActivationRow],
    out: &mut [[f32; GROUP_ROWS]],
) {
    // SAFETY: as in `q4_1_vnni`.
    unsafe { q8_0_with::<X, true>(groups, blocks, xs, out) }
}

/// The body of [`q8_0`] and [`q8_0_vnni`] (see [`q4_1_with`]).
///
/// # Safety
///
/// As for [`q8_0_vnni`] when `VNNI`, else as for [`q8_0`].
#[inline(always)]
unsafe fn q8_0_with<const X: usize, const VNNI: bool>(
    groups: &[u8],
    blocks: usize,
    xs: &[ActivationRow],
    out: &mut [[f32; GROUP_ROWS]],
) {
    const SIZE: usize = Format::Q8_0.group_block_bytes();
    const SCALES: usize = Format::Q8_0.quant_bytes();
    let xs: &[ActivationRow; X] = xs.try_into().expect("X activation rows");
    // SAFETY: as in `q4_1_with`: the block's quants are its first 256 bytes (32 read
    // per step) and its eight d its last 16; elements 4g..4g + 4 of an activation
    // row's block b lie within its quants.
    unsafe {
        let ones = _mm256_set1_epi16(1);
        for (group, out) in groups.chunks_exact(blocks * SIZE).zip(out.chunks_exact_mut(X)) {
            let mut acc = [_mm256_setzero_ps(); X];
            for b in 0..blocks {
                let block = group.as_ptr().add(b * SIZE);
                prefetch_ahead::<SIZE>(block);
                let mut sums = [_mm256_setzero_si256(); X];
                for g in 0..BLOCK / RUN {
                    let w = _mm256_loadu_si256(block.add(32 * g) as *const __m256i);
                    let magnitudes = _mm256_abs_epi8(w);
                    for i in 0..X {
                        let x = broadcast_run(xs[i].qs.as_ptr().add(b * BLOCK + RUN * g));
                        let signed = _mm256_sign_epi8(x, w);
                        sums[i] = if VNNI {
                            _mm256_dpbusd_avx_epi32(sums[i], magnitudes, signed)
                        } else {
                            let pairs = _mm256_maddubs_epi16(magnitudes, signed);
                            _mm256_add_epi32(sums[i], _mm256_madd_epi16(pairs, ones))
                        };
                    }
                }
                let d = halves(block.add(SCALES));
                for i in 0..X {
                    let xd = *xs[i].d.get_unchecked(b);
                    acc[i] = _mm256_fmadd_ps(_mm256_mul_ps(d, _mm256_set1_ps(xd)), _mm256_cvtepi32_ps(sums[i]), acc[i]);
                }
            }
            for i in 0..X {
                _mm256_storeu_ps(out[i].as_mut_ptr(), acc[i]);
            }
        }
    }
}
