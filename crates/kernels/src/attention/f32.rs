//! The f32 attention task, written once over [`F32x`] and instantiated per ISA: pack one head's
//! K (transposed, keys contiguous) and V (rows padded), then per tile of query rows compute the
//! scores, the softmax and P·V. The score epilogue, the softmax and the output store are shared
//! with the bf16 task.

use super::problem::{Problem, Task, ABSORBING_BIAS, TILE};
use super::simd::{exp, F32x};
use crate::scratch::Buf;
use std::ops::Range;

/// Keys per pass of a tile's Q·Kᵀ: all row blocks of the tile reuse this slice of Kᵀ
/// (8 KiB at head_dim 32) from L1.
const KEY_BLOCK: usize = 64;

/// One task: `QR` query rows × `QC` key vectors per Q·Kᵀ register block, `PR` rows × `PC`
/// d-vectors per P·V block.
///
/// # Safety
/// `V`'s ISA must be available; `p` must hold what `Attention::forward` checked (`q`, `k`, `v`
/// valid for `B·S` rows of `row_stride` with `H·D` used, `mask` for `B·S` biases, `out` for
/// `B·S·H·D` values); `t.b < B`, `t.h < H`, `t.rows ⊆ 0..S`, and no other task writes `t`'s
/// output cells (rows `t.rows` of head `t.h` in batch item `t.b`).
#[inline(always)]
pub(crate) unsafe fn task<V: F32x, const QR: usize, const QC: usize, const PR: usize, const PC: usize>(
    p: &Problem,
    t: &Task,
) {
    let (d, w) = (p.head_dim, V::W);
    // SAFETY: `t.b < B` and the mask holds `B·S` biases (this function's contract).
    let keys = unsafe { kept_keys(p, t.b) };
    let nk = keys.len();
    let sp = nk.next_multiple_of(QC * w);
    let dp = d.next_multiple_of(PC * w);
    // Row `i` of this head in any of q, k, v starts at `base + i·row_stride` and holds `d` values
    // there: `b < B`, `i < S`, `h·D + D ≤ H·D ≤ row_stride` (this function's contract).
    let base = t.b * p.seq * p.row_stride + t.h * d;

    // SAFETY: every kept key is `< S`, so its K row lies inside `k` (see `base`).
    let kt = unsafe { transposed_k(p, base, &keys, sp) };
    let mut vp = Buf::<f32>::zeroed(nk * dp);
    for (jj, &j) in keys.iter().enumerate() {
        // SAFETY: key `j < S`, so its `d` values of V lie inside `v` (see `base`); `vp` is this
        // task's own buffer of `nk·dp` values, so `jj·dp + d ≤ nk·dp` fit and nothing overlaps.
        unsafe { std::ptr::copy_nonoverlapping(p.v.add(base + j * p.row_stride), vp.as_mut_ptr().add(jj * dp), d) };
    }
    // SAFETY: as for `kept_keys`.
    let bias = unsafe { padded_bias(p, t.b, &keys, sp) };
    let mut sc = Buf::<f32>::zeroed(TILE * sp);
    let mut inv = [0f32; TILE];

    for i0 in t.rows.clone().step_by(TILE) {
        let n = TILE.min(t.rows.end - i0);
        // Only called for query rows `i ∈ t.rows ⊆ 0..S`, inside `q` (see `base`); `wrapping_add`
        // keeps the address computation itself safe.
        let q_row = |i: usize| p.q.wrapping_add(base + i * p.row_stride);
        for j0 in (0..sp).step_by(KEY_BLOCK.next_multiple_of(QC * w)) {
            let keys = j0..sp.min(j0 + KEY_BLOCK.next_multiple_of(QC * w));
            let mut r = 0;
            while r + QR <= n {
                // SAFETY: `V`'s ISA is available (this function's contract); rows `i0 + r ..
                // i0 + r + QR` lie in `t.rows`; `kt` is `[D][sp]` and `bias` `sp` long with
                // `keys ⊆ 0..sp` in steps of `QC·W` dividing `sp`; `dst` is row `r + QR ≤ n ≤ TILE`
                // of `sc` (`TILE·sp`).
                unsafe {
                    let dst = sc.as_mut_ptr().add(r * sp);
                    qk_block::<V, QR, QC>(p, |x| q_row(i0 + r + x), &kt, sp, keys.clone(), &bias, dst);
                }
                r += QR;
            }
            while r < n {
                // SAFETY: as above for the single row `i0 + r`.
                unsafe {
                    let dst = sc.as_mut_ptr().add(r * sp);
                    qk_block::<V, 1, QC>(p, |_| q_row(i0 + r), &kt, sp, keys.clone(), &bias, dst);
                }
                r += 1;
            }
        }
        for (r, inv) in inv.iter_mut().enumerate().take(n) {
            // SAFETY: `V`'s ISA is available (this function's contract); row `r < TILE` of `sc`
            // holds `sp` scores, `nk ≤ sp`, and `sp` is a multiple of `W`.
            *inv = 1.0 / unsafe { softmax_row::<V>(sc.as_mut_ptr().add(r * sp), nk, sp) };
        }
        let mut r = 0;
        while r + PR <= n {
            // SAFETY: `V`'s ISA is available and this task alone writes rows `i0 + r ..
            // i0 + r + PR ⊆ t.rows` of head `t.h` (this function's contract); rows `r .. r + PR`
            // of `sc` (`TILE·sp`) hold `sp ≥ nk` probabilities; `vp` is `[nk][dp]`; `inv` has
            // `PR` entries from `r` (`r + PR ≤ n ≤ TILE`).
            unsafe { pv_block::<V, PR, PC>(p, t, i0 + r, sc.as_ptr().add(r * sp), sp, &vp, dp, &inv[r..]) };
            r += PR;
        }
        while r < n {
            // SAFETY: as above for the single row `i0 + r`.
            unsafe { pv_block::<V, 1, PC>(p, t, i0 + r, sc.as_ptr().add(r * sp), sp, &vp, dp, &inv[r..]) };
            r += 1;
        }
    }
}

