//! The side-by-side row sums of `layer_norm` in vector registers: a group of rows is read in
//! tiles of one vector per row, each tile transposed in registers so that vector `c` holds column
//! `c` of every row, and lane `i` then accumulates row `i` column by column in index order, so
//! each lane performs exactly the scalar loop's additions. Columns past the last whole tile are
//! added per row in the same order.

use std::arch::x86_64::*;

use crate::transpose::{transpose16x16_ps, transpose8x8_ps};

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
        // SAFETY: AVX-512 F is available (this function's contract).
        for v in unsafe { transpose16x16_ps(r) } {
            s = _mm512_add_ps(s, v);
            q = _mm512_add_ps(q, _mm512_mul_ps(v, v));
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
        // SAFETY: AVX2 (so AVX) is available (this function's contract).
        for v in unsafe { transpose8x8_ps(r) } {
            s = _mm256_add_ps(s, v);
            q = _mm256_add_ps(q, _mm256_mul_ps(v, v));
        }
    }
    // SAFETY: both arrays hold 8 f32.
    unsafe {
        _mm256_storeu_ps(sum.as_mut_ptr(), s);
        _mm256_storeu_ps(sq.as_mut_ptr(), q);
    }
    super::row_sums(g, n, whole, sum, sq);
}
