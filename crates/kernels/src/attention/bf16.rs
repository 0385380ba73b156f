//! The bf16 attention task: Q·Kᵀ and P·V as bf16 pair dot products accumulated in f32
//! (`vdpbf16ps`), everything else (scale, bias, softmax, normalisation) in f32. Written once over
//! [`Bf16Dot`]: AVX-512 BF16 in production, and a portable emulation of the same instruction that
//! lets the data layout be tested on CPUs without it.
//!
//! Layouts (a "pair" is two bf16 in one u32, the even element in the low half):
//! - K: `[ceil(D/2)][sp]` pairs `(k[j][2e], k[j][2e+1])`, so one broadcast Q pair meets 16 keys;
//! - V: `[ceil(S/2)][dp]` pairs `(v[2t][d], v[2t+1][d])`, so one broadcast P pair meets 16 dims;
//! - P: each row rounded to bf16 in order, which is already pairs `(p[2t], p[2t+1])`. The row sum
//!   is taken over the rounded values, so the output is an exact convex combination of them.

use super::f32::{kept_keys, padded_bias, softmax_row, store_out, store_scores};
use super::problem::{Problem, Task, TILE};
use super::simd::{F32x, Lanes};
use crate::bf16::value as bf16_value;
use crate::scratch::Buf;

/// A bf16 pair dot product into 16 f32 lanes.
///
/// # Safety
/// As [`F32x`]: only on a CPU with the implementation's ISA, with valid pointers.
pub(crate) trait Bf16Dot {
    type V: F32x;
    /// Lane l: `acc[l] + a.hi·b[l].hi + a.lo·b[l].lo`, `a` one pair broadcast, `b` 16 pairs.
    unsafe fn dot(acc: Self::V, a: u32, b: *const u32) -> Self::V;
    /// `dst[..n] = bf16(src[..n])` rounded to nearest even; returns the sum of the rounded values.
    unsafe fn to_bf16(src: *const f32, dst: *mut u16, n: usize) -> f32;
}

/// Round-to-nearest-even f32 → bf16 (quiet NaN kept NaN).
#[inline(always)]
pub(crate) fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// The portable model of `vdpbf16ps` ([`crate::bf16::dot_lane`] per lane).
pub(crate) struct Emulated;

impl Bf16Dot for Emulated {
    type V = Lanes<16>;
    #[inline(always)]
    unsafe fn dot(acc: Lanes<16>, a: u32, b: *const u32) -> Lanes<16> {
        let mut r = acc.0;
        for (l, r) in r.iter_mut().enumerate() {
            // SAFETY: `b` points at 16 readable pairs (the trait's contract), `l < 16`.
            *r = crate::bf16::dot_lane(*r, a, unsafe { *b.add(l) });
        }
        Lanes(r)
    }
    unsafe fn to_bf16(src: *const f32, dst: *mut u16, n: usize) -> f32 {
        let mut sum = 0.0;
        for i in 0..n {
            // SAFETY: `i < n`, and `src`/`dst` hold `n` values (the trait's contract).
            unsafe {
                let h = bf16_bits(*src.add(i));
                *dst.add(i) = h;
                sum += bf16_value(h);
            }
        }
        sum
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::Avx512Bf16;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::super::simd::Avx512;
    use super::{bf16_bits, Bf16Dot};
    use crate::bf16::value as bf16_value;
    use std::arch::x86_64::*;

    /// `vdpbf16ps` on zmm registers (AVX-512 BF16).
    pub(crate) struct Avx512Bf16;

    impl Bf16Dot for Avx512Bf16 {
        type V = Avx512;
        #[inline(always)]
        unsafe fn dot(acc: Avx512, a: u32, b: *const u32) -> Avx512 {
            // SAFETY: AVX-512 F and BF16 are available and `b` points at 16 readable pairs (the
            // trait's contract); the transmutes reinterpret 512 bits as 32 bf16.
            unsafe {
                let a: __m512bh = std::mem::transmute(_mm512_set1_epi32(a as i32));
                let b: __m512bh = std::mem::transmute(_mm512_loadu_si512(b as *const __m512i));
                Avx512(_mm512_dpbf16_ps(acc.0, a, b))
            }
        }
        #[inline(always)]
        unsafe fn to_bf16(src: *const f32, dst: *mut u16, n: usize) -> f32 {
            // SAFETY: AVX-512 F is available (the trait's contract).
            let mut sum = unsafe { _mm512_setzero_ps() };
            let mut i = 0;
            while i + 16 <= n {
                // SAFETY: AVX-512 F and BF16 are available; `i + 16 ≤ n` and `src`/`dst` hold `n`
                // values (the trait's contract); the transmute reinterprets 16 bf16 as 256 bits.
                unsafe {
                    let h: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(_mm512_loadu_ps(src.add(i))));
                    _mm256_storeu_si256(dst.add(i) as *mut __m256i, h);
                    let back = _mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h));
                    sum = _mm512_add_ps(sum, _mm512_castsi512_ps(back));
                }
                i += 16;
            }
            let mut tail = 0.0;
            while i < n {
                // SAFETY: `i < n`, and `src`/`dst` hold `n` values (the trait's contract).
                unsafe {
                    let h = bf16_bits(*src.add(i));
                    *dst.add(i) = h;
                    tail += bf16_value(h);
                }
                i += 1;
            }
            // SAFETY: AVX-512 F is available (the trait's contract).
            unsafe { _mm512_reduce_add_ps(sum) + tail }
        }
    }
}

