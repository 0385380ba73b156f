//! AVX2 int8 kernel (16-token tiles, i16-widened operands through `vpmaddwd`: exact, no
//! saturation), and the AVX2 builds of the shared activation and epilogue passes.

use std::arch::x86_64::*;
use std::ops::Range;

use crate::blocks::{BLOCK, GROUP, GW};
use crate::epilogue::isa_epilogue;
use crate::quant::{quantize_u8, Rows};
use crate::transpose::store_quads256;

const TW: usize = 16;

/// `acc [16][ld]` (token-major, `ld = 4·blocks.len()`) = `xt [K][16]` × the blocks' weights.
///
/// # Safety
/// AVX2 must be available; every index in `idx` of these blocks is `< xt.len() / 16`;
/// `w16` holds 16 weights per group; `acc.len() ≥ 16·ld`.
#[allow(clippy::needless_range_loop)] // a[c][q] and v[q] share q
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
        // a[c][q] lane l dword i holds token 8l + 4q + i.
        for q in 0..2 {
            // SAFETY: AVX2 is enabled here; tokens < 16 and `bl·4 + 4 ≤ ld`, so every quad lies
            // inside `acc` (`acc.len() ≥ 16·ld`, asserted above).
            unsafe {
                let col = acc.as_mut_ptr().add(bl * BLOCK);
                store_quads256([a[0][q], a[1][q], a[2][q], a[3][q]], col, ld, |l, i| 8 * l + 4 * q + i)
            }
        }
    }
}

/// Fills `rowbuf [16][K]` with quantized (or copied) tokens `t0..t0 + 16`, rows past `tvalid` with `pad`.
///
/// # Safety
/// AVX2 must be available.
#[inline(always)]
unsafe fn fill_rows(rows: Rows<'_>, k: usize, t0: usize, tvalid: usize, rowbuf: &mut [u8]) {
    let pad = match rows {
        Rows::F32 { zp, .. } => zp,
        Rows::U8(_) => 0,
    };
    for (r, dst) in rowbuf.chunks_exact_mut(k).take(16).enumerate() {
        if r >= tvalid {
            dst.fill(pad);
            continue;
        }
        let t = t0 + r;
        match rows {
            // SAFETY: AVX2 is available (this function's contract).
            Rows::F32 { x, scale, zp } => unsafe { quantize_row(&x[t * k..(t + 1) * k], scale, zp, dst) },
            Rows::U8(xq) => dst.copy_from_slice(&xq[t * k..(t + 1) * k]),
        }
    }
}

/// The min and max of `x` and 0 (NaNs ignored: `vminps` returns its second operand, the running
/// value, when the element is NaN), as [`crate::quant::min_max_with_zero`].
///
/// # Safety
/// AVX2 must be available.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn min_max_with_zero(x: &[f32]) -> (f32, f32) {
    let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        // SAFETY: `c` holds 8 floats.
        let v = unsafe { _mm256_loadu_ps(c.as_ptr()) };
        lo = _mm256_min_ps(v, lo);
        hi = _mm256_max_ps(v, hi);
    }
    let (mut l, mut h) = ([0f32; 8], [0f32; 8]);
    // SAFETY: 8-float arrays.
    unsafe {
        _mm256_storeu_ps(l.as_mut_ptr(), lo);
        _mm256_storeu_ps(h.as_mut_ptr(), hi);
    }
    let mut mn = 0f32;
    let mut mx = 0f32;
    for &v in chunks.remainder().iter().chain(&l) {
        mn = if v < mn { v } else { mn };
    }
    for &v in chunks.remainder().iter().chain(&h) {
        mx = if v > mx { v } else { mx };
    }
    (mn, mx)
}

/// [`quantize_u8`] of each element, 32 at a time: `vdivps` (a true division, as ONNX), round to
/// nearest even, add the zero point, clamp to [0, 255] (NaN → 0, as `max` returns its second
/// operand), convert and pack.
///
/// # Safety
/// AVX2 must be available.
#[inline(always)]
unsafe fn quantize_row(x: &[f32], scale: f32, zp: u8, out: &mut [u8]) {
    let n = x.len().min(out.len());
    // SAFETY: AVX2 is available (this function's contract); register-only intrinsics.
    let (vs, vz, lo, hi, order) = unsafe {
        (
            _mm256_set1_ps(scale),
            _mm256_set1_ps(zp as f32),
            _mm256_setzero_ps(),
            _mm256_set1_ps(255.0),
            _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7),
        )
    };
    let mut i = 0;
    while i + 32 <= n {
        // SAFETY: AVX2 is available (this function's contract); i + 32 ≤ n ≤ both lengths, so the
        // 32 floats read and the 32 bytes written lie inside `x` and `out`.
        unsafe {
            let q: [__m256i; 4] = std::array::from_fn(|j| {
                let v = _mm256_div_ps(_mm256_loadu_ps(x.as_ptr().add(i + 8 * j)), vs);
                let r = _mm256_add_ps(_mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v), vz);
                _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(r, lo), hi))
            });
            let b = _mm256_packus_epi16(_mm256_packus_epi32(q[0], q[1]), _mm256_packus_epi32(q[2], q[3]));
            _mm256_storeu_si256(out.as_mut_ptr().add(i) as *mut __m256i, _mm256_permutevar8x32_epi32(b, order));
        }
        i += 32;
    }
    for j in i..n {
        out[j] = quantize_u8(x[j], scale, zp as f32);
    }
}

