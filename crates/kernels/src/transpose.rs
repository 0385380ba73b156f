//! The in-register transposes the x86 kernels share: the 4×4 dword transposes that turn a linear
//! tile's channel-major accumulators into token-major quads, and the f32 row/column transposes of
//! the fp32 linear's activation tiles and of `layer_norm`'s side-by-side sums. Pure data movement:
//! no value changes, so every caller's arithmetic is what it was with its own copy.

use std::arch::x86_64::*;

/// Stores 4 channel vectors as token-major quads: `a[c]` holds, in each 128-bit lane `l`, channel
/// `c` of 4 tokens, dword `i` belonging to token `token(l, i)`; channel `c` of that token goes to
/// `dst[token(l, i)·ld + c]`. T is a 4-byte accumulator type (i32 or f32).
///
/// # Safety
/// AVX2 must be available; `dst[token(l, i)·ld .. + 4]` must be valid for writes for `l < 2`, `i < 4`.
#[inline(always)]
pub(crate) unsafe fn store_quads256<T>(a: [__m256i; 4], dst: *mut T, ld: usize, token: impl Fn(usize, usize) -> usize) {
    const { assert!(std::mem::size_of::<T>() == 4) };
    // SAFETY: AVX2 is available (this function's contract); the intrinsics only move registers.
    let r = unsafe {
        let t0 = _mm256_unpacklo_epi32(a[0], a[1]);
        let t1 = _mm256_unpackhi_epi32(a[0], a[1]);
        let t2 = _mm256_unpacklo_epi32(a[2], a[3]);
        let t3 = _mm256_unpackhi_epi32(a[2], a[3]);
        [
            _mm256_unpacklo_epi64(t0, t2),
            _mm256_unpackhi_epi64(t0, t2),
            _mm256_unpacklo_epi64(t1, t3),
            _mm256_unpackhi_epi64(t1, t3),
        ]
    };
    for (i, r) in r.iter().enumerate() {
        // SAFETY: AVX2 is available and both 16-byte rows are valid for writes (this function's
        // contract; T is 4 bytes, so 4 of them are one __m128i).
        unsafe {
            _mm_storeu_si128(dst.add(token(0, i) * ld) as *mut __m128i, _mm256_castsi256_si128(*r));
            _mm_storeu_si128(dst.add(token(1, i) * ld) as *mut __m128i, _mm256_extracti128_si256::<1>(*r));
        }
    }
}

/// [`store_quads256`] for 512-bit vectors (4 lanes `l < 4`).
///
/// # Safety
/// AVX-512 F must be available; `dst[token(l, i)·ld .. + 4]` must be valid for writes for
/// `l < 4`, `i < 4`.
#[inline(always)]
pub(crate) unsafe fn store_quads512<T>(a: [__m512i; 4], dst: *mut T, ld: usize, token: impl Fn(usize, usize) -> usize) {
    const { assert!(std::mem::size_of::<T>() == 4) };
    // SAFETY: AVX-512 F is available (this function's contract); the intrinsics only move registers.
    let r = unsafe {
        let t0 = _mm512_unpacklo_epi32(a[0], a[1]);
        let t1 = _mm512_unpackhi_epi32(a[0], a[1]);
        let t2 = _mm512_unpacklo_epi32(a[2], a[3]);
        let t3 = _mm512_unpackhi_epi32(a[2], a[3]);
        [
            _mm512_unpacklo_epi64(t0, t2),
            _mm512_unpackhi_epi64(t0, t2),
            _mm512_unpacklo_epi64(t1, t3),
            _mm512_unpackhi_epi64(t1, t3),
        ]
    };
    for (i, r) in r.iter().enumerate() {
        // SAFETY: AVX-512 F is available (this function's contract); register moves only.
        let lanes = unsafe {
            [
                _mm512_castsi512_si128(*r),
                _mm512_extracti32x4_epi32::<1>(*r),
                _mm512_extracti32x4_epi32::<2>(*r),
                _mm512_extracti32x4_epi32::<3>(*r),
            ]
        };
        for (l, lane) in lanes.iter().enumerate() {
            // SAFETY: the 16-byte row of token(l, i) is valid for writes (this function's contract).
            unsafe { _mm_storeu_si128(dst.add(token(l, i) * ld) as *mut __m128i, *lane) };
        }
    }
}

/// The 8×8 transpose of f32 rows: lane `r` of result `c` is lane `c` of `v[r]`.
///
/// # Safety
/// AVX must be available.
#[inline(always)]
pub(crate) unsafe fn transpose8x8_ps(v: [__m256; 8]) -> [__m256; 8] {
    // SAFETY: AVX is available (this function's contract); the intrinsics only move registers.
    unsafe {
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
        [
            _mm256_permute2f128_ps::<0x20>(s0, s4),
            _mm256_permute2f128_ps::<0x20>(s1, s5),
            _mm256_permute2f128_ps::<0x20>(s2, s6),
            _mm256_permute2f128_ps::<0x20>(s3, s7),
            _mm256_permute2f128_ps::<0x31>(s0, s4),
            _mm256_permute2f128_ps::<0x31>(s1, s5),
            _mm256_permute2f128_ps::<0x31>(s2, s6),
            _mm256_permute2f128_ps::<0x31>(s3, s7),
        ]
    }
}

/// The 16×16 transpose of f32 rows: lane `r` of result `c` is lane `c` of `r[r]`.
///
/// # Safety
/// AVX-512 F must be available.
#[inline(always)]
pub(crate) unsafe fn transpose16x16_ps(r: [__m512; 16]) -> [__m512; 16] {
    // SAFETY: AVX-512 F is available (this function's contract); the intrinsics only move registers.
    unsafe {
        let mut a = [_mm512_setzero_ps(); 16];
        for k in 0..8 {
            a[2 * k] = _mm512_unpacklo_ps(r[2 * k], r[2 * k + 1]);
            a[2 * k + 1] = _mm512_unpackhi_ps(r[2 * k], r[2 * k + 1]);
        }
        // b[4m + j], 128-bit lane L: column 4L + j of rows 4m..4m + 4.
        let mut b = [_mm512_setzero_ps(); 16];
        for m in 0..4 {
            let pd = |v: __m512| _mm512_castps_pd(v);
            let (a0, a1, a2, a3) = (pd(a[4 * m]), pd(a[4 * m + 1]), pd(a[4 * m + 2]), pd(a[4 * m + 3]));
            b[4 * m] = _mm512_castpd_ps(_mm512_unpacklo_pd(a0, a2));
            b[4 * m + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a0, a2));
            b[4 * m + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(a1, a3));
            b[4 * m + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(a1, a3));
        }
        // Column 4L + j of all 16 rows (128-bit lane M = rows 4M..4M + 4).
        let mut col = [_mm512_setzero_ps(); 16];
        for j in 0..4 {
            let p0 = _mm512_shuffle_f32x4::<0x44>(b[j], b[4 + j]);
            let p1 = _mm512_shuffle_f32x4::<0xEE>(b[j], b[4 + j]);
            let p2 = _mm512_shuffle_f32x4::<0x44>(b[8 + j], b[12 + j]);
            let p3 = _mm512_shuffle_f32x4::<0xEE>(b[8 + j], b[12 + j]);
            col[j] = _mm512_shuffle_f32x4::<0x88>(p0, p2);
            col[4 + j] = _mm512_shuffle_f32x4::<0xDD>(p0, p2);
            col[8 + j] = _mm512_shuffle_f32x4::<0x88>(p1, p3);
            col[12 + j] = _mm512_shuffle_f32x4::<0xDD>(p1, p3);
        }
        col
    }
}
