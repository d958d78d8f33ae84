//! A 3×3 convolution with padding 1, its bias, ReLU and 2×2 max pooling, as one op, image
//! by image on candle's thread pool.
//!
//! Each image is copied once with a border of zeros, its rows `w + 2` wide
//! ([`write_padded`]). In those coordinates the input a convolution position reads at
//! tap `(dy, dx)` is the position itself shifted by `dy · (w + 2) + dx`, so the patches
//! (im2col) of one input channel at one tap are one contiguous window of its padded plane,
//! and no border needs a case: the products read their operands' rows straight from those
//! windows. The convolution is computed at `h × (w + 2)` positions, the last two of each
//! row wasted (3% at 64 wide, 6% at 32).
//!
//! Forward: the patches packed as a product's right-hand side, one product with the
//! weight whose accumulators start at the bias and end through ReLU, then pooled, which
//! of each window's four was largest kept in the op for the backward. Only the pooled
//! output is a tensor: the convolution's, four times larger, never leaves the thread's
//! cache, and candle's backward never zero-fills and adds a gradient for it.
//!
//! Backward: the pooled output's gradient sent to each window's largest element where that
//! passed ReLU (the convolution's gradient), the bias's gradient as its channels' sums,
//! the weight's row of taps by row of taps as the padded planes (each at the three column
//! shifts) shifted by the row times the gradient (three products over shifted windows of
//! the same two packed operands, the patches never made), summed over the images in a fixed order, and, only when the input
//! needs a gradient (not for the images themselves), the patches' gradient `Wᵀ ·
//! gradient` folded back onto the input (col2im).

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, bail};

use super::{contiguous_f32, scratch, tensor_f32};
use crate::models::{
    disjoint::DisjointSlice,
    sgemm::{Activation, Matrix, PackedColumns, PackedRows, Packing, Start, multiply_here, multiply_windows_here},
};

/// `max_pool2x2(relu(conv(x, weight) + bias))`: a 3×3 convolution with padding 1 as
/// candle's `conv2d(.., padding 1, stride 1)` computes it, `x` `(n, c, h, w)`, `weight`
/// `(o, c, 3, 3)`, `bias` `(o,)`; then 2×2 max pooling with stride 2 (odd trailing rows
/// and columns dropped, as candle's `max_pool2d(2)` does), whose gradient goes to the
/// first largest element of each window, as PyTorch's does. The output is `(n, o, h / 2,
/// w / 2)`.
pub fn conv3x3_relu_pool(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let op = Conv3x3ReluPool { largest: Mutex::default() };
    x.contiguous()?.apply_op3(&weight.contiguous()?, &bias.contiguous()?, op)
}

/// Per-thread buffers, kept between images and calls.
#[derive(Default)]
struct Scratch {
    /// One image with a border of zeros (see [`write_padded`]).
    padded: Vec<f32>,
    weight_rows: PackedRows,
    /// One image's patches, as a right-hand side.
    patch_columns: PackedColumns,
    /// One image's padded planes at three column shifts, as a left-hand side.
    padded_rows: PackedRows,
    /// One image's convolution, before pooling, in padded coordinates.
    convolved: Vec<f32>,
    /// The convolution's gradient, one image's, in padded coordinates (see [`unpool`]).
    masked: Vec<f32>,
    masked_columns: PackedColumns,
    patch_gradients: Vec<f32>,
    packing: Packing,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::default();
}

/// The sizes of one convolution.
#[derive(Clone, Copy, Debug)]
struct Dims {
    images: usize,
    channels: usize,
    outputs: usize,
    h: usize,
    w: usize,
}

impl Dims {
    fn of(op: &str, x: &Shape, weight: &Shape, bias: &Shape) -> Result<Self> {
        let (images, channels, h, w) = x.dims4()?;
        let (outputs, weight_channels, kh, kw) = weight.dims4()?;
        if weight_channels != channels || (kh, kw) != (3, 3) || bias.dims() != [outputs] {
            bail!("{op}: a weight of {weight:?} and a bias of {bias:?} for an input of {x:?}");
        }
        Ok(Dims { images, channels, outputs, h, w })
    }

