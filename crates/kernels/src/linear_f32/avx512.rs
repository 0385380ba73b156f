//! AVX-512 fp32 kernel: 64-token tiles, 4 channels × 4 zmm accumulators, per input index 4 row
//! loads, 4 weight broadcasts, 16 FMAs.

use std::arch::x86_64::*;
use std::ops::Range;

use crate::blocks::{BLOCK, GROUP, GW};

const TW: usize = 64;

/// `acc [64][ld]` (token-major, `ld = 4·blocks.len()`) = `xt [K][64]` × the blocks' weights.
///
/// # Safety
/// AVX-512 F must be available; every index in `idx` of these blocks is `< xt.len() / 64`;
/// `w` holds 16 weights per group; `acc.len() ≥ 64·ld`.
#[allow(clippy::needless_range_loop)] // a[c][q] and v[q] share q
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn tile(
    xt: &[f32],
    group_start: &[usize],
    idx: &[u32],
    w: &[f32],
    blocks: Range<usize>,
    acc: &mut [f32],
) {
    let ld = blocks.len() * BLOCK;
    assert!(acc.len() >= TW * ld && group_start.len() > blocks.end);
    let x = xt.as_ptr();
    for (bl, b) in blocks.enumerate() {
        let (g0, g1) = (group_start[b], group_start[b + 1]);
        assert!(idx.len() >= g1 * GROUP && w.len() >= g1 * GW);
        let mut a = [[_mm512_setzero_ps(); 4]; BLOCK];
        for g in g0..g1 {
            // SAFETY: indices are < K (packing), so each row of 64 floats lies inside `xt`.
            unsafe {
                let ip = idx.as_ptr().add(g * GROUP);
                let wp = w.as_ptr().add(g * GW);
                for i in 0..GROUP {
                    let r = x.add(*ip.add(i) as usize * TW);
                    let v = [0, 1, 2, 3].map(|q| _mm512_loadu_ps(r.add(16 * q)));
                    for (c, ac) in a.iter_mut().enumerate() {
                        let wc = _mm512_set1_ps(*wp.add(c * GROUP + i));
                        for q in 0..4 {
                            ac[q] = _mm512_fmadd_ps(v[q], wc, ac[q]);
                        }
                    }
                }
            }
        }
        // a[c][q] lane l float i holds token 16q + 4l + i; transpose to token-major quads.
        for q in 0..4 {
            let [a0, a1, a2, a3] = [0, 1, 2, 3].map(|c| _mm512_castps_si512(a[c][q]));
            let t0 = _mm512_unpacklo_epi32(a0, a1);
            let t1 = _mm512_unpackhi_epi32(a0, a1);
            let t2 = _mm512_unpacklo_epi32(a2, a3);
            let t3 = _mm512_unpackhi_epi32(a2, a3);
            let r = [
                _mm512_unpacklo_epi64(t0, t2),
                _mm512_unpackhi_epi64(t0, t2),
                _mm512_unpacklo_epi64(t1, t3),
                _mm512_unpackhi_epi64(t1, t3),
            ];
            for (i, r) in r.iter().enumerate() {
                let lanes = [
                    _mm512_castsi512_si128(*r),
                    _mm512_extracti32x4_epi32::<1>(*r),
                    _mm512_extracti32x4_epi32::<2>(*r),
                    _mm512_extracti32x4_epi32::<3>(*r),
                ];
                for (l, lane) in lanes.iter().enumerate() {
                    let token = 16 * q + 4 * l + i;
                    // SAFETY: token < 64 and `bl·4 + 4 ≤ ld`, inside `acc` (asserted above).
                    unsafe {
                        _mm_storeu_si128(acc.as_mut_ptr().add(token * ld + bl * BLOCK) as *mut __m128i, *lane);
                    }
                }
            }
        }
    }
}
