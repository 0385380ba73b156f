//! Fused multi-head scaled-dot-product attention for sparsec's attention custom operator:
//! `softmax(scale · Q·Kᵀ + mask_bias) · V` per (batch, head) in one pass, without materialising the
//! `[B, H, S, S]` score tensor.
//!
//! Semantics are those of the exported graph as ONNX Runtime evaluates it (`MatMul`, `Mul`/`Div`,
//! `Add` of the additive key mask, `Softmax(axis=-1)` with max subtraction, `MatMul`), in f32:
//! a row whose every key carries `f32::MIN` absorbs the scores and comes out as the uniform
//! average of V, as the graph does. A bias of -inf behaves like `f32::MIN` (the graph would give
//! NaN).
//!
//! Keys whose bias is ≤ -1e30 (padding under an `f32::MIN` mask) are skipped whenever a key of
//! the same batch item is not masked: the graph gives them weight exactly 0, so the result is
//! the same and padded inputs cost only their real keys.
//!
//! Work is split into (batch, head, query-row group) tasks run through [`Parallel`]; each task
//! packs its head's kept K and V once into its own scratch, then for every tile of `TILE` query
//! rows computes the scores, a vectorised softmax (polynomial `exp`, see `simd.rs`) and P·V.
//! Kernels: `f32.rs` (every ISA, written once over the vector trait of `simd.rs`) and `bf16.rs`
//! (AVX-512 BF16 `vdpbf16ps`). Training graphs use [`AttentionTrain`] (`train.rs`): the same core on
//! `[B, H, S, D]` tensors with a backward that recomputes the probabilities.

mod bf16;
mod f32;
mod problem;
mod simd;
mod train;

use crate::cpu::Isa;
use crate::par::Parallel;
use std::fmt;

use problem::{Problem, Task, TILE};

/// The shape of one attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionDims {
    pub batch: usize,
    pub seq: usize,
    pub heads: usize,
    pub head_dim: usize,
}

impl AttentionDims {
    /// Floating-point operations of the two matrix products (2 per multiply-add), the usual
    /// attention FLOP count: `4 · B · H · S² · D`.
    pub fn flops(&self) -> f64 {
        4.0 * self.batch as f64 * self.heads as f64 * (self.seq as f64).powi(2) * self.head_dim as f64
    }
}

/// The precision of the two products; softmax, scale, bias and accumulation are always f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AttentionPrecision {
    F32,
    /// Q·K and P·V with bf16 inputs (rounded to nearest even) and f32 accumulation
    /// (`vdpbf16ps`); needs [`Isa::Avx512Vnni`] on a CPU with AVX-512 BF16 ([`bf16_supported`]).
    Bf16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttnError {
    /// The requested ISA does not run on this CPU.
    UnsupportedIsa(Isa),
    /// Bf16 was requested with an ISA or CPU that has no AVX-512 BF16.
    Bf16Unavailable { isa: Isa },
    /// Zero heads or head dimension.
    BadDims { heads: usize, head_dim: usize },
    /// A forward argument does not fit the shape; the message names it.
    BadInput(String),
}

impl fmt::Display for AttnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttnError::UnsupportedIsa(isa) => write!(f, "attention: this CPU does not support {isa}"),
            AttnError::Bf16Unavailable { isa } => write!(
                f,
                "attention: bf16 precision needs the avx512vnni ISA on a CPU with avx512bf16 (asked for {isa}; \
                 avx512bf16 {})",
                if bf16_supported() { "present" } else { "absent" }
            ),
            AttnError::BadDims { heads, head_dim } => {
                write!(f, "attention: heads ({heads}) and head_dim ({head_dim}) must both be at least 1")
            }
            AttnError::BadInput(m) => write!(f, "attention: {m}"),
        }
    }
}

impl std::error::Error for AttnError {}

/// Whether this CPU runs the [`AttentionPrecision::Bf16`] kernel (AVX-512 F/BW with BF16).
pub fn bf16_supported() -> bool {
    Isa::cpu_has_avx512_bf16()
}

/// One (batch, head, rows) task on one ISA.
///
/// # Safety
/// The entry point's ISA must be available, and `(p, t)` must meet `f32::task`'s contract:
/// `p` as `forward` checks it, `t` inside the shape, its output cells written by no other task.
type TaskFn = unsafe fn(&Problem, &Task);