/// As [`super::f32::task`], with the products in bf16.
///
/// # Safety
/// As [`super::f32::task`], with `B`'s ISA available.
#[inline(always)]
pub(crate) unsafe fn task<B: Bf16Dot, const QR: usize, const QC: usize, const PR: usize, const PC: usize>(
    p: &Problem,
    t: &Task,
) {
    let d = p.head_dim;
    let w = B::V::W;
    // SAFETY: `t.b < B` and the mask holds `B·S` biases (this function's contract).
    let keys = unsafe { kept_keys(p, t.b) };
    let nk = keys.len();
    let (dh, sh) = (d.div_ceil(2), nk.div_ceil(2));
    let sp = nk.next_multiple_of(QC * w);
    let dp = d.next_multiple_of(PC * w);
    // Row `i` of this head in any of q, k, v starts at `base + i·row_stride` and holds `d` values
    // there: `b < B`, `i < S`, `h·D + D ≤ H·D ≤ row_stride` (this function's contract).
    let base = t.b * p.seq * p.row_stride + t.h * d;

    // `row` holds `2·dh ≥ d` values: a whole converted row, read in pairs up to `2·dh`.
    let mut row = Buf::<u16>::zeroed(2 * dh.max(dp));
    let mut kp = Buf::<u32>::zeroed(dh * sp);
    for (jj, &j) in keys.iter().enumerate() {
        // SAFETY: `B`'s ISA is available (this function's contract); key `j < S`, so its `d` K
        // values lie inside `k` (see `base`); `row` holds at least `d`.
        unsafe { B::to_bf16(p.k.add(base + j * p.row_stride), row.as_mut_ptr(), d) };
        for e in 0..dh {
            kp[e * sp + jj] = pair(&row, 2 * e);
        }
    }
    let mut vp = Buf::<u32>::zeroed(sh * dp);
    let mut row2 = Buf::<u16>::zeroed(dp);
    for t2 in 0..sh {
        row.fill(0);
        row2.fill(0);
        // SAFETY: `B`'s ISA is available (this function's contract); kept keys are `< S`, so their
        // `d` V values lie inside `v` (see `base`); `row` and `row2` (`dp ≥ d`) hold at least `d`.
        unsafe {
            B::to_bf16(p.v.add(base + keys[2 * t2] * p.row_stride), row.as_mut_ptr(), d);
            if 2 * t2 + 1 < nk {
                B::to_bf16(p.v.add(base + keys[2 * t2 + 1] * p.row_stride), row2.as_mut_ptr(), d);
            }
        }
        for (dd, x) in vp[t2 * dp..(t2 + 1) * dp].iter_mut().enumerate() {
            *x = row[dd] as u32 | (row2[dd] as u32) << 16;
        }
    }
    // SAFETY: as for `kept_keys`.
    let bias = unsafe { padded_bias(p, t.b, &keys, sp) };
    let mut sc = Buf::<f32>::zeroed(TILE * sp);
    let mut qp = Buf::<u32>::zeroed(TILE * dh);
    let mut pp = Buf::<u16>::zeroed(TILE * sp);
    let mut inv = [0f32; TILE];

    for i0 in t.rows.clone().step_by(TILE) {
        let n = TILE.min(t.rows.end - i0);
        row.fill(0);
        for r in 0..n {
            // SAFETY: `B`'s ISA is available (this function's contract); query row `i0 + r` lies
            // in `t.rows ⊆ 0..S`, so its `d` values lie inside `q` (see `base`).
            unsafe { B::to_bf16(p.q.add(base + (i0 + r) * p.row_stride), row.as_mut_ptr(), d) };
            for e in 0..dh {
                qp[r * dh + e] = pair(&row, 2 * e);
            }
        }
        let mut r = 0;
        while r + QR <= n {
            // SAFETY: `B`'s ISA is available (this function's contract); `qp` from row `r` holds
            // `QR` rows of `dh` pairs (`r + QR ≤ n ≤ TILE`); `kp` is `[dh][sp]`, `bias` `sp` long;
            // rows `r .. r + QR` of `sc` (`TILE·sp`) take the scores.
            unsafe { qk_block::<B, QR, QC>(p, &qp[r * dh..], dh, &kp, sp, &bias, sc.as_mut_ptr().add(r * sp)) };
            r += QR;
        }
        while r < n {
            // SAFETY: as above for the single row `r`.
            unsafe { qk_block::<B, 1, QC>(p, &qp[r * dh..], dh, &kp, sp, &bias, sc.as_mut_ptr().add(r * sp)) };
            r += 1;
        }
        for (r, inv) in inv.iter_mut().enumerate().take(n) {
            // SAFETY: `B`'s ISA is available (this function's contract); row `r < TILE` of `sc`
            // and of `pp` (both `TILE·sp`) hold `sp` values, `nk ≤ sp`, `sp` a multiple of `W`.
            *inv = 1.0
                / unsafe {
                    softmax_row::<B::V>(sc.as_mut_ptr().add(r * sp), nk, sp);
                    B::to_bf16(sc.as_ptr().add(r * sp), pp.as_mut_ptr().add(r * sp), sp)
                };
        }
        let mut r = 0;
        while r + PR <= n {
            // SAFETY: `B`'s ISA is available and this task alone writes rows `i0 + r ..
            // i0 + r + PR ⊆ t.rows` of head `t.h` (this function's contract); rows `r .. r + PR`
            // of `pp` (`TILE·sp`) hold `sp ≥ 2·sh` probabilities; `vp` is `[sh][dp]`; `inv` has
            // `PR` entries from `r`.
            unsafe { pv_block::<B, PR, PC>(p, t, i0 + r, pp.as_ptr().add(r * sp), sp, sh, &vp, dp, &inv[r..]) };
            r += PR;
        }
        while r < n {
            // SAFETY: as above for the single row `i0 + r`.
            unsafe { pv_block::<B, 1, PC>(p, t, i0 + r, pp.as_ptr().add(r * sp), sp, sh, &vp, dp, &inv[r..]) };
            r += 1;
        }
    }
}

