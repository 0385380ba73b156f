//! Portable bf16 masked-linear kernels: the exact arithmetic of `avx512_bf16.rs`, one lane of
//! `vdpbf16ps` at a time ([`crate::bf16::dot_lane`]), in the same order per output element. They are
//! the reference the AVX-512 BF16 kernels are tested against bit for bit, and run the bf16 path
//! when the scalar ISA is forced.

use std::ops::Range;

use crate::bf16::{dot_lane, pair};
use crate::blocks::{BLOCK, GROUP};

const TW: usize = 64;

/// The bf16 operands of the weight gradient for one token chunk.
pub(crate) type TilesBf16<'a> = super::Tiles<'a, u16>;

/// As the AVX-512 BF16 `fwd_tile`: per output, the groups in order, per group the pair of rows
/// 0–1, then 2–3.
pub(super) fn fwd_tile(
    xt: &[u16],
    group_start: &[usize],
    idx: &[u32],
    wp: &[u32],
    blocks: Range<usize>,
    acc: &mut [f32],
) {
    let ld = blocks.len() * BLOCK;
    for (bl, b) in blocks.enumerate() {
        for tt in 0..TW {
            for c in 0..BLOCK {
                let mut v = 0f32;
                for g in group_start[b]..group_start[b + 1] {
                    for p in 0..2 {
                        let lo = xt[idx[g * GROUP + 2 * p] as usize * TW + tt];
                        let hi = xt[idx[g * GROUP + 2 * p + 1] as usize * TW + tt];
                        v = dot_lane(v, pair(lo, hi), wp[g * 8 + 2 * c + p]);
                    }
                }
                acc[tt * ld + bl * BLOCK + c] = v;
            }
        }
    }
}

/// As the AVX-512 BF16 `dx_tile`: per element, blocks ascending, per kept row the channel pair
/// 0–1, then 2–3.
pub(super) fn dx_tile(yp: &[u32], spans: &[Range<usize>], rows: &[u32], cw: &[u32], k0: u32, acc: &mut [f32]) {
    for (b, span) in spans.iter().enumerate() {
        for e in span.clone() {
            let r = (rows[e] - k0) as usize;
            for (tt, a) in acc[r * TW..(r + 1) * TW].iter_mut().enumerate() {
                let v = dot_lane(*a, yp[2 * b * TW + tt], cw[2 * e]);
                *a = dot_lane(v, yp[(2 * b + 1) * TW + tt], cw[2 * e + 1]);
            }
        }
    }
}

/// The sum of 16 lanes in the order of the AVX-512 `reduce16`: per 128-bit lane
/// `(a0 + a2) + (a1 + a3)`, then `(u0 + u2) + (u1 + u3)`.
fn reduce16(a: &[f32; 16]) -> f32 {
    let u = |l: usize| (a[4 * l] + a[4 * l + 2]) + (a[4 * l + 1] + a[4 * l + 3]);
    (u(0) + u(2)) + (u(1) + u(3))
}

/// As the AVX-512 BF16 `dw_rows`: lane `l` of step `q` takes tokens `32q + 2l` and `32q + 2l + 1`.
pub(super) fn dw_rows(tiles: &TilesBf16, rows: &[u32], b: usize, cols: Range<usize>, sums: &mut [[f32; BLOCK]; 4]) {
    for (r, &row) in rows.iter().enumerate() {
        let (xo, yo) = tiles.offsets(row, b, &cols);
        for (c, s) in sums[r].iter_mut().enumerate() {
            let y = &tiles.yt[yo + c * tiles.tp..];
            let mut lanes = [0f32; 16];
            for q in cols.start / 32..cols.end / 32 {
                for (l, v) in lanes.iter_mut().enumerate() {
                    let t = 32 * q + 2 * l;
                    *v = dot_lane(*v, pair(tiles.xt[xo + t], tiles.xt[xo + t + 1]), pair(y[t], y[t + 1]));
                }
            }
            *s = reduce16(&lanes);
        }
    }
}
