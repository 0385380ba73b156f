//! AVX-512 VNNI int8 kernel: 64-token tiles, 16 zmm accumulators per 4-channel block, per group
//! 4 row loads, 8 unpacks into `[k0 k1 k2 k3]` byte quads, 4 weight broadcasts, 16 `vpdpbusd`.

use std::arch::x86_64::*;
use std::ops::Range;

use crate::blocks::{BLOCK, GROUP, GW};
use crate::epilogue::isa_epilogue;
use crate::transpose::store_quads512;

const TW: usize = 64;

/// `acc [64][ld]` (token-major, `ld = 4·blocks.len()`) = `xt [K][64]` × the blocks' weights.
///
/// # Safety
/// AVX-512 F/BW/VNNI must be available; every index in `idx` of these blocks is
/// `< xt.len() / 64`; `w` holds 16 weights per group; `acc.len() ≥ 64·ld`.
#[allow(clippy::needless_range_loop)] // a[c][q] and v[q] share q
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(super) unsafe fn tile(
    xt: &[u8],
    group_start: &[usize],
    idx: &[u32],
    w: &[i8],
    blocks: Range<usize>,
    acc: &mut [i32],
) {
    let ld = blocks.len() * BLOCK;
    assert!(acc.len() >= TW * ld && group_start.len() > blocks.end);
    let x = xt.as_ptr();
    for (bl, b) in blocks.enumerate() {
        let (g0, g1) = (group_start[b], group_start[b + 1]);
        assert!(idx.len() >= g1 * GROUP && w.len() >= g1 * GW);
        let mut a = [[_mm512_setzero_si512(); 4]; BLOCK];
        for g in g0..g1 {
            // SAFETY: indices are < K (packing), so each 64-byte row lies inside `xt`; `g < g1`.
            unsafe {
                let ip = idx.as_ptr().add(g * GROUP);
                let row = |i: usize| _mm512_loadu_si512(x.add(*ip.add(i) as usize * TW) as *const __m512i);
                let (r0, r1, r2, r3) = (row(0), row(1), row(2), row(3));
                let v = quads([r0, r1, r2, r3]);
                let wp = w.as_ptr().add(g * GW) as *const i32;
                for (c, ac) in a.iter_mut().enumerate() {
                    let wc = _mm512_set1_epi32(wp.add(c).read_unaligned());
                    for q in 0..4 {
                        ac[q] = _mm512_dpbusd_epi32(ac[q], v[q], wc);
                    }
                }
            }
        }
        // a[c][q] lane l dword i holds token 16l + 4q + i.
        // SAFETY: tokens < 64 and `bl·4 + 4 ≤ ld`, so every quad lies inside `acc`
        // (`acc.len() ≥ 64·ld`, asserted above); AVX-512 F is enabled here.
        unsafe { store_block(&a, acc, bl, ld) }
    }
}

/// Rearranges one tile `xt [K][64]` (K a multiple of 4) in place into quads: the 256 bytes of
/// rows `4g..4g + 4` become the four registers the kernel above makes of them by unpacking
/// (register `q`, lane `l`, dword `i` = token `16l + 4q + i`, its 4 bytes = rows `4g..4g + 4`), so
/// that [`tile_quads`] loads them ready.
///
/// # Safety
/// AVX-512 F/BW must be available.
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) unsafe fn interleave_quads(xt: &mut [u8], k: usize) {
    assert!(k.is_multiple_of(4) && xt.len() >= k * TW);
    for g in 0..k / 4 {
        // SAFETY: rows `4g..4g + 4` of 64 bytes lie inside `xt` (asserted above).
        unsafe {
            let p = xt.as_mut_ptr().add(g * 4 * TW);
            let row = |i: usize| _mm512_loadu_si512(p.add(i * TW) as *const __m512i);
            let (r0, r1, r2, r3) = (row(0), row(1), row(2), row(3));
            let v = quads([r0, r1, r2, r3]);
            for (q, v) in v.iter().enumerate() {
                _mm512_storeu_si512(p.add(q * TW) as *mut __m512i, *v);
            }
        }
    }
}

