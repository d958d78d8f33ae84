//! The Intel AMX kernels: up to sixteen activation rows (sequences decoded together, or
//! a prompt's tokens) against a pair of weight groups, one `tdpbssd` per block.
//!
//! A tile row of 64 bytes holds, for one run of four elements, the four quants of each of
//! the pair's sixteen weight rows: the two groups' bytes as the AVX-512 kernel loads them
//! into one vector (for Q4_1, its low or high nibbles). Eight such rows make the weight
//! tile of one block; the activation tile is up to sixteen activation rows' 32 quants of
//! that block, read in place from [`super::Q8_1Rows`]. `tdpbssd` (signed by signed)
//! multiplies the two into sixteen sums per activation row, one per weight row: the
//! exact integers the AVX-512 kernel comes to with 128 `vpdpbusd` and as many broadcasts
//! for sixteen rows.
//! The sums are stored and scaled per block with AVX-512 in the AVX-512 kernel's own
//! float steps, in its order, so every result is bit for bit what that kernel gives: a
//! sequence's tokens do not depend on how many are decoded with it.
//!
//! Blocks are pipelined: the products of the next two blocks are under way (two sets of
//! input tiles, four sum tiles in turn) while one block's sums are stored and scaled.
//! Run one block after another, the kernel was slower than the AVX-512 one.

use std::arch::{asm, x86_64::*};

use super::{BLOCK, Format, GROUP_ROWS, RUN, avx2::prefetch_ahead, avx512};
use crate::models::amx::TileConfig;

/// Activation rows per call: the rows of a tile.
pub(super) const MAX_ROWS: usize = 16;

/// Tile rows of a block's weight tile: one per run of four elements.
const WEIGHT_ROWS: usize = BLOCK / RUN;

/// Blocks whose products are started ahead of the one being scaled (one did as well as
/// two; fewer than four, the sum tiles a block's product may take).
const LOOKAHEAD: usize = 2;
const _: () = assert!(LOOKAHEAD < 4);

/// Tiles 0 and 2: activations (`rows` × one block's 32 quants); 1 and 3: weights (8 runs ×
/// 16 rows' 4 quants); 4 to 7: sums (`rows` × 16 i32).
pub(super) fn config(rows: usize) -> TileConfig {
    assert!((1..=MAX_ROWS).contains(&rows), "a tile of {rows} activation rows");
    let (rows, block, tile_row) = (rows as u8, BLOCK as u16, 64);
    let (activations, weights, sums) = ((rows, block), (WEIGHT_ROWS as u8, tile_row), (rows, tile_row));
    TileConfig::new([activations, weights, activations, weights, sums, sums, sums, sums])
}

/// Consecutive activation rows of a [`super::Q8_1Rows`]: `rows × blocks × 32` quants, and
/// per row and block its `d` and `s`.
#[derive(Clone, Copy)]
pub(super) struct Activations<'a> {
    pub qs: &'a [i8],
    pub d: &'a [f32],
    pub s: &'a [f32],
    pub rows: usize,
}

#[repr(C, align(64))]
struct Tile<T>(T);

