//! AVX2 + FMA fp32 kernel (16-token tiles: 4 channels × 2 ymm accumulators), and an AVX2 context
//! for the shared safe passes.

use std::arch::x86_64::*;
use std::ops::Range;

use crate::blocks::{BLOCK, GROUP, GW};
use crate::transpose::{store_quads256, transpose8x8_ps};

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
            // SAFETY: AVX2 (so AVX) is enabled here.
            let cols = unsafe { transpose8x8_ps(v) };
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
        // a[c][q] lane l float i holds token 8q + 4l + i.
        for q in 0..2 {
            let quad = [0, 1, 2, 3].map(|c| _mm256_castps_si256(a[c][q]));
            // SAFETY: AVX2 is enabled here; tokens < 16 and `bl·4 + 4 ≤ ld`, so every quad lies
            // inside `acc` (`acc.len() ≥ 16·ld`, asserted above).
            unsafe { store_quads256(quad, acc.as_mut_ptr().add(bl * BLOCK), ld, |l, i| 8 * q + 4 * l + i) }
        }
    }
}
