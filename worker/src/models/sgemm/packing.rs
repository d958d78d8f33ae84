//! The two operands of a product laid out as the kernels read them.
//!
//! - rows (the left-hand matrix, `m × k`): micro-panels of [`MR`] rows, each
//!   depth-major, so the kernel's [`MR`] broadcasts at one depth read consecutive floats
//!   instead of one from each of six rows far apart; the last micro-panel padded with
//!   zero rows;
//! - panels (the right-hand matrix, `k × n`): panels of [`NR`] columns, each k-major, the
//!   [`NR`] values of one depth next to each other; the last panel padded with zero
//!   columns.
//!
//! Either matrix may be transposed ([`Matrix::t`]): each layout has a loop that reads
//! the source along its contiguous dimension.

use super::{MR, Matrix, NR, Parallel};
use crate::models::disjoint::DisjointSlice;

/// Packs `a`'s rows into `packed` (grown as needed, never shrunk).
pub(super) fn rows(a: Matrix, packed: &mut Vec<f32>, parallel: Parallel) {
    let (m, k) = (a.rows, a.cols);
    let micro_panels = m.div_ceil(MR);
    let packed = grown(packed, micro_panels * MR * k);
    let target = DisjointSlice::new(packed);
    parallel.run(micro_panels, |range| {
        // SAFETY: micro-panels `range` belong to this task alone.
        let target = unsafe { target.slice_mut(range.start * MR * k..range.end * MR * k) };
        for (q, panel) in range.zip(target.chunks_exact_mut(MR * k)) {
            let live = MR.min(m - q * MR);
            if live < MR {
                panel.fill(0.0);
            }
            if a.col_stride == 1 && live == MR {
                let rows = std::array::from_fn(|i| &a.data[(q * MR + i) * a.row_stride..][..k]);
                interleave(rows, panel.as_chunks_mut::<MR>().0);
            } else if a.col_stride == 1 {
                for i in 0..live {
                    let row = &a.data[(q * MR + i) * a.row_stride..][..k];
                    for (depth, &v) in row.iter().enumerate() {
                        panel[depth * MR + i] = v;
                    }
                }
            } else if a.row_stride == 1 {
                // A transpose: each depth's rows lie next to each other.
                for (depth, values) in panel.chunks_exact_mut(MR).enumerate() {
                    values[..live].copy_from_slice(&a.data[depth * a.col_stride + q * MR..][..live]);
                }
            } else {
                for (depth, values) in panel.chunks_exact_mut(MR).enumerate() {
                    for (i, v) in values[..live].iter_mut().enumerate() {
                        *v = a.at(q * MR + i, depth);
                    }
                }
            }
        }
    });
}

/// Packs `b`'s columns into `packed` (grown as needed, never shrunk).
pub(super) fn panels(b: Matrix, packed: &mut Vec<f32>, parallel: Parallel) {
    let (k, n) = (b.rows, b.cols);
    let panels = n.div_ceil(NR);
    let packed = grown(packed, panels * k * NR);
    let target = DisjointSlice::new(packed);
    parallel.run(panels, |range| {
        // SAFETY: panels `range` belong to this task alone.
        let target = unsafe { target.slice_mut(range.start * k * NR..range.end * k * NR) };
        for (p, panel) in range.zip(target.chunks_exact_mut(k * NR)) {
            let (c0, cols) = (p * NR, NR.min(n - p * NR));
            if cols < NR {
                panel.fill(0.0);
            }
            let (depths, _) = panel.as_chunks_mut::<NR>();
            if b.col_stride == 1 && cols == NR {
                for (depth, values) in depths.iter_mut().enumerate() {
                    // A whole-array copy: a slice copy of 16 floats is a `memcpy` call.
                    *values = *<&[f32; NR]>::try_from(&b.data[depth * b.row_stride + c0..][..NR]).expect("NR wide");
                }
            } else if b.col_stride == 1 {
                for (depth, values) in depths.iter_mut().enumerate() {
                    values[..cols].copy_from_slice(&b.data[depth * b.row_stride + c0..][..cols]);
                }
            } else if b.row_stride == 1 {
                // A transpose: each column is contiguous. Blocks of NR depths, so that the
                // NR rows a block writes stay in the L1 cache while each column is read.
                let columns: [&[f32]; NR] =
                    std::array::from_fn(|j| if j < cols { &b.data[(c0 + j) * b.col_stride..][..k] } else { &[] });
                for (block, values) in depths.chunks_mut(NR).enumerate() {
                    for (j, column) in columns[..cols].iter().enumerate() {
                        for (values, &v) in values.iter_mut().zip(&column[block * NR..]) {
                            values[j] = v;
                        }
                    }
                }
            } else {
                for j in 0..cols {
                    for (depth, values) in depths.iter_mut().enumerate() {
                        values[j] = b.at(depth, c0 + j);
                    }
                }
            }
        }
    });
}