/// Groups in pairs × the `ROWS` activation rows `x`: `out[ROWS * g + i][j]` = row `j` of
/// group `g` · activation row `i`, as [`avx512::q4_1`] and [`avx512::q8_0`] give it. (The
/// row count is a constant so that the sixteen accumulators stay in registers.)
///
/// # Safety
///
/// The tiles must be configured on this thread by [`config`]`(ROWS)`; the CPU must have
/// AVX-512F and AVX-512BW. `groups` must hold an even number of whole groups of `blocks`
/// blocks of `format.group_block_bytes()` bytes, `out` `ROWS` results per group, `x`
/// `ROWS` rows of `blocks` blocks (asserted).
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) unsafe fn product<const ROWS: usize>(
    format: Format,
    groups: &[u8],
    blocks: usize,
    x: Activations,
    out: &mut [[f32; GROUP_ROWS]],
) {
    let rows = ROWS;
    assert!(x.rows == ROWS && ROWS <= MAX_ROWS);
    let size = format.group_block_bytes();
    let group_bytes = blocks * size;
    assert!(groups.len().is_multiple_of(2 * group_bytes) && out.len() == groups.len() / group_bytes * rows);
    assert!(x.qs.len() == rows * blocks * BLOCK && x.d.len() == rows * blocks && x.s.len() == rows * blocks);
    let mut weights = [Tile([[0i8; 64]; WEIGHT_ROWS]), Tile([[0i8; 64]; WEIGHT_ROWS])];
    let mut sums: [Tile<[[i32; 16]; MAX_ROWS]>; 4] = std::array::from_fn(|_| Tile([[0i32; 16]; MAX_ROWS]));
    let stride = blocks * BLOCK;
    // SAFETY: the intrinsics need the CPU features the caller promises. Each block `b` <
    // `blocks` of both groups lies within `groups` (asserted), with its quants first and
    // its scales (and Q4_1's offsets) after; an activation tile reads `ROWS` rows of 32
    // bytes from `x.qs + 32 b`, 32 `blocks` bytes apart, within `x.qs` (asserted), and
    // `x.d` and `x.s` hold `at(i)` for every row `i` (asserted); the weight and sum tiles
    // lie in the buffers above.
    unsafe {
        for (pair_bytes, out) in groups.chunks_exact(2 * group_bytes).zip(out.chunks_exact_mut(2 * rows)) {
            let (group0, group1) = pair_bytes.split_at(group_bytes);
            let block = |b: usize| (group0.as_ptr().add(b * size), group1.as_ptr().add(b * size));
            // Starts block `b`'s product: its weight tile filled, it and the activation
            // tile loaded into input set `b % 2`, its sums zeroed in sum tile `b % 4`.
            let mut start = |b: usize| {
                let (block0, block1) = block(b);
                prefetch(format, block0);
                prefetch(format, block1);
                let weights = &mut weights[b % 2].0;
                fill_weights(format, block0, block1, weights);
                let (a, w) = (x.qs.as_ptr().add(b * BLOCK), weights.as_ptr());
                macro_rules! issue {
                    ($a:literal, $w:literal, $c:literal) => {
                        asm!(
                            concat!("tileloadd tmm", $a, ", [{a} + {stride}*1]"),
                            concat!("tileloadd tmm", $w, ", [{w} + {sixty_four}*1]"),
                            concat!("tilezero tmm", $c),
                            concat!("tdpbssd tmm", $c, ", tmm", $a, ", tmm", $w),
                            a = in(reg) a, w = in(reg) w, stride = in(reg) stride, sixty_four = in(reg) 64usize,
                            options(nostack, readonly),
                        )
                    };
                }
                match b % 4 {
                    0 => issue!(0, 1, 4),
                    1 => issue!(2, 3, 5),
                    2 => issue!(0, 1, 6),
                    _ => issue!(2, 3, 7),
                }
            };
            let mut acc = [_mm512_setzero_ps(); ROWS];
            for b in 0..LOOKAHEAD.min(blocks) {
                start(b);
            }
            for b in 0..blocks {
                // Later blocks' products run while this one's sums are stored and scaled:
                // by the time a tile is written again, what last used it is done.
                if b + LOOKAHEAD < blocks {
                    start(b + LOOKAHEAD);
                }
                let sums = &mut sums[b % 4].0;
                let c = sums.as_mut_ptr();
                macro_rules! store {
                    ($c:literal) => {
                        asm!(
                            concat!("tilestored [{c} + {sixty_four}*1], tmm", $c),
                            c = in(reg) c, sixty_four = in(reg) 64usize,
                            options(nostack),
                        )
                    };
                }
                match b % 4 {
                    0 => store!(4),
                    1 => store!(5),
                    2 => store!(6),
                    _ => store!(7),
                }
                let (block0, block1) = block(b);
                let at = |i: usize| i * blocks + b;
                let d = avx512::halves(block0.add(format.quant_bytes()), block1.add(format.quant_bytes()));
                match format {
                    Format::Q4_1 => {
                        let m = avx512::halves(
                            block0.add(format.quant_bytes() + 16),
                            block1.add(format.quant_bytes() + 16),
                        );
                        for i in 0..rows {
                            let products = _mm512_cvtepi32_ps(_mm512_load_si512(sums[i].as_ptr() as *const _));
                            let xd = _mm512_set1_ps(*x.d.get_unchecked(at(i)));
                            acc[i] = _mm512_fmadd_ps(_mm512_mul_ps(d, xd), products, acc[i]);
                            acc[i] = _mm512_fmadd_ps(m, _mm512_set1_ps(*x.s.get_unchecked(at(i))), acc[i]);
                        }
                    }
                    Format::Q8_0 => {
                        for i in 0..rows {
                            let products = _mm512_cvtepi32_ps(_mm512_load_si512(sums[i].as_ptr() as *const _));
                            let xd = _mm512_set1_ps(*x.d.get_unchecked(at(i)));
                            acc[i] = _mm512_fmadd_ps(_mm512_mul_ps(d, xd), products, acc[i]);
                        }
                    }
                }
            }
            let (out0, out1) = out.split_at_mut(rows);
            for i in 0..rows {
                avx512::store(acc[i], &mut out0[i], &mut out1[i]);
            }
        }
    }
}

/// Asks for the block [`prefetch_ahead`]'s distance after `block`.
#[target_feature(enable = "avx2")]
#[inline]
fn prefetch(format: Format, block: *const u8) {
    match format {
        Format::Q4_1 => prefetch_ahead::<{ Format::Q4_1.group_block_bytes() }>(block),
        Format::Q8_0 => prefetch_ahead::<{ Format::Q8_0.group_block_bytes() }>(block),
    }
}

/// The weight tile of one block of a pair of groups: per run of four elements, the
/// sixteen rows' quants (Q4_1: the low nibbles' run, then the high nibbles').
///
/// # Safety
///
/// Both pointers must point at a whole block of `format`; the CPU must have AVX-512F and
/// AVX-512BW.
#[target_feature(enable = "avx512f,avx512bw")]
#[inline]
unsafe fn fill_weights(format: Format, block0: *const u8, block1: *const u8, tile: &mut [[i8; 64]; WEIGHT_ROWS]) {
    // SAFETY: the caller's contract: a block's quants are its first `quant_bytes`, read 32
    // at a time; each tile row is 64 bytes, and the tile is 64-byte aligned.
    unsafe {
        let base = tile.as_mut_ptr();
        let row = |r: usize| base.add(r) as *mut __m512i;
        match format {
            Format::Q4_1 => {
                let low_nibbles = _mm512_set1_epi8(0x0f);
                for p in 0..BLOCK / (2 * RUN) {
                    let packed = avx512::pair(block0.add(32 * p), block1.add(32 * p));
                    _mm512_store_si512(row(2 * p), _mm512_and_si512(packed, low_nibbles));
                    _mm512_store_si512(row(2 * p + 1), _mm512_and_si512(_mm512_srli_epi16::<4>(packed), low_nibbles));
                }
            }
            Format::Q8_0 => {
                for g in 0..WEIGHT_ROWS {
                    _mm512_store_si512(row(g), avx512::pair(block0.add(32 * g), block1.add(32 * g)));
                }
            }
        }
    }
}