/// A fused attention kernel for a fixed head count and head dimension; stateless per call.
#[derive(Clone, Copy, Debug)]
pub struct Attention {
    heads: usize,
    head_dim: usize,
    precision: AttentionPrecision,
    isa: Isa,
    emulated: bool,
    task: TaskFn,
}

impl Attention {
    /// A kernel for `heads` heads of `head_dim` values on `isa` (which must run on this CPU); Bf16
    /// needs `isa == Isa::Avx512Vnni` and [`bf16_supported`], else [`AttnError::Bf16Unavailable`].
    pub fn new(heads: usize, head_dim: usize, precision: AttentionPrecision, isa: Isa) -> Result<Attention, AttnError> {
        if heads == 0 || head_dim == 0 {
            return Err(AttnError::BadDims { heads, head_dim });
        }
        if !isa.supported() {
            return Err(AttnError::UnsupportedIsa(isa));
        }
        let task = match (precision, isa) {
            (AttentionPrecision::Bf16, Isa::Avx512Vnni) if bf16_supported() => kernels::BF16_AVX512,
            (AttentionPrecision::Bf16, _) => return Err(AttnError::Bf16Unavailable { isa }),
            (AttentionPrecision::F32, Isa::Avx512Vnni) => kernels::F32_AVX512,
            (AttentionPrecision::F32, Isa::Avx2) => kernels::F32_AVX2,
            (AttentionPrecision::F32, Isa::Scalar) => kernels::F32_SCALAR,
        };
        Ok(Attention { heads, head_dim, precision, isa, emulated: false, task })
    }

    /// The bf16 kernel's exact data flow with `vdpbf16ps` modelled in portable code, on any CPU.
    /// Slow; for testing the bf16 layout and its error where the instruction is absent.
    #[doc(hidden)]
    pub fn bf16_emulated(heads: usize, head_dim: usize) -> Result<Attention, AttnError> {
        if heads == 0 || head_dim == 0 {
            return Err(AttnError::BadDims { heads, head_dim });
        }
        Ok(Attention {
            heads,
            head_dim,
            precision: AttentionPrecision::Bf16,
            isa: Isa::Scalar,
            emulated: true,
            task: kernels::BF16_EMULATED,
        })
    }

