//! AVX2 + FMA masked-linear gradient kernels: the input gradient on 16-token tiles (a block's 4
//! transposed `dy` rows held in 8 ymm), the weight gradient 2 rows × 4 channels at a time (8 ymm
//! accumulators, 6 loads per 8 FMAs).

use std::arch::x86_64::*;
use std::ops::Range;

use super::Tiles;
use crate::blocks::BLOCK;

const TW: usize = 16;

/// As the AVX-512 `dx_tile`, on 16-token tiles: the same FMA chain per element.
///
/// # Safety
/// AVX2 and FMA must be available. (Bounds are asserted.)
#[allow(clippy::needless_range_loop)] // y[c][q] and a[q] share q
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn dx_tile(yt: &[f32], spans: &[Range<usize>], rows: &[u32], cw: &[f32], k0: u32, acc: &mut [f32]) {
    assert!(yt.len() >= spans.len() * BLOCK * TW);
    let kr = acc.len() / TW;
    for (b, span) in spans.iter().enumerate() {
        if span.is_empty() {
            continue;
        }
        assert!(span.end <= rows.len() && cw.len() >= span.end * BLOCK);
        let mut y = [[_mm256_setzero_ps(); 2]; BLOCK];
        for (c, yc) in y.iter_mut().enumerate() {
            for (q, v) in yc.iter_mut().enumerate() {
                // SAFETY: rows 4b..4b + 4 of 16 floats lie inside `yt` (asserted above).
                *v = unsafe { _mm256_loadu_ps(yt.as_ptr().add((b * BLOCK + c) * TW + 8 * q)) };
            }
        }
        for e in span.clone() {
            let r = rows[e].wrapping_sub(k0) as usize;
            assert!(r < kr, "row outside the accumulator tile");
            // SAFETY: `r < kr`, so the row's 16 floats lie inside `acc`; `e` is inside `cw`
            // (asserted above).
            unsafe {
                let a = acc.as_mut_ptr().add(r * TW);
                let w: [__m256; BLOCK] = std::array::from_fn(|c| _mm256_set1_ps(*cw.get_unchecked(e * BLOCK + c)));
                for q in 0..2 {
                    let mut v = _mm256_loadu_ps(a.add(8 * q));
                    for c in 0..BLOCK {
                        v = _mm256_fmadd_ps(y[c][q], w[c], v);
                    }
                    _mm256_storeu_ps(a.add(8 * q), v);
                }
            }
        }
    }
}

/// `sums[r][c] = Σ_{t ∈ cols} xt[rows[r]][t]·yt[4b + c][t]`, up to 2 rows at once.
///
/// # Safety
/// AVX2 and FMA must be available. (Bounds are checked by [`Tiles::offsets`].)
#[allow(clippy::needless_range_loop)] // acc[r][c], x[r], y[c]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn dw_rows(tiles: &Tiles, rows: &[u32], b: usize, cols: Range<usize>, sums: &mut [[f32; BLOCK]; 4]) {
    assert!(!rows.is_empty() && rows.len() <= 2);
    let last = rows[rows.len() - 1];
    let offs: [(usize, usize); 2] = std::array::from_fn(|r| tiles.offsets(*rows.get(r).unwrap_or(&last), b, &cols));
    let mut acc = [[_mm256_setzero_ps(); BLOCK]; 2];
    let (xp, yp) = (tiles.xt.as_ptr(), tiles.yt[offs[0].1..].as_ptr());
    for q in cols.start / 8..cols.end / 8 {
        // SAFETY: `offsets` checked that every row and the block's 4 channel rows hold `tp`
        // floats inside their buffers and that `cols` lies inside a row; `8q + 8 ≤ cols.end`.
        unsafe {
            let x: [__m256; 2] = std::array::from_fn(|r| _mm256_loadu_ps(xp.add(offs[r].0 + 8 * q)));
            let y: [__m256; BLOCK] = std::array::from_fn(|c| _mm256_loadu_ps(yp.add(c * tiles.tp + 8 * q)));
            for r in 0..2 {
                for c in 0..BLOCK {
                    acc[r][c] = _mm256_fmadd_ps(x[r], y[c], acc[r][c]);
                }
            }
        }
    }
    for r in 0..rows.len() {
        for c in 0..BLOCK {
            sums[r][c] = hsum256(acc[r][c]);
        }
    }
}

/// The sum of a ymm's 8 floats: halves, then pairs, then the last two.
#[target_feature(enable = "avx2,fma")]
fn hsum256(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}
