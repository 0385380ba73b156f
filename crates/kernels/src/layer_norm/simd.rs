//! The side-by-side row sums of `layer_norm` in vector registers: a group of rows is read in
//! tiles of one vector per row, each tile transposed in registers so that vector `c` holds column
//! `c` of every row, and lane `i` then accumulates row `i` column by column in index order, so
//! each lane performs exactly the scalar loop's additions. Columns past the last whole tile are
//! added per row in the same order.

use std::arch::x86_64::*;

/// `sum[i] = Σ_h g[i·n + h]`, `sq[i] = Σ_h g[i·n + h]²`, each in index order, for 16 rows.
///
/// # Safety
/// AVX-512 F must be available.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn sums16(g: &[f32], n: usize, sum: &mut [f32; 16], sq: &mut [f32; 16]) {
    assert_eq!(g.len(), 16 * n, "16 rows of {n} values");
    let p = g.as_ptr();
    let (mut s, mut q) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    let whole = n - n % 16;
    for h0 in (0..whole).step_by(16) {
        // SAFETY: row i's columns h0..h0 + 16 lie inside `g` (h0 + 16 ≤ n, asserted length).
        let r: [__m512; 16] = std::array::from_fn(|i| unsafe { _mm512_loadu_ps(p.add(i * n + h0)) });
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
        // col[j][L]: column 4L + j of all 16 rows (128-bit lane M = rows 4M..4M + 4).
        let mut col = [[_mm512_setzero_ps(); 4]; 4];
        for (j, c) in col.iter_mut().enumerate() {
            let p0 = _mm512_shuffle_f32x4::<0x44>(b[j], b[4 + j]);
            let p1 = _mm512_shuffle_f32x4::<0xEE>(b[j], b[4 + j]);
            let p2 = _mm512_shuffle_f32x4::<0x44>(b[8 + j], b[12 + j]);
            let p3 = _mm512_shuffle_f32x4::<0xEE>(b[8 + j], b[12 + j]);
            *c = [
                _mm512_shuffle_f32x4::<0x88>(p0, p2),
                _mm512_shuffle_f32x4::<0xDD>(p0, p2),
                _mm512_shuffle_f32x4::<0x88>(p1, p3),
                _mm512_shuffle_f32x4::<0xDD>(p1, p3),
            ];
        }
        for l in 0..4 {
            for c in &col {
                let v = c[l];
                s = _mm512_add_ps(s, v);
                q = _mm512_add_ps(q, _mm512_mul_ps(v, v));
            }
        }
    }
    // SAFETY: both arrays hold 16 f32.
    unsafe {
        _mm512_storeu_ps(sum.as_mut_ptr(), s);
        _mm512_storeu_ps(sq.as_mut_ptr(), q);
    }
    super::row_sums(g, n, whole, sum, sq);
}

/// As [`sums16`] for 8 rows.
///
/// # Safety
/// AVX2 must be available.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn sums8(g: &[f32], n: usize, sum: &mut [f32; 8], sq: &mut [f32; 8]) {
    assert_eq!(g.len(), 8 * n, "8 rows of {n} values");
    let p = g.as_ptr();
    let (mut s, mut q) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let whole = n - n % 8;
    for h0 in (0..whole).step_by(8) {
        // SAFETY: row i's columns h0..h0 + 8 lie inside `g` (h0 + 8 ≤ n, asserted length).
        let r: [__m256; 8] = std::array::from_fn(|i| unsafe { _mm256_loadu_ps(p.add(i * n + h0)) });
        let mut a = [_mm256_setzero_ps(); 8];
        for k in 0..4 {
            a[2 * k] = _mm256_unpacklo_ps(r[2 * k], r[2 * k + 1]);
            a[2 * k + 1] = _mm256_unpackhi_ps(r[2 * k], r[2 * k + 1]);
        }
        // b[4m + j], 128-bit lane L: column 4L + j of rows 4m..4m + 4.
        let mut b = [_mm256_setzero_ps(); 8];
        for m in 0..2 {
            let pd = |v: __m256| _mm256_castps_pd(v);
            let (a0, a1, a2, a3) = (pd(a[4 * m]), pd(a[4 * m + 1]), pd(a[4 * m + 2]), pd(a[4 * m + 3]));
            b[4 * m] = _mm256_castpd_ps(_mm256_unpacklo_pd(a0, a2));
            b[4 * m + 1] = _mm256_castpd_ps(_mm256_unpackhi_pd(a0, a2));
            b[4 * m + 2] = _mm256_castpd_ps(_mm256_unpacklo_pd(a1, a3));
            b[4 * m + 3] = _mm256_castpd_ps(_mm256_unpackhi_pd(a1, a3));
        }
        // col[j][L]: column 4L + j of all 8 rows.
        let mut col = [[_mm256_setzero_ps(); 2]; 4];
        for (j, c) in col.iter_mut().enumerate() {
            *c = [_mm256_permute2f128_ps::<0x20>(b[j], b[4 + j]), _mm256_permute2f128_ps::<0x31>(b[j], b[4 + j])];
        }
        for l in 0..2 {
            for c in &col {
                let v = c[l];
                s = _mm256_add_ps(s, v);
                q = _mm256_add_ps(q, _mm256_mul_ps(v, v));
            }
        }
    }
    // SAFETY: both arrays hold 8 f32.
    unsafe {
        _mm256_storeu_ps(sum.as_mut_ptr(), s);
        _mm256_storeu_ps(sq.as_mut_ptr(), q);
    }
    super::row_sums(g, n, whole, sum, sq);
}