/// Transposes `rowbuf [16][K]` (u8) into `store(kk, tokens)` calls, 16 tokens per input index:
/// two 16×16 byte transposes per 32 indices (4 rounds of in-lane `vpunpck{l,h}bw`), the tail
/// index by index.
///
/// # Safety
/// AVX2 must be available.
#[inline(always)]
unsafe fn transpose16(rowbuf: &[u8], k: usize, mut store: impl FnMut(usize, __m128i)) {
    assert!(rowbuf.len() >= 16 * k);
    let p = rowbuf.as_ptr();
    let mut kb = 0;
    while kb + 32 <= k {
        // SAFETY: AVX2 is available (this function's contract); rows r < 16 and bytes
        // kb..kb + 32 ≤ k lie inside `rowbuf` (asserted above).
        let mut v: [__m256i; 16] =
            std::array::from_fn(|r| unsafe { _mm256_loadu_si256(p.add(r * k + kb) as *const __m256i) });
        for _ in 0..4 {
            // SAFETY: AVX2 is available (this function's contract); register-only intrinsics.
            v = unsafe {
                let mut nv = [_mm256_setzero_si256(); 16];
                for i in 0..8 {
                    nv[2 * i] = _mm256_unpacklo_epi8(v[i], v[i + 8]);
                    nv[2 * i + 1] = _mm256_unpackhi_epi8(v[i], v[i + 8]);
                }
                nv
            };
        }
        for (i, v) in v.iter().enumerate() {
            // SAFETY: AVX2 is available (this function's contract); register-only intrinsics.
            let (lo, hi) = unsafe { (_mm256_castsi256_si128(*v), _mm256_extracti128_si256::<1>(*v)) };
            store(kb + i, lo);
            store(kb + 16 + i, hi);
        }
        kb += 32;
    }
    for kk in kb..k {
        let col: [u8; 16] = std::array::from_fn(|r| rowbuf[r * k + kk]);
        // SAFETY: AVX2 is available (this function's contract); reads 16 bytes from a 16-byte array.
        store(kk, unsafe { _mm_loadu_si128(col.as_ptr() as *const __m128i) });
    }
}

/// Tokens `t0..t0 + tvalid` quantized/copied into `out [K][16]` as i16 (the AVX2 kernel's layout).
///
/// # Safety
/// AVX2 must be available; `rowbuf.len() ≥ 16·K`, `out.len() ≥ 16·K`.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn prep_i16(rows: Rows<'_>, k: usize, t0: usize, tvalid: usize, rowbuf: &mut [u8], out: &mut [i16]) {
    assert!(out.len() >= 16 * k);
    // SAFETY: AVX2 is enabled here.
    unsafe { fill_rows(rows, k, t0, tvalid, rowbuf) };
    let o = out.as_mut_ptr();
    // SAFETY: AVX2 is enabled here; kk < K, so the 16 i16 at kk·16 lie inside `out` (asserted
    // above).
    unsafe {
        transpose16(rowbuf, k, |kk, v| _mm256_storeu_si256(o.add(kk * 16) as *mut __m256i, _mm256_cvtepu8_epi16(v)))
    }
}

/// Tokens `t0..t0 + tvalid` quantized/copied into `out [K][tw]` as u8 (`tw` a multiple of 16).
///
/// # Safety
/// AVX2 must be available; `rowbuf.len() ≥ 16·K`, `out.len() ≥ tw·K`.
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
    assert!(out.len() >= tw * k && tw.is_multiple_of(16));
    let o = out.as_mut_ptr();
    for g in 0..tw / 16 {
        // SAFETY: AVX2 is enabled here.
        unsafe { fill_rows(rows, k, t0 + 16 * g, tvalid.saturating_sub(16 * g), rowbuf) };
        // SAFETY: AVX2 is enabled here; kk < K and 16·g + 16 ≤ tw, inside `out` (asserted above).
        unsafe { transpose16(rowbuf, k, |kk, v| _mm_storeu_si128(o.add(kk * tw + 16 * g) as *mut __m128i, v)) }
    }
}

isa_epilogue!(
    /// [`epilogue_i8`](crate::epilogue::epilogue_i8) vectorised for AVX2.
    ///
    /// # Safety
    /// AVX2 and FMA must be available.
    epilogue,
    "avx2,fma"
);