    pub fn heads(&self) -> usize {
        self.heads
    }
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }
    pub fn precision(&self) -> AttentionPrecision {
        self.precision
    }
    pub fn isa(&self) -> Isa {
        self.isa
    }
    /// Whether this is the portable bf16 model ([`Attention::bf16_emulated`]).
    pub fn is_emulated(&self) -> bool {
        self.emulated
    }

    /// `out[b, s, h·D + d] = Σ_j softmax_j(scale · <q[b,s,h,:], k[b,j,h,:]> + mask_bias[b,j]) · v[b,j,h,d]`.
    ///
    /// `q`, `k`, `v` hold `batch · seq` token rows `row_stride` apart, head `h`'s `D` values at
    /// `h·D` in a row; each slice starts at its own first element, so a fused `[B, S, 3·H·D]` QKV
    /// is passed as `&qkv[0..]`, `&qkv[H·D..]`, `&qkv[2·H·D..]` with `row_stride = 3·H·D`, and
    /// separate tensors with `row_stride = H·D`. `mask_bias` is `[B, S]` (one additive bias per
    /// key), `out` is `[B, S, H·D]`.
    ///
    /// Slices too short for the shape, a `row_stride` below `H·D`, a wrong `out` or `mask_bias`
    /// length or a non-finite `scale` give [`AttnError::BadInput`] naming the argument; nothing is
    /// written then. Keys with bias ≤ -1e30 are skipped as the module doc says, so a NaN or inf
    /// in K or V at such a padding key does not reach the output (in the graph it would).
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
        scale: f32,
        out: &mut [f32],
        par: &dyn Parallel,
    ) -> Result<(), AttnError> {
        let (h, d) = (self.heads, self.head_dim);
        let hd = h * d;
        let tokens = batch.checked_mul(seq).ok_or_else(|| bad(format!("batch {batch} × seq {seq} overflows")))?;
        let out_len = tokens.checked_mul(hd).ok_or_else(|| bad(format!("output of {tokens} × {hd} overflows")))?;
        if row_stride < hd {
            return Err(bad(format!("row_stride {row_stride} is less than heads × head_dim = {h} × {d} = {hd}")));
        }
        if out.len() != out_len {
            return Err(bad(format!("out has {} values, [batch {batch}, seq {seq}, {hd}] needs {out_len}", out.len())));
        }
        if !scale.is_finite() {
            return Err(bad(format!("scale {scale} is not finite")));
        }
        if let Some(m) = mask_bias {
            if m.len() != tokens {
                return Err(bad(format!(
                    "mask_bias has {} values, [batch {batch}, seq {seq}] needs {tokens}",
                    m.len()
                )));
            }
        }
        if tokens == 0 {
            return Ok(());
        }
        let need = (tokens - 1)
            .checked_mul(row_stride)
            .and_then(|x| x.checked_add(hd))
            .ok_or_else(|| bad(format!("{tokens} rows of stride {row_stride} overflow")))?;
        for (name, x) in [("q", q), ("k", k), ("v", v)] {
            if x.len() < need {
                return Err(bad(format!(
                    "{name} has {} values, {tokens} token rows of stride {row_stride} with {hd} used need {need}",
                    x.len()
                )));
            }
        }

        let problem = Problem {
            seq,
            heads: h,
            head_dim: d,
            row_stride,
            q: q.as_ptr(),
            k: k.as_ptr(),
            v: v.as_ptr(),
            mask: mask_bias.map(|m| m.as_ptr()),
            scale,
            out: out.as_mut_ptr(),
        };
        let tiles = seq.div_ceil(TILE);
        let pairs = batch * h;
        let groups = (4 * par.threads().max(1)).div_ceil(pairs).clamp(1, tiles);
        let task = self.task;
        par.run(pairs * groups, &|i| {
            let (pair, g) = (i / groups, i % groups);
            let rows = (g * tiles / groups * TILE).min(seq)..((g + 1) * tiles / groups * TILE).min(seq);
            let t = Task { b: pair / h, h: pair % h, rows };
            // SAFETY: `new` chose `task` for an ISA this CPU supports; `problem`'s slices were checked
            // above to hold every row the tasks index, and tasks write disjoint cells of `out`.
            unsafe { task(&problem, &t) }
        });
        Ok(())
    }
}

/// The additive bias of a training attention call: `[Bb, Hb, Sq, S]` with `Bb ∈ {1, B}`,
/// `Hb ∈ {1, H}`, `Sq ∈ {1, S}` (size-1 axes broadcast), keys contiguous.
#[derive(Clone, Copy, Debug)]
pub struct TrainBias<'a> {
    pub data: &'a [f32],
    /// `[Bb, Hb, Sq]`.
    pub dims: [usize; 3],
}

/// The shape of a training attention call: `Q`, `V` `[B, H, S, D]`, `Kᵀ` `[B, H, D, S]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrainDims {
    pub batch: usize,
    pub heads: usize,
    pub seq: usize,
    pub head_dim: usize,
}

impl TrainDims {
    fn len(&self) -> usize {
        self.batch * self.heads * self.seq * self.head_dim
    }
    fn rows(&self) -> usize {
        self.batch * self.heads * self.seq
    }
}

/// Per-pair entry points of the training attention.
type TrainFwdFn = unsafe fn(&train::TrainProblem, &train::ForwardOut, usize);
type TrainBwdFn = unsafe fn(&train::TrainProblem, &train::BackwardIo, usize);

/// Attention for training graphs (`ai.sparsec::AttentionTrain` and its gradient): the attention
/// core of the exported graph, `softmax(scale·Q·Kᵀ + bias)·V` on `[B, H, S, D]` tensors, whose
/// forward keeps two f32 per query row instead of the `[B, H, S, S]` probabilities, and whose
/// backward recomputes them (see `attention/train.rs`).
#[derive(Clone, Copy, Debug)]
pub struct AttentionTrain {
    isa: Isa,
    fwd: TrainFwdFn,
    bwd: TrainBwdFn,
}

