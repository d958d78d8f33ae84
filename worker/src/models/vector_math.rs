//! Element-wise and row-wise math for the CPU model code, written so that the compiler
//! vectorizes it: no libm calls in the loops (`exp` and `erf` are polynomials here, as in
//! Cephes and Abramowitz–Stegun), sums kept in eight lanes, and each entry point
//! compiled a second time with AVX2 and picked at run time, so one binary runs
//! everywhere and uses eight-lane vectors where the CPU has them.
//!
//! Accuracy: `exp` within 2 ulp of libm's over the range used, `erf` within 1.5e-7
//! absolute (Abramowitz–Stegun 7.1.26), so GELU differs from PyTorch's by far less than
//! the float rounding of the matrix products around it.

/// Defines `fn $name` as `$body` compiled twice, for the baseline CPU and with AVX2 and
/// FMA, and calls the second where the CPU has them. The body should call only
/// `#[inline(always)]` code (like the `*_inline` functions here) so that all of it is
/// compiled with the wider vectors.
macro_rules! dispatch {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) -> $ret {
            #[inline(always)]
            fn generic($($arg: $ty),*) -> $ret $body
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) -> $ret {
                    generic($($arg),*)
                }
                // SAFETY: the CPU has AVX2 and FMA.
                return unsafe { avx2($($arg),*) };
            }
            generic($($arg),*)
        }
    };
}

dispatch! {
    /// `x = gelu(x)` for each element.
    pub fn gelu_in_place(xs: &mut [f32]) -> () {
        for x in xs.iter_mut() {
            *x = gelu(*x);
        }
    }
}

dispatch! {
    /// `out = silu(gate) · up` element by element (SwiGLU's gating), `silu(g) = g σ(g)`.
    pub fn silu_times(out: &mut [f32], gate: &[f32], up: &[f32]) -> () {
        assert!(out.len() == gate.len() && out.len() == up.len());
        for ((out, &g), &u) in out.iter_mut().zip(gate).zip(up) {
            *out = g / (1.0 + exp(-g)) * u;
        }
    }
}

dispatch! {
    /// `y += alpha x`.
    pub fn add_scaled(y: &mut [f32], alpha: f32, x: &[f32]) -> () {
        add_scaled_inline(y, alpha, x)
    }
}

dispatch! {
    /// Layer normalisation of one row, in place: `(x - mean) / √(variance + eps) γ + β`.
    pub fn layer_norm(x: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) -> () {
        assert!(x.len() == gamma.len() && x.len() == beta.len() && !x.is_empty());
        let n = x.len() as f32;
        let mean = lane_sum_of(x, |v| v) / n;
        let variance = lane_sum_of(x, |v| (v - mean) * (v - mean)) / n;
        let inverse = 1.0 / (variance + eps).sqrt();
        for ((x, g), b) in x.iter_mut().zip(gamma).zip(beta) {
            *x = (*x - mean) * inverse * g + b;
        }
    }
}

/// [`add_scaled`], to inline into other vectorized code.
#[inline(always)]
pub fn add_scaled_inline(y: &mut [f32], alpha: f32, x: &[f32]) {
    assert_eq!(x.len(), y.len());
    for (y, x) in y.iter_mut().zip(x) {
        *y += alpha * x;
    }
}

/// The softmax of `xs`, in place; inlined into other vectorized code (attention).
#[inline(always)]
pub fn softmax_inline(xs: &mut [f32]) {
    let max = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = [0f32; 8];
    for chunk in xs.chunks_mut(8) {
        for (x, s) in chunk.iter_mut().zip(sum.iter_mut()) {
            *x = exp(*x - max);
            *s += *x;
        }
    }
    let scale = 1.0 / sum.iter().sum::<f32>();
    for x in xs.iter_mut() {
        *x *= scale;
    }
}

dispatch! {
    /// The softmax of `xs`, in place.
    pub fn softmax(xs: &mut [f32]) -> () {
        softmax_inline(xs)
    }
}

dispatch! {
    /// `Σ x`, in eight lanes.
    pub fn lane_sum(xs: &[f32]) -> f32 {
        lane_sum_of(xs, |v| v)
    }
}

