//! The micro-kernels: one block of packed rows times one slice of a packed panel, added
//! into a tile of sums held in registers.

use super::{MR, NR};

/// The kernel this CPU can run.
///
/// Invariant: [`Kernel::Avx512`] is only made on a CPU with AVX-512F, and
/// [`Kernel::Avx2`] on one with AVX2 and FMA (by [`Kernel::available`]), so
/// [`Kernel::accumulate`] can call the kernel that enables them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kernel {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Scalar,
}

impl Kernel {
    /// The fastest kernel this CPU can run.
    pub(super) fn select() -> Self {
        Self::available()[0]
    }

    /// Every kernel this CPU can run, the fastest first (the tests check each).
    pub(super) fn available() -> Vec<Self> {
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
    pub(super) fn accumulate_pair(self, rows: [&[f32]; 2], kc: usize, slice: &[f32], sums: [&mut [f32; MR * NR]; 2]) {
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
    /// one micro-panel of packed rows (see [`super::packing`]) at one depth block.
    pub(super) fn accumulate(self, rows: &[f32], kc: usize, slice: &[f32], sums: &mut [f32; MR * NR]) {
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

    use super::super::{MR, NR};

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

    use super::super::{MR, NR};

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