impl AttentionTrain {
    pub fn new(isa: Isa) -> Result<AttentionTrain, AttnError> {
        if !isa.supported() {
            return Err(AttnError::UnsupportedIsa(isa));
        }
        let (fwd, bwd) = match isa {
            Isa::Avx512Vnni => (kernels::TRAIN_FWD_AVX512, kernels::TRAIN_BWD_AVX512),
            Isa::Avx2 => (kernels::TRAIN_FWD_AVX2, kernels::TRAIN_BWD_AVX2),
            Isa::Scalar => (kernels::TRAIN_FWD_SCALAR, kernels::TRAIN_BWD_SCALAR),
        };
        Ok(AttentionTrain { isa, fwd, bwd })
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    fn problem(
        dims: TrainDims,
        q: &[f32],
        kt: &[f32],
        v: &[f32],
        bias: Option<TrainBias>,
        scale: f32,
    ) -> Result<train::TrainProblem, AttnError> {
        let TrainDims { batch, heads, seq, head_dim } = dims;
        if heads == 0 || head_dim == 0 {
            return Err(AttnError::BadDims { heads, head_dim });
        }
        let len = batch
            .checked_mul(heads)
            .and_then(|x| x.checked_mul(seq))
            .and_then(|x| x.checked_mul(head_dim))
            .ok_or_else(|| bad(format!("{dims:?} overflows")))?;
        for (name, x) in [("q", q), ("kt", kt), ("v", v)] {
            if x.len() != len {
                return Err(bad(format!("{name} has {} values, {dims:?} needs {len}", x.len())));
            }
        }
        if !scale.is_finite() {
            return Err(bad(format!("scale {scale} is not finite")));
        }
        let bias = match bias {
            None => None,
            Some(TrainBias { data, dims: [bb, hb, sq] }) => {
                let ok = |x: usize, full: usize| x == 1 || x == full;
                if !(ok(bb, batch) && ok(hb, heads) && ok(sq, seq)) {
                    return Err(bad(format!(
                        "bias [{bb}, {hb}, {sq}, {seq}] does not broadcast to [{batch}, {heads}, {seq}, {seq}]"
                    )));
                }
                if data.len() != bb * hb * sq * seq {
                    return Err(bad(format!(
                        "bias has {} values, [{bb}, {hb}, {sq}, {seq}] needs {}",
                        data.len(),
                        bb * hb * sq * seq
                    )));
                }
                let stride = |x: usize, s: usize| if x == 1 { 0 } else { s };
                let (sq_s, sh_s) = (seq, sq * seq);
                let sb_s = hb * sh_s;
                Some((data.as_ptr(), stride(bb, sb_s), stride(hb, sh_s), stride(sq, sq_s)))
            }
        };
        Ok(train::TrainProblem { heads, seq, head_dim, q: q.as_ptr(), kt: kt.as_ptr(), v: v.as_ptr(), bias, scale })
    }

    /// `ctx = softmax(scale·q·kt + bias)·v` (`[B, H, S, D]`), and `stats` `[B, H, S, 2]`: each query
    /// row's score max and the reciprocal of its exponential sum, which the backward reads.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        dims: TrainDims,
        q: &[f32],
        kt: &[f32],
        v: &[f32],
        bias: Option<TrainBias>,
        scale: f32,
        ctx: &mut [f32],
        stats: &mut [f32],
        par: &dyn Parallel,
    ) -> Result<(), AttnError> {
        let p = Self::problem(dims, q, kt, v, bias, scale)?;
        if ctx.len() != dims.len() || stats.len() != 2 * dims.rows() {
            return Err(bad(format!(
                "ctx has {} values and stats {}, {dims:?} needs {} and {}",
                ctx.len(),
                stats.len(),
                dims.len(),
                2 * dims.rows()
            )));
        }
        let out = train::ForwardOut { ctx: ctx.as_mut_ptr(), stats: stats.as_mut_ptr() };
        let f = self.fwd;
        // SAFETY: `new` chose `f` for an ISA this CPU supports; the slices were checked above to hold
        // every pair, and each task writes only its own pair's cells.
        par.run(dims.batch * dims.heads, &|pair| unsafe { f(&p, &out, pair) });
        Ok(())
    }

