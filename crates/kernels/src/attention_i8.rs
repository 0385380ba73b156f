//! Quantized multi-head attention as SparseML's int8 exports compute it, for sparsec's
//! `QuantizedAttention` custom operator. Per (batch, head), from f32 Q, K, V token rows:
//!
//! ```text
//! q = QL(Q; q) k = QL(K; k) v = QL(V; v)                 QL(x; s, z) = sat_u8(round_even(x / s) + z)
//! A = MatMulInteger(q, kᵀ) → f32 · scores_mul → QL → DQ  DQ(y; s, z) = (y − z) · s
//!     → / divisor → + mask_bias[key] → softmax
//! p = QL(probs; probs) C = MatMulInteger(p, v) → f32 · context_mul → QL → DQ → out
//! ```
//!
//! The scores' and the context's requantization (`→ QL → DQ`) are each optional
//! ([`QuantAttentionParams::scores`], [`QuantAttentionParams::context`]): sparsec's own QAT
//! fake-quantizes only the four inputs of the two products (Q, Kᵀ, the probabilities and V), and
//! its QDQ export's `MatMul(DQ(·), DQ(·))` is this form without them (`scores_mul = s_q·s_k`,
//! `context_mul = s_p·s_v`; the kernel's integer sums are exact where the graph's f32 `MatMul`
//! rounds).
//!
//! The two integer products are exact on every ISA (`attention_i8/gemm.rs`: `vpdpbusd` with
//! zero-point correction sums on AVX-512 VNNI, `vpmaddwd` on zero-point-subtracted i16 on AVX2,
//! i32 in scalar code). The f32 steps of a row are one portable function in the graph's operation
//! order (`attention_i8/softmax.rs`) with fixed reduction orders, and each task is compiled per ISA
//! (vectorised element-wise code, FMAs only where written), so every ISA gives the same bits. The
//! softmax is max-subtracted with a Cephes-style polynomial `exp` and a multiply by `1/Σ`: not ONNX
//! Runtime's own `exp` nor its summation order, so a probability can land one quantization step of
//! `probs` away from the graph's where it lies within an ulp or two of a rounding boundary (and the
//! quantizations that follow then absorb or pass on that step).
//!
//! Work is one task per (batch, head) through [`Parallel`]; a task quantizes and packs its head's
//! K and V once, then handles `TILE` query rows at a time, so the tile's i32 scores and u8
//! probabilities (`TILE × S`, 48 KiB + 12 KiB at S = 384) stay in L2.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod gemm;
mod packed;
mod softmax;

use crate::attention::AttnError;
use crate::cpu::Isa;
use crate::par::Parallel;
use gemm::{Gemm, MAX_DEPTH};

/// The softmax's `exp` and its summation order, for tests that reproduce the kernel.
#[doc(hidden)]
pub use softmax::{exp as softmax_exp, sum as softmax_sum};

/// Query rows per tile.
const TILE: usize = 32;

/// The largest head size whose integer scores `|A| ≤ 255²·D` are exact in f32 (`< 2²⁴`): the
/// limit for unrequantized scores, whose softmax reads them as f32.
pub const MAX_EXACT_HEAD_DIM: usize = (1 << 24) / (255 * 255);

/// One per-tensor uint8 quantization, as ONNX `QuantizeLinear`/`DequantizeLinear` with scalar
/// scale and zero point.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Quant {
    pub scale: f32,
    pub zero_point: u8,
}

impl Quant {
    /// `QuantizeLinear`: `x / scale` rounded half to even, plus the zero point, saturated to u8.
    #[inline]
    pub fn quantize(self, x: f32) -> u8 {
        small_int_to_u8(((x / self.scale).round_ties_even() + f32::from(self.zero_point)).clamp(0.0, 255.0))
    }

    /// `DequantizeLinear`: `(y − zero_point) · scale`.
    #[inline]
    pub fn dequantize(self, y: u8) -> f32 {
        (i32::from(y) - i32::from(self.zero_point)) as f32 * self.scale
    }
}

/// `y`, an integer in `[0, 255]`, as u8: through the f32 mantissa (`y + 2²³` holds `y` in its low
/// bits), which vectorises where a saturating `as u8` does not. Deterministic for any `y`.
#[inline(always)]
pub(crate) fn small_int_to_u8(y: f32) -> u8 {
    (y + 8_388_608.0).to_bits() as u8
}