/// [`tile`] for layers packed by `pack_quads` (`[1, 4]`: per-channel lists of aligned 4-index
/// quads, `chan_start`) on a tile rearranged by [`interleave_quads`]: per channel and quad, 4 loads
/// of the quad's ready registers, 1 weight broadcast, 4 `vpdpbusd`; no unpacking, and no channel
/// waits for another's longer list. The four channels of a block advance together while all have
/// quads left (16 independent accumulators), then each finishes alone. The accumulators come out
/// in [`tile`]'s layout.
///
/// # Safety
/// AVX-512 F/BW/VNNI must be available; `chan_start` holds `4·blocks.end + 1` non-decreasing
/// offsets; every index in `idx` below `chan_start[4·blocks.end]` is a multiple of 4 with
/// `idx + 4 ≤ xt.len() / 64`; `w` holds 4 weights per quad; `acc.len() ≥ 64·ld`.
#[allow(clippy::needless_range_loop)] // a[c][q] shares q with the store's token map
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(super) unsafe fn tile_quads(
    xt: &[u8],
    chan_start: &[usize],
    idx: &[u32],
    w: &[i8],
    blocks: Range<usize>,
    acc: &mut [i32],
) {
    let ld = blocks.len() * BLOCK;
    assert!(acc.len() >= TW * ld && chan_start.len() > blocks.end * BLOCK);
    let x = xt.as_ptr();
    for (bl, b) in blocks.enumerate() {
        let s: [usize; BLOCK + 1] = std::array::from_fn(|c| chan_start[b * BLOCK + c]);
        assert!(idx.len() >= s[BLOCK] && w.len() >= s[BLOCK] * GROUP);
        let mut a = [[_mm512_setzero_si512(); 4]; BLOCK];
        let common = (0..BLOCK).map(|c| s[c + 1] - s[c]).min().unwrap_or(0);
        for g in 0..common {
            for (c, ac) in a.iter_mut().enumerate() {
                // SAFETY: quad `s[c] + g < s[c + 1] ≤ s[BLOCK]`, inside `idx` and `w` (asserted
                // above), with `idx + 4 ≤ K` (packing), so its 256 bytes lie inside `xt`.
                unsafe { quad(ac, x, idx, w, s[c] + g) };
            }
        }
        for (c, ac) in a.iter_mut().enumerate() {
            for q in s[c] + common..s[c + 1] {
                // SAFETY: as above, quad `q < s[c + 1] ≤ s[BLOCK]`.
                unsafe { quad(ac, x, idx, w, q) };
            }
        }
        // SAFETY: tokens < 64 and `bl·4 + 4 ≤ ld`, so every quad lies inside `acc`
        // (`acc.len() ≥ 64·ld`, asserted above); AVX-512 F is enabled here.
        unsafe { store_block(&a, acc, bl, ld) }
    }
}

/// One channel's quad `q` into its 4 accumulators: 4 loads of the quad's ready registers (tile
/// rearranged by [`interleave_quads`]), 1 weight broadcast, 4 `vpdpbusd`.
///
/// # Safety
/// AVX-512 F/BW/VNNI available; `q` indexes `idx` and 4 weights of `w`; the tile `x` holds the 256
/// bytes from `idx[q]·64`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn quad(ac: &mut [__m512i; 4], x: *const u8, idx: &[u32], w: &[i8], q: usize) {
    // SAFETY: the caller's contract.
    unsafe {
        let base = x.add(*idx.get_unchecked(q) as usize * TW);
        let wc = _mm512_set1_epi32((w.as_ptr().add(q * GROUP) as *const i32).read_unaligned());
        for (qq, acq) in ac.iter_mut().enumerate() {
            let v = _mm512_loadu_si512(base.add(qq * TW) as *const __m512i);
            *acq = _mm512_dpbusd_epi32(*acq, v, wc);
        }
    }
}

/// Rows `r0..r3` (64 tokens each, one input index each) as the four registers `vpdpbusd` takes:
/// register `q`, lane `l`, dword `i` = token `16l + 4q + i`, its 4 bytes from rows 0–3.
///
/// # Safety
/// AVX-512 BW available.
#[inline(always)]
unsafe fn quads(r: [__m512i; 4]) -> [__m512i; 4] {
    // SAFETY: the caller's contract.
    unsafe {
        let lo01 = _mm512_unpacklo_epi8(r[0], r[1]);
        let hi01 = _mm512_unpackhi_epi8(r[0], r[1]);
        let lo23 = _mm512_unpacklo_epi8(r[2], r[3]);
        let hi23 = _mm512_unpackhi_epi8(r[2], r[3]);
        [
            _mm512_unpacklo_epi16(lo01, lo23),
            _mm512_unpackhi_epi16(lo01, lo23),
            _mm512_unpacklo_epi16(hi01, hi23),
            _mm512_unpackhi_epi16(hi01, hi23),
        ]
    }
}

/// Block `bl`'s accumulators (`a[channel][q]`, tokens as [`quads`] lays them out) into the
/// token-major `acc [64][ld]`.
///
/// # Safety
/// AVX-512 F available; `acc.len() ≥ 64·ld` and `bl·4 + 4 ≤ ld`.
#[allow(clippy::needless_range_loop)] // a[c][q] for every c shares q
#[inline(always)]
unsafe fn store_block(a: &[[__m512i; 4]; BLOCK], acc: &mut [i32], bl: usize, ld: usize) {
    for q in 0..4 {
        // SAFETY: the caller's contract; each quad's tokens are < 64.
        unsafe {
            let col = acc.as_mut_ptr().add(bl * BLOCK);
            store_quads512([a[0][q], a[1][q], a[2][q], a[3][q]], col, ld, |l, i| 16 * l + 4 * q + i)
        }
    }
}

isa_epilogue!(
    /// [`epilogue_i8`](crate::epilogue::epilogue_i8) vectorised for AVX-512 (16 lanes). The exact
    /// GELU's rational erf dominates an 80% sparse layer's epilogue: 0.67 ns per value on AVX2
    /// against 0.40 here (Zen 5).
    ///
    /// # Safety
    /// AVX-512 F/BW and AVX2 with FMA must be available.
    epilogue,
    "avx512f,avx512bw,avx2,fma"
);