/// `Σ f(x)` in eight lanes, so that it vectorizes.
#[inline(always)]
fn lane_sum_of(xs: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0f32; 8];
    let chunks = xs.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
    for chunk in chunks {
        for l in 0..8 {
            lanes[l] += f(chunk[l]);
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// GELU with the error function: `x Φ(x) = x (1 + erf(x / √2)) / 2`.
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// The error function, within 1.5e-7 (Abramowitz and Stegun 7.1.26).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [0.254_829_6, -0.284_496_74, 1.421_413_8, -1.453_152_1, 1.061_405_4];
    let a = x.abs();
    let t = 1.0 / (1.0 + P * a);
    let poly = ((((A[4] * t + A[3]) * t + A[2]) * t + A[1]) * t + A[0]) * t;
    (1.0 - poly * exp(-a * a)).copysign(x)
}

/// `eˣ` (Cephes' `expf`: `x = n ln 2 + r`, a degree-6 polynomial for `eʳ`, `2ⁿ` built in
/// the exponent bits). Inputs are clamped to where the result is a normal float.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LN2_HIGH: f32 = 0.693_359_4;
    const LN2_LOW: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.3, 88.7);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = x - n * LN2_HIGH - n * LN2_LOW;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1)
        * r
        + 0.5;
    let er = p * r * r + r + 1.0;
    // 2ⁿ built in the exponent bits. `n + 127` is an integer in 1..=255; added to 2²³ it
    // sits in the low bits of that float's mantissa, and shifting them into the exponent
    // drops the rest. Same bits as `(n as i32 + 127) << 23`, but that cast (saturating,
    // NaN to zero) compiled to a scalar conversion and two checks per lane, which made
    // every caller's loop scalar at that point.
    let biased = n + (127.0 + 8_388_608.0);
    er * f32::from_bits(biased.to_bits() << 23)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_and_erf_match_the_standard_library() {
        for i in -8000..=8000 {
            let x = i as f32 / 100.0;
            let (got, want) = (exp(x), x.exp());
            assert!((got - want).abs() <= 3.0 * f32::EPSILON * want, "exp({x}) = {got}, want {want}");
        }
        for i in -500..=500 {
            let x = i as f64 / 100.0;
            let want = erf_f64(x);
            let got = f64::from(erf(x as f32));
            assert!((got - want).abs() < 3e-7, "erf({x}) = {got}, want {want}");
        }
    }

    #[test]
    fn row_operations_match_plain_loops() {
        let xs: Vec<f32> = (0..37).map(|i| ((i * 7919) % 23) as f32 / 5.0 - 2.0).collect();
        let ys: Vec<f32> = (0..37).map(|i| ((i * 104_729) % 19) as f32 / 7.0 - 1.0).collect();
        let mut scaled = ys.clone();
        add_scaled(&mut scaled, 0.5, &xs);
        for ((s, x), y) in scaled.iter().zip(&xs).zip(&ys) {
            assert_eq!(*s, y + 0.5 * x);
        }

        let mut soft = xs.clone();
        softmax_inline(&mut soft);
        let total: f32 = xs.iter().map(|x| x.exp()).sum();
        for (s, x) in soft.iter().zip(&xs) {
            assert!((s - x.exp() / total).abs() < 1e-6);
        }

        let mut gated = vec![0f32; 37];
        silu_times(&mut gated, &xs, &ys);
        for ((g, x), y) in gated.iter().zip(&xs).zip(&ys) {
            let want = x / (1.0 + (-x).exp()) * y;
            assert!((g - want).abs() <= 1e-6 * want.abs().max(1.0), "silu({x}) · {y} = {g}, want {want}");
        }

        let mut normed = xs.clone();
        let (gamma, beta) = (vec![2.0; 37], vec![0.5; 37]);
        layer_norm(&mut normed, &gamma, &beta, 1e-12);
        let mean = xs.iter().sum::<f32>() / 37.0;
        let sd = (xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / 37.0).sqrt();
        for (n, x) in normed.iter().zip(&xs) {
            assert!((n - ((x - mean) / sd * 2.0 + 0.5)).abs() < 1e-4);
        }
    }

    /// erf in double precision: its Taylor series up to |x| = 4 (where its largest term,
    /// about 1e7, still leaves 1e-9 of precision), ±1 beyond (erfc(4) is 1.5e-8).
    fn erf_f64(x: f64) -> f64 {
        if x.abs() > 4.0 {
            return x.signum();
        }
        let (mut sum, mut term, mut n) = (0.0f64, x, 0.0f64);
        while term.abs() > 1e-18 * sum.abs().max(1e-300) || n < 3.0 {
            sum += term / (2.0 * n + 1.0);
            n += 1.0;
            term *= -x * x / n;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }
}
