//! The training attention tasks: the forward `ctx = softmax(scale·Q·Kᵀ + bias)·V` keeping only two
//! numbers per query row (the row max `m` and the reciprocal `inv` of its exponential sum), and the
//! backward, which recomputes each probability from them (`p = e^(s - m)·inv`, the same scores and
//! the same `exp` as the forward) instead of reading a stored `[S, S]` matrix:
//!
//! - `dV = Pᵀ·dO`, `dP = dO·Vᵀ`, `Δᵢ = Σ_d dOᵢ·Oᵢ`, `dS = P ⊙ (dP - Δ)`,
//! - `dQ = scale·dS·K`, `dKᵀ = scale·Qᵀ·dS`.
//!
//! Layouts are those of the exported graph's attention core: `Q`, `V`, `O` `[B, H, S, D]`, `Kᵀ`
//! `[B, H, D, S]` (the graph transposes K before its `MatMul`), the bias `[B|1, H|1, S|1, S]`
//! (broadcast by strides, key axis contiguous). A query row whose every score is -inf (every key
//! masked with -inf) gets probabilities 0, as the export's `Where(IsNaN(p), 0, p)` guard gives.
//!
//! One task per (batch, head) pair writes that pair's outputs alone and sums everything in a fixed
//! order (query rows ascending, then keys, then head dimensions), so results do not depend on the
//! thread count. Every product is an FMA chain over `d` or over query rows, identical on AVX2 and
//! AVX-512 per lane; the softmax row sum is a vector sum whose lane count is the ISA's, so the
//! ISAs agree to f32 rounding (the portable lanes multiply and add separately).

use super::simd::{exp, F32x};
use crate::scratch::Buf;

/// Query rows per tile of the backward (scores, probabilities and their gradient for the tile
/// stay in L2: 2 × 32 × S f32).
pub(crate) const TRAIN_TILE: usize = 32;

/// One call's inputs as the tasks see them; checked by `AttentionTrain`'s entry points.
pub(crate) struct TrainProblem {
    pub heads: usize,
    pub seq: usize,
    pub head_dim: usize,
    pub q: *const f32,
    pub kt: *const f32,
    pub v: *const f32,
    /// `(data, stride_b, stride_h, stride_q)`; key `j` of query row `i` is at
    /// `b·stride_b + h·stride_h + i·stride_q + j`.
    pub bias: Option<(*const f32, usize, usize, usize)>,
    pub scale: f32,
}

// SAFETY: every pointer is read-only for the whole call.
unsafe impl Sync for TrainProblem {}

/// The per-pair outputs of the forward.
pub(crate) struct ForwardOut {
    pub ctx: *mut f32,
    pub stats: *mut f32,
}

// SAFETY: each task writes only its own pair's cells.
unsafe impl Sync for ForwardOut {}

/// The backward's extra inputs and its outputs.
pub(crate) struct BackwardIo {
    pub ctx: *const f32,
    pub stats: *const f32,
    pub dctx: *const f32,
    pub dq: *mut f32,
    pub dkt: *mut f32,
    pub dv: *mut f32,
}

// SAFETY: inputs are read-only; each task writes only its own pair's cells of the outputs.
unsafe impl Sync for BackwardIo {}

/// A strided matrix operand: element `(row, k)` at `ptr + row·rs + k·ks`.
#[derive(Clone, Copy)]
struct Mat {
    ptr: *const f32,
    rs: usize,
    ks: usize,
}

/// `out[r][c] (+)= Σ_k a(r, k)·b[k][c]` for `rows` rows and `cols` columns (a multiple of `W`),
/// `k` ascending for every output (so the blocking never changes a bit), in `R × C` register
/// blocks of `C` vectors. `b` rows are `b_rs` apart, `out` rows `out_rs`; with `accumulate` the
/// sums start from `out`'s values, else from 0.
///
/// # Safety
/// `V`'s ISA must be available; every `a(r, k)` for `r < rows`, `k < klen`, every `b[k][0..cols]`
/// and `out[r][0..cols]` must be valid (`out` writable, not overlapping `a` or `b`).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn mm<V: F32x, const R: usize, const C: usize>(
    a: Mat,
    rows: usize,
    klen: usize,
    b: *const f32,
    b_rs: usize,
    cols: usize,
    out: *mut f32,
    out_rs: usize,
    accumulate: bool,
) {
    let mut r = 0;
    while r < rows {
        if r + R <= rows {
            // SAFETY: rows `r..r + R` are inside `rows` (this function's contract).
            unsafe { mm_rows::<V, R, C>(a, r, klen, b, b_rs, cols, out, out_rs, accumulate) };
            r += R;
        } else {
            // SAFETY: as above for one row.
            unsafe { mm_rows::<V, 1, C>(a, r, klen, b, b_rs, cols, out, out_rs, accumulate) };
            r += 1;
        }
    }
}