/// Kᵀ of the head at `base` over `keys`, `[head_dim][sp]` with zero padding, built 8 keys at a
/// time so that both the 8 source rows and the destination lines stay in L1.
///
/// # Safety
/// For every key `j` in `keys`, `p.k` must hold `head_dim` readable values at
/// `base + j·row_stride`; `keys.len() ≤ sp`.
unsafe fn transposed_k(p: &Problem, base: usize, keys: &[usize], sp: usize) -> Buf<f32> {
    assert!(keys.len() <= sp);
    let mut kt = Buf::<f32>::zeroed(p.head_dim * sp);
    for (j0, block) in keys.chunks(8).enumerate().map(|(i, b)| (8 * i, b)) {
        // SAFETY: each pointer is the start of a K row of one of `keys` (this function's contract).
        let src: [*const f32; 8] =
            std::array::from_fn(|r| unsafe { p.k.add(base + block[r.min(block.len() - 1)] * p.row_stride) });
        for e in 0..p.head_dim {
            // SAFETY: `e < head_dim` and `j0 + r < keys.len() ≤ sp` (asserted), inside `kt`
            // (`head_dim·sp`); `src[r]` is a K row of `head_dim` values (this function's contract).
            unsafe {
                let dst = kt.as_mut_ptr().add(e * sp + j0);
                for (r, src) in src.iter().enumerate().take(block.len()) {
                    *dst.add(r) = *src.add(e);
                }
            }
        }
    }
    kt
}

/// Batch `b`'s biases of `keys`, at least `f32::MIN` (so a -inf bias behaves like `f32::MIN` and a
/// fully masked row stays finite), padded to `sp` with zeros (the padded keys' scores are
/// overwritten with -inf).
///
/// # Safety
/// `b < B`, every key `< S`, and `p.mask` (when present) holds `B·S` biases.
pub(crate) unsafe fn padded_bias(p: &Problem, b: usize, keys: &[usize], sp: usize) -> Buf<f32> {
    let mut bias = Buf::<f32>::zeroed(sp);
    if let Some(m) = p.mask {
        for (x, &j) in bias.iter_mut().zip(keys) {
            // SAFETY: `b·S + j < B·S`, inside the mask (this function's contract).
            let bias = unsafe { *m.add(b * p.seq + j) };
            *x = if bias < f32::MIN { f32::MIN } else { bias };
        }
    }
    bias
}