    fn plane(&self) -> usize {
        self.h * self.w
    }

    fn image(&self) -> usize {
        self.channels * self.plane()
    }

    /// The depth of the product: each input channel's nine taps.
    fn taps(&self) -> usize {
        self.channels * 9
    }

    /// A padded row's width.
    fn wide(&self) -> usize {
        self.w + 2
    }

    /// The convolution's positions in padded coordinates, `h` rows of `w + 2`.
    fn window(&self) -> usize {
        self.h * self.wide()
    }

    /// A padded plane's length: `h + 2` rows of `w + 2`, and two zeros that the last
    /// position's last tap reaches.
    fn padded_plane(&self) -> usize {
        (self.h + 2) * self.wide() + 2
    }

    /// Row `ch·9 + 3·dy + dx` of one image's patches (the order of a conv weight's
    /// dimensions): input channel `ch` shifted by `(dy - 1, dx - 1)`, as a window of its
    /// padded plane.
    fn patch_row<'a>(&self, padded: &'a [f32], row: usize) -> &'a [f32] {
        let (channel, tap) = (row / 9, row % 9);
        &padded[channel * self.padded_plane() + self.shift(tap)..][..self.window()]
    }

    /// Tap `3·dy + dx`'s shift in padded coordinates.
    fn shift(&self, tap: usize) -> usize {
        tap / 3 * self.wide() + tap % 3
    }

    fn pooled_plane(&self) -> (usize, usize) {
        (self.h / 2, self.w / 2)
    }

    /// One image's output.
    fn output(&self) -> usize {
        let (oh, ow) = self.pooled_plane();
        self.outputs * oh * ow
    }
}

struct Conv3x3ReluPool {
    /// For each output, which of its window's four was largest (0 to 3, row by row), as
    /// the forward found them, for the backward.
    largest: Mutex<Vec<u8>>,
}