    /// The gradients of `q`, `kt` and `v` from the gradient `dctx` of the forward's `ctx`, given
    /// the forward's inputs, `ctx` and `stats`.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        dims: TrainDims,
        q: &[f32],
        kt: &[f32],
        v: &[f32],
        bias: Option<TrainBias>,
        scale: f32,
        ctx: &[f32],
        stats: &[f32],
        dctx: &[f32],
        dq: &mut [f32],
        dkt: &mut [f32],
        dv: &mut [f32],
        par: &dyn Parallel,
    ) -> Result<(), AttnError> {
        let p = Self::problem(dims, q, kt, v, bias, scale)?;
        for (name, n) in
            [("ctx", ctx.len()), ("dctx", dctx.len()), ("dq", dq.len()), ("dkt", dkt.len()), ("dv", dv.len())]
        {
            if n != dims.len() {
                return Err(bad(format!("{name} has {n} values, {dims:?} needs {}", dims.len())));
            }
        }
        if stats.len() != 2 * dims.rows() {
            return Err(bad(format!("stats has {} values, {dims:?} needs {}", stats.len(), 2 * dims.rows())));
        }
        let io = train::BackwardIo {
            ctx: ctx.as_ptr(),
            stats: stats.as_ptr(),
            dctx: dctx.as_ptr(),
            dq: dq.as_mut_ptr(),
            dkt: dkt.as_mut_ptr(),
            dv: dv.as_mut_ptr(),
        };
        let f = self.bwd;
        // SAFETY: as in `forward`: a supported ISA, checked slices, disjoint per-pair outputs.
        par.run(dims.batch * dims.heads, &|pair| unsafe { f(&p, &io, pair) });
        Ok(())
    }
}

fn bad(m: String) -> AttnError {
    AttnError::BadInput(m)
}

/// The per-ISA task entry points: each enables its target features and instantiates the generic
/// task with that ISA's register blocking.
mod kernels {
    use super::simd::Lanes;
    use super::train::{backward_pair, forward_pair, BackwardIo, ForwardOut, TrainProblem};
    use super::{bf16, f32, Problem, Task, TaskFn, TrainBwdFn, TrainFwdFn};

    pub(super) const TRAIN_FWD_SCALAR: TrainFwdFn = train_fwd_scalar;
    pub(super) const TRAIN_BWD_SCALAR: TrainBwdFn = train_bwd_scalar;
    #[cfg(target_arch = "x86_64")]
    pub(super) const TRAIN_FWD_AVX2: TrainFwdFn = x86::train_fwd_avx2;
    #[cfg(target_arch = "x86_64")]
    pub(super) const TRAIN_BWD_AVX2: TrainBwdFn = x86::train_bwd_avx2;
    #[cfg(target_arch = "x86_64")]
    pub(super) const TRAIN_FWD_AVX512: TrainFwdFn = x86::train_fwd_avx512;
    #[cfg(target_arch = "x86_64")]
    pub(super) const TRAIN_BWD_AVX512: TrainBwdFn = x86::train_bwd_avx512;
    #[cfg(not(target_arch = "x86_64"))]
    pub(super) const TRAIN_FWD_AVX2: TrainFwdFn = train_fwd_scalar;
    #[cfg(not(target_arch = "x86_64"))]
    pub(super) const TRAIN_BWD_AVX2: TrainBwdFn = train_bwd_scalar;
    #[cfg(not(target_arch = "x86_64"))]
    pub(super) const TRAIN_FWD_AVX512: TrainFwdFn = train_fwd_scalar;
    #[cfg(not(target_arch = "x86_64"))]
    pub(super) const TRAIN_BWD_AVX512: TrainBwdFn = train_bwd_scalar;

    unsafe fn train_fwd_scalar(p: &TrainProblem, o: &ForwardOut, pair: usize) {
        // SAFETY: portable lanes run on every CPU; the arguments meet `forward_pair`'s contract.
        unsafe { forward_pair::<Lanes<8>, 2, 2>(p, o, pair) }
    }

    unsafe fn train_bwd_scalar(p: &TrainProblem, io: &BackwardIo, pair: usize) {
        // SAFETY: portable lanes run on every CPU; the arguments meet `backward_pair`'s contract.
        unsafe { backward_pair::<Lanes<8>, 2, 2>(p, io, pair) }
    }

