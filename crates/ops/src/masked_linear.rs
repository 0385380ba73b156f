//! The masked-linear training operators, `ai.sparsec::MaskedLinear`, `MaskedLinearGradInput` and
//! `MaskedLinearGradWeight`: a linear layer whose weight is multiplied by a pruning mask, and its
//! two gradients, computed by `sparsec_kernels::masked_linear` on the mask's kept `[4, 1]` blocks
//! only. Weight and mask are run-time inputs (the trainer feeds new weights every step and new
//! masks at pruning updates), so each call lists the kept blocks from the mask it is given.
//!
//! Attribute `precision` (all three): `"f32"` (default) or `"bf16"`, products of bf16-rounded
//! operands summed in f32 (`vdpbf16ps`; needs AVX-512 BF16, or the scalar ISA forced, which runs a
//! portable model of the same arithmetic). Inputs and outputs are f32 either way.

use ort::operator::{
    ComputeContext, Kernel, KernelContext, Operator, OperatorInput, OperatorOutput, ShapeInferenceContext,
};
use ort::value::{TensorElementType as T, ValueType};
use sparsec_kernels::masked_linear::{KeptBlocks, MaskedLinear, Precision};

use super::{err, f32_type, guarded, input_names, kernel_isa, present, OrtPool};

pub const MASKED_LINEAR: &str = "MaskedLinear";
pub const MASKED_LINEAR_GRAD_INPUT: &str = "MaskedLinearGradInput";
pub const MASKED_LINEAR_GRAD_WEIGHT: &str = "MaskedLinearGradWeight";

/// `MaskedLinear(X f32[..., K], W f32[K, N], M f32[K, N], B f32[N]?) -> Y f32[..., N]`:
/// `Y = X·(W ⊙ M) + B`, what `MatMul(X, Mul(W, M))` (then `Add(·, B)`) computes.
pub struct MaskedLinearOp;

/// `MaskedLinearGradInput(dY f32[..., N], W f32[K, N], M f32[K, N]) -> dX f32[..., K]`:
/// `dX = dY·(W ⊙ M)ᵀ`.
pub struct MaskedLinearGradInputOp;

/// `MaskedLinearGradWeight(X f32[..., K], dY f32[..., N], M f32[K, N]) -> dW f32[K, N]`:
/// `dW = M ⊙ (X₂ᵀ·dY₂)` with `X₂`, `dY₂` the inputs flattened to matrices; zero outside the
/// mask's kept blocks.
pub struct MaskedLinearGradWeightOp;

/// Which of the three a kernel computes.
#[derive(Clone, Copy)]
enum Kind {
    Forward,
    GradInput,
    GradWeight,
}

pub struct MaskedLinearKernel {
    node: String,
    kind: Kind,
    bias: bool,
    kernels: MaskedLinear,
}

fn create(kctx: &KernelContext, default_name: &str, kind: Kind) -> ort::Result<MaskedLinearKernel> {
    let node = kctx.node_name().unwrap_or_else(|_| default_name.into());
    let names = input_names(kctx)?;
    let precision = match kctx.get::<String>("precision").as_deref() {
        None if kctx.get::<i64>("precision").is_some() || kctx.get::<f32>("precision").is_some() => {
            return Err(err(format!("{node}: attribute 'precision' must be a string (f32, bf16)")))
        }
        None | Some("f32") => Precision::F32,
        Some("bf16") => Precision::Bf16,
        Some(other) => return Err(err(format!("{node}: unknown precision '{other}' (f32, bf16)"))),
    };
    let kernels = MaskedLinear::with_precision(kernel_isa()?, precision).map_err(|e| err(format!("{node}: {e}")))?;
    Ok(MaskedLinearKernel { bias: matches!(kind, Kind::Forward) && present(&names, 3), node, kind, kernels })
}