#[inline(always)]
fn pair(h: &[u16], i: usize) -> u32 {
    h[i] as u32 | (h[i + 1] as u32) << 16
}

/// Scores of `R` query rows (`qp`, `dh` pairs each) against every key of `kp` (`[dh][sp]`
/// pairs): `scale·q·k + bias`, written row-major with row stride `sp`.
///
/// # Safety
/// `B`'s ISA must be available; `qp.len() ≥ R·dh`, `kp.len() ≥ dh·sp`, `bias.len() ≥ sp`, `sp` a
/// multiple of `C·W`; `dst` is valid for writes of `R` rows of `sp` values.
#[inline(always)]
unsafe fn qk_block<B: Bf16Dot, const R: usize, const C: usize>(
    p: &Problem,
    qp: &[u32],
    dh: usize,
    kp: &[u32],
    sp: usize,
    bias: &[f32],
    dst: *mut f32,
) {
    let w = B::V::W;
    for j0 in (0..sp).step_by(C * w) {
        // SAFETY: `B`'s ISA is available (this function's contract). Key pairs `j0 + c·W ..
        // + W`, `c < C`, end at `j0 + C·W ≤ sp`, inside row `e < dh` of `kp`; `r·dh + e < R·dh ≤
        // qp.len()`; bias `j0..j0 + C·W` and the `R` destination rows lie inside `bias` and `dst`.
        unsafe {
            let mut acc = [[B::V::splat(0.0); C]; R];
            for e in 0..dh {
                let kr = kp.as_ptr().add(e * sp + j0);
                for (r, acc) in acc.iter_mut().enumerate() {
                    let a = *qp.get_unchecked(r * dh + e);
                    for (c, acc) in acc.iter_mut().enumerate() {
                        *acc = B::dot(*acc, a, kr.add(c * w));
                    }
                }
            }
            store_scores::<B::V, R, C>(p.scale, &acc, bias.as_ptr().add(j0), dst.add(j0), sp);
        }
    }
}

/// `out[row] = inv · Σ_t2 p[row][2·t2..2·t2 + 2] · v[t2]` for `R` rows of bf16 probabilities
/// (`pr`, stride `sp`) against the `[sh][dp]` value pairs `vp`, `C` vectors of d at a time.
///
/// # Safety
/// `B`'s ISA must be available; `pr` points at `R` rows (stride `sp`) of `2·sh` readable values;
/// `vp.len() ≥ sh·dp` with `dp` a multiple of `C·W`; and as `store_out` for rows `i..i + R`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn pv_block<B: Bf16Dot, const R: usize, const C: usize>(
    p: &Problem,
    t: &Task,
    i: usize,
    pr: *const u16,
    sp: usize,
    sh: usize,
    vp: &[u32],
    dp: usize,
    inv: &[f32],
) {
    let w = B::V::W;
    for d0 in (0..dp).step_by(C * w) {
        // SAFETY: `B`'s ISA is available (this function's contract). Value pairs `t2·dp + d0 +
        // c·W .. + W`, `c < C`, end at `(t2 + 1)·dp ≤ vp.len()`; the probability pair at
        // `2·t2 + 1 < 2·sh` of row `r < R` is readable (unaligned read); the store is as
        // `store_out`'s contract.
        unsafe {
            let mut acc = [[B::V::splat(0.0); C]; R];
            for t2 in 0..sh {
                let vr = vp.as_ptr().add(t2 * dp + d0);
                for (r, acc) in acc.iter_mut().enumerate() {
                    let a = (pr.add(r * sp + 2 * t2) as *const u32).read_unaligned();
                    for (c, acc) in acc.iter_mut().enumerate() {
                        *acc = B::dot(*acc, a, vr.add(c * w));
                    }
                }
            }
            store_out::<B::V, R, C>(p, t, i, d0, &acc, inv);
        }
    }
}