/// Packs `rows` rows of `depth`, row `r` being `row(r)[..depth]`, into `packed` (grown as
/// needed), as [`rows`] packs a matrix's.
pub(super) fn rows_of_slices<'a>(rows: usize, depth: usize, row: impl Fn(usize) -> &'a [f32], packed: &mut Vec<f32>) {
    let micro_panels = rows.div_ceil(MR);
    let packed = grown(packed, micro_panels * MR * depth);
    for (q, panel) in packed.chunks_exact_mut(MR * depth).enumerate() {
        let live = MR.min(rows - q * MR);
        let slices: [&[f32]; MR] = std::array::from_fn(|i| if i < live { &row(q * MR + i)[..depth] } else { &[] });
        let (depths, _) = panel.as_chunks_mut::<MR>();
        if live == MR {
            interleave(slices, depths);
        } else {
            for (i, slice) in slices.iter().enumerate() {
                for (values, &v) in depths.iter_mut().zip(slice.iter().chain(std::iter::repeat(&0.0))) {
                    values[i] = v;
                }
            }
        }
    }
}

/// Packs a `depth × cols` matrix, its row `d` being `row(d)[..cols]`, into `packed`
/// (grown as needed), as [`panels`] packs a matrix's.
pub(super) fn panels_of_slices<'a>(depth: usize, cols: usize, row: impl Fn(usize) -> &'a [f32], packed: &mut Vec<f32>) {
    let panels = cols.div_ceil(NR);
    let packed = grown(packed, panels * depth * NR);
    let (whole, last) = (cols / NR, cols % NR);
    // Depth by depth: each row is found once and read along its length.
    for d in 0..depth {
        let source = &row(d)[..cols];
        let (chunks, rest) = source.as_chunks::<NR>();
        for (p, values) in chunks.iter().enumerate() {
            // A whole-array copy: a slice copy of 16 floats is a `memcpy` call.
            *<&mut [f32; NR]>::try_from(&mut packed[(p * depth + d) * NR..][..NR]).expect("NR wide") = *values;
        }
        if last > 0 {
            let values = &mut packed[(whole * depth + d) * NR..][..NR];
            values[..last].copy_from_slice(rest);
            values[last..].fill(0.0);
        }
    }
}

/// Six rows of equal length read side by side into micro-panel depths.
fn interleave<T: Copy>(rows: [&[T]; MR], depths: &mut [[T; MR]]) {
    let [r0, r1, r2, r3, r4, r5] = rows;
    let columns = r0.iter().zip(r1).zip(r2).zip(r3).zip(r4).zip(r5);
    for (values, (((((&v0, &v1), &v2), &v3), &v4), &v5)) in depths.iter_mut().zip(columns) {
        *values = [v0, v1, v2, v3, v4, v5];
    }
}

/// The first `len` elements of `buffer`, grown with zeros if it is shorter: the packing
/// writes every element it hands on, so a reused buffer is not cleared first.
fn grown(buffer: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buffer.len() < len {
        buffer.resize(len, 0.0);
    }
    &mut buffer[..len]
}
