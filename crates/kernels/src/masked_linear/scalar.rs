//! Portable masked-linear gradient kernels: the input gradient in exactly the FMA order of the
//! SIMD kernels (`f32::mul_add`), the weight gradient one row at a time.

use std::ops::Range;

use super::Tiles;
use crate::blocks::BLOCK;

/// `acc [rows][tw] += Σ_b Σ_c w[e][c]·yt[4b + c][..]` for every entry `e` of `spans[b]` (row
/// `rows[e] − k0`), blocks ascending, one `mul_add` chain per element (see the module doc).
pub(super) fn dx_tile(
    yt: &[f32],
    tw: usize,
    spans: &[Range<usize>],
    rows: &[u32],
    cw: &[f32],
    k0: u32,
    acc: &mut [f32],
) {
    for (b, span) in spans.iter().enumerate() {
        let y = &yt[b * BLOCK * tw..(b + 1) * BLOCK * tw];
        for e in span.clone() {
            let w = &cw[e * BLOCK..(e + 1) * BLOCK];
            let r = (rows[e] - k0) as usize;
            for (tt, a) in acc[r * tw..(r + 1) * tw].iter_mut().enumerate() {
                let mut v = *a;
                for c in 0..BLOCK {
                    v = y[c * tw + tt].mul_add(w[c], v);
                }
                *a = v;
            }
        }
    }
}

/// `sums[r][c] = Σ_{t ∈ cols} xt[rows[r]][t]·yt[4b + c][t]`, one row at a time.
pub(super) fn dw_rows(tiles: &Tiles, rows: &[u32], b: usize, cols: Range<usize>, sums: &mut [[f32; BLOCK]; 4]) {
    for (r, &row) in rows.iter().enumerate() {
        let (xo, yo) = tiles.offsets(row, b, &cols);
        let x = &tiles.xt[xo + cols.start..xo + cols.end];
        for (c, s) in sums[r].iter_mut().enumerate() {
            let y = &tiles.yt[yo + c * tiles.tp + cols.start..yo + c * tiles.tp + cols.end];
            *s = x.iter().zip(y).fold(0f32, |s, (xv, yv)| xv.mul_add(*yv, s));
        }
    }
}
