//! AVX2 int8 kernel (16-token tiles, i16-widened operands through `vpmaddwd`: exact, no
//! saturation), and the AVX2 builds of the shared activation and epilogue passes.

use std::arch::x86_64::*;
use std::ops::Range;

use super::{epilogue_i8, prep_tile, EpiI8, Out, Rows, BLOCK, GROUP, GW};

const TW: usize = 16;

/// `acc [16][ld]` (token-major, `ld = 4·blocks.len()`) = `xt [K][16]` × the blocks' weights.
///
/// # Safety
/// AVX2 must be available; every index in `idx` of these blocks is `< xt.len() / 16`;
/// `w16` holds 16 weights per group; `acc.len() ≥ 16·ld`.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn tile(
    xt: &[i16],
    group_start: &[usize],
    idx: &[u32],
    w16: &[i16],
    blocks: Range<usize>,
    acc: &mut [i32],
) {
    let ld = blocks.len() * BLOCK;
    assert!(acc.len() >= TW * ld && group_start.len() > blocks.end);
    let x = xt.as_ptr();
    for (bl, b) in blocks.enumerate() {
        let (g0, g1) = (group_start[b], group_start[b + 1]);
        assert!(idx.len() >= g1 * GROUP && w16.len() >= g1 * GW);
        let mut a = [[_mm256_setzero_si256(); 2]; BLOCK];
        for g in g0..g1 {
            // SAFETY: indices are < K (packing), so each row of 16 i16 lies inside `xt`; `g < g1`.
            unsafe {
                let ip = idx.as_ptr().add(g * GROUP);
                let wp = w16.as_ptr().add(g * GW);
                for p in 0..2 {
                    let r0 = _mm256_loadu_si256(x.add(*ip.add(2 * p) as usize * TW) as *const __m256i);
                    let r1 = _mm256_loadu_si256(x.add(*ip.add(2 * p + 1) as usize * TW) as *const __m256i);
                    let v = [_mm256_unpacklo_epi16(r0, r1), _mm256_unpackhi_epi16(r0, r1)];
                    for (c, ac) in a.iter_mut().enumerate() {
                        let wc = _mm256_set1_epi32((wp.add(c * GROUP + 2 * p) as *const i32).read_unaligned());
                        for q in 0..2 {
                            ac[q] = _mm256_add_epi32(ac[q], _mm256_madd_epi16(v[q], wc));
                        }
                    }
                }
            }
        }
        // a[c][q] lane l dword i holds token 8l + 4q + i; transpose to token-major quads.
        for q in 0..2 {
            let t0 = _mm256_unpacklo_epi32(a[0][q], a[1][q]);
            let t1 = _mm256_unpackhi_epi32(a[0][q], a[1][q]);
            let t2 = _mm256_unpacklo_epi32(a[2][q], a[3][q]);
            let t3 = _mm256_unpackhi_epi32(a[2][q], a[3][q]);
            let r = [
                _mm256_unpacklo_epi64(t0, t2),
                _mm256_unpackhi_epi64(t0, t2),
                _mm256_unpacklo_epi64(t1, t3),
                _mm256_unpackhi_epi64(t1, t3),
            ];
            for (i, r) in r.iter().enumerate() {
                let lo = 4 * q + i;
                let hi = 8 + 4 * q + i;
                // SAFETY: tokens < 16 and `bl·4 + 4 ≤ ld`, inside `acc` (asserted above).
                unsafe {
                    let p = acc.as_mut_ptr().add(bl * BLOCK);
                    _mm_storeu_si128(p.add(lo * ld) as *mut __m128i, _mm256_castsi256_si128(*r));
                    _mm_storeu_si128(p.add(hi * ld) as *mut __m128i, _mm256_extracti128_si256::<1>(*r));
                }
            }
        }
    }
}

/// [`prep_tile`] to i16, vectorised for AVX2.
///
/// # Safety
/// AVX2 must be available.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn prep_i16(
    rows: Rows<'_>,
    k: usize,
    t0: usize,
    tvalid: usize,
    tw: usize,
    rowbuf: &mut [u8],
    out: &mut [i16],
) {
    prep_tile(rows, k, t0, tvalid, tw, rowbuf, out)
}

/// [`prep_tile`] to u8, vectorised for AVX2.
///
/// # Safety
/// AVX2 must be available.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn prep_u8(
    rows: Rows<'_>,
    k: usize,
    t0: usize,
    tvalid: usize,
    tw: usize,
    rowbuf: &mut [u8],
    out: &mut [u8],
) {
    prep_tile(rows, k, t0, tvalid, tw, rowbuf, out)
}

/// [`epilogue_i8`] vectorised for AVX2 (same operations, same bits).
///
/// # Safety
/// AVX2 must be available.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn epilogue(
    e: &EpiI8<'_>,
    acc: &[i32],
    ld: usize,
    t0: usize,
    tvalid: usize,
    j0: usize,
    ncols: usize,
    n: usize,
    y: &Out<f32>,
) {
    epilogue_i8(e, acc, ld, t0, tvalid, j0, ncols, n, y)
}
