//! AVX-512 VNNI product of `gemm.rs`: four rows of `A` against one 16-column block of the packed
//! `B` per step, one `vpdpbusd` (4 u8·s8 products per lane, exact) per row and 4-deep slice of K.

use std::arch::x86_64::*;

use super::packed::Packed;

/// Four bytes of row `row` from column `4·q` as one u32, zeros past `k`.
///
/// # Safety
/// `row·lda + min(4q + 4, k) ≤ a.len()`.
#[inline(always)]
unsafe fn quad(a: &[u8], lda: usize, row: usize, q: usize, k: usize) -> i32 {
    let at = row * lda + 4 * q;
    if 4 * q + 4 <= k {
        // SAFETY: the caller guarantees the 4 bytes from `at` lie inside `a`.
        unsafe { (a.as_ptr().add(at) as *const i32).read_unaligned() }
    } else {
        let mut b = [0u8; 4];
        b[..k - 4 * q].copy_from_slice(&a[at..at + k - 4 * q]);
        i32::from_le_bytes(b)
    }
}

/// See `gemm::ProductFn`.
///
/// # Safety
/// AVX-512 F/BW/VNNI must be available; the shapes as `gemm::ProductFn` states, `b` packed for
/// VNNI.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(super) unsafe fn product(a: &[u8], lda: usize, m: usize, za: u8, b: &Packed, out: &mut [i32], ldo: usize) {
    let (k, n) = (b.k, b.n);
    let (k4, nb) = (k.div_ceil(4), n.div_ceil(16));
    assert!(b.bytes.len() >= nb * k4 * 64 && b.colsum.len() >= nb * 16);
    let (za, zb) = (i32::from(za), i32::from(b.zb));
    let rowsum = |i: usize| a[i * lda..i * lda + k].iter().map(|&x| i32::from(x)).sum::<i32>();
    for i0 in (0..m).step_by(4) {
        // Rows past `m` repeat the last row and are not stored.
        let rows = [i0, (i0 + 1).min(m - 1), (i0 + 2).min(m - 1), (i0 + 3).min(m - 1)];
        let corr = rows.map(|i| (128 - zb) * rowsum(i) + k as i32 * za * zb);
        for blk in 0..nb {
            let mut acc = [_mm512_setzero_si512(); 4];
            let bp = b.bytes[blk * k4 * 64..].as_ptr();
            for q in 0..k4 {
                // SAFETY: block `blk` holds `k4` slices of 64 bytes (asserted above); each row
                // `r < m` holds `k` values from `r·lda` inside `a` (the caller's contract).
                unsafe {
                    let w = _mm512_loadu_si512(bp.add(q * 64) as *const __m512i);
                    for (ac, &r) in acc.iter_mut().zip(&rows) {
                        *ac = _mm512_dpbusd_epi32(*ac, _mm512_set1_epi32(quad(a, lda, r, q, k)), w);
                    }
                }
            }
            let c0 = blk * 16;
            let live = (n - c0).min(16);
            let mask: __mmask16 = if live == 16 { 0xffff } else { (1u16 << live) - 1 };
            // SAFETY: `colsum` is padded to `nb·16` (asserted above).
            let cs = unsafe { _mm512_loadu_si512(b.colsum.as_ptr().add(c0) as *const __m512i) };
            let zcs = _mm512_mullo_epi32(cs, _mm512_set1_epi32(za));
            for (r, ac) in acc.iter().enumerate().take(m - i0) {
                let v = _mm512_sub_epi32(_mm512_add_epi32(*ac, _mm512_set1_epi32(corr[r])), zcs);
                // SAFETY: row `i0 + r < m` has `n` cells from `(i0 + r)·ldo` inside `out` (the
                // caller's contract); the mask stores only columns `< n`.
                unsafe { _mm512_mask_storeu_epi32(out.as_mut_ptr().add((i0 + r) * ldo + c0), mask, v) }
            }
        }
    }
}
