//! Three CNN steps as candle custom ops for the CPU, each with its backward written
//! directly: the 3×3 patches of a padded image (im2col), a convolution's bias added and
//! ReLU applied, and 2×2 max pooling.
//!
//! Composed of candle's general ops, these were mostly copies, zero-fills and element-wise
//! passes in training: the patches were nine `narrow`ed views of a padded copy `stack`ed
//! together, whose backward pads each of the nine gradients back to full size and adds
//! them; the bias a broadcast add whose backward is a strided reduction, ReLU's backward
//! four passes (zeros, compare, convert, multiply); max pooling's backward upsamples,
//! compares, averages and divides. Profiled on the catvnoncat CNN, memset, memmove and
//! element-wise maps took about half of each step. Here each forward writes its output
//! once and each backward one gradient per input, planes spread over candle's CPU thread
//! pool. On other devices the network keeps candle's ops.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, bail};

use crate::models::{
    disjoint::DisjointSlice,
    sgemm::{Activation, PackedLinear},
};

/// The patches of a 3×3 convolution with padding 1: `(n, c, h, w)` → `(n, c·9, h·w)`,
/// row `ch·9 + 3·dy + dx` holding input channel `ch` shifted by `(dy - 1, dx - 1)`, zero
/// where that falls outside the image (the order of a conv weight's last dimensions).
pub fn patches3x3(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Patches3x3)
}

/// 2×2 max pooling with stride 2 (odd trailing rows and columns dropped, as candle's
/// `max_pool2d(2)` does); the gradient goes to the first largest element of each window,
/// as PyTorch's does.
pub fn max_pool2x2(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(MaxPool2x2)
}

/// `x · weightᵀ` for a linear layer, `x` `(n, inputs)` and `weight` `(outputs, inputs)`:
/// the product through [`PackedLinear`], and a backward that computes the input's
/// gradient only when something needs it. candle's own product computes both sides'
/// gradients every time, and the first layer's input is the images: for the original
/// network on catvnoncat that was a second 209 × 20 × 12,288 product, and a zero-filled
/// buffer the size of the data set added into, on every step, for nothing.
pub fn linear(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&weight.contiguous()?, Linear)
}

/// `relu(x + bias)` with the bias per channel: `x` is `(n, c, h, w)`, `bias` `(c,)`.
pub fn bias_relu(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&bias.contiguous()?, BiasRelu)
}

/// The f32 data of a contiguous tensor.
fn contiguous_f32<'a>(op: &str, storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else { bail!("{op}: f32 only") };
    let Some((start, end)) = layout.contiguous_offsets() else { bail!("{op}: the input must be contiguous") };
    Ok(&data[start..end])
}

/// A new buffer of `planes × out_size`, output plane `p` written by `f(p, plane)`, the
/// planes spread over the thread pool.
fn per_plane(planes: usize, out_size: usize, f: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
    let mut out = vec![0f32; planes * out_size];
    let target = DisjointSlice::new(&mut out);
    candle_core::utils::barrier_pool().execute_chunked(planes, |range| {
        for plane in range {
            // SAFETY: output plane `plane` belongs to this task alone.
            f(plane, unsafe { target.slice_mut(plane * out_size..(plane + 1) * out_size) });
        }
    });
    out
}

/// For tap offset `d` (0, 1 or 2) along an axis of `len`: the output positions whose
/// input `position + d - 1` lies inside, and that input's first position.
fn tap_span(d: usize, len: usize) -> (std::ops::Range<usize>, usize) {
    match d {
        0 => (1..len, 0),
        1 => (0..len, 0),
        _ => (0..len.saturating_sub(1), 1),
    }
}

struct Patches3x3;

