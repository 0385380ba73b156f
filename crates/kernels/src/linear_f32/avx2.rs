//! AVX2 + FMA fp32 kernel (16-token tiles: 4 channels × 2 ymm accumulators), and an AVX2 context
//! for the shared safe passes.

use std::arch::x86_64::*;
use std::ops::Range;

use crate::blocks::{BLOCK, GROUP, GW};

const TW: usize = 16;

/// Runs `f` compiled with AVX2 enabled, so its loops vectorise (no FMA contraction happens).
///
/// # Safety
/// AVX2 must be available.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// Tokens `t0..t0 + tvalid` of `x [T][K]` transposed into `out [K][tw]`, zero-padded: 8×8
/// in-register transposes, the last `K mod 8` indices one by one.
///
/// # Safety
/// AVX2 must be available; `x` holds rows `t0..t0 + tvalid` of `k` floats; `out.len() ≥ tw·k`.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn prep(x: &[f32], k: usize, t0: usize, tvalid: usize, tw: usize, out: &mut [f32]) {
    assert!(out.len() >= tw * k && x.len() >= (t0 + tvalid) * k && tvalid <= tw && tw.is_multiple_of(8));
    let zero = [0f32; 8];
    let o = out.as_mut_ptr();
    for g in 0..tw / 8 {
        let row = |r: usize| {
            let t = 8 * g + r;
            if t < tvalid {
                // SAFETY: row t0 + t < t0 + tvalid lies inside `x` (asserted above).
                unsafe { x.as_ptr().add((t0 + t) * k) }
            } else {
                std::ptr::null()
            }
        };
        let rows: [*const f32; 8] = std::array::from_fn(row);
        let mut kb = 0;
        while kb + 8 <= k {
            // SAFETY: kb + 8 ≤ k, inside each valid row; padding rows read the zero array.
            let v: [__m256; 8] = std::array::from_fn(|r| unsafe {
                _mm256_loadu_ps(if rows[r].is_null() { zero.as_ptr() } else { rows[r].add(kb) })
            });
            let u0 = _mm256_unpacklo_ps(v[0], v[1]);
            let u1 = _mm256_unpackhi_ps(v[0], v[1]);
            let u2 = _mm256_unpacklo_ps(v[2], v[3]);
            let u3 = _mm256_unpackhi_ps(v[2], v[3]);
            let u4 = _mm256_unpacklo_ps(v[4], v[5]);
            let u5 = _mm256_unpackhi_ps(v[4], v[5]);
            let u6 = _mm256_unpacklo_ps(v[6], v[7]);
            let u7 = _mm256_unpackhi_ps(v[6], v[7]);
            let s0 = _mm256_shuffle_ps::<0x44>(u0, u2);
            let s1 = _mm256_shuffle_ps::<0xEE>(u0, u2);
            let s2 = _mm256_shuffle_ps::<0x44>(u1, u3);
            let s3 = _mm256_shuffle_ps::<0xEE>(u1, u3);
            let s4 = _mm256_shuffle_ps::<0x44>(u4, u6);
            let s5 = _mm256_shuffle_ps::<0xEE>(u4, u6);
            let s6 = _mm256_shuffle_ps::<0x44>(u5, u7);
            let s7 = _mm256_shuffle_ps::<0xEE>(u5, u7);
            let cols = [
                _mm256_permute2f128_ps::<0x20>(s0, s4),
                _mm256_permute2f128_ps::<0x20>(s1, s5),
                _mm256_permute2f128_ps::<0x20>(s2, s6),
                _mm256_permute2f128_ps::<0x20>(s3, s7),
                _mm256_permute2f128_ps::<0x31>(s0, s4),
                _mm256_permute2f128_ps::<0x31>(s1, s5),
                _mm256_permute2f128_ps::<0x31>(s2, s6),
                _mm256_permute2f128_ps::<0x31>(s3, s7),
            ];
            for (i, c) in cols.iter().enumerate() {
                // SAFETY: kb + i < k and 8·g + 8 ≤ tw, inside `out` (asserted above).
                unsafe { _mm256_storeu_ps(o.add((kb + i) * tw + 8 * g), *c) };
            }
            kb += 8;
        }
        for kk in kb..k {
            for r in 0..8 {
                let t = 8 * g + r;
                out[kk * tw + t] = if t < tvalid { x[(t0 + t) * k + kk] } else { 0.0 };
            }
        }
    }
}

/// `acc [16][ld]` (token-major, `ld = 4·blocks.len()`) = `xt [K][16]` × the blocks' weights.
///
/// # Safety
/// AVX2 and FMA must be available; every index in `idx` of these blocks is `< xt.len() / 16`;
/// `w` holds 16 weights per group; `acc.len() ≥ 16·ld`.
#[allow(clippy::needless_range_loop)] // a[c][q] and v[q] share q
#[target_feature(enable = "avx2,fma")]
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
        let mut a = [[_mm256_setzero_ps(); 2]; BLOCK];
        for g in g0..g1 {
            // SAFETY: indices are < K (packing), so each row of 16 floats lies inside `xt`.
            unsafe {
                let ip = idx.as_ptr().add(g * GROUP);
                let wp = w.as_ptr().add(g * GW);
                for i in 0..GROUP {
                    let r = x.add(*ip.add(i) as usize * TW);
                    let v = [_mm256_loadu_ps(r), _mm256_loadu_ps(r.add(8))];
                    for (c, ac) in a.iter_mut().enumerate() {
                        let wc = _mm256_broadcast_ss(&*wp.add(c * GROUP + i));
                        for q in 0..2 {
                            ac[q] = _mm256_fmadd_ps(v[q], wc, ac[q]);
                        }
                    }
                }
            }
        }
        // a[c][q] lane l float i holds token 8q + 4l + i; transpose to token-major quads.
        for q in 0..2 {
            let [a0, a1, a2, a3] = [0, 1, 2, 3].map(|c| _mm256_castps_si256(a[c][q]));
            let t0 = _mm256_unpacklo_epi32(a0, a1);
            let t1 = _mm256_unpackhi_epi32(a0, a1);
            let t2 = _mm256_unpacklo_epi32(a2, a3);
            let t3 = _mm256_unpackhi_epi32(a2, a3);
            let r = [
                _mm256_unpacklo_epi64(t0, t2),
                _mm256_unpackhi_epi64(t0, t2),
                _mm256_unpacklo_epi64(t1, t3),
                _mm256_unpackhi_epi64(t1, t3),
            ];
            for (i, r) in r.iter().enumerate() {
                // SAFETY: tokens < 16 and `bl·4 + 4 ≤ ld`, inside `acc` (asserted above).
                unsafe {
                    let p = acc.as_mut_ptr().add(bl * BLOCK);
                    _mm_storeu_si128(p.add((8 * q + i) * ld) as *mut __m128i, _mm256_castsi256_si128(*r));
                    _mm_storeu_si128(p.add((8 * q + 4 + i) * ld) as *mut __m128i, _mm256_extracti128_si256::<1>(*r));
                }
            }
        }
    }
}
