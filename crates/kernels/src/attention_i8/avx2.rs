//! AVX2 product of `gemm.rs`: operands widened to i16 with their zero points subtracted, four rows
//! of `A` against one 8-column block of the packed `B` per step, `vpmaddwd` (two exact products
//! summed per lane; never `vpmaddubsw`, which saturates) and `vpaddd`.

use std::arch::x86_64::*;

use super::packed::Packed;

/// See `gemm::ProductFn`.
///
/// # Safety
/// AVX2 must be available; the shapes as `gemm::ProductFn` states, `b` packed for AVX2.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn product(a: &[u8], lda: usize, m: usize, za: u8, b: &Packed, out: &mut [i32], ldo: usize) {
    let (k, n) = (b.k, b.n);
    let (k2, nb) = (k.div_ceil(2), n.div_ceil(8));
    assert!(b.words.len() >= nb * k2 * 16);
    // Four rows of `a − za` as i16 pairs packed in u32, zero padded to an even K.
    let mut pairs = vec![0i32; 4 * k2];
    let mut tmp = [0i32; 8];
    for i0 in (0..m).step_by(4) {
        for r in 0..4 {
            let i = (i0 + r).min(m - 1);
            let row = &a[i * lda..i * lda + k];
            for (q, p) in pairs[r * k2..(r + 1) * k2].iter_mut().enumerate() {
                let x = |j: usize| row.get(j).map_or(0, |&x| (i32::from(x) - i32::from(za)) as u16 as u32);
                *p = (x(2 * q) | x(2 * q + 1) << 16) as i32;
            }
        }
        for blk in 0..nb {
            let mut acc = [_mm256_setzero_si256(); 4];
            let bp = b.words[blk * k2 * 16..].as_ptr();
            for q in 0..k2 {
                // SAFETY: block `blk` holds `k2` slices of 16 words (asserted above).
                let w = unsafe { _mm256_loadu_si256(bp.add(q * 16) as *const __m256i) };
                for (r, ac) in acc.iter_mut().enumerate() {
                    let x = _mm256_set1_epi32(pairs[r * k2 + q]);
                    *ac = _mm256_add_epi32(*ac, _mm256_madd_epi16(x, w));
                }
            }
            let c0 = blk * 8;
            let live = (n - c0).min(8);
            for (r, ac) in acc.iter().enumerate().take(m - i0) {
                let dst = &mut out[(i0 + r) * ldo + c0..(i0 + r) * ldo + c0 + live];
                if live == 8 {
                    // SAFETY: `dst` is 8 i32 long.
                    unsafe { _mm256_storeu_si256(dst.as_mut_ptr() as *mut __m256i, *ac) }
                } else {
                    // SAFETY: `tmp` is 8 i32 long.
                    unsafe { _mm256_storeu_si256(tmp.as_mut_ptr() as *mut __m256i, *ac) }
                    dst.copy_from_slice(&tmp[..live]);
                }
            }
        }
    }
}