/// Rows `r0..r0 + R` of [`mm`].
///
/// # Safety
/// As [`mm`], with `r0 + R ≤ rows`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn mm_rows<V: F32x, const R: usize, const C: usize>(
    a: Mat,
    r0: usize,
    klen: usize,
    b: *const f32,
    b_rs: usize,
    cols: usize,
    out: *mut f32,
    out_rs: usize,
    accumulate: bool,
) {
    let w = V::W;
    let mut c0 = 0;
    while c0 < cols {
        let nc = if c0 + C * w <= cols { C } else { 1 };
        // SAFETY: `V`'s ISA; rows `r0..r0 + R`, columns `c0..c0 + nc·W ≤ cols`, `k < klen` are all
        // inside the operands (this function's contract).
        unsafe {
            if nc == C {
                block::<V, R, C>(a, r0, klen, b.add(c0), b_rs, out.add(r0 * out_rs + c0), out_rs, accumulate);
            } else {
                block::<V, R, 1>(a, r0, klen, b.add(c0), b_rs, out.add(r0 * out_rs + c0), out_rs, accumulate);
            }
        }
        c0 += nc * w;
    }
}

/// One `R × C`-vector block of [`mm`] at `out` (already offset to the block).
///
/// # Safety
/// As [`mm`] for this block.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn block<V: F32x, const R: usize, const C: usize>(
    a: Mat,
    r0: usize,
    klen: usize,
    b: *const f32,
    b_rs: usize,
    out: *mut f32,
    out_rs: usize,
    accumulate: bool,
) {
    let w = V::W;
    // SAFETY: `V`'s ISA; every access is inside the block the contract gives.
    unsafe {
        let mut acc = [[V::splat(0.0); C]; R];
        if accumulate {
            for (r, acc) in acc.iter_mut().enumerate() {
                for (c, x) in acc.iter_mut().enumerate() {
                    *x = V::load(out.add(r * out_rs + c * w));
                }
            }
        }
        let arow: [*const f32; R] = std::array::from_fn(|r| a.ptr.add((r0 + r) * a.rs));
        for k in 0..klen {
            let bk = b.add(k * b_rs);
            let mut bv = [V::splat(0.0); C];
            for (c, x) in bv.iter_mut().enumerate() {
                *x = V::load(bk.add(c * w));
            }
            for (acc, ar) in acc.iter_mut().zip(arow) {
                let av = V::splat(*ar.add(k * a.ks));
                for (x, bv) in acc.iter_mut().zip(bv) {
                    *x = av.mul_add(bv, *x);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            for (c, x) in acc.iter().enumerate() {
                x.store(out.add(r * out_rs + c * w));
            }
        }
    }
}

/// The pair's Kᵀ (or Vᵀ built from `[S, D]` rows) padded to `[D][sp]` with zeros.
///
/// # Safety
/// `src` holds `D·S` values laid out as `transposed` says (`[D][S]` when true, `[S][D]` when false).
unsafe fn padded_t(src: *const f32, d: usize, s: usize, sp: usize, transposed: bool) -> Buf<f32> {
    let mut out = Buf::<f32>::zeroed(d * sp);
    for e in 0..d {
        for j in 0..s {
            // SAFETY: `e < d`, `j < s`, inside the `D·S` values (this function's contract).
            out[e * sp + j] = unsafe { *src.add(if transposed { e * s + j } else { j * d + e }) };
        }
    }
    out
}

/// `S` rows of `D` values padded to `[S][dp]` with zeros.
///
/// # Safety
/// `src` holds `S·D` values.
unsafe fn padded_rows(src: *const f32, d: usize, s: usize, dp: usize) -> Buf<f32> {
    let mut out = Buf::<f32>::zeroed(s * dp);
    for j in 0..s {
        // SAFETY: row `j < S` of `src` holds `d` values; `out` row `j` holds `dp ≥ d`.
        unsafe { std::ptr::copy_nonoverlapping(src.add(j * d), out.as_mut_ptr().add(j * dp), d) };
    }
    out
}

/// Rows `i0..i0 + n` of `scale·Q·Kᵀ + bias` into `sc` (`n` rows of `sp`), `pad` past `S`.
///
/// # Safety
/// `V`'s ISA must be available; `q` holds the pair's `S` rows `q_stride` apart with `D` values
/// each, `kt` its padded `[D][sp]`, `bias` (if any) its rows of `S` keys at `stride_q`;
/// `i0 + n ≤ S`; `sc.len() ≥ n·sp`, `sp` a multiple of `W`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn scores<V: F32x, const R: usize, const C: usize>(
    p: &TrainProblem,
    q: *const f32,
    q_stride: usize,
    kt: &[f32],
    bias: Option<(*const f32, usize)>,
    i0: usize,
    n: usize,
    sp: usize,
    sc: &mut [f32],
    pad: f32,
) {
    let (d, s) = (p.head_dim, p.seq);
    let a = Mat { ptr: q.wrapping_add(i0 * q_stride), rs: q_stride, ks: 1 };
    // SAFETY: `V`'s ISA; rows `i0..i0 + n` of `q` (`d` values each), `kt` `[d][sp]`, `sc` `n` rows
    // of `sp` (this function's contract).
    unsafe { mm::<V, R, C>(a, n, d, kt.as_ptr(), sp, sp, sc.as_mut_ptr(), sp, false) };
    for r in 0..n {
        let row = &mut sc[r * sp..(r + 1) * sp];
        if p.scale != 1.0 {
            for x in row[..s].iter_mut() {
                *x *= p.scale;
            }
        }
        if let Some((b, stride_q)) = bias {
            // SAFETY: row `i0 + r < S` of the bias holds `S` keys (this function's contract).
            let brow = unsafe { std::slice::from_raw_parts(b.add((i0 + r) * stride_q), s) };
            for (x, &bv) in row.iter_mut().zip(brow) {
                *x += bv;
            }
        }
        row[s..].fill(pad);
    }
}

/// Turns a row of scores into `e^(x - m)` in place and returns `(m, 1 / Σ e)`; a row whose max is
/// -inf becomes zeros with `(−inf, 0)`.
///
/// # Safety
/// `V`'s ISA must be available; `row.len()` is a multiple of `W`.
#[inline(always)]
unsafe fn exp_row<V: F32x>(row: &mut [f32]) -> (f32, f32) {
    // SAFETY: `V`'s ISA is available; vectors `j..j + W ≤ row.len()` (this function's contract).
    unsafe {
        let mut m = V::splat(f32::NEG_INFINITY);
        for j in (0..row.len()).step_by(V::W) {
            m = m.max(V::load(row.as_ptr().add(j)));
        }
        let m = m.hmax();
        if m == f32::NEG_INFINITY || m.is_nan() {
            row.fill(0.0);
            return (f32::NEG_INFINITY, 0.0);
        }
        let mv = V::splat(m);
        let mut sum = V::splat(0.0);
        for j in (0..row.len()).step_by(V::W) {
            let e = exp(V::load(row.as_ptr().add(j)).sub(mv));
            e.store(row.as_mut_ptr().add(j));
            sum = sum.add(e);
        }
        (m, 1.0 / sum.hsum())
    }
}

/// `e^(x - m)·inv` in place (the backward's probabilities from the forward's statistics).
///
/// # Safety
/// `V`'s ISA must be available; `row.len()` is a multiple of `W`.
#[inline(always)]
unsafe fn prob_row<V: F32x>(row: &mut [f32], m: f32, inv: f32) {
    if m == f32::NEG_INFINITY || inv == 0.0 {
        row.fill(0.0);
        return;
    }
    // SAFETY: `V`'s ISA is available; vectors `j..j + W ≤ row.len()` (this function's contract).
    unsafe {
        let (mv, iv) = (V::splat(m), V::splat(inv));
        for j in (0..row.len()).step_by(V::W) {
            exp(V::load(row.as_ptr().add(j)).sub(mv)).mul(iv).store(row.as_mut_ptr().add(j));
        }
    }
}

/// The bias rows of pair `(b, h)` and their stride.
fn pair_bias(p: &TrainProblem, b: usize, h: usize) -> Option<(*const f32, usize)> {
    p.bias.map(|(ptr, sb, sh, sq)| (ptr.wrapping_add(b * sb + h * sh), sq))
}

/// The forward of pair `pair = b·H + h`: `ctx` rows and `(m, inv)` per query row.
///
/// # Safety
/// `V`'s ISA must be available; the problem's pointers hold `B·H` pairs of the documented shapes,
/// `pair < B·H`, and no other task writes this pair's cells of `out`.
#[inline(always)]
pub(crate) unsafe fn forward_pair<V: F32x, const R: usize, const C: usize>(
    p: &TrainProblem,
    out: &ForwardOut,
    pair: usize,
) {
    let (d, s, w) = (p.head_dim, p.seq, V::W);
    let sp = s.next_multiple_of(w);
    let dp = d.next_multiple_of(w);
    let (b, h) = (pair / p.heads, pair % p.heads);
    let off = pair * s * d;
    // SAFETY: pair `pair`'s K and V hold `D·S` values at `off` (this function's contract).
    let (kt, vp) = unsafe { (padded_t(p.kt.add(off), d, s, sp, true), padded_rows(p.v.add(off), d, s, dp)) };
    let bias = pair_bias(p, b, h);
    let mut sc = Buf::<f32>::zeroed(TRAIN_TILE * sp);
    let mut ctx = Buf::<f32>::zeroed(TRAIN_TILE * dp);
    for i0 in (0..s).step_by(TRAIN_TILE) {
        let n = TRAIN_TILE.min(s - i0);
        // SAFETY: `V`'s ISA is available; `i0 + n ≤ S`; the pair's Q at `off` (contract).
        unsafe { scores::<V, R, C>(p, p.q.add(off), d, &kt, bias, i0, n, sp, &mut sc, f32::NEG_INFINITY) };
        let mut stats = [(0f32, 0f32); TRAIN_TILE];
        for (r, st) in stats.iter_mut().enumerate().take(n) {
            // SAFETY: `V`'s ISA is available; the row is `sp` long, a multiple of `W`.
            *st = unsafe { exp_row::<V>(&mut sc[r * sp..(r + 1) * sp]) };
        }
        let a = Mat { ptr: sc.as_ptr(), rs: sp, ks: 1 };
        // SAFETY: `V`'s ISA; `sc` holds `n` rows of `sp ≥ S` values, `vp` is `[S][dp]`, `ctx`
        // `TILE` rows of `dp`.
        unsafe { mm::<V, R, C>(a, n, s, vp.as_ptr(), dp, dp, ctx.as_mut_ptr(), dp, false) };
        for (r, &(m, inv)) in stats.iter().enumerate().take(n) {
            let i = i0 + r;
            // SAFETY: row `i` of this pair's ctx (`d` values) and stats (2) are this task's alone.
            unsafe {
                *out.stats.add(2 * (pair * s + i)) = m;
                *out.stats.add(2 * (pair * s + i) + 1) = inv;
                let dst = std::slice::from_raw_parts_mut(out.ctx.add(off + i * d), d);
                for (o, &x) in dst.iter_mut().zip(&ctx[r * dp..r * dp + d]) {
                    *o = x * inv;
                }
            }
        }
    }
}

/// The backward of pair `pair = b·H + h`: its `dQ`, `dKᵀ` and `dV`.
///
/// # Safety
/// As [`forward_pair`], with `io`'s pointers holding `B·H` pairs: `ctx`, `dctx`, `dq`, `dv`
/// `[S][D]`, `dkt` `[D][S]`, `stats` `[S][2]`; no other task writes this pair's output cells.
#[inline(always)]
pub(crate) unsafe fn backward_pair<V: F32x, const R: usize, const C: usize>(
    p: &TrainProblem,
    io: &BackwardIo,
    pair: usize,
) {
    let (d, s, w) = (p.head_dim, p.seq, V::W);
    let sp = s.next_multiple_of(w);
    let dp = d.next_multiple_of(w);
    let (b, h) = (pair / p.heads, pair % p.heads);
    let off = pair * s * d;
    // SAFETY: the pair's Kᵀ, V and dctx hold `D·S` values at `off` (this function's contract).
    let (kt, vt, dop) = unsafe {
        (
            padded_t(p.kt.add(off), d, s, sp, true),
            padded_t(p.v.add(off), d, s, sp, false),
            padded_rows(io.dctx.add(off), d, s, dp),
        )
    };
    // K rows `[sp][dp]` for dQ.
    let mut kr = Buf::<f32>::zeroed(sp * dp);
    for e in 0..d {
        for j in 0..s {
            kr[j * dp + e] = kt[e * sp + j];
        }
    }
    let mut delta = Buf::<f32>::zeroed(s);
    for (i, dl) in delta.iter_mut().enumerate() {
        let mut acc = 0f32;
        for e in 0..d {
            // SAFETY: row `i < S` of the pair's ctx holds `d` values (contract).
            acc = dop[i * dp + e].mul_add(unsafe { *io.ctx.add(off + i * d + e) }, acc);
        }
        *dl = acc;
    }
    let bias = pair_bias(p, b, h);
    let mut pr = Buf::<f32>::zeroed(TRAIN_TILE * sp);
    let mut ds = Buf::<f32>::zeroed(TRAIN_TILE * sp);
    let mut dq = Buf::<f32>::zeroed(TRAIN_TILE * dp);
    let mut dkt = Buf::<f32>::zeroed(d * sp);
    let mut dv = Buf::<f32>::zeroed(sp * dp);
    let dgrad = TrainProblem { scale: 1.0, bias: None, ..*p };
    for i0 in (0..s).step_by(TRAIN_TILE) {
        let n = TRAIN_TILE.min(s - i0);
        // SAFETY: `V`'s ISA is available; `i0 + n ≤ S`; the pair's Q at `off`; `dop` holds `S`
        // rows `dp` apart with `D` values each (contract).
        unsafe {
            scores::<V, R, C>(p, p.q.add(off), d, &kt, bias, i0, n, sp, &mut pr, f32::NEG_INFINITY);
            scores::<V, R, C>(&dgrad, dop.as_ptr(), dp, &vt, None, i0, n, sp, &mut ds, 0.0);
        }
        for r in 0..n {
            let i = i0 + r;
            // SAFETY: row `i` of the pair's stats (contract); `V`'s ISA; rows of `sp` values.
            unsafe {
                let (m, inv) = (*io.stats.add(2 * (pair * s + i)), *io.stats.add(2 * (pair * s + i) + 1));
                prob_row::<V>(&mut pr[r * sp..(r + 1) * sp], m, inv);
                let dl = V::splat(delta[i]);
                for j in (0..sp).step_by(w) {
                    let pv = V::load(pr.as_ptr().add(r * sp + j));
                    let g = V::load(ds.as_ptr().add(r * sp + j));
                    pv.mul(g.sub(dl)).store(ds.as_mut_ptr().add(r * sp + j));
                }
            }
        }
        // SAFETY: `V`'s ISA; every operand below is one of this task's buffers with the extents
        // given: `pr`, `ds` `n` rows of `sp`; `dop` `[S][dp]` from row `i0`; `dv` `[sp][dp]`; `dkt`
        // `[d][sp]`; `kr` `[sp][dp]`; `dq` `TILE` rows of `dp`; the pair's Q rows `i0..i0 + n`.
        unsafe {
            // dV[j] += Σ_r p[r][j]·dO[i0 + r], rows ascending.
            let pt = Mat { ptr: pr.as_ptr(), rs: 1, ks: sp };
            mm::<V, R, C>(pt, s, n, dop.as_ptr().add(i0 * dp), dp, dp, dv.as_mut_ptr(), dp, true);
            // dKᵀ[e] += Σ_r q[i0 + r][e]·dS[r], rows ascending.
            let qt = Mat { ptr: p.q.add(off + i0 * d), rs: 1, ks: d };
            mm::<V, R, C>(qt, d, n, ds.as_ptr(), sp, sp, dkt.as_mut_ptr(), sp, true);
            // dQ[i] = Σ_j dS[r][j]·K[j] (scaled below).
            let dsm = Mat { ptr: ds.as_ptr(), rs: sp, ks: 1 };
            mm::<V, R, C>(dsm, n, s, kr.as_ptr(), dp, dp, dq.as_mut_ptr(), dp, false);
        }
        for r in 0..n {
            // SAFETY: row `i0 + r` of the pair's dq holds `d` values this task alone writes.
            let dst = unsafe { std::slice::from_raw_parts_mut(io.dq.add(off + (i0 + r) * d), d) };
            for (o, &x) in dst.iter_mut().zip(&dq[r * dp..r * dp + d]) {
                *o = x * p.scale;
            }
        }
    }
    for e in 0..d {
        for j in 0..s {
            // SAFETY: the pair's dkt holds `[D][S]` and dv `[S][D]` cells this task alone writes.
            unsafe {
                *io.dkt.add(off + e * s + j) = dkt[e * sp + j] * p.scale;
                *io.dv.add(off + j * d + e) = dv[j * dp + e];
            }
        }
    }
}