    pub(super) const F32_SCALAR: TaskFn = f32_scalar;
    pub(super) const BF16_EMULATED: TaskFn = bf16_emulated;
    #[cfg(target_arch = "x86_64")]
    pub(super) const F32_AVX2: TaskFn = x86::f32_avx2;
    #[cfg(target_arch = "x86_64")]
    pub(super) const F32_AVX512: TaskFn = x86::f32_avx512;
    #[cfg(target_arch = "x86_64")]
    pub(super) const BF16_AVX512: TaskFn = x86::bf16_avx512;
    #[cfg(not(target_arch = "x86_64"))]
    pub(super) const F32_AVX2: TaskFn = f32_scalar;
    #[cfg(not(target_arch = "x86_64"))]
    pub(super) const F32_AVX512: TaskFn = f32_scalar;
    #[cfg(not(target_arch = "x86_64"))]
    pub(super) const BF16_AVX512: TaskFn = bf16_emulated;

    unsafe fn f32_scalar(p: &Problem, t: &Task) {
        // SAFETY: portable lanes run on every CPU; `(p, t)` meet `task`'s contract (`TaskFn`'s).
        unsafe { f32::task::<Lanes<8>, 2, 2, 2, 2>(p, t) }
    }

    unsafe fn bf16_emulated(p: &Problem, t: &Task) {
        // SAFETY: the emulation is portable code; `(p, t)` meet `task`'s contract (`TaskFn`'s).
        unsafe { bf16::task::<bf16::Emulated, 1, 1, 1, 1>(p, t) }
    }

    #[cfg(target_arch = "x86_64")]
    mod x86 {
        use super::super::simd::{Avx2, Avx512};
        use super::{backward_pair, forward_pair, BackwardIo, ForwardOut, TrainProblem};
        use super::{bf16, f32, Problem, Task};

        #[target_feature(enable = "avx2,fma")]
        pub(crate) unsafe fn train_fwd_avx2(p: &TrainProblem, o: &ForwardOut, pair: usize) {
            // SAFETY: AVX2 and FMA are enabled here; the arguments meet `forward_pair`'s contract.
            unsafe { forward_pair::<Avx2, 6, 2>(p, o, pair) }
        }

        #[target_feature(enable = "avx2,fma")]
        pub(crate) unsafe fn train_bwd_avx2(p: &TrainProblem, io: &BackwardIo, pair: usize) {
            // SAFETY: AVX2 and FMA are enabled here; the arguments meet `backward_pair`'s contract.
            unsafe { backward_pair::<Avx2, 6, 2>(p, io, pair) }
        }

        #[target_feature(enable = "avx512f,avx512bw")]
        pub(crate) unsafe fn train_fwd_avx512(p: &TrainProblem, o: &ForwardOut, pair: usize) {
            // SAFETY: AVX-512 F is enabled here; the arguments meet `forward_pair`'s contract.
            unsafe { forward_pair::<Avx512, 6, 2>(p, o, pair) }
        }

        #[target_feature(enable = "avx512f,avx512bw")]
        pub(crate) unsafe fn train_bwd_avx512(p: &TrainProblem, io: &BackwardIo, pair: usize) {
            // SAFETY: AVX-512 F is enabled here; the arguments meet `backward_pair`'s contract.
            unsafe { backward_pair::<Avx512, 6, 2>(p, io, pair) }
        }

        #[target_feature(enable = "avx2,fma")]
        pub(crate) unsafe fn f32_avx2(p: &Problem, t: &Task) {
            // SAFETY: AVX2 and FMA are enabled here; `(p, t)` meet `task`'s contract (`TaskFn`'s).
            unsafe { f32::task::<Avx2, 6, 2, 6, 2>(p, t) }
        }

        #[target_feature(enable = "avx512f,avx512bw")]
        pub(crate) unsafe fn f32_avx512(p: &Problem, t: &Task) {
            // SAFETY: AVX-512 F is enabled here; `(p, t)` meet `task`'s contract (`TaskFn`'s).
            unsafe { f32::task::<Avx512, 6, 4, 8, 2>(p, t) }
        }

