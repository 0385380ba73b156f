//! AVX-512 fp32 kernel: 64-token tiles, 4 channels × 4 zmm accumulators, per input index 4 row
//! loads, 4 weight broadcasts, 16 FMAs.

use std::arch::x86_64::*;
use std::ops::Range;

use crate::blocks::{BLOCK, GROUP, GW};
use crate::transpose::store_quads512;

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
        // a[c][q] lane l float i holds token 16q + 4l + i.
        for q in 0..4 {
            let quad = [0, 1, 2, 3].map(|c| _mm512_castps_si512(a[c][q]));
            // SAFETY: AVX-512 F is enabled here; tokens < 64 and `bl·4 + 4 ≤ ld`, so every quad
            // lies inside `acc` (`acc.len() ≥ 64·ld`, asserted above).
            unsafe { store_quads512(quad, acc.as_mut_ptr().add(bl * BLOCK), ld, |l, i| 16 * q + 4 * l + i) }
        }
    }
}
