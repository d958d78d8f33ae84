//! The AVX-512 VNNI kernels: two groups of eight weight rows at once, each 512-bit vector
//! holding the same 32 bytes of both groups (the layout the AVX2 kernels read, unchanged),
//! so one `vpdpbusd` sums sixteen rows' products where the AVX2 kernels sum eight. The
//! integer sums and the float steps per lane are the AVX2 kernels' own, so every row's
//! result is bit for bit what they give.

use std::arch::x86_64::*;

use super::{ActivationRow, BLOCK, Format, GROUP_ROWS, RUN, avx2::prefetch_ahead};

/// The same bytes of two groups, `block0` in the low half.
///
/// # Safety
///
/// Both pointers must point at 32 readable bytes; the CPU must have AVX-512F.
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) unsafe fn pair(block0: *const u8, block1: *const u8) -> __m512i {
    // SAFETY: the caller's contract.
    unsafe {
        let low = _mm256_loadu_si256(block0 as *const __m256i);
        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(low), _mm256_loadu_si256(block1 as *const __m256i))
    }
}

/// Eight f16 at each of `at0` and `at1`, as sixteen f32.
///
/// # Safety
///
/// Both pointers must point at sixteen readable bytes; the CPU must have AVX-512F.
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) unsafe fn halves(at0: *const u8, at1: *const u8) -> __m512 {
    // SAFETY: the caller's contract.
    unsafe {
        let low = _mm_loadu_si128(at0 as *const __m128i);
        let both = _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(low), _mm_loadu_si128(at1 as *const __m128i));
        _mm512_cvtph_ps(both)
    }
}

/// The four activation quants at `x`, in every i32 lane.
///
/// # Safety
///
/// `x` must point at four readable bytes; the CPU must have AVX-512F.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn broadcast_run(x: *const i8) -> __m512i {
    // SAFETY: the caller's contract.
    _mm512_set1_epi32(unsafe { std::ptr::read_unaligned(x as *const i32) })
}

/// Stores the sixteen lanes of `acc`: the low eight into `out0`, the high into `out1`.
///
/// # Safety
///
/// The CPU must have AVX-512F.
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) unsafe fn store(acc: __m512, out0: &mut [f32; GROUP_ROWS], out1: &mut [f32; GROUP_ROWS]) {
    // SAFETY: each output holds eight f32.
    unsafe {
        _mm256_storeu_ps(out0.as_mut_ptr(), _mm512_castps512_ps256(acc));
        _mm256_storeu_ps(out1.as_mut_ptr(), _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(acc))));
    }
}

/// Q4_1 groups in pairs × `X` activation rows, as [`super::avx2::q4_1`]: `out[X * g +
/// i][j]` = row `j` of group `g` · `xs[i]`.
///
/// # Safety
///
/// The CPU must have AVX-512F, AVX-512BW and AVX-512 VNNI; `groups` must hold an even
/// number of whole groups of `blocks` blocks of `Format::Q4_1.group_block_bytes()` bytes,
/// `out` `X` results per group, `xs` `X` rows of `blocks` blocks. The loads below read
/// within those lengths.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn q4_1<const X: usize>(groups: &[u8], blocks: usize, xs: &[ActivationRow], out: &mut [[f32; GROUP_ROWS]]) {
    const SIZE: usize = Format::Q4_1.group_block_bytes();
    const SCALES: usize = Format::Q4_1.quant_bytes();
    let xs: &[ActivationRow; X] = xs.try_into().expect("X activation rows");
    let group_bytes = blocks * SIZE;
    assert!(groups.len().is_multiple_of(2 * group_bytes) && out.len() == groups.len() / group_bytes * X);
    // SAFETY: the intrinsics need the CPU features the caller promises. As in the AVX2
    // kernel, for each of the two groups: block `b` < `blocks` starts within its group,
    // its quants are its first 128 bytes (32 read per step) and its eight d and eight m
    // its last 32; elements 8p..8p + 8 of an activation row's block b lie within its
    // quants, and `b` within its `d` and `s`.
    unsafe {
        let low_nibbles = _mm512_set1_epi8(0x0f);
        for (pair_bytes, out) in groups.chunks_exact(2 * group_bytes).zip(out.chunks_exact_mut(2 * X)) {
            let (group0, group1) = pair_bytes.split_at(group_bytes);
            let mut acc = [_mm512_setzero_ps(); X];
            for b in 0..blocks {
                let (block0, block1) = (group0.as_ptr().add(b * SIZE), group1.as_ptr().add(b * SIZE));
                prefetch_ahead::<SIZE>(block0);
                prefetch_ahead::<SIZE>(block1);
                // Two sums per row, low nibbles and high, added at the block's end (exact
                // integers): two short chains of `vpdpbusd` instead of one long one, whose
                // latency, not the multiply units, would set the pace.
                let (mut low_sums, mut high_sums) = ([_mm512_setzero_si512(); X], [_mm512_setzero_si512(); X]);
                for p in 0..BLOCK / (2 * RUN) {
                    let packed = pair(block0.add(32 * p), block1.add(32 * p));
                    let low = _mm512_and_si512(packed, low_nibbles);
                    let high = _mm512_and_si512(_mm512_srli_epi16::<4>(packed), low_nibbles);
                    for i in 0..X {
                        let x = xs[i].qs.as_ptr().add(b * BLOCK + 2 * RUN * p);
                        let (x_low, x_high) = (broadcast_run(x), broadcast_run(x.add(RUN)));
                        low_sums[i] = _mm512_dpbusd_epi32(low_sums[i], low, x_low);
                        high_sums[i] = _mm512_dpbusd_epi32(high_sums[i], high, x_high);
                    }
                }
                let d = halves(block0.add(SCALES), block1.add(SCALES));
                let m = halves(block0.add(SCALES + 16), block1.add(SCALES + 16));
                for i in 0..X {
                    let (xd, xs) = (*xs[i].d.get_unchecked(b), *xs[i].s.get_unchecked(b));
                    let products = _mm512_cvtepi32_ps(_mm512_add_epi32(low_sums[i], high_sums[i]));
                    acc[i] = _mm512_fmadd_ps(_mm512_mul_ps(d, _mm512_set1_ps(xd)), products, acc[i]);
                    acc[i] = _mm512_fmadd_ps(m, _mm512_set1_ps(xs), acc[i]);
                }
            }
            let (out0, out1) = out.split_at_mut(X);
            for i in 0..X {
                store(acc[i], &mut out0[i], &mut out1[i]);
            }
        }
    }
}