impl CustomOp3 for Conv3x3ReluPool {
    fn name(&self) -> &'static str {
        "conv3x3-relu-pool"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let name = self.name();
        let d = Dims::of(name, l1.shape(), l2.shape(), l3.shape())?;
        let (x, weight, bias) =
            (contiguous_f32(name, s1, l1)?, contiguous_f32(name, s2, l2)?, contiguous_f32(name, s3, l3)?);
        let weight = Matrix::row_major(weight, d.outputs, d.taps());
        let mut out = vec![0f32; d.images * d.output()];
        let mut largest = vec![0u8; d.images * d.output()];
        let (target, largest_target) = (DisjointSlice::new(&mut out), DisjointSlice::new(&mut largest));
        candle_core::utils::barrier_pool().execute_chunked(d.images, |images| {
            SCRATCH.with_borrow_mut(|Scratch { padded, weight_rows, patch_columns, convolved, .. }| {
                weight_rows.pack(weight);
                for i in images {
                    let padded = scratch(padded, d.channels * d.padded_plane());
                    write_padded(&x[i * d.image()..(i + 1) * d.image()], d, padded);
                    patch_columns.pack_slices(d.taps(), d.window(), |row| d.patch_row(padded, row));
                    let convolved = scratch(convolved, d.outputs * d.window());
                    let (start, relu) = (Start::RowBias(bias), Activation::Relu);
                    multiply_windows_here(weight_rows, 0, patch_columns, 0, d.taps(), start, relu, convolved);
                    let outputs = i * d.output()..(i + 1) * d.output();
                    // SAFETY: image `i`'s outputs belong to this task alone.
                    let (out, largest) =
                        unsafe { (target.slice_mut(outputs.clone()), largest_target.slice_mut(outputs)) };
                    pool(convolved, d, out, largest);
                }
            });
        });
        *self.largest.lock().expect("no poisoned lock") = largest;
        let (oh, ow) = d.pooled_plane();
        Ok((CpuStorage::F32(out), Shape::from((d.images, d.outputs, oh, ow))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let name = self.name();
        let d = Dims::of(name, x.shape(), weight.shape(), bias.shape())?;
        let grad_res = grad_res.contiguous()?;
        let ((xs, xl), (ws, wl)) = (x.storage_and_layout(), weight.storage_and_layout());
        let ((rs, rl), (gs, gl)) = (res.storage_and_layout(), grad_res.storage_and_layout());
        let (input, weight_data) = (tensor_f32(name, &xs, xl)?, tensor_f32(name, &ws, wl)?);
        let (output, grad) = (tensor_f32(name, &rs, rl)?, tensor_f32(name, &gs, gl)?);
        let weight_matrix = Matrix::row_major(weight_data, d.outputs, d.taps());
        let needs_input = x.track_op();
        let largest = self.largest.lock().expect("no poisoned lock");
        if largest.len() != output.len() {
            bail!("{name}: the backward of another forward");
        }
        let mut grad_input = if needs_input { vec![0f32; d.images * d.image()] } else { Vec::new() };
        let target = DisjointSlice::new(&mut grad_input);
        // Each chunk of images' sums for the weight (per row of taps, `(channel, column of
        // taps) × outputs`) and the
        // bias, by its first image: added in that order, whichever thread made them, so
        // that a seeded training gives the same network every time.
        let partials = Mutex::new(Vec::<(usize, Vec<f32>, Vec<f32>)>::new());
        candle_core::utils::barrier_pool().execute_chunked(d.images, |images| {
            let first = images.start;
            let (mut weight_sums, mut bias_sums) = (vec![0f32; d.taps() * d.outputs], vec![0f32; d.outputs]);
            SCRATCH.with_borrow_mut(|scratch_space| {
                let Scratch { padded, padded_rows, masked, masked_columns, patch_gradients, packing, .. } =
                    scratch_space;
                for i in images {
                    let outputs = i * d.output()..(i + 1) * d.output();
                    let masked = scratch(masked, d.outputs * d.window());
                    unpool(&grad[outputs.clone()], &output[outputs.clone()], &largest[outputs], d, masked);
                    for (sum, plane) in bias_sums.iter_mut().zip(masked.chunks_exact(d.window())) {
                        *sum += crate::models::vector_math::lane_sum(plane);
                    }
                    let padded = scratch(padded, d.channels * d.padded_plane());
                    write_padded(&input[i * d.image()..(i + 1) * d.image()], d, padded);
                    // Row of taps by row of taps: the padded planes, each at the three
                    // column shifts, shifted by the row times the gradient; each operand
                    // packed once (the patches, 9× larger, never are).
                    let depth = d.padded_plane() - 2;
                    padded_rows.pack_slices(3 * d.channels, depth, |row| {
                        &padded[row / 3 * d.padded_plane() + row % 3..][..depth]
                    });
                    let masked = Matrix::row_major(masked, d.outputs, d.window());
                    masked_columns.pack(masked.t());
                    for (dy, sums) in weight_sums.chunks_exact_mut(3 * d.channels * d.outputs).enumerate() {
                        let (output, none, window) = (Start::Output, Activation::None, d.window());
                        multiply_windows_here(
                            padded_rows,
                            dy * d.wide(),
                            masked_columns,
                            0,
                            window,
                            output,
                            none,
                            sums,
                        );
                    }
                    if needs_input {
                        let patch_gradients = scratch(patch_gradients, d.taps() * d.window());
                        multiply_here(
                            weight_matrix.t(),
                            masked,
                            Start::Zero,
                            Activation::None,
                            patch_gradients,
                            packing,
                        );
                        // SAFETY: image `i`'s gradient belongs to this task alone.
                        let grad_input = unsafe { target.slice_mut(i * d.image()..(i + 1) * d.image()) };
                        add_patch_gradients(patch_gradients, d.wide(), d, grad_input);
                    }
                }
            });
            partials.lock().expect("no poisoned lock").push((first, weight_sums, bias_sums));
        });
        let mut partials = partials.into_inner().expect("no poisoned lock");
        partials.sort_unstable_by_key(|(first, ..)| *first);
        let mut grad_weight = vec![0f32; d.outputs * d.taps()];
        let mut grad_bias = vec![0f32; d.outputs];
        for (_, weight_sums, bias_sums) in partials {
            for (dy, sums) in weight_sums.chunks_exact(3 * d.channels * d.outputs).enumerate() {
                for (row, sums) in sums.chunks_exact(d.outputs).enumerate() {
                    let (channel, dx) = (row / 3, row % 3);
                    for (o, sum) in sums.iter().enumerate() {
                        grad_weight[o * d.taps() + channel * 9 + dy * 3 + dx] += sum;
                    }
                }
            }
            grad_bias.iter_mut().zip(bias_sums).for_each(|(total, sum)| *total += sum);
        }
        let device = x.device();
        let grad_input = if needs_input {
            Some(Tensor::from_vec(grad_input, (d.images, d.channels, d.h, d.w), device)?)
        } else {
            None
        };
        Ok((
            grad_input,
            Some(Tensor::from_vec(grad_weight, weight.shape(), device)?),
            Some(Tensor::from_vec(grad_bias, d.outputs, device)?),
        ))
    }
}

/// One image `(c, h, w)` with a border of zeros: planes of `h + 2` rows of `w + 2` and
/// two zeros more (see [`Dims::patch_row`]).
fn write_padded(image: &[f32], d: Dims, padded: &mut [f32]) {
    let (w, wide) = (d.w, d.wide());
    for (plane, out) in image.chunks_exact(d.plane()).zip(padded.chunks_exact_mut(d.padded_plane())) {
        // Every element once: the top border row, each row between its two border zeros,
        // then the bottom border row and the two zeros after it.
        out[..wide].fill(0.0);
        for (y, row) in plane.chunks_exact(w).enumerate() {
            let padded_row = &mut out[(y + 1) * wide..(y + 2) * wide];
            padded_row[0] = 0.0;
            padded_row[1..=w].copy_from_slice(row);
            padded_row[w + 1] = 0.0;
        }
        out[(d.h + 1) * wide..].fill(0.0);
    }
}

/// 2×2 max pooling of one image's convolution (`d.outputs` planes of `d.h` rows, `w + 2`
/// apart) into `out`, and which of each window's four was the first largest into
/// `largest`.
fn pool(convolved: &[f32], d: Dims, out: &mut [f32], largest: &mut [u8]) {
    let (wide, (oh, ow)) = (d.wide(), d.pooled_plane());
    let planes =
        convolved.chunks_exact(d.window()).zip(out.chunks_exact_mut(oh * ow).zip(largest.chunks_exact_mut(oh * ow)));
    for (plane, (out, largest)) in planes {
        for y in 0..oh {
            let (top, bottom) = (&plane[2 * y * wide..][..2 * ow], &plane[(2 * y + 1) * wide..][..2 * ow]);
            let row = (y * ow)..(y + 1) * ow;
            for (x, (out, largest)) in out[row.clone()].iter_mut().zip(&mut largest[row]).enumerate() {
                // Row by row, a later element only if strictly larger: the first largest,
                // without branches.
                let (a, b, c, e) = (top[2 * x], top[2 * x + 1], bottom[2 * x], bottom[2 * x + 1]);
                let (right_on_top, right_below) = (b > a, e > c);
                let (upper, lower) = (if right_on_top { b } else { a }, if right_below { e } else { c });
                let below = lower > upper;
                *out = if below { lower } else { upper };
                *largest = if below { 2 + u8::from(right_below) } else { u8::from(right_on_top) };
            }
        }
    }
}

/// The backward of [`pool`] and of ReLU before it: each output's gradient to its window's
/// largest element if that was positive (ReLU passed it), zero everywhere else, in padded
/// coordinates (the two positions past each row's `w` stay zero, so what they read
/// beyond the row's end cancels).
fn unpool(grad: &[f32], output: &[f32], largest: &[u8], d: Dims, convolved: &mut [f32]) {
    let (wide, (oh, ow)) = (d.wide(), d.pooled_plane());
    convolved.fill(0.0);
    let pooled = grad.chunks_exact(oh * ow).zip(output.chunks_exact(oh * ow)).zip(largest.chunks_exact(oh * ow));
    for (((grad, output), largest), plane) in pooled.zip(convolved.chunks_exact_mut(d.window())) {
        let rows = grad.chunks_exact(ow).zip(output.chunks_exact(ow)).zip(largest.chunks_exact(ow));
        for (py, ((grad, output), largest)) in rows.enumerate() {
            let windows = &mut plane[2 * py * wide..(2 * py + 2) * wide];
            for (px, ((&g, &y), &best)) in grad.iter().zip(output).zip(largest).enumerate() {
                if y > 0.0 {
                    let best = usize::from(best);
                    windows[best / 2 * wide + 2 * px + best % 2] = g;
                }
            }
        }
    }
}

/// For tap offset `t` (0, 1 or 2) along an axis of `len`: the output positions whose
/// input `position + t - 1` lies inside, and that input's first position.
fn tap_span(t: usize, len: usize) -> (std::ops::Range<usize>, usize) {
    match t {
        0 => (1..len, 0),
        1 => (0..len, 0),
        _ => (0..len.saturating_sub(1), 1),
    }
}

/// The backward of the patches (col2im): adds to each input pixel's gradient the nine
/// patch entries it was read into. The patches' rows are `wide` apart (`w`, or `w + 2`
/// in padded coordinates).
fn add_patch_gradients(taps: &[f32], wide: usize, d: Dims, image: &mut [f32]) {
    let (h, w) = (d.h, d.w);
    for (taps, plane) in taps.chunks_exact(9 * h * wide).zip(image.chunks_exact_mut(h * w)) {
        for (tap, grad) in taps.chunks_exact(h * wide).enumerate() {
            let ((rows, first_row), (cols, first_col)) = (tap_span(tap / 3, h), tap_span(tap % 3, w));
            for (i, y) in rows.enumerate() {
                let target = &mut plane[(first_row + i) * w + first_col..][..cols.len()];
                for (t, g) in target.iter_mut().zip(&grad[y * wide + cols.start..y * wide + cols.end]) {
                    *t += g;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::{super::close, *};

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
            let d = Dims { images: 1, channels: 3, outputs: 1, h, w };
            let x = Tensor::randn(0f32, 1.0, (1, 3, h, w), &Device::Cpu).unwrap();
            // Stale values in the buffer must not survive.
            let mut padded = vec![f32::NAN; 3 * d.padded_plane()];
            write_padded(&x.flatten_all().unwrap().to_vec1::<f32>().unwrap(), d, &mut padded);
            // The patch rows' first `w` positions of each padded row.
            let ours: Vec<f32> = (0..27)
                .flat_map(|row| d.patch_row(&padded, row).chunks_exact(d.wide()).flat_map(|r| r[..w].to_vec()))
                .collect();
            close(&Tensor::from_vec(ours, (1, 27, h * w), &Device::Cpu).unwrap(), &reference_patches(&x));
            // The gradient of `sum(patches · weights)` is what col2im makes of the weights.
            let x = Var::from_tensor(&x).unwrap();
            let weights = Tensor::randn(0f32, 1.0, (1, 27, h * w), &Device::Cpu).unwrap();
            let want = (reference_patches(&x) * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            let mut ours = vec![0f32; 3 * h * w];
            add_patch_gradients(&weights.flatten_all().unwrap().to_vec1::<f32>().unwrap(), w, d, &mut ours);
            close(&Tensor::from_vec(ours, (1, 3, h, w), &Device::Cpu).unwrap(), want.get(&x).unwrap());
        }
    }
}
