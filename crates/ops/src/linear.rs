//! `ai.sparsec::SparseLinear` (int8) and `ai.sparsec::SparseLinearF32`: `y = epilogue(x·W + b) (+ residual)`
//! over the last axis of `x`, with `W` a constant packed once at kernel creation by
//! `sparsec-kernels` (block-sparse `[4, 1]` layout; other patterns padded into it, dense when that
//! is cheaper).

use ort::operator::{
    ComputeContext, Kernel, KernelContext, Operator, OperatorInput, OperatorOutput, ShapeInferenceContext,
};
use ort::value::{TensorElementType as T, ValueType};
use sparsec_kernels::linear_f32::LinearF32;
use sparsec_kernels::linear_i8::{ActQuant, Epilogue, LinearI8, Requant};

use super::{const_input, err, f32_type, guarded, input_names, kernel_isa, present, OrtPool};

pub const SPARSE_LINEAR: &str = "SparseLinear";
pub const SPARSE_LINEAR_F32: &str = "SparseLinearF32";

/// `SparseLinear(X f32[..., K], W int8[K, N], w_scale f32[N] or [], bias f32[N], residual f32[..., N]?)
/// -> Y f32[..., N]`, attributes `epilogue` (`"none"` or `"gelu"`), `x_scale` (float) and
/// `x_zero_point` (int, 0–255). With `weight_format = "block4x1"` and `weight_shape = [K, N]`, `W`
/// is instead the 1-D stored form of the block-sparse weights
/// (`sparsec_kernels::linear_i8::packed`), which the kernel loads by copying its blocks. With
/// `y_scale` (float), `y_zero_point` (int) and `y_signed` (0: uint8, 1: int8) the product is
/// requantized to that integer output and dequantized before the bias, as ONNX `QLinearMatMul`
/// followed by `DequantizeLinear` computes it; with `y_rounding = "quantize_linear"` instead as
/// `QuantizeLinear` after the f32 rescale computes it (the rescaled product divided by `y_scale`).
/// With `bias_i32` (ints, `N` values) that integer bias is added to the exact int32 product before
/// the rescale, as an int32 `Add` between `MatMulInteger` and its `Cast` computes it. With `x_scale` the activation is quantized as `QuantizeLinear(X,
/// x_scale, x_zero_point)`; without it, as `DynamicQuantizeLinear(X)`. `W`, the scales and the bias
/// must be initializers; the weight zero point is 0. (Activation parameters are attributes and the
/// bias is always given, so no optional input is ever omitted before another: ORT's custom-op
/// shape inference cannot read past an omitted input.)
pub struct SparseLinearOp;

/// `SparseLinearF32(X f32[..., K], W f32[K, N], bias f32[N], residual f32[..., N]?) -> Y f32[..., N]`,
/// attribute `epilogue`; `W` and the bias must be initializers.
pub struct SparseLinearF32Op;

fn epilogue(kctx: &KernelContext, node: &str) -> ort::Result<Epilogue> {
    match kctx.get::<String>("epilogue").as_deref().unwrap_or("none") {
        "none" => Ok(Epilogue::None),
        "gelu" => Ok(Epilogue::Gelu),
        other => Err(err(format!("{node}: unknown epilogue '{other}' (none, gelu)"))),
    }
}

fn weight_dims(node: &str, shape: &[i64]) -> ort::Result<(usize, usize)> {
    match shape {
        [k, n] if *k > 0 && *n > 0 => Ok((*k as usize, *n as usize)),
        other => Err(err(format!("{node}: weight must be a non-empty [K, N] matrix, got {other:?}"))),
    }
}

/// The output type: `X`'s shape with its last axis replaced by `W`'s second.
fn infer_linear(ctx: &mut ShapeInferenceContext) -> ort::Result<()> {
    let inputs = ctx.inputs();
    let (Some(x), Some(w)) = (inputs.first(), inputs.get(1)) else { return Err(err("SparseLinear: missing inputs")) };
    let (ValueType::Tensor { shape: xs, dimension_symbols: syms, .. }, ValueType::Tensor { shape: ws, .. }) = (x, w)
    else {
        return Err(err("SparseLinear: inputs must be tensors"));
    };
    let mut dims: Vec<i64> = xs.to_vec();
    let n = match ctx.attr::<Vec<i64>>("weight_shape") {
        Ok(kn) => kn.get(1).copied(),
        Err(_) => ws.get(1).copied(),
    };
    if let (Some(last), Some(n)) = (dims.last_mut(), n) {
        *last = n;
    }
    ctx.set_output(0, &f32_type(dims, syms.to_vec()))
}

