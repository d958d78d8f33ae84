//! The CNN's steps as candle custom ops for the CPU, each with its backward written
//! directly: a 3×3 convolution with its bias, ReLU and 2×2 max pooling
//! ([`conv3x3_relu_pool`]), and a linear layer ([`linear`](mod@linear)).
//!
//! Composed of candle's general ops, these were mostly copies, zero-fills and element-wise
//! passes in training: the patches were nine `narrow`ed views of a padded copy `stack`ed
//! together, whose backward pads each of the nine gradients back to full size and adds
//! them; the bias a broadcast add whose backward is a strided reduction, ReLU's backward
//! four passes (zeros, compare, convert, multiply); max pooling's backward upsamples,
//! compares, averages and divides. And candle's backward gives every intermediate
//! tensor a gradient of zeros that each contribution is then added to: for the patches
//! of the second convolution, 9.4 MB zeroed and added per step. Here each forward writes
//! its output once and each backward one gradient per input that needs one; the
//! products go through [`crate::models::sgemm`] on candle's CPU thread pool. On other
//! devices the network keeps candle's ops.
//!
//! - `conv`: the convolution, image by image: patches (im2col), product, bias, ReLU,
//!   pooling;
//! - `linear`: `x · Wᵀ + b`, the weight packed per call.

mod conv;
mod linear;

use candle_core::{CpuStorage, Layout, Result, Storage, bail};

pub use self::{conv::conv3x3_relu_pool, linear::linear};

/// The f32 data of a contiguous tensor.
fn contiguous_f32<'a>(op: &str, storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else { bail!("{op}: f32 only") };
    let Some((start, end)) = layout.contiguous_offsets() else { bail!("{op}: the input must be contiguous") };
    Ok(&data[start..end])
}

/// The f32 data of a contiguous CPU tensor, from its storage (held by the caller).
fn tensor_f32<'a>(op: &str, storage: &'a Storage, layout: &Layout) -> Result<&'a [f32]> {
    let Storage::Cpu(storage) = storage else { bail!("{op}: CPU tensors only") };
    contiguous_f32(op, storage, layout)
}

/// The first `len` elements of a buffer kept between calls, grown if it is shorter: for
/// scratch space that the caller overwrites whole.
fn scratch(buffer: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buffer.len() < len {
        buffer.resize(len, 0.0);
    }
    &mut buffer[..len]
}

#[cfg(test)]
fn close(a: &candle_core::Tensor, b: &candle_core::Tensor) {
    let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    let scale = b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap().max(1.0);
    assert!(diff <= 1e-5 * scale, "differ by {diff} at a scale of {scale}");
}
