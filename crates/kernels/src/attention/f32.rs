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
#[inline(always)]
pub(crate) unsafe fn task<V: F32x, const QR: usize, const QC: usize, const PR: usize, const PC: usize>(
    p: &Problem,
    t: &Task,
) {
    let (d, w) = (p.head_dim, V::W);
    let keys = kept_keys(p, t.b);
    let nk = keys.len();
    let sp = nk.next_multiple_of(QC * w);
    let dp = d.next_multiple_of(PC * w);
    let base = t.b * p.seq * p.row_stride + t.h * d;

    let kt = transposed_k(p, base, &keys, sp);
    let mut vp = Buf::<f32>::zeroed(nk * dp);
    for (jj, &j) in keys.iter().enumerate() {
        std::ptr::copy_nonoverlapping(p.v.add(base + j * p.row_stride), vp.as_mut_ptr().add(jj * dp), d);
    }
    let bias = padded_bias(p, t.b, &keys, sp);
    let mut sc = Buf::<f32>::zeroed(TILE * sp);
    let mut inv = [0f32; TILE];

    for i0 in t.rows.clone().step_by(TILE) {
        let n = TILE.min(t.rows.end - i0);
        let q_row = |i: usize| p.q.add(base + i * p.row_stride);
        for j0 in (0..sp).step_by(KEY_BLOCK.next_multiple_of(QC * w)) {
            let keys = j0..sp.min(j0 + KEY_BLOCK.next_multiple_of(QC * w));
            let mut r = 0;
            while r + QR <= n {
                let dst = sc.as_mut_ptr().add(r * sp);
                qk_block::<V, QR, QC>(p, |x| q_row(i0 + r + x), &kt, sp, keys.clone(), &bias, dst);
                r += QR;
            }
            while r < n {
                let dst = sc.as_mut_ptr().add(r * sp);
                qk_block::<V, 1, QC>(p, |_| q_row(i0 + r), &kt, sp, keys.clone(), &bias, dst);
                r += 1;
            }
        }
        for (r, inv) in inv.iter_mut().enumerate().take(n) {
            *inv = 1.0 / softmax_row::<V>(sc.as_mut_ptr().add(r * sp), nk, sp);
        }
        let mut r = 0;
        while r + PR <= n {
            pv_block::<V, PR, PC>(p, t, i0 + r, sc.as_ptr().add(r * sp), sp, &vp, dp, &inv[r..]);
            r += PR;
        }
        while r < n {
            pv_block::<V, 1, PC>(p, t, i0 + r, sc.as_ptr().add(r * sp), sp, &vp, dp, &inv[r..]);
            r += 1;
        }
    }
}

/// Kᵀ of the head at `base` over `keys`, `[head_dim][sp]` with zero padding, built 8 keys at a
/// time so that both the 8 source rows and the destination lines stay in L1.
unsafe fn transposed_k(p: &Problem, base: usize, keys: &[usize], sp: usize) -> Buf<f32> {
    let mut kt = Buf::<f32>::zeroed(p.head_dim * sp);
    for (j0, block) in keys.chunks(8).enumerate().map(|(i, b)| (8 * i, b)) {
        let src: [*const f32; 8] =
            std::array::from_fn(|r| p.k.add(base + block[r.min(block.len() - 1)] * p.row_stride));
        for e in 0..p.head_dim {
            let dst = kt.as_mut_ptr().add(e * sp + j0);
            for (r, src) in src.iter().enumerate().take(block.len()) {
                *dst.add(r) = *src.add(e);
            }
        }
    }
    kt
}

/// Batch `b`'s biases of `keys`, at least `f32::MIN` (so a -inf bias behaves like `f32::MIN` and a
/// fully masked row stays finite), padded to `sp` with zeros (the padded keys' scores are
/// overwritten with -inf).
pub(crate) unsafe fn padded_bias(p: &Problem, b: usize, keys: &[usize], sp: usize) -> Buf<f32> {
    let mut bias = Buf::<f32>::zeroed(sp);
    if let Some(m) = p.mask {
        for (x, &j) in bias.iter_mut().zip(keys) {
            let bias = *m.add(b * p.seq + j);
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
pub(crate) unsafe fn kept_keys(p: &Problem, b: usize) -> Vec<usize> {
    let all = || (0..p.seq).collect();
    let Some(m) = p.mask else { return all() };
    let kept: Vec<usize> = (0..p.seq).filter(|&j| *m.add(b * p.seq + j) > ABSORBING_BIAS).collect();
    if kept.is_empty() {
        all()
    } else {
        kept
    }
}

/// Scores of `R` query rows against the (padded) keys `keys`: `scale·q·k + bias`,
/// written row-major with row stride `sp`. `kt` is Kᵀ, `[head_dim][sp]`.
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

/// `acc·scale + bias` for an `R × C` block of score vectors (one rounding where the ISA has FMA;
/// the graph's `Div` then `Add` round twice, at most 1 ulp of the score apart).
#[inline(always)]
pub(crate) unsafe fn store_scores<V: F32x, const R: usize, const C: usize>(
    scale: f32,
    acc: &[[V; C]; R],
    bias: *const f32,
    dst: *mut f32,
    sp: usize,
) {
    let scale = V::splat(scale);
    for (r, acc) in acc.iter().enumerate() {
        for (c, a) in acc.iter().enumerate() {
            let x = a.mul_add(scale, V::load(bias.add(c * V::W)));
            x.store(dst.add(r * sp + c * V::W));
        }
    }
}

/// In place over one row of `sp` scores of which the first `s` are real: `e^(x - max)`, 0 for the
/// padding; returns the row sum (≥ 1: the max itself contributes e^0).
#[inline(always)]
pub(crate) unsafe fn softmax_row<V: F32x>(row: *mut f32, s: usize, sp: usize) -> f32 {
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

/// `out[row] = inv · Σ_j p[row][j] · v[j]` for `R` rows, `C` vectors of d at a time.
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
    let ps: [*const f32; R] = std::array::from_fn(|r| pr.add(r * sp));
    for d0 in (0..dp).step_by(C * w) {
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

/// Writes `acc · inv[r]` to `out[b, i + r, h, d0 ..]`, dropping the lanes past `head_dim`.
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