/// Runs a linear kernel on input 0 (and the residual at `residual_slot`) into output 0.
fn run_linear(
    ctx: &ComputeContext,
    k: usize,
    n: usize,
    residual_slot: Option<usize>,
    f: impl FnOnce(&[f32], usize, Option<&[f32]>, &mut [f32], &OrtPool) -> Result<(), String>,
) -> ort::Result<()> {
    let x = ctx.input(0)?.ok_or_else(|| err("missing input 0"))?;
    let (xs, xd) = x.try_extract_tensor::<f32>()?;
    if xs.last().copied() != Some(k as i64) {
        return Err(err(format!("input 0 has shape {:?}, its last axis must be K = {k}", xs.to_vec())));
    }
    let t = xd.len() / k;
    let mut out_dims: Vec<i64> = xs.to_vec();
    *out_dims.last_mut().expect("rank checked above") = n as i64;
    let residual = match residual_slot {
        Some(slot) => {
            let r = ctx.input(slot)?.ok_or_else(|| err(format!("missing residual input {slot}")))?;
            Some(r)
        }
        None => None,
    };
    let res = match &residual {
        Some(r) => {
            let (rs, rd) = r.try_extract_tensor::<f32>()?;
            if rs.to_vec() != out_dims {
                return Err(err(format!("residual has shape {:?}, expected {out_dims:?}", rs.to_vec())));
            }
            Some(rd)
        }
        None => None,
    };
    let mut y = ctx.output(0, out_dims)?.ok_or_else(|| err("output 0 was not allocated"))?;
    let (_, yd) = y.try_extract_tensor_mut::<f32>()?;
    f(xd, t, res, yd, &OrtPool(ctx)).map_err(err)
}

pub struct LinearI8Kernel {
    node: String,
    lin: LinearI8,
    act: ActQuant,
    epilogue: Epilogue,
    residual: bool,
}

impl Operator for SparseLinearOp {
    type Kernel<'a> = LinearI8Kernel;

