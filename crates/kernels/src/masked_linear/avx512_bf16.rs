//! AVX-512 BF16 masked-linear kernels (`vdpbf16ps`: 16 lanes, each the sum of a bf16 pair
//! product into an f32 accumulator), the same arithmetic as `bf16_ref.rs` bit for bit:
//! - forward on 64-token tiles: per group of 4 kept rows, the rows' bf16 tokens interleaved in
//!   pairs of rows (`vpunpck[lh]wd`), 4 channels × 4 zmm accumulators, 16 `vdpbf16ps` per group;
//! - input gradient on 64-token tiles: a block's 2 channel pairs × 64 tokens held in 8 zmm, 8
//!   `vdpbf16ps` per kept row;
//! - weight gradient: 4 rows × 4 channels, pairs of consecutive tokens, 16 `vdpbf16ps` per 32
//!   tokens, then the same lane reduction as the f32 kernel.

use std::arch::x86_64::*;
use std::ops::Range;

use super::avx512::reduce16;
use super::bf16_ref::TilesBf16;
use crate::blocks::{BLOCK, GROUP};
use crate::transpose::store_quads512;

const TW: usize = 64;

#[inline(always)]
fn bh(v: __m512i) -> __m512bh {
    // SAFETY: both types are 512 bits of plain data.
    unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
}

/// `dst[i] = bf16(src[i])` (round to nearest even, subnormals to zero).
///
/// # Safety
/// AVX-512 F and BF16 must be available. (Lengths are asserted.)
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn to_bf16(src: &[f32], dst: &mut [u16]) {
    assert_eq!(src.len(), dst.len());
    let n = src.len();
    let mut i = 0;
    while i + 16 <= n {
        // SAFETY: `i + 16 ≤ n` for both slices; the transmute reinterprets 16 bf16 as 256 bits.
        unsafe {
            let h: __m256i =
                std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(_mm512_loadu_ps(src.as_ptr().add(i))));
            _mm256_storeu_si256(dst.as_mut_ptr().add(i) as *mut __m256i, h);
        }
        i += 16;
    }
    for j in i..n {
        dst[j] = crate::bf16::round(src[j]);
    }
}

/// `out [rows/2][64]` pairs `(bf16(yt[2j][t]), bf16(yt[2j + 1][t]))` of a transposed tile
/// `yt [rows][64]` (`rows` even).
///
/// # Safety
/// AVX-512 F and BF16 must be available. (Lengths are asserted.)
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn pair_rows(yt: &[f32], rows: usize, out: &mut [u32]) {
    assert!(rows.is_multiple_of(2) && yt.len() >= rows * TW && out.len() >= rows / 2 * TW);
    for j in 0..rows / 2 {
        for q in 0..TW / 16 {
            // SAFETY: rows 2j, 2j + 1 < rows hold 64 floats each inside `yt`, pair row j < rows/2
            // holds 64 inside `out` (asserted above); `16q + 16 ≤ 64`.
            unsafe {
                let cv = |r: usize| {
                    let h = _mm512_cvtneps_pbh(_mm512_loadu_ps(yt.as_ptr().add(r * TW + 16 * q)));
                    _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(h))
                };
                let v = _mm512_or_si512(cv(2 * j), _mm512_slli_epi32::<16>(cv(2 * j + 1)));
                _mm512_storeu_si512(out.as_mut_ptr().add(j * TW + 16 * q) as *mut __m512i, v);
            }
        }
    }
}

/// `acc [64][ld]` (token-major, `ld = 4·blocks.len()`) = `xt [K][64]` (bf16) × the blocks'
/// weights (`wp`: 8 pairs per group, `[channel][rows 0-1, rows 2-3]`).
///
/// # Safety
/// AVX-512 F, BW and BF16 must be available; every index in `idx` of these blocks is
/// `< xt.len() / 64`; `wp` holds 8 pairs per group; `acc.len() ≥ 64·ld`.
#[allow(clippy::needless_range_loop)] // a[c][q], p01[q], p23[q] share q
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(super) unsafe fn fwd_tile(
    xt: &[u16],
    group_start: &[usize],
    idx: &[u32],
    wp: &[u32],
    blocks: Range<usize>,
    acc: &mut [f32],
) {
    let ld = blocks.len() * BLOCK;
    assert!(acc.len() >= TW * ld && group_start.len() > blocks.end);
    let x = xt.as_ptr();
    for (bl, b) in blocks.enumerate() {
        let (g0, g1) = (group_start[b], group_start[b + 1]);
        assert!(idx.len() >= g1 * GROUP && wp.len() >= g1 * 8);
        let mut a = [[_mm512_setzero_ps(); 4]; BLOCK];
        for g in g0..g1 {
            // SAFETY: indices are < K (packing), so each row of 64 bf16 lies inside `xt`; the
            // group's 8 pairs lie inside `wp` (asserted above).
            unsafe {
                let ip = idx.as_ptr().add(g * GROUP);
                let row = |i: usize, h: usize| _mm512_loadu_si512(x.add(*ip.add(i) as usize * TW + 32 * h) as *const _);
                // q = 2h + s: tokens 32h + 8l + 4s + i of lane l, element i.
                let mut p01 = [_mm512_setzero_si512(); 4];
                let mut p23 = [_mm512_setzero_si512(); 4];
                for h in 0..2 {
                    let (r0, r1, r2, r3) = (row(0, h), row(1, h), row(2, h), row(3, h));
                    p01[2 * h] = _mm512_unpacklo_epi16(r0, r1);
                    p01[2 * h + 1] = _mm512_unpackhi_epi16(r0, r1);
                    p23[2 * h] = _mm512_unpacklo_epi16(r2, r3);
                    p23[2 * h + 1] = _mm512_unpackhi_epi16(r2, r3);
                }
                let w = wp.as_ptr().add(g * 8);
                for (c, ac) in a.iter_mut().enumerate() {
                    let w01 = bh(_mm512_set1_epi32(*w.add(2 * c) as i32));
                    let w23 = bh(_mm512_set1_epi32(*w.add(2 * c + 1) as i32));
                    for q in 0..4 {
                        ac[q] = _mm512_dpbf16_ps(ac[q], bh(p01[q]), w01);
                        ac[q] = _mm512_dpbf16_ps(ac[q], bh(p23[q]), w23);
                    }
                }
            }
        }
        for q in 0..4 {
            let quad = [0, 1, 2, 3].map(|c| _mm512_castps_si512(a[c][q]));
            let (h, s) = (q / 2, q % 2);
            // SAFETY: AVX-512 F is enabled here; tokens < 64 and `bl·4 + 4 ≤ ld`, so every quad
            // lies inside `acc` (`acc.len() ≥ 64·ld`, asserted above).
            unsafe { store_quads512(quad, acc.as_mut_ptr().add(bl * BLOCK), ld, |l, i| 32 * h + 8 * l + 4 * s + i) }
        }
    }
}