        #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
        pub(crate) unsafe fn bf16_avx512(p: &Problem, t: &Task) {
            // SAFETY: AVX-512 F and BF16 are enabled here; `(p, t)` meet `task`'s contract
            // (`TaskFn`'s).
            unsafe { bf16::task::<bf16::Avx512Bf16, 6, 4, 8, 2>(p, t) }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The per-ISA register blockings run in portable lanes, so that the AVX-512 geometry (16
    //! lanes, 6×4 and 8×2 blocks) is exercised on any CPU: blocking changes which outputs are
    //! computed together, never the order of any output's sums, so results must be bit-identical
    //! to the unblocked kernel of the same lane width.
    use super::simd::Lanes;
    use super::*;
    use crate::par::Serial;

    fn run(task: TaskFn, batch: usize, seq: usize, heads: usize, head_dim: usize) -> Vec<f32> {
        let att =
            Attention { heads, head_dim, precision: AttentionPrecision::F32, isa: Isa::Scalar, emulated: true, task };
        let hd = heads * head_dim;
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let qkv: Vec<f32> = (0..batch * seq * 3 * hd)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect();
        let mask: Vec<f32> = (0..batch * seq).map(|t| if t % 5 == 3 || t < seq { f32::MIN } else { 0.0 }).collect();
        let mut out = vec![0f32; batch * seq * hd];
        let scale = 1.0 / (head_dim as f32).sqrt();
        att.forward(batch, seq, &qkv, &qkv[hd..], &qkv[2 * hd..], 3 * hd, Some(&mask), scale, &mut out, &Serial)
            .unwrap();
        out
    }

    unsafe fn f32_16_avx512_blocks(p: &Problem, t: &Task) {
        // SAFETY: portable lanes run on every CPU; `(p, t)` meet `task`'s contract (`TaskFn`'s).
        unsafe { f32::task::<Lanes<16>, 6, 4, 8, 2>(p, t) }
    }
    unsafe fn f32_16_unblocked(p: &Problem, t: &Task) {
        // SAFETY: portable lanes run on every CPU; `(p, t)` meet `task`'s contract (`TaskFn`'s).
        unsafe { f32::task::<Lanes<16>, 1, 1, 1, 1>(p, t) }
    }
    unsafe fn f32_8_avx2_blocks(p: &Problem, t: &Task) {
        // SAFETY: portable lanes run on every CPU; `(p, t)` meet `task`'s contract (`TaskFn`'s).
        unsafe { f32::task::<Lanes<8>, 6, 2, 6, 2>(p, t) }
    }
    unsafe fn f32_8_unblocked(p: &Problem, t: &Task) {
        // SAFETY: portable lanes run on every CPU; `(p, t)` meet `task`'s contract (`TaskFn`'s).
        unsafe { f32::task::<Lanes<8>, 1, 1, 1, 1>(p, t) }
    }
    unsafe fn bf16_avx512_blocks(p: &Problem, t: &Task) {
        // SAFETY: portable lanes run on every CPU; `(p, t)` meet `task`'s contract (`TaskFn`'s).
        unsafe { bf16::task::<bf16::Emulated, 6, 4, 8, 2>(p, t) }
    }

    #[test]
    fn register_blockings_give_the_unblocked_bits() {
        let pairs: [(&str, TaskFn, TaskFn); 3] = [
            ("f32 16 lanes 6x4/8x2", f32_16_avx512_blocks, f32_16_unblocked),
            ("f32 8 lanes 6x2/6x2", f32_8_avx2_blocks, f32_8_unblocked),
            ("bf16 6x4/8x2", bf16_avx512_blocks, kernels::BF16_EMULATED),
        ];
        for (name, blocked, plain) in pairs {
            for (batch, seq, heads, head_dim) in
                [(2, 1, 3, 8), (1, 7, 2, 20), (2, 97, 3, 32), (1, 130, 2, 64), (1, 50, 1, 7)]
            {
                let (a, b) = (run(blocked, batch, seq, heads, head_dim), run(plain, batch, seq, heads, head_dim));
                assert!(a.iter().all(|x| x.is_finite()), "{name}: non-finite output");
                let same = a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(same, "{name}: blocked and unblocked differ at B {batch} S {seq} H {heads} D {head_dim}");
            }
        }
    }
}