/// The constants of one quantized attention (see the module doc for where each applies).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QuantAttentionParams {
    pub q: Quant,
    pub k: Quant,
    pub v: Quant,
    /// The `Mul` after `Cast(Q·Kᵀ)`.
    pub scores_mul: f32,
    /// The scores' requantization, or `None`: the softmax reads `A · scores_mul / divisor`.
    pub scores: Option<Quant>,
    /// The `Div` after the scores' `DequantizeLinear` (√D in BERT).
    pub divisor: f32,
    pub probs: Quant,
    /// The `Mul` after `Cast(P·V)`.
    pub context_mul: f32,
    /// The context's requantization, or `None`: the output is `C · context_mul`.
    pub context: Option<Quant>,
}

impl QuantAttentionParams {
    fn check(&self) -> Result<(), AttnError> {
        let quants = [("q", Some(self.q)), ("k", Some(self.k)), ("v", Some(self.v)), ("scores", self.scores)];
        let quants = quants.into_iter().chain([("probs", Some(self.probs)), ("context", self.context)]);
        for (name, q) in quants.filter_map(|(n, q)| Some((n, q?))) {
            if !(q.scale.is_finite() && q.scale > 0.0) {
                return Err(AttnError::BadInput(format!("{name} scale {} is not finite and positive", q.scale)));
            }
        }
        for (name, x) in [("scores_mul", self.scores_mul), ("divisor", self.divisor), ("context_mul", self.context_mul)]
        {
            if !x.is_finite() || x == 0.0 {
                return Err(AttnError::BadInput(format!("{name} {x} is not finite and non-zero")));
            }
        }
        Ok(())
    }
}

/// A quantized attention kernel for a fixed head count, head dimension and set of constants.
#[derive(Clone, Copy, Debug)]
pub struct QuantAttention {
    heads: usize,
    head_dim: usize,
    params: QuantAttentionParams,
    row: softmax::RowConsts,
    levels: softmax::LevelConsts,
    gemm: Gemm,
    task: TaskFn,
    isa: Isa,
}