/// Q8_0 groups in pairs × `X` activation rows, as [`super::avx2::q8_0`]: `vpdpbusd`
/// takes the weights offset to unsigned (`q_w xor 0x80` is `q_w + 128` as a byte), and
/// `128 Σq_x`, the block's activation sum times the offset, is taken off each sum: the
/// same integers as the AVX2 kernel's, one instruction a vector where taking magnitudes
/// and flipping each activation row's signs (AVX-512 has no `vpsignb`) took three.
///
/// # Safety
///
/// As for [`q4_1`], with `Format::Q8_0.group_block_bytes()` bytes a block.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn q8_0<const X: usize>(groups: &[u8], blocks: usize, xs: &[ActivationRow], out: &mut [[f32; GROUP_ROWS]]) {
    const SIZE: usize = Format::Q8_0.group_block_bytes();
    const SCALES: usize = Format::Q8_0.quant_bytes();
    let xs: &[ActivationRow; X] = xs.try_into().expect("X activation rows");
    let group_bytes = blocks * SIZE;
    assert!(groups.len().is_multiple_of(2 * group_bytes) && out.len() == groups.len() / group_bytes * X);
    // SAFETY: as in `q4_1`: a block's quants are its first 256 bytes (32 read per step)
    // and its eight d its last 16; elements 4g..4g + 4 of an activation row's block b lie
    // within its quants, and `b` within its `d` and `sums`.
    unsafe {
        let offset = _mm512_set1_epi8(i8::MIN);
        for (pair_bytes, out) in groups.chunks_exact(2 * group_bytes).zip(out.chunks_exact_mut(2 * X)) {
            let (group0, group1) = pair_bytes.split_at(group_bytes);
            let mut acc = [_mm512_setzero_ps(); X];
            for b in 0..blocks {
                let (block0, block1) = (group0.as_ptr().add(b * SIZE), group1.as_ptr().add(b * SIZE));
                prefetch_ahead::<SIZE>(block0);
                prefetch_ahead::<SIZE>(block1);
                // Two sums per row, even runs and odd, added at the block's end (see
                // `q4_1`). Each lane's sum of 32 products of at most 255 × 127: no
                // overflow.
                let mut sums = [[_mm512_setzero_si512(); X]; 2];
                for g in 0..BLOCK / RUN {
                    let w = _mm512_xor_si512(pair(block0.add(32 * g), block1.add(32 * g)), offset);
                    for i in 0..X {
                        let x = broadcast_run(xs[i].qs.as_ptr().add(b * BLOCK + RUN * g));
                        sums[g % 2][i] = _mm512_dpbusd_epi32(sums[g % 2][i], w, x);
                    }
                }
                let d = halves(block0.add(SCALES), block1.add(SCALES));
                for i in 0..X {
                    let xd = *xs[i].d.get_unchecked(b);
                    let excess = _mm512_set1_epi32(128 * *xs[i].sums.get_unchecked(b));
                    let products =
                        _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_add_epi32(sums[0][i], sums[1][i]), excess));
                    acc[i] = _mm512_fmadd_ps(_mm512_mul_ps(d, _mm512_set1_ps(xd)), products, acc[i]);
                }
            }
            let (out0, out1) = out.split_at_mut(X);
            for i in 0..X {
                store(acc[i], &mut out0[i], &mut out1[i]);
            }
        }
    }
}