/// The keys of batch item `b` that can carry weight: every key, except that keys whose bias is
/// ≤ [`ABSORBING_BIAS`] are dropped when some key's bias is above it. In f32 their score rounds
/// to their bias, at least ~1e30 below the row max, so the exported graph gives them weight
/// exactly 0 (for |scale·q·k| < 1e20, and finite K and V at those keys). If every key is below,
/// all are kept: the row is then the graph's uniform average.
///
/// # Safety
/// `b < B` and `p.mask` (when present) holds `B·S` biases.
pub(crate) unsafe fn kept_keys(p: &Problem, b: usize) -> Vec<usize> {
    let all = || (0..p.seq).collect();
    let Some(m) = p.mask else { return all() };
    // SAFETY: `b·S + j < B·S` for `j < S`, inside the mask (this function's contract).
    let kept: Vec<usize> = (0..p.seq).filter(|&j| unsafe { *m.add(b * p.seq + j) } > ABSORBING_BIAS).collect();
    if kept.is_empty() {
        all()
    } else {
        kept
    }
}

/// Scores of `R` query rows against the (padded) keys `keys`: `scale·q·k + bias`,
/// written row-major with row stride `sp`. `kt` is Kᵀ, `[head_dim][sp]`.
///
/// # Safety
/// `V`'s ISA must be available; `q_row(r)` for `r < R` points at `head_dim` readable values;
/// `kt.len() ≥ head_dim·sp`, `bias.len() ≥ sp`, `keys ⊆ 0..sp` with `sp` a multiple of `C·W`;
/// `dst` is valid for writes of `R` rows of `sp` values.
#[inline(always)]
unsafe fn qk_block<V: F32x, const R: usize, const C: usize>(
    p: &Problem,
    q_row: impl Fn(usize) -> *const f32,
    kt: &[f32],
    sp: usize,
    keys: Range<usize>,
    bias: &[f32],
    dst: *mut f32,
) {
    let w = V::W;
    let qs: [*const f32; R] = std::array::from_fn(q_row);
    for j0 in keys.step_by(C * w) {
        // SAFETY: `V`'s ISA is available (this function's contract). Key vectors `j0 + c·W`,
        // `c < C`, end at `j0 + C·W ≤ sp`, inside row `e < head_dim` of `kt`; `q.add(e)` is one of
        // the `head_dim` values of a query row; bias `j0..j0 + C·W` and the `R` destination rows
        // of `sp` values are inside `bias` and `dst` (this function's contract).
        unsafe {
            let mut acc = [[V::splat(0.0); C]; R];
            for e in 0..p.head_dim {
                let kr = kt.as_ptr().add(e * sp + j0);
                let mut kv = [V::splat(0.0); C];
                for (c, kv) in kv.iter_mut().enumerate() {
                    *kv = V::load(kr.add(c * w));
                }
                for (acc, q) in acc.iter_mut().zip(qs) {
                    let qb = V::splat(*q.add(e));
                    for (a, kv) in acc.iter_mut().zip(kv) {
                        *a = qb.mul_add(kv, *a);
                    }
                }
            }
            store_scores::<V, R, C>(p.scale, &acc, bias.as_ptr().add(j0), dst.add(j0), sp);
        }
    }
}

/// `acc·scale + bias` for an `R × C` block of score vectors (one rounding where the ISA has FMA;
/// the graph's `Div` then `Add` round twice, at most 1 ulp of the score apart).
///
/// # Safety
/// `V`'s ISA must be available; `bias` points at `C·W` readable values, `dst` at `R` rows (stride
/// `sp`) of `C·W` writable values.
#[inline(always)]
pub(crate) unsafe fn store_scores<V: F32x, const R: usize, const C: usize>(
    scale: f32,
    acc: &[[V; C]; R],
    bias: *const f32,
    dst: *mut f32,
    sp: usize,
) {
    // SAFETY: `V`'s ISA is available; bias vector `c < C` and destination vector `(r, c)` lie in
    // the ranges this function's contract gives.
    unsafe {
        let scale = V::splat(scale);
        for (r, acc) in acc.iter().enumerate() {
            for (c, a) in acc.iter().enumerate() {
                let x = a.mul_add(scale, V::load(bias.add(c * V::W)));
                x.store(dst.add(r * sp + c * V::W));
            }
        }
    }
}