/// `shape(input a)` with its last axis replaced by `dim` of `shape(input b)`; `None` for `b`
/// gives `shape(a)` unchanged.
fn infer(ctx: &mut ShapeInferenceContext, op: &str, a: usize, b: Option<(usize, usize)>) -> ort::Result<()> {
    let inputs = ctx.inputs();
    let Some(ValueType::Tensor { shape, dimension_symbols, .. }) = inputs.get(a) else {
        return Err(err(format!("{op}: input {a} must be a tensor")));
    };
    let mut dims: Vec<i64> = shape.to_vec();
    let mut syms: Vec<String> = dimension_symbols.to_vec();
    if let Some((slot, axis)) = b {
        let Some(ValueType::Tensor { shape: ws, dimension_symbols: wsyms, .. }) = inputs.get(slot) else {
            return Err(err(format!("{op}: input {slot} must be a tensor")));
        };
        if let (Some(last), Some(&d)) = (dims.last_mut(), ws.get(axis)) {
            *last = d;
            if let (Some(s), Some(ws)) = (syms.last_mut(), wsyms.get(axis)) {
                *s = ws.clone();
            }
        }
    }
    ctx.set_output(0, &f32_type(dims, syms))
}

macro_rules! operator {
    ($op:ident, $name:expr, $kind:expr, [$($input:expr),*], $infer:expr) => {
        impl Operator for $op {
            type Kernel<'a> = MaskedLinearKernel;

            fn name(&self) -> &str {
                $name
            }

            fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
                [$($input),*]
            }

            fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
                [OperatorOutput::required(T::Float32)]
            }

            fn create_kernel<'a>(&self, kctx: &KernelContext<'a>) -> ort::Result<MaskedLinearKernel> {
                create(kctx, $name, $kind)
            }

            fn infer_shape(&self, ctx: &mut ShapeInferenceContext) -> ort::Result<()> {
                let f: fn(&mut ShapeInferenceContext) -> ort::Result<()> = $infer;
                f(ctx)
            }
        }
    };
}

operator!(
    MaskedLinearOp,
    MASKED_LINEAR,
    Kind::Forward,
    [
        OperatorInput::required(T::Float32),
        OperatorInput::required(T::Float32),
        OperatorInput::required(T::Float32),
        OperatorInput::optional(T::Float32)
    ],
    |ctx| infer(ctx, MASKED_LINEAR, 0, Some((1, 1)))
);
operator!(
    MaskedLinearGradInputOp,
    MASKED_LINEAR_GRAD_INPUT,
    Kind::GradInput,
    [OperatorInput::required(T::Float32), OperatorInput::required(T::Float32), OperatorInput::required(T::Float32)],
    |ctx| infer(ctx, MASKED_LINEAR_GRAD_INPUT, 0, Some((1, 0)))
);
operator!(
    MaskedLinearGradWeightOp,
    MASKED_LINEAR_GRAD_WEIGHT,
    Kind::GradWeight,
    [OperatorInput::required(T::Float32), OperatorInput::required(T::Float32), OperatorInput::required(T::Float32)],
    |ctx| infer(ctx, MASKED_LINEAR_GRAD_WEIGHT, 2, None)
);

/// An f32 input's shape and data, or an error naming the slot.
fn f32_input<'c>(
    ctx: &'c ComputeContext,
    slot: usize,
    what: &str,
) -> ort::Result<(Vec<i64>, ort::value::ValueRef<'c>)> {
    let v = ctx.input(slot)?.ok_or_else(|| err(format!("missing input {slot} ({what})")))?;
    let shape = v.try_extract_tensor::<f32>().map_err(|e| err(format!("input {slot} ({what}): {e}")))?.0.to_vec();
    Ok((shape, v))
}

/// `(rows, last)`: a tensor of shape `[..., last]` as `rows × last`, or an error when its last
/// axis is not `want`.
fn rows_of(shape: &[i64], want: usize, what: &str) -> ort::Result<usize> {
    match shape.last() {
        Some(&last) if last == want as i64 => Ok(shape[..shape.len() - 1].iter().product::<i64>() as usize),
        _ => Err(err(format!("{what} has shape {shape:?}, its last axis must be {want}"))),
    }
}