impl CustomOp1 for Patches3x3 {
    fn name(&self) -> &'static str {
        "patches-3x3"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = layout.shape().dims4()?;
        let input = contiguous_f32(self.name(), storage, layout)?;
        let out = per_plane(n * c, 9 * h * w, |p, taps| {
            let image = &input[p * h * w..(p + 1) * h * w];
            for (tap, out) in taps.chunks_exact_mut(h * w).enumerate() {
                let ((rows, first_row), (cols, first_col)) = (tap_span(tap / 3, h), tap_span(tap % 3, w));
                for (i, y) in rows.enumerate() {
                    let source = &image[(first_row + i) * w + first_col..][..cols.len()];
                    out[y * w + cols.start..y * w + cols.end].copy_from_slice(source);
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((n, c * 9, h * w))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let (_, _, h, w) = arg.dims4()?;
        Ok(Some(grad_res.contiguous()?.apply_op1_no_bwd(&PatchesGrad { h, w })?))
    }
}

/// The backward of [`Patches3x3`] (col2im): each input pixel's gradient is the sum of the
/// nine patch entries it was copied to.
struct PatchesGrad {
    h: usize,
    w: usize,
}

impl CustomOp1 for PatchesGrad {
    fn name(&self) -> &'static str {
        "patches-3x3-grad"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c9, hw) = layout.shape().dims3()?;
        let (h, w) = (self.h, self.w);
        if !c9.is_multiple_of(9) || hw != h * w {
            bail!("{}: gradient of shape {:?} does not fit {h}×{w} images", self.name(), layout.shape());
        }
        let grad = contiguous_f32(self.name(), storage, layout)?;
        let out = per_plane(n * c9 / 9, hw, |p, image| {
            let taps = &grad[p * 9 * hw..(p + 1) * 9 * hw];
            for (tap, grad) in taps.chunks_exact(hw).enumerate() {
                let ((rows, first_row), (cols, first_col)) = (tap_span(tap / 3, h), tap_span(tap % 3, w));
                for (i, y) in rows.enumerate() {
                    let target = &mut image[(first_row + i) * w + first_col..][..cols.len()];
                    for (t, g) in target.iter_mut().zip(&grad[y * w + cols.start..y * w + cols.end]) {
                        *t += g;
                    }
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((n, c9 / 9, h, w))))
    }
}

struct Linear;

impl candle_core::CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, inputs) = l1.shape().dims2()?;
        let (outputs, weight_inputs) = l2.shape().dims2()?;
        if inputs != weight_inputs {
            bail!("{}: {inputs} inputs for a weight of {:?}", self.name(), l2.shape());
        }
        let (x, weight) = (contiguous_f32(self.name(), s1, l1)?, contiguous_f32(self.name(), s2, l2)?);
        let mut out = vec![0f32; n * outputs];
        // Packing the weight costs one pass over it, against `n` passes in the product.
        PackedLinear::new(weight, None, outputs, inputs).forward(x, n, Activation::None, &mut out);
        Ok((CpuStorage::F32(out), Shape::from((n, outputs))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad_weight = grad_res.t()?.matmul(x)?;
        let grad_x = if x.track_op() { Some(grad_res.matmul(weight)?) } else { None };
        Ok((grad_x, Some(grad_weight)))
    }
}

struct MaxPool2x2;

impl MaxPool2x2 {
    /// The index within the input plane of each output's first largest element.
    fn argmax(plane: &[f32], w: usize, y: usize, x: usize) -> usize {
        let candidates =
            [2 * y * w + 2 * x, 2 * y * w + 2 * x + 1, (2 * y + 1) * w + 2 * x, (2 * y + 1) * w + 2 * x + 1];
        candidates.into_iter().fold(candidates[0], |best, i| if plane[i] > plane[best] { i } else { best })
    }
}

impl CustomOp1 for MaxPool2x2 {
    fn name(&self) -> &'static str {
        "max-pool-2x2"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = layout.shape().dims4()?;
        let (oh, ow) = (h / 2, w / 2);
        let input = contiguous_f32(self.name(), storage, layout)?;
        let out = per_plane(n * c, oh * ow, |p, out| {
            let plane = &input[p * h * w..(p + 1) * h * w];
            for y in 0..oh {
                let (top, bottom) = (&plane[2 * y * w..][..2 * ow], &plane[(2 * y + 1) * w..][..2 * ow]);
                for (x, out) in out[y * ow..(y + 1) * ow].iter_mut().enumerate() {
                    *out = top[2 * x].max(top[2 * x + 1]).max(bottom[2 * x].max(bottom[2 * x + 1]));
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((n, c, oh, ow))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(arg.apply_op2_no_bwd(&grad_res.contiguous()?, &MaxPoolGrad)?))
    }
}

/// The backward of [`MaxPool2x2`], from its input and the output's gradient: each
/// output's gradient to its window's first largest element.
struct MaxPoolGrad;

impl candle_core::CustomOp2 for MaxPoolGrad {
    fn name(&self) -> &'static str {
        "max-pool-2x2-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l1.shape().dims4()?;
        let (oh, ow) = (h / 2, w / 2);
        if l2.shape().dims() != [n, c, oh, ow] {
            bail!("{}: gradient of shape {:?} for an input of {:?}", self.name(), l2.shape(), l1.shape());
        }
        let (input, grad) = (contiguous_f32(self.name(), s1, l1)?, contiguous_f32(self.name(), s2, l2)?);
        let out = per_plane(n * c, h * w, |p, out| {
            let plane = &input[p * h * w..(p + 1) * h * w];
            for y in 0..oh {
                for x in 0..ow {
                    out[MaxPool2x2::argmax(plane, w, y, x)] += grad[p * oh * ow + y * ow + x];
                }
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

struct BiasRelu;

impl candle_core::CustomOp2 for BiasRelu {
    fn name(&self) -> &'static str {
        "bias-relu"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l1.shape().dims4()?;
        if l2.shape().dims() != [c] {
            bail!("{}: a bias of shape {:?} for {c} channels", self.name(), l2.shape());
        }
        let (x, bias) = (contiguous_f32(self.name(), s1, l1)?, contiguous_f32(self.name(), s2, l2)?);
        let plane = h * w;
        let out = per_plane(n * c, plane, |p, out| {
            let b = bias[p % c];
            for (o, &v) in out.iter_mut().zip(&x[p * plane..(p + 1) * plane]) {
                *o = (v + b).max(0.0);
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        bias: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // Where the output is positive the gradient passes, elsewhere it stops (ReLU's
        // derivative at 0 taken as 0, as candle's and PyTorch's).
        let grad_x = res.apply_op2_no_bwd(&grad_res.contiguous()?, &ReluGrad)?;
        let grad_bias = grad_x.apply_op1_no_bwd(&ChannelSums { channels: bias.dim(0)? })?;
        Ok((Some(grad_x), Some(grad_bias)))
    }
}

/// `grad` where `output > 0`, else 0.
struct ReluGrad;

impl candle_core::CustomOp2 for ReluGrad {
    fn name(&self) -> &'static str {
        "relu-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() {
            bail!("{}: shapes {:?} and {:?} differ", self.name(), l1.shape(), l2.shape());
        }
        let (output, grad) = (contiguous_f32(self.name(), s1, l1)?, contiguous_f32(self.name(), s2, l2)?);
        let out = output.iter().zip(grad).map(|(&o, &g)| if o > 0.0 { g } else { 0.0 }).collect();
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// The sum of each channel of `(n, c, h, w)`: `(c,)`.
struct ChannelSums {
    channels: usize,
}

impl CustomOp1 for ChannelSums {
    fn name(&self) -> &'static str {
        "channel-sums"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (_, c, h, w) = layout.shape().dims4()?;
        if c != self.channels {
            bail!("{}: {c} channels, {} expected", self.name(), self.channels);
        }
        let data = contiguous_f32(self.name(), storage, layout)?;
        let mut sums = vec![0f32; c];
        for (p, plane) in data.chunks_exact(h * w).enumerate() {
            sums[p % c] += crate::models::vector_math::lane_sum(plane);
        }
        Ok((CpuStorage::F32(sums), Shape::from(c)))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    fn close(a: &Tensor, b: &Tensor) {
        let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-5, "differ by {diff}");
    }

    /// The patches as candle's own ops make them: nine shifted views of a padded copy.
    fn reference_patches(x: &Tensor) -> Tensor {
        let (n, c, h, w) = x.dims4().unwrap();
        let padded = x.pad_with_zeros(2, 1, 1).unwrap().pad_with_zeros(3, 1, 1).unwrap();
        let shifted: Vec<Tensor> =
            (0..9).map(|t| padded.narrow(2, t / 3, h).unwrap().narrow(3, t % 3, w).unwrap()).collect();
        Tensor::stack(&shifted, 2).unwrap().reshape((n, c * 9, h * w)).unwrap()
    }

    #[test]
    fn patches_and_their_gradient_match_candles_ops() {
        for (h, w) in [(5, 6), (1, 1), (2, 3)] {
            let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, h, w), &Device::Cpu).unwrap()).unwrap();
            let weights = Tensor::randn(0f32, 1.0, (2, 27, h * w), &Device::Cpu).unwrap();
            let (ours, theirs) = (patches3x3(&x).unwrap(), reference_patches(&x));
            close(&ours, &theirs);
            let loss = |p: &Tensor| (p * &weights).unwrap().sum_all().unwrap();
            let (g1, g2) = (loss(&ours).backward().unwrap(), loss(&theirs).backward().unwrap());
            close(g1.get(&x).unwrap(), g2.get(&x).unwrap());
        }
    }

    #[test]
    fn linear_matches_candles_product_and_skips_gradients_nobody_needs() {
        let weight = Var::from_tensor(&Tensor::randn(0f32, 1.0, (20, 70), &Device::Cpu).unwrap()).unwrap();
        let data = Tensor::randn(0f32, 1.0, (9, 70), &Device::Cpu).unwrap();
        let hidden = Var::from_tensor(&data).unwrap();
        let weights = Tensor::randn(0f32, 1.0, (9, 20), &Device::Cpu).unwrap();
        let loss = |p: &Tensor| (p * &weights).unwrap().sum_all().unwrap();
        for x in [&data, hidden.as_tensor()] {
            let (ours, theirs) = (linear(x, &weight).unwrap(), x.matmul(&weight.t().unwrap()).unwrap());
            close(&ours, &theirs);
            let (g1, g2) = (loss(&ours).backward().unwrap(), loss(&theirs).backward().unwrap());
            close(g1.get(&weight).unwrap(), g2.get(&weight).unwrap());
            match g2.get(x) {
                Some(want) if x.track_op() => close(g1.get(x).unwrap(), want),
                _ => assert!(g1.get(x).is_none(), "no gradient for data"),
            }
        }
    }

    #[test]
    fn bias_relu_matches_candles_ops_forward_and_backward() {
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, 4, 5), &Device::Cpu).unwrap()).unwrap();
        let bias = Var::from_tensor(&Tensor::randn(0f32, 1.0, 3, &Device::Cpu).unwrap()).unwrap();
        let ours = bias_relu(&x, &bias).unwrap();
        let theirs = x.broadcast_add(&bias.reshape((1, 3, 1, 1)).unwrap()).unwrap().relu().unwrap();
        close(&ours, &theirs);
        let weights = Tensor::randn(0f32, 1.0, (2, 3, 4, 5), &Device::Cpu).unwrap();
        let loss = |p: &Tensor| (p * &weights).unwrap().sum_all().unwrap();
        let (g1, g2) = (loss(&ours).backward().unwrap(), loss(&theirs).backward().unwrap());
        close(g1.get(&x).unwrap(), g2.get(&x).unwrap());
        close(g1.get(&bias).unwrap(), g2.get(&bias).unwrap());
    }

    #[test]
    fn max_pooling_matches_candles_and_sends_the_gradient_to_the_largest() {
        // An odd row is dropped, as candle's does.
        let odd = Tensor::randn(0f32, 1.0, (2, 3, 7, 5), &Device::Cpu).unwrap();
        close(&max_pool2x2(&odd).unwrap(), &odd.max_pool2d(2).unwrap());
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, 6, 6), &Device::Cpu).unwrap()).unwrap();
        let (ours, theirs) = (max_pool2x2(&x).unwrap(), x.max_pool2d(2).unwrap());
        close(&ours, &theirs);
        // Distinct values (no ties): each output's gradient goes, whole, to its window's
        // largest element. (candle's own backward hands on a quarter of it: it scales by
        // the share of the window that is largest where it means to divide by it.)
        let weights = Tensor::randn(0f32, 1.0, (2, 3, 3, 3), &Device::Cpu).unwrap();
        let grads = (&ours * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        let largest = x.eq(&ours.upsample_nearest2d(6, 6).unwrap()).unwrap().to_dtype(candle_core::DType::F32).unwrap();
        let want = (weights.upsample_nearest2d(6, 6).unwrap() * &largest).unwrap();
        close(grads.get(&x).unwrap(), &want);
        let candles = (&theirs * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        close(&(candles.get(&x).unwrap() * 4.0).unwrap(), &want);
        // A tie: the first of the window takes it all.
        let tied =
            Var::from_tensor(&Tensor::ones((1, 1, 2, 2), candle_core::DType::F32, &Device::Cpu).unwrap()).unwrap();
        let grads = max_pool2x2(&tied).unwrap().sum_all().unwrap().backward().unwrap();
        assert_eq!(grads.get(&tied).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap(), [1.0, 0.0, 0.0, 0.0]);
    }
}