/// In place over one row of `sp` scores of which the first `s` are real: `e^(x - max)`, 0 for the
/// padding; returns the row sum (≥ 1: the max itself contributes e^0).
///
/// # Safety
/// `V`'s ISA must be available; `row` points at `sp` readable and writable values, `s ≤ sp` and
/// `sp` is a multiple of `W`.
#[inline(always)]
pub(crate) unsafe fn softmax_row<V: F32x>(row: *mut f32, s: usize, sp: usize) -> f32 {
    // SAFETY: `V`'s ISA is available; every access is at `j < sp` or a vector `j..j + W ≤ sp`
    // (`sp` a multiple of `W`), inside the row (this function's contract).
    unsafe {
        for j in s..sp {
            *row.add(j) = f32::NEG_INFINITY;
        }
        let mut m = V::splat(f32::NEG_INFINITY);
        for j in (0..sp).step_by(V::W) {
            m = m.max(V::load(row.add(j)));
        }
        let m = V::splat(m.hmax());
        let mut sum = V::splat(0.0);
        for j in (0..sp).step_by(V::W) {
            let e = exp(V::load(row.add(j)).sub(m));
            e.store(row.add(j));
            sum = sum.add(e);
        }
        sum.hsum()
    }
}

/// `out[row] = inv · Σ_j p[row][j] · v[j]` for `R` rows, `C` vectors of d at a time.
///
/// # Safety
/// `V`'s ISA must be available; `pr` points at `R` rows (stride `sp`) of `vp.len() / dp`
/// readable probabilities; `dp` is a multiple of `C·W`; and as [`store_out`] for rows `i..i + R`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn pv_block<V: F32x, const R: usize, const C: usize>(
    p: &Problem,
    t: &Task,
    i: usize,
    pr: *const f32,
    sp: usize,
    vp: &[f32],
    dp: usize,
    inv: &[f32],
) {
    let w = V::W;
    let nk = vp.len() / dp;
    // SAFETY: row `r < R` of the probabilities starts inside `pr`'s rows (this function's contract).
    let ps: [*const f32; R] = std::array::from_fn(|r| unsafe { pr.add(r * sp) });
    for d0 in (0..dp).step_by(C * w) {
        // SAFETY: `V`'s ISA is available; value vectors `j·dp + d0 + c·W`, `c < C`, end at
        // `j·dp + d0 + C·W ≤ (j + 1)·dp ≤ vp.len()` for `j < nk`; probability `j < nk` of each row
        // is readable; the store is as `store_out`'s contract (this function's contract).
        unsafe {
            let mut acc = [[V::splat(0.0); C]; R];
            for j in 0..nk {
                let vr = vp.as_ptr().add(j * dp + d0);
                let mut vv = [V::splat(0.0); C];
                for (c, vv) in vv.iter_mut().enumerate() {
                    *vv = V::load(vr.add(c * w));
                }
                for (acc, p) in acc.iter_mut().zip(ps) {
                    let pb = V::splat(*p.add(j));
                    for (a, vv) in acc.iter_mut().zip(vv) {
                        *a = pb.mul_add(vv, *a);
                    }
                }
            }
            store_out::<V, R, C>(p, t, i, d0, &acc, inv);
        }
    }
}

/// Writes `acc · inv[r]` to `out[b, i + r, h, d0 ..]`, dropping the lanes past `head_dim`.
///
/// # Safety
/// `V`'s ISA must be available, `W ≤ 16`; `p.out` holds `B·S·H·D` values, `t.b < B`, `t.h < H`,
/// rows `i..i + R` lie in `0..S` and no other task writes their cells of head `t.h`.
#[inline(always)]
pub(crate) unsafe fn store_out<V: F32x, const R: usize, const C: usize>(
    p: &Problem,
    t: &Task,
    i: usize,
    d0: usize,
    acc: &[[V; C]; R],
    inv: &[f32],
) {
    let (d, w) = (p.head_dim, V::W);
    let hd = p.heads * d;
    for (r, acc) in acc.iter().enumerate() {
        // SAFETY: `V`'s ISA is available. Row `i + r` of head `t.h` starts inside `out` and holds
        // `d` values this task alone writes (this function's contract); a whole vector is stored
        // only when `dd + W ≤ d`, else `d - dd < W ≤ 16` values go through `tmp`.
        unsafe {
            let dst = p.out.add((t.b * p.seq + i + r) * hd + t.h * d);
            let iv = V::splat(inv[r]);
            for (c, a) in acc.iter().enumerate() {
                let x = a.mul(iv);
                let dd = d0 + c * w;
                if dd + w <= d {
                    x.store(dst.add(dd));
                } else if dd < d {
                    let mut tmp = [0f32; 16];
                    x.store(tmp.as_mut_ptr());
                    std::ptr::copy_nonoverlapping(tmp.as_ptr(), dst.add(dd), d - dd);
                }
            }
        }
    }
}
