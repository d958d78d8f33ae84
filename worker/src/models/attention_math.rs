//! The two halves of one query's attention on the CPU, shared by the BERT encoder and the
//! llama decoder: its scores against keys stored transposed, and the weighted sum of the
//! values.
//!
//! Keys are `[dimension][position]` (rows of `stride` positions), so a query's scores are
//! one multiply-add per dimension across up to 64 positions held in registers; one short
//! dot product per position would end each in a horizontal sum, and updating a score
//! buffer in memory per dimension waits on its own stores (both were most of attention's
//! time). Values are `[position][dimension]`, summed into registers across positions.
//! Keys and values are f32 (BERT) or f16 (llama's cache); the kernels convert f16 as they
//! load. The AVX-512 kernels take sixteen positions or dimensions a vector where the AVX2
//! ones take eight.

use half::f16;

/// A key or value as stored: f32 or f16.
pub trait Element: Copy + Send + Sync + 'static {
    fn to_f32(self) -> f32;

    /// Eight values at `at`, as f32.
    ///
    /// # Safety
    ///
    /// The CPU must have AVX2 and F16C, and `at` must point at eight readable values.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(at: *const Self) -> std::arch::x86_64::__m256;

    /// Sixteen values at `at`, as f32.
    ///
    /// # Safety
    ///
    /// The CPU must have AVX-512F, and `at` must point at sixteen readable values.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load16(at: *const Self) -> std::arch::x86_64::__m512;
}

impl Element for f32 {
    fn to_f32(self) -> f32 {
        self
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(at: *const Self) -> std::arch::x86_64::__m256 {
        // SAFETY: the caller's contract.
        unsafe { std::arch::x86_64::_mm256_loadu_ps(at) }
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(at: *const Self) -> std::arch::x86_64::__m512 {
        // SAFETY: the caller's contract.
        unsafe { std::arch::x86_64::_mm512_loadu_ps(at) }
    }
}

impl Element for f16 {
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(at: *const Self) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        // SAFETY: the caller's contract (eight f16 are 16 bytes; the CPU has F16C).
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(at as *const __m128i)) }
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(at: *const Self) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        // SAFETY: the caller's contract (sixteen f16 are 32 bytes; AVX-512F converts them).
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(at as *const __m256i)) }
    }
}

/// Whether this CPU runs the AVX-512 kernels (sixteen positions or dimensions a vector).
fn wide_simd() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        simd() && std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether this CPU runs the SIMD kernels.
fn simd() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        has!("avx2") && has!("fma") && has!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `scores[p] = scale · query · key_p` for the first `visible` positions; `keys` holds
/// `query.len()` rows of `stride` positions, `stride` a multiple of eight (so that whole
/// chunks of eight positions can be read: the values past `visible` are read and
/// dropped). `scores` is resized to `visible`.
pub fn scores<T: Element>(query: &[f32], keys: &[T], stride: usize, visible: usize, scale: f32, scores: &mut Vec<f32>) {
    assert!(stride.is_multiple_of(8) && visible <= stride, "stride {stride} for {visible} positions");
    assert!(keys.len() >= query.len() * stride, "keys shorter than {} rows of {stride}", query.len());
    scores.clear();
    #[cfg(target_arch = "x86_64")]
    if simd() {
        scores.resize(visible.next_multiple_of(8), 0.0);
        // Whole chunks of sixteen positions on AVX-512 where there is one, the rest (at
        // most one chunk of eight) on AVX2.
        let wide = if wide_simd() { scores.len() / 16 * 16 } else { 0 };
        if wide > 0 {
            // SAFETY: the CPU has AVX-512F (and F16C); `wide` is a multiple of sixteen and
            // at most `stride`, and `keys` holds `query.len()` rows of `stride`.
            unsafe { avx512::scores(query, keys, stride, scale, &mut scores[..wide]) };
        }
        // SAFETY: the CPU has AVX2, FMA and F16C; the rest's length is a multiple of
        // eight, it ends at most at `stride`, and `keys` holds `query.len()` rows of
        // `stride` (asserted above), read from the rest's first position on.
        unsafe { avx2::scores(query, &keys[wide..], stride, scale, &mut scores[wide..]) };
        scores.truncate(visible);
        return;
    }
    scores.resize(visible, 0.0);
    for (&q, row) in query.iter().zip(keys.chunks_exact(stride)) {
        for (score, &key) in scores.iter_mut().zip(&row[..visible]) {
            *score += q * scale * key.to_f32();
        }
    }
}