impl QuantAttention {
    /// A kernel on `isa` (which must run on this CPU) with these constants.
    pub fn new(heads: usize, head_dim: usize, params: QuantAttentionParams, isa: Isa) -> Result<Self, AttnError> {
        if heads == 0 || head_dim == 0 || head_dim > MAX_DEPTH {
            return Err(AttnError::BadDims { heads, head_dim });
        }
        if params.scores.is_none() && head_dim > MAX_EXACT_HEAD_DIM {
            return Err(AttnError::BadInput(format!(
                "head_dim {head_dim} > {MAX_EXACT_HEAD_DIM}: scores without requantization would not be exact in f32"
            )));
        }
        if !isa.supported() {
            return Err(AttnError::UnsupportedIsa(isa));
        }
        params.check()?;
        let task: TaskFn = match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => tasks::avx512,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => tasks::avx2,
            _ => tasks::portable,
        };
        Ok(QuantAttention {
            heads,
            head_dim,
            params,
            row: softmax::RowConsts::new(&params),
            levels: softmax::LevelConsts::new(&params, head_dim),
            gemm: Gemm::new(isa),
            task,
            isa,
        })
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// `out [B, S, H·D]` from `q`, `k`, `v` holding `batch · seq` token rows `row_stride` apart
    /// (head `h` at `h·D` in a row) and an optional additive `mask_bias [B, S]`, one per key.
    /// Wrong lengths or a sequence longer than the exact i32 products allow give
    /// [`AttnError::BadInput`]; nothing is written then.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        batch: usize,
        seq: usize,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        row_stride: usize,
        mask_bias: Option<&[f32]>,
        out: &mut [f32],
        par: &dyn Parallel,
    ) -> Result<(), AttnError> {
        let hd = self.heads * self.head_dim;
        let bad = AttnError::BadInput;
        if seq > MAX_DEPTH {
            return Err(bad(format!("seq {seq} exceeds {MAX_DEPTH}, where i32 products stay exact")));
        }
        let tokens = batch.checked_mul(seq).ok_or_else(|| bad(format!("batch {batch} × seq {seq} overflows")))?;
        if row_stride < hd {
            return Err(bad(format!("row_stride {row_stride} is less than heads × head_dim = {hd}")));
        }
        if out.len() != tokens * hd {
            return Err(bad(format!("out has {} values, [{batch}, {seq}, {hd}] needs {}", out.len(), tokens * hd)));
        }
        if let Some(m) = mask_bias {
            if m.len() != tokens {
                return Err(bad(format!("mask_bias has {} values, [{batch}, {seq}] needs {tokens}", m.len())));
            }
        }
        if tokens == 0 {
            return Ok(());
        }
        let need = (tokens - 1) * row_stride + hd;
        for (name, x) in [("q", q), ("k", k), ("v", v)] {
            if x.len() < need {
                return Err(bad(format!(
                    "{name} has {} values, {tokens} rows of stride {row_stride} need {need}",
                    x.len()
                )));
            }
        }
        let shared = Shared { out: out.as_mut_ptr() };
        let shared = &shared;
        // Per batch item, once for all its heads: the fused-scale row's kept keys (`None` for a mask
        // that keeps every key, or none), or `Exact` for a mask the fused row cannot take.
        let rows: Vec<Rows> = (0..batch)
            .map(|b| match mask_bias.map(|m| self.levels.keep(&m[b * seq..(b + 1) * seq])) {
                None => Rows::Fused(None),
                Some(None) => Rows::Exact,
                // A mask that keeps no key takes the exact row; one that keeps every key is no mask.
                Some(Some(k)) if !k.contains(&1.0) => Rows::Exact,
                Some(Some(k)) => Rows::Fused(k.contains(&0.0).then_some(k)),
            })
            .collect();
        par.run(batch * self.heads, &|i| {
            let (b, h) = (i / self.heads, i % self.heads);
            let mask = mask_bias.map(|m| &m[b * seq..(b + 1) * seq]);
            let head = Head { a: self, seq, q, k, v, row_stride, mask, rows: &rows[b] };
            // SAFETY: `new` chose `task` for an ISA this CPU supports.
            unsafe { (self.task)(&head, b, h, shared) }
        });
        Ok(())
    }
}

/// The output, written by tasks at disjoint cells.
struct Shared {
    out: *mut f32,
}

// SAFETY: each (batch, head) task writes only its own cells of `out` (see `Head::run`).
unsafe impl Sync for Shared {}

/// One (batch, head) task's inputs.
struct Head<'a> {
    a: &'a QuantAttention,
    seq: usize,
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    row_stride: usize,
    mask: Option<&'a [f32]>,
    rows: &'a Rows,
}

/// Which softmax row a batch item's rows take.
enum Rows {
    /// `softmax::row_levels`, with the kept keys (1) and dropped ones (0), or `None`: all kept.
    Fused(Option<Vec<f32>>),
    /// `softmax::row`: the mask has a bias that is neither 0 nor low enough to drop its key.
    Exact,
}