/// `acc [rows][64] += Σ_b Σ_p w[e][p]·yp[2b + p][..]` for every entry `e` of `spans[b]` (row
/// `rows[e] − k0`; `yp`: channel pairs of the tile, `cw`: 2 weight pairs per entry).
///
/// # Safety
/// AVX-512 F and BF16 must be available. (Bounds are asserted.)
#[allow(clippy::needless_range_loop)] // y[p][q] and a[q] share q
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn dx_tile(yp: &[u32], spans: &[Range<usize>], rows: &[u32], cw: &[u32], k0: u32, acc: &mut [f32]) {
    assert!(yp.len() >= spans.len() * 2 * TW);
    let kr = acc.len() / TW;
    for (b, span) in spans.iter().enumerate() {
        if span.is_empty() {
            continue;
        }
        assert!(span.end <= rows.len() && cw.len() >= span.end * 2);
        let mut y = [[_mm512_setzero_si512(); 4]; 2];
        for (p, yc) in y.iter_mut().enumerate() {
            for (q, v) in yc.iter_mut().enumerate() {
                // SAFETY: pair rows 2b, 2b + 1 of 64 lie inside `yp` (asserted above).
                *v = unsafe { _mm512_loadu_si512(yp.as_ptr().add((2 * b + p) * TW + 16 * q) as *const _) };
            }
        }
        for e in span.clone() {
            let r = rows[e].wrapping_sub(k0) as usize;
            assert!(r < kr, "row outside the accumulator tile");
            // SAFETY: `r < kr`, so the row's 64 floats lie inside `acc`; `e` is inside `cw`
            // (asserted above).
            unsafe {
                let a = acc.as_mut_ptr().add(r * TW);
                let w0 = bh(_mm512_set1_epi32(*cw.get_unchecked(2 * e) as i32));
                let w1 = bh(_mm512_set1_epi32(*cw.get_unchecked(2 * e + 1) as i32));
                for q in 0..4 {
                    let mut v = _mm512_loadu_ps(a.add(16 * q));
                    v = _mm512_dpbf16_ps(v, bh(y[0][q]), w0);
                    v = _mm512_dpbf16_ps(v, bh(y[1][q]), w1);
                    _mm512_storeu_ps(a.add(16 * q), v);
                }
            }
        }
    }
}

/// `sums[r][c] = Σ_{t ∈ cols} xt[rows[r]][t]·yt[4b + c][t]` in bf16 pairs of tokens, up to 4 rows
/// at once (a shorter group repeats its last row and drops the copies): 16 lane-wise chains, then
/// [`reduce16`].
///
/// # Safety
/// AVX-512 F and BF16 must be available. (Bounds are checked by [`TilesBf16::offsets`].)
#[allow(clippy::needless_range_loop)] // acc[r][c], x[r], y[c]
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn dw_rows(
    tiles: &TilesBf16,
    rows: &[u32],
    b: usize,
    cols: Range<usize>,
    sums: &mut [[f32; BLOCK]; 4],
) {
    assert!(!rows.is_empty() && rows.len() <= 4);
    let last = rows[rows.len() - 1];
    let offs: [(usize, usize); 4] = std::array::from_fn(|r| tiles.offsets(*rows.get(r).unwrap_or(&last), b, &cols));
    let mut acc = [[_mm512_setzero_ps(); BLOCK]; 4];
    let (xp, yp) = (tiles.xt.as_ptr(), tiles.yt[offs[0].1..].as_ptr());
    for q in cols.start / 32..cols.end / 32 {
        // SAFETY: `offsets` checked that every row and the block's 4 channel rows hold `tp` bf16
        // inside their buffers and that `cols` lies inside a row; `32q + 32 ≤ cols.end`.
        unsafe {
            let x: [__m512i; 4] = std::array::from_fn(|r| _mm512_loadu_si512(xp.add(offs[r].0 + 32 * q) as *const _));
            let y: [__m512i; BLOCK] =
                std::array::from_fn(|c| _mm512_loadu_si512(yp.add(c * tiles.tp + 32 * q) as *const _));
            for r in 0..4 {
                for c in 0..BLOCK {
                    acc[r][c] = _mm512_dpbf16_ps(acc[r][c], bh(x[r]), bh(y[c]));
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