/// `out = Σ_p weights[p] · value_p`, the values rows of `stride` elements from `values[0]`,
/// each `out.len()` long.
pub fn weighted_sum<T: Element>(weights: &[f32], values: &[T], stride: usize, out: &mut [f32]) {
    let width = out.len();
    assert!(width <= stride, "rows of {width} in a stride of {stride}");
    assert!(weights.is_empty() || values.len() >= (weights.len() - 1) * stride + width, "values too short");
    #[cfg(target_arch = "x86_64")]
    if wide_simd() && width.is_multiple_of(16) && width <= 128 {
        // SAFETY: the CPU has AVX-512F; `out` holds sixteen to 128 floats, a multiple of
        // sixteen, and every row's `out.len()` values at `p * stride` lie within `values`
        // (asserted above).
        unsafe {
            match width / 16 {
                1 => avx512::weighted_sum::<T, 1>(weights, values, stride, out),
                2 => avx512::weighted_sum::<T, 2>(weights, values, stride, out),
                3 => avx512::weighted_sum::<T, 3>(weights, values, stride, out),
                4 => avx512::weighted_sum::<T, 4>(weights, values, stride, out),
                5 => avx512::weighted_sum::<T, 5>(weights, values, stride, out),
                6 => avx512::weighted_sum::<T, 6>(weights, values, stride, out),
                7 => avx512::weighted_sum::<T, 7>(weights, values, stride, out),
                _ => avx512::weighted_sum::<T, 8>(weights, values, stride, out),
            }
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if simd() && width.is_multiple_of(8) {
        for (c, out) in out.chunks_mut(64).enumerate() {
            let values = &values[c * 64..];
            // SAFETY: the CPU has AVX2, FMA and F16C; `out` holds eight to 64 floats, a
            // multiple of eight, and every row's `out.len()` values at `p * stride` lie
            // within `values` (asserted above, less the `c * 64` already skipped).
            unsafe {
                match out.len() / 8 {
                    1 => avx2::weighted_sum::<T, 1>(weights, values, stride, out),
                    2 => avx2::weighted_sum::<T, 2>(weights, values, stride, out),
                    3 => avx2::weighted_sum::<T, 3>(weights, values, stride, out),
                    4 => avx2::weighted_sum::<T, 4>(weights, values, stride, out),
                    5 => avx2::weighted_sum::<T, 5>(weights, values, stride, out),
                    6 => avx2::weighted_sum::<T, 6>(weights, values, stride, out),
                    7 => avx2::weighted_sum::<T, 7>(weights, values, stride, out),
                    _ => avx2::weighted_sum::<T, 8>(weights, values, stride, out),
                }
            }
        }
        return;
    }
    out.fill(0.0);
    for (p, &w) in weights.iter().enumerate() {
        for (o, &v) in out.iter_mut().zip(&values[p * stride..p * stride + width]) {
            *o += w * v.to_f32();
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::Element;

    /// [`super::scores`] for whole chunks of eight positions, up to 64 positions at a
    /// time: eight accumulators of eight positions, each updated once per dimension, so
    /// the multiply-adds never wait on one another.
    ///
    /// # Safety
    ///
    /// The CPU must have AVX2, FMA and F16C; `scores.len()` must be a multiple of eight
    /// and at most `stride`, and `keys` must hold `query.len()` rows of `stride`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn scores<T: Element>(query: &[f32], keys: &[T], stride: usize, scale: f32, scores: &mut [f32]) {
        let chunks = scores.len() / 8;
        let mut first = 0;
        while first < chunks {
            let n = (chunks - first).min(8);
            // SAFETY: chunks `first..first + n` lie within `scores.len() ≤ stride`
            // positions (the contract).
            unsafe {
                match n {
                    1 => block::<T, 1>(query, keys, stride, scale, first, scores),
                    2 => block::<T, 2>(query, keys, stride, scale, first, scores),
                    3 => block::<T, 3>(query, keys, stride, scale, first, scores),
                    4 => block::<T, 4>(query, keys, stride, scale, first, scores),
                    5 => block::<T, 5>(query, keys, stride, scale, first, scores),
                    6 => block::<T, 6>(query, keys, stride, scale, first, scores),
                    7 => block::<T, 7>(query, keys, stride, scale, first, scores),
                    _ => block::<T, 8>(query, keys, stride, scale, first, scores),
                }
            }
            first += n;
        }
    }

    /// Chunks `first..first + N` of eight positions.
    ///
    /// # Safety
    ///
    /// As [`scores`], with `(first + N) * 8 ≤ scores.len()`.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn block<T: Element, const N: usize>(
        query: &[f32],
        keys: &[T],
        stride: usize,
        scale: f32,
        first: usize,
        scores: &mut [f32],
    ) {
        let mut sums = [_mm256_setzero_ps(); N];
        for (d, &q) in query.iter().enumerate() {
            let q = _mm256_set1_ps(q);
            // SAFETY: row `d` < query.len() holds `stride` positions, and the chunks'
            // positions end at (first + N) * 8 ≤ stride (the contract).
            let row = unsafe { keys.as_ptr().add(d * stride + first * 8) };
            for (k, sum) in sums.iter_mut().enumerate() {
                // SAFETY: as above; the CPU has AVX2 and F16C.
                *sum = _mm256_fmadd_ps(q, unsafe { T::load8(row.add(8 * k)) }, *sum);
            }
        }
        let scale = _mm256_set1_ps(scale);
        for (k, sum) in sums.into_iter().enumerate() {
            // SAFETY: position (first + k) * 8 + 7 < scores.len() (the contract).
            unsafe { _mm256_storeu_ps(scores.as_mut_ptr().add((first + k) * 8), _mm256_mul_ps(sum, scale)) };
        }
    }

    /// [`super::weighted_sum`] for `8 D` dimensions, in `D` register accumulators.
    ///
    /// # Safety
    ///
    /// The CPU must have AVX2, FMA and F16C; `out` must hold `8 D` floats and `values` at
    /// least `(weights.len() - 1) * stride + 8 D`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn weighted_sum<T: Element, const D: usize>(
        weights: &[f32],
        values: &[T],
        stride: usize,
        out: &mut [f32],
    ) {
        let mut sums = [_mm256_setzero_ps(); D];
        for (p, &w) in weights.iter().enumerate() {
            let w = _mm256_set1_ps(w);
            // SAFETY: row p's 8 D values end within `values` (the contract).
            let row = unsafe { values.as_ptr().add(p * stride) };
            for (k, sum) in sums.iter_mut().enumerate() {
                // SAFETY: as above; the CPU has AVX2 and F16C.
                *sum = _mm256_fmadd_ps(w, unsafe { T::load8(row.add(8 * k)) }, *sum);
            }
        }
        for (k, sum) in sums.into_iter().enumerate() {
            // SAFETY: `out` holds 8 D floats (the contract).
            unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(8 * k), sum) };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::Element;

    /// [`super::scores`] for whole chunks of sixteen positions, up to 128 at a time, as
    /// the AVX2 kernel does with eight.
    ///
    /// # Safety
    ///
    /// The CPU must have AVX-512F; `scores.len()` must be a multiple of sixteen and at
    /// most `stride`, and `keys` must hold `query.len()` rows of `stride`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn scores<T: Element>(query: &[f32], keys: &[T], stride: usize, scale: f32, scores: &mut [f32]) {
        let chunks = scores.len() / 16;
        let mut first = 0;
        while first < chunks {
            let n = (chunks - first).min(8);
            // SAFETY: chunks `first..first + n` lie within `scores.len() ≤ stride`
            // positions (the contract).
            unsafe {
                match n {
                    1 => block::<T, 1>(query, keys, stride, scale, first, scores),
                    2 => block::<T, 2>(query, keys, stride, scale, first, scores),
                    3 => block::<T, 3>(query, keys, stride, scale, first, scores),
                    4 => block::<T, 4>(query, keys, stride, scale, first, scores),
                    5 => block::<T, 5>(query, keys, stride, scale, first, scores),
                    6 => block::<T, 6>(query, keys, stride, scale, first, scores),
                    7 => block::<T, 7>(query, keys, stride, scale, first, scores),
                    _ => block::<T, 8>(query, keys, stride, scale, first, scores),
                }
            }
            first += n;
        }
    }

    /// Chunks `first..first + N` of sixteen positions.
    ///
    /// # Safety
    ///
    /// As [`scores`], with `(first + N) * 16 ≤ scores.len()`.
    #[target_feature(enable = "avx512f")]
    unsafe fn block<T: Element, const N: usize>(
        query: &[f32],
        keys: &[T],
        stride: usize,
        scale: f32,
        first: usize,
        scores: &mut [f32],
    ) {
        let mut sums = [_mm512_setzero_ps(); N];
        for (d, &q) in query.iter().enumerate() {
            let q = _mm512_set1_ps(q);
            // SAFETY: row `d` < query.len() holds `stride` positions, and the chunks'
            // positions end at (first + N) * 16 ≤ stride (the contract).
            let row = unsafe { keys.as_ptr().add(d * stride + first * 16) };
            for (k, sum) in sums.iter_mut().enumerate() {
                // SAFETY: as above; the CPU has AVX-512F.
                *sum = _mm512_fmadd_ps(q, unsafe { T::load16(row.add(16 * k)) }, *sum);
            }
        }
        let scale = _mm512_set1_ps(scale);
        for (k, sum) in sums.into_iter().enumerate() {
            // SAFETY: position (first + k) * 16 + 15 < scores.len() (the contract).
            unsafe { _mm512_storeu_ps(scores.as_mut_ptr().add((first + k) * 16), _mm512_mul_ps(sum, scale)) };
        }
    }

    /// [`super::weighted_sum`] for `16 D` dimensions, in `D` register accumulators.
    ///
    /// # Safety
    ///
    /// The CPU must have AVX-512F; `out` must hold `16 D` floats and `values` at least
    /// `(weights.len() - 1) * stride + 16 D`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn weighted_sum<T: Element, const D: usize>(
        weights: &[f32],
        values: &[T],
        stride: usize,
        out: &mut [f32],
    ) {
        let mut sums = [_mm512_setzero_ps(); D];
        for (p, &w) in weights.iter().enumerate() {
            let w = _mm512_set1_ps(w);
            // SAFETY: row p's 16 D values end within `values` (the contract).
            let row = unsafe { values.as_ptr().add(p * stride) };
            for (k, sum) in sums.iter_mut().enumerate() {
                // SAFETY: as above; the CPU has AVX-512F.
                *sum = _mm512_fmadd_ps(w, unsafe { T::load16(row.add(16 * k)) }, *sum);
            }
        }
        for (k, sum) in sums.into_iter().enumerate() {
            // SAFETY: `out` holds 16 D floats (the contract).
            unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(16 * k), sum) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(i: usize) -> f32 {
        ((i * 7919 % 1009) as f32 / 500.0) - 1.0
    }

    /// Against plain loops, in f32 and f16, for lengths around the kernels' chunk (8)
    /// and block (64) sizes and widths of one to eleven vectors.
    #[test]
    fn kernels_match_plain_loops() {
        fn check<T: Element>(convert: impl Fn(f32) -> T) {
            for d in [8, 32, 64, 88] {
                for visible in [1usize, 7, 8, 9, 63, 64, 65, 130] {
                    let stride = visible.next_multiple_of(8) + 8;
                    let query: Vec<f32> = (0..d).map(value).collect();
                    let keys: Vec<T> = (0..d * stride).map(|i| convert(value(i + 11))).collect();
                    let mut got = Vec::new();
                    scores(&query, &keys, stride, visible, 0.125, &mut got);
                    assert_eq!(got.len(), visible);
                    for (p, &score) in got.iter().enumerate() {
                        let want: f32 = (0..d).map(|c| query[c] * 0.125 * keys[c * stride + p].to_f32()).sum();
                        assert!(
                            (score - want).abs() < 1e-4,
                            "d {d}, {visible} visible, position {p}: {score} vs {want}"
                        );
                    }

                    let values: Vec<T> = (0..visible * (d + 8)).map(|i| convert(value(i + 23))).collect();
                    let mut out = vec![0f32; d];
                    weighted_sum(&got, &values, d + 8, &mut out);
                    for (c, &o) in out.iter().enumerate() {
                        let want: f32 = (0..visible).map(|p| got[p] * values[p * (d + 8) + c].to_f32()).sum();
                        assert!((o - want).abs() < 1e-4, "d {d}, {visible} visible, dimension {c}: {o} vs {want}");
                    }
                }
            }
        }
        check::<f32>(|x| x);
        check::<f16>(f16::from_f32);
    }
}