impl Head<'_> {
    /// The task body, inlined into each ISA's instantiation in `tasks`.
    #[inline(always)]
    fn run(&self, b: usize, h: usize, shared: &Shared) {
        let (s, d, p) = (self.seq, self.a.head_dim, &self.a.params);
        let hd = self.a.heads * d;
        let gemm = &self.a.gemm;
        // Each head's token rows quantized (contiguous, so vectorised), then packed: K as `kᵀ`.
        let (mut qa, mut ka, mut va) = (vec![0u8; s * d], vec![0u8; s * d], vec![0u8; s * d]);
        for t in 0..s {
            let at = (b * s + t) * self.row_stride + h * d;
            let dst = t * d..(t + 1) * d;
            quantize_row(p.q, &self.q[at..at + d], &mut qa[dst.clone()]);
            quantize_row(p.k, &self.k[at..at + d], &mut ka[dst.clone()]);
            quantize_row(p.v, &self.v[at..at + d], &mut va[dst]);
        }
        let kp = gemm.pack_transposed(&ka, d, s, p.k.zero_point);
        let vp = gemm.pack(&va, d, s, d, p.v.zero_point);
        let mut scores = vec![0i32; TILE * s];
        let mut probs = vec![0u8; TILE * s];
        let mut ctx = vec![0i32; TILE * d];
        let mut row = vec![0f32; s];
        for r0 in (0..s).step_by(TILE) {
            let m = (s - r0).min(TILE);
            gemm.product(&qa[r0 * d..], d, m, p.q.zero_point, &kp, &mut scores, s);
            for i in 0..m {
                let (sc, pr) = (&scores[i * s..(i + 1) * s], &mut probs[i * s..(i + 1) * s]);
                let fused = match self.rows {
                    Rows::Fused(keep) => softmax::row_levels(&self.a.levels, sc, keep.as_deref(), &mut row, pr),
                    Rows::Exact => false,
                };
                if !fused {
                    softmax::row(&self.a.row, sc, self.mask, &mut row, pr);
                }
            }
            gemm.product(&probs, s, m, p.probs.zero_point, &vp, &mut ctx, d);
            for i in 0..m {
                let at = (b * s + r0 + i) * hd + h * d;
                let row = &ctx[i * d..(i + 1) * d];
                match p.context {
                    Some(cq) => {
                        for (dd, &c) in row.iter().enumerate() {
                            let y = cq.dequantize(cq.quantize(c as f32 * p.context_mul));
                            // SAFETY: `at + dd < B·S·H·D = out.len()` (checked by `forward`), and
                            // cell `(b, r0 + i, h, dd)` belongs to this (batch, head) task alone.
                            unsafe { shared.out.add(at + dd).write(y) }
                        }
                    }
                    None => {
                        for (dd, &c) in row.iter().enumerate() {
                            // SAFETY: as above.
                            unsafe { shared.out.add(at + dd).write(c as f32 * p.context_mul) }
                        }
                    }
                }
            }
        }
    }
}

/// `out[i] = QL(x[i]; q)`, inlined into each ISA's task.
#[inline(always)]
fn quantize_row(q: Quant, x: &[f32], out: &mut [u8]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = q.quantize(v);
    }
}

/// One (batch, head) task on one ISA.
///
/// # Safety
/// The chosen function's ISA must be available; the head's slices as `forward` checked them.
type TaskFn = unsafe fn(&Head<'_>, usize, usize, &Shared);

/// [`Head::run`] compiled per ISA, so that its element-wise f32 code (quantizations, the row's
/// steps, the epilogue) is vectorised with that ISA's registers (and rounds without a libm call).
mod tasks {
    use super::{Head, Shared};

    /// # Safety
    /// None; `unsafe` only to share `TaskFn`'s type.
    pub(super) unsafe fn portable(head: &Head<'_>, b: usize, h: usize, out: &Shared) {
        head.run(b, h, out)
    }

    /// # Safety
    /// AVX2 and FMA must be available.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn avx2(head: &Head<'_>, b: usize, h: usize, out: &Shared) {
        head.run(b, h, out)
    }

    /// # Safety
    /// AVX-512 F/BW must be available.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn avx512(head: &Head<'_>, b: usize, h: usize, out: &Shared) {
        head.run(b, h, out)
    }
}

/// `C[i, n] = Σ_k (a[i, k] − za)·(b[k, n] − zb)` for row-major `a [m, k]` and `b [k, n]` on `isa`
/// (the kernel's product, exposed for tests).
#[doc(hidden)]
#[allow(clippy::too_many_arguments)]
pub fn matmul_u8(
    isa: Isa,
    a: &[u8],
    za: u8,
    b: &[u8],
    zb: u8,
    m: usize,
    k: usize,
    n: usize,
) -> Result<Vec<i32>, AttnError> {
    if !isa.supported() {
        return Err(AttnError::UnsupportedIsa(isa));
    }
    if k > MAX_DEPTH || a.len() != m * k || b.len() != k * n {
        return Err(AttnError::BadInput(format!("a {} / b {} values for [{m}, {k}] × [{k}, {n}]", a.len(), b.len())));
    }
    let g = Gemm::new(isa);
    let packed = g.pack(b, n, k, n, zb);
    let mut out = vec![0i32; m * n];
    if k > 0 {
        g.product(a, k, m, za, &packed, &mut out, n);
    }
    Ok(out)
}
