//! AVX-512 masked-linear gradient kernels: the input gradient on 64-token tiles (a block's 4
//! transposed `dy` rows held in 16 zmm), the weight gradient 4 rows × 4 channels at a time (16 zmm
//! accumulators, 8 loads per 16 FMAs).

use std::arch::x86_64::*;
use std::ops::Range;

use super::Tiles;
use crate::blocks::BLOCK;

const TW: usize = 64;

/// `acc [rows][64] += Σ_b Σ_c w[e][c]·yt[4b + c][..]` for every entry `e` of `spans[b]` (row
/// `rows[e] − k0`): per element `fma(dy3, w3, fma(dy2, w2, fma(dy1, w1, fma(dy0, w0, acc))))`,
/// blocks ascending, the order of the scalar kernel.
///
/// # Safety
/// AVX-512 F must be available. (Bounds are asserted.)
#[allow(clippy::needless_range_loop)] // y[c][q] and a[q] share q
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn dx_tile(yt: &[f32], spans: &[Range<usize>], rows: &[u32], cw: &[f32], k0: u32, acc: &mut [f32]) {
    assert!(yt.len() >= spans.len() * BLOCK * TW);
    let kr = acc.len() / TW;
    for (b, span) in spans.iter().enumerate() {
        if span.is_empty() {
            continue;
        }
        assert!(span.end <= rows.len() && cw.len() >= span.end * BLOCK);
        let mut y = [[_mm512_setzero_ps(); 4]; BLOCK];
        for (c, yc) in y.iter_mut().enumerate() {
            for (q, v) in yc.iter_mut().enumerate() {
                // SAFETY: rows 4b..4b + 4 of 64 floats lie inside `yt` (asserted above).
                *v = unsafe { _mm512_loadu_ps(yt.as_ptr().add((b * BLOCK + c) * TW + 16 * q)) };
            }
        }
        for e in span.clone() {
            let r = rows[e].wrapping_sub(k0) as usize;
            assert!(r < kr, "row outside the accumulator tile");
            // SAFETY: `r < kr`, so the row's 64 floats lie inside `acc`; `e` is inside `cw`
            // (asserted above).
            unsafe {
                let a = acc.as_mut_ptr().add(r * TW);
                let w: [__m512; BLOCK] = std::array::from_fn(|c| _mm512_set1_ps(*cw.get_unchecked(e * BLOCK + c)));
                for q in 0..4 {
                    let mut v = _mm512_loadu_ps(a.add(16 * q));
                    for c in 0..BLOCK {
                        v = _mm512_fmadd_ps(y[c][q], w[c], v);
                    }
                    _mm512_storeu_ps(a.add(16 * q), v);
                }
            }
        }
    }
}

/// `sums[r][c] = Σ_{t ∈ cols} xt[rows[r]][t]·yt[4b + c][t]`, up to 4 rows at once (a shorter
/// group repeats its last row and drops the copies): 16 lane-wise FMA chains, then
/// [`reduce16`].
///
/// # Safety
/// AVX-512 F must be available. (Bounds are checked by [`Tiles::offsets`].)
#[allow(clippy::needless_range_loop)] // acc[r][c], x[r], y[c]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn dw_rows(tiles: &Tiles, rows: &[u32], b: usize, cols: Range<usize>, sums: &mut [[f32; BLOCK]; 4]) {
    assert!(!rows.is_empty() && rows.len() <= 4);
    let last = rows[rows.len() - 1];
    let offs: [(usize, usize); 4] = std::array::from_fn(|r| tiles.offsets(*rows.get(r).unwrap_or(&last), b, &cols));
    let mut acc = [[_mm512_setzero_ps(); BLOCK]; 4];
    let (xp, yp) = (tiles.xt.as_ptr(), tiles.yt[offs[0].1..].as_ptr());
    for q in cols.start / 16..cols.end / 16 {
        // SAFETY: `offsets` checked that every row and the block's 4 channel rows hold `tp`
        // floats inside their buffers and that `cols` lies inside a row; `16q + 16 ≤ cols.end`.
        unsafe {
            let x: [__m512; 4] = std::array::from_fn(|r| _mm512_loadu_ps(xp.add(offs[r].0 + 16 * q)));
            let y: [__m512; BLOCK] = std::array::from_fn(|c| _mm512_loadu_ps(yp.add(c * tiles.tp + 16 * q)));
            for r in 0..4 {
                for c in 0..BLOCK {
                    acc[r][c] = _mm512_fmadd_ps(x[r], y[c], acc[r][c]);
                }
            }
        }
    }
    let mut out = [0f32; 16];
    // SAFETY: `out` holds 16 floats.
    unsafe { _mm512_storeu_ps(out.as_mut_ptr(), reduce16(acc)) };
    for r in 0..rows.len() {
        sums[r].copy_from_slice(&out[4 * r..4 * r + 4]);
    }
}

/// Lane `4r + c` of the result is the sum of the 16 floats of `acc[r][c]`: pairwise unpack-adds
/// within 128-bit lanes, then across lanes (15 adds, 30 shuffles).
#[target_feature(enable = "avx512f")]
pub(super) fn reduce16(acc: [[__m512; BLOCK]; 4]) -> __m512 {
    let a: [__m512; 16] = std::array::from_fn(|i| acc[i / 4][i % 4]);
    // v[j], per 128-bit lane: [a2j₀+a2j₂, a2j+1₀+a2j+1₂, a2j₁+a2j₃, a2j+1₁+a2j+1₃].
    let v: [__m512; 8] = std::array::from_fn(|j| {
        _mm512_add_ps(_mm512_unpacklo_ps(a[2 * j], a[2 * j + 1]), _mm512_unpackhi_ps(a[2 * j], a[2 * j + 1]))
    });
    // w[j], per 128-bit lane l: that lane's sums of a[4j..4j + 4].
    let w: [__m512; 4] = std::array::from_fn(|j| {
        let (p, q) = (_mm512_castps_pd(v[2 * j]), _mm512_castps_pd(v[2 * j + 1]));
        _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(p, q)), _mm512_castpd_ps(_mm512_unpackhi_pd(p, q)))
    });
    // y01 = [w0.l0+l2, w0.l1+l3, w1.l0+l2, w1.l1+l3], y23 likewise.
    let y01 = _mm512_add_ps(
        _mm512_shuffle_f32x4::<0b01_00_01_00>(w[0], w[1]),
        _mm512_shuffle_f32x4::<0b11_10_11_10>(w[0], w[1]),
    );
    let y23 = _mm512_add_ps(
        _mm512_shuffle_f32x4::<0b01_00_01_00>(w[2], w[3]),
        _mm512_shuffle_f32x4::<0b11_10_11_10>(w[2], w[3]),
    );
    _mm512_add_ps(_mm512_shuffle_f32x4::<0b10_00_10_00>(y01, y23), _mm512_shuffle_f32x4::<0b11_01_11_01>(y01, y23))
}
