//! AVX-512 VNNI product of `gemm.rs`: a register tile of `MR` rows of `A` against `NB` 16-column
//! blocks of the packed `B` (`MR·NB` accumulators, 16 at the shapes attention uses, so that
//! `vpdpbusd`'s latency is hidden), one `vpdpbusd` (4 u8·s8 products per lane, exact) per row,
//! block and 4-deep slice of K. A row of `A` is read as 4-byte quads broadcast to every lane; when
//! K is not a multiple of 4 the rows are first copied, zero padded, so that every quad is whole.

use std::arch::x86_64::*;

use super::packed::Packed;

/// What one tile needs besides its position: `A` (rows `lda` apart, whole quads), the packed `B`,
/// the zero-point corrections and `out`.
struct Tiles {
    a: *const u8,
    lda: usize,
    m: usize,
    k4: usize,
    n: usize,
    b: *const u8,
    /// Per row: `(128 − zb)·Σ_k a + K·za·zb`.
    corr: Vec<i32>,
    /// Per column, padded to whole blocks: `za·Σ_k b`.
    zcs: Vec<i32>,
    out: *mut i32,
    ldo: usize,
}

impl Tiles {
    /// Rows `i0..i0 + MR` (rows past `m` repeat row `m − 1` and are not stored) against blocks
    /// `blk0..blk0 + NB`.
    ///
    /// # Safety
    /// AVX-512 F/BW/VNNI available; `i0 < m`, `blk0 + NB ≤ ⌈n/16⌉`; the pointers as `product`
    /// set them up.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn tile<const MR: usize, const NB: usize>(&self, i0: usize, blk0: usize) {
        let rows: [usize; MR] = std::array::from_fn(|r| (i0 + r).min(self.m - 1));
        let mut acc = [[_mm512_setzero_si512(); NB]; MR];
        let block = self.k4 * 64;
        for q in 0..self.k4 {
            // SAFETY: block `blk0 + j` holds `k4` slices of 64 bytes; each row holds `4·k4` bytes
            // from `row·lda` (the caller's contract).
            unsafe {
                let w: [__m512i; NB] =
                    std::array::from_fn(|j| _mm512_loadu_si512(self.b.add((blk0 + j) * block + q * 64) as *const _));
                for (ac, &row) in acc.iter_mut().zip(&rows) {
                    let x = _mm512_set1_epi32((self.a.add(row * self.lda + 4 * q) as *const i32).read_unaligned());
                    for (a, w) in ac.iter_mut().zip(&w) {
                        *a = _mm512_dpbusd_epi32(*a, x, *w);
                    }
                }
            }
        }
        for (r, ac) in acc.iter().enumerate().take(self.m - i0) {
            let corr = _mm512_set1_epi32(self.corr[i0 + r]);
            for (j, a) in ac.iter().enumerate() {
                let c0 = (blk0 + j) * 16;
                let live = (self.n - c0).min(16);
                let mask: __mmask16 = if live == 16 { 0xffff } else { (1u16 << live) - 1 };
                // SAFETY: `zcs` is padded to whole blocks; row `i0 + r < m` has `n` cells from
                // `(i0 + r)·ldo` inside `out` (the caller's contract), and the mask stores only
                // columns `< n`.
                unsafe {
                    let zcs = _mm512_loadu_si512(self.zcs.as_ptr().add(c0) as *const _);
                    let v = _mm512_sub_epi32(_mm512_add_epi32(*a, corr), zcs);
                    _mm512_mask_storeu_epi32(self.out.add((i0 + r) * self.ldo + c0), mask, v);
                }
            }
        }
    }

    /// Every row against every block, `MR` rows and `NB` blocks at a time (remaining blocks one
    /// at a time).
    ///
    /// # Safety
    /// AVX-512 F/BW/VNNI available; as [`Tiles::tile`] for every tile.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn all<const MR: usize, const NB: usize>(&self, nb: usize) {
        for i0 in (0..self.m).step_by(MR) {
            let mut blk = 0;
            while blk + NB <= nb {
                // SAFETY: `i0 < m` and `blk + NB ≤ nb` (the loop bounds); the rest is the caller's.
                unsafe { self.tile::<MR, NB>(i0, blk) };
                blk += NB;
            }
            while blk < nb {
                // SAFETY: as above, one block.
                unsafe { self.tile::<MR, 1>(i0, blk) };
                blk += 1;
            }
        }
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
    assert!(lda >= k && a.len() >= (m - 1) * lda + k && ldo >= n && out.len() >= (m - 1) * ldo + n);
    let (zai, zb) = (i32::from(za), i32::from(b.zb));
    let rows = |i: usize| &a[i * lda..i * lda + k];
    let corr = (0..m).map(|i| (128 - zb) * rows(i).iter().map(|&x| i32::from(x)).sum::<i32>() + k as i32 * zai * zb);
    // Rows whose length is not whole quads are copied, zero padded (a zero adds nothing: `B`'s
    // padding is zero too, and the corrections count only the `k` real values).
    let padded: Vec<u8>;
    let (ap, lda) = if k.is_multiple_of(4) {
        (a.as_ptr(), lda)
    } else {
        padded = (0..m).flat_map(|i| rows(i).iter().copied().chain(std::iter::repeat_n(0, 4 * k4 - k))).collect();
        (padded.as_ptr(), 4 * k4)
    };
    let tiles = Tiles {
        a: ap,
        lda,
        m,
        k4,
        n,
        b: b.bytes.as_ptr(),
        corr: corr.collect(),
        zcs: b.colsum.iter().map(|&c| zai * c).collect(),
        out: out.as_mut_ptr(),
        ldo,
    };
    // SAFETY: AVX-512 VNNI is available (this function's contract); every row holds `4·k4` bytes
    // (padded above when needed), `b` holds `nb` blocks of `k4` slices and `out` holds the `m`
    // rows of `n` cells (asserted above).
    unsafe {
        if nb >= 4 {
            tiles.all::<4, 4>(nb)
        } else {
            tiles.all::<8, 2>(nb)
        }
    }
}