impl MaskedLinearKernel {
    fn run(&self, ctx: &ComputeContext) -> ort::Result<()> {
        let (m_slot, w_slot) = match self.kind {
            Kind::Forward | Kind::GradInput => (2, Some(1)),
            Kind::GradWeight => (2, None),
        };
        let (m_shape, m) = f32_input(ctx, m_slot, "mask")?;
        let (k, n) = match m_shape[..] {
            [k, n] if k > 0 && n > 0 => (k as usize, n as usize),
            _ => return Err(err(format!("the mask must be a non-empty [K, N] matrix, got {m_shape:?}"))),
        };
        let (_, md) = m.try_extract_tensor::<f32>()?;
        let w = match w_slot {
            Some(slot) => {
                let (ws, w) = f32_input(ctx, slot, "weight")?;
                if ws != m_shape {
                    return Err(err(format!("the weight has shape {ws:?}, the mask {m_shape:?}")));
                }
                Some(w)
            }
            None => None,
        };
        let wd = match &w {
            Some(w) => Some(w.try_extract_tensor::<f32>()?.1),
            None => None,
        };
        let kept = KeptBlocks::from_mask(md, k, n).map_err(|e| err(e.to_string()))?;
        let pool = OrtPool(ctx);
        let kerr = |e: sparsec_kernels::linear_f32::KernelError| err(e.to_string());
        match self.kind {
            Kind::Forward => {
                let (xs, x) = f32_input(ctx, 0, "X")?;
                let t = rows_of(&xs, k, "X")?;
                let bias = if self.bias { Some(f32_input(ctx, 3, "bias")?.1) } else { None };
                let bd = match &bias {
                    Some(b) => Some(b.try_extract_tensor::<f32>()?.1),
                    None => None,
                };
                let mut dims = xs.clone();
                *dims.last_mut().expect("rank checked") = n as i64;
                let mut y = ctx.output(0, dims)?.ok_or_else(|| err("output 0 was not allocated"))?;
                let (_, yd) = y.try_extract_tensor_mut::<f32>()?;
                let (_, xd) = x.try_extract_tensor::<f32>()?;
                let wd = wd.expect("the forward reads the weight");
                self.kernels.forward(xd, t, wd, md, &kept, bd, yd, &pool).map_err(kerr)
            }
            Kind::GradInput => {
                let (gs, g) = f32_input(ctx, 0, "dY")?;
                let t = rows_of(&gs, n, "dY")?;
                let mut dims = gs.clone();
                *dims.last_mut().expect("rank checked") = k as i64;
                let mut dx = ctx.output(0, dims)?.ok_or_else(|| err("output 0 was not allocated"))?;
                let (_, dxd) = dx.try_extract_tensor_mut::<f32>()?;
                let (_, gd) = g.try_extract_tensor::<f32>()?;
                let wd = wd.expect("the input gradient reads the weight");
                self.kernels.grad_input(gd, t, wd, md, &kept, dxd, &pool).map_err(kerr)
            }
            Kind::GradWeight => {
                let (xs, x) = f32_input(ctx, 0, "X")?;
                let (gs, g) = f32_input(ctx, 1, "dY")?;
                let t = rows_of(&xs, k, "X")?;
                if rows_of(&gs, n, "dY")? != t {
                    return Err(err(format!("X has shape {xs:?} and dY {gs:?}: their rows differ")));
                }
                let mut dw = ctx.output(0, m_shape.clone())?.ok_or_else(|| err("output 0 was not allocated"))?;
                let (_, dwd) = dw.try_extract_tensor_mut::<f32>()?;
                let (_, xd) = x.try_extract_tensor::<f32>()?;
                let (_, gd) = g.try_extract_tensor::<f32>()?;
                self.kernels.grad_weight(xd, gd, t, md, &kept, dwd, &pool).map_err(kerr)
            }
        }
    }
}

impl Kernel for MaskedLinearKernel {
    fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
        let this = &*self;
        guarded(&this.node, || this.run(ctx))
    }
}