    fn name(&self) -> &str {
        SPARSE_LINEAR
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        [
            OperatorInput::required(T::Float32),
            OperatorInput::required(T::Int8),
            OperatorInput::required(T::Float32),
            OperatorInput::required(T::Float32),
            OperatorInput::optional(T::Float32),
        ]
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(T::Float32)]
    }

    fn create_kernel<'a>(&self, kctx: &KernelContext<'a>) -> ort::Result<LinearI8Kernel> {
        let node = kctx.node_name().unwrap_or_else(|_| SPARSE_LINEAR.into());
        let names = input_names(kctx)?;
        let (w_shape, w) = const_input::<i8>(kctx, &node, 1, "weight")?;
        let packed = match kctx.get::<String>("weight_format").as_deref().unwrap_or("dense") {
            "dense" => None,
            "block4x1" => Some(kctx.get::<Vec<i64>>("weight_shape").ok_or_else(|| {
                err(format!("{node}: weight_format 'block4x1' needs the attribute weight_shape = [K, N]"))
            })?),
            other => return Err(err(format!("{node}: unknown weight_format '{other}' (dense, block4x1)"))),
        };
        let (k, n) = weight_dims(&node, packed.as_deref().unwrap_or(&w_shape))?;
        let (_, w_scale) = const_input::<f32>(kctx, &node, 2, "weight scale")?;
        let (_, bias) = const_input::<f32>(kctx, &node, 3, "bias")?;
        let act = match kctx.get::<f32>("x_scale") {
            Some(scale) => {
                let zp = kctx.get::<i64>("x_zero_point").unwrap_or(0);
                let zero_point =
                    u8::try_from(zp).map_err(|_| err(format!("{node}: x_zero_point {zp} is not in 0..=255")))?;
                ActQuant::Static { scale, zero_point }
            }
            None => ActQuant::Dynamic,
        };
        let lin = match packed {
            None => LinearI8::new(&w, k, n, &w_scale, Some(&bias), kernel_isa()?),
            Some(_) => LinearI8::from_packed(&w, k, n, &w_scale, Some(&bias), kernel_isa()?),
        }
        .map_err(|e| err(format!("{node}: {e}")))?;
        let lin = match kctx.get::<f32>("y_scale") {
            None => lin,
            Some(scale) => {
                let zp = kctx.get::<i64>("y_zero_point").unwrap_or(0);
                let signed = kctx.get::<i64>("y_signed").unwrap_or(0) != 0;
                let zp = i32::try_from(zp).map_err(|_| err(format!("{node}: y_zero_point {zp} is out of range")))?;
                let r = Requant::new(scale, zp, signed).map_err(|e| err(format!("{node}: {e}")))?;
                match kctx.get::<String>("y_rounding").as_deref().unwrap_or("qlinear_matmul") {
                    "qlinear_matmul" => lin.with_requant(r),
                    "quantize_linear" => lin.with_requant(r.after_scale()),
                    other => {
                        return Err(err(format!(
                            "{node}: unknown y_rounding '{other}' (qlinear_matmul, quantize_linear)"
                        )))
                    }
                }
            }
        };
        let lin = match kctx.get::<Vec<i64>>("bias_i32") {
            None => lin,
            Some(b) => {
                let b: Vec<i32> = b
                    .iter()
                    .map(|&v| i32::try_from(v).map_err(|_| err(format!("{node}: bias_i32 value {v} is not an int32"))))
                    .collect::<ort::Result<_>>()?;
                lin.with_int_bias(&b).map_err(|e| err(format!("{node}: {e}")))?
            }
        };
        Ok(LinearI8Kernel { epilogue: epilogue(kctx, &node)?, residual: present(&names, 4), node, lin, act })
    }

    fn infer_shape(&self, ctx: &mut ShapeInferenceContext) -> ort::Result<()> {
        infer_linear(ctx)
    }
}

impl Kernel for LinearI8Kernel {
    fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
        let this = &*self;
        guarded(&this.node, || {
            run_linear(ctx, this.lin.k(), this.lin.n(), this.residual.then_some(4), |x, t, res, y, pool| {
                this.lin.forward(x, t, this.act, this.epilogue, res, y, pool).map_err(|e| e.to_string())
            })
        })
    }
}

pub struct LinearF32Kernel {
    node: String,
    lin: LinearF32,
    k: usize,
    n: usize,
    epilogue: Epilogue,
    residual: bool,
}

impl Operator for SparseLinearF32Op {
    type Kernel<'a> = LinearF32Kernel;

    fn name(&self) -> &str {
        SPARSE_LINEAR_F32
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        [
            OperatorInput::required(T::Float32),
            OperatorInput::required(T::Float32),
            OperatorInput::required(T::Float32),
            OperatorInput::optional(T::Float32),
        ]
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(T::Float32)]
    }

    fn create_kernel<'a>(&self, kctx: &KernelContext<'a>) -> ort::Result<LinearF32Kernel> {
        let node = kctx.node_name().unwrap_or_else(|_| SPARSE_LINEAR_F32.into());
        let names = input_names(kctx)?;
        let (w_shape, w) = const_input::<f32>(kctx, &node, 1, "weight")?;
        let (k, n) = weight_dims(&node, &w_shape)?;
        let (_, bias) = const_input::<f32>(kctx, &node, 2, "bias")?;
        let lin = LinearF32::new(&w, k, n, Some(&bias), kernel_isa()?).map_err(|e| err(format!("{node}: {e}")))?;
        Ok(LinearF32Kernel { epilogue: epilogue(kctx, &node)?, residual: present(&names, 3), node, lin, k, n })
    }

    fn infer_shape(&self, ctx: &mut ShapeInferenceContext) -> ort::Result<()> {
        infer_linear(ctx)
    }
}

impl Kernel for LinearF32Kernel {
    fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
        let this = &*self;
        guarded(&this.node, || {
            run_linear(ctx, this.k, this.n, this.residual.then_some(3), |x, t, res, y, pool| {
                this.lin.forward(x, t, this.epilogue, res, y, pool).map_err(|e| e.to_string())
            })
        })
    }
}
