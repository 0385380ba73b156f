//! The GELU training operators, `ai.sparsec::GeluTrain` and `GeluTrainGrad`: the exported
//! `Div(√2)/Erf/Add(1)/Mul/Mul(0.5)` chain as one pass over the tensor, and its gradient from the
//! input alone (`sparsec_kernels::gelu`), so the training graph keeps one tensor per GELU instead of
//! the chain's four.

use ort::operator::{
    ComputeContext, Kernel, KernelContext, Operator, OperatorInput, OperatorOutput, ShapeInferenceContext,
};
use ort::value::{TensorElementType as T, ValueType};
use sparsec_kernels::gelu::{gelu_backward, gelu_forward};
use sparsec_kernels::Isa;

use super::{err, f32_type, guarded, kernel_isa, OrtPool};

pub const GELU_TRAIN: &str = "GeluTrain";
pub const GELU_TRAIN_GRAD: &str = "GeluTrainGrad";

/// `GeluTrain(X f32) -> Y f32`: `Y = ½·X·(1 + erf(X/√2))`.
pub struct GeluTrainOp;

/// `GeluTrainGrad(dY f32, X f32) -> dX f32`: `dX = dY·(Φ(X) + X·φ(X))`.
pub struct GeluTrainGradOp;

pub struct GeluTrainKernel {
    node: String,
    grad: bool,
    isa: Isa,
}

/// Output 0 shaped as input `slot`.
fn same_as(ctx: &mut ShapeInferenceContext, op: &str, slot: usize) -> ort::Result<()> {
    let inputs = ctx.inputs();
    let Some(ValueType::Tensor { shape, dimension_symbols, .. }) = inputs.get(slot) else {
        return Err(err(format!("{op}: input {slot} must be a tensor")));
    };
    let t = f32_type(shape.to_vec(), dimension_symbols.to_vec());
    ctx.set_output(0, &t)
}

macro_rules! operator {
    ($op:ident, $name:expr, $grad:expr, $inputs:expr, $slot:expr) => {
        impl Operator for $op {
            type Kernel<'a> = GeluTrainKernel;

            fn name(&self) -> &str {
                $name
            }

            fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
                (0..$inputs).map(|_| OperatorInput::required(T::Float32)).collect::<Vec<_>>()
            }

            fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
                [OperatorOutput::required(T::Float32)]
            }

            fn create_kernel<'a>(&self, kctx: &KernelContext<'a>) -> ort::Result<GeluTrainKernel> {
                let node = kctx.node_name().unwrap_or_else(|_| $name.into());
                Ok(GeluTrainKernel { node, grad: $grad, isa: kernel_isa()? })
            }

            fn infer_shape(&self, ctx: &mut ShapeInferenceContext) -> ort::Result<()> {
                same_as(ctx, $name, $slot)
            }
        }
    };
}

operator!(GeluTrainOp, GELU_TRAIN, false, 1, 0);
operator!(GeluTrainGradOp, GELU_TRAIN_GRAD, true, 2, 1);

impl GeluTrainKernel {
    fn run(&self, ctx: &ComputeContext) -> ort::Result<()> {
        let x_slot = if self.grad { 1 } else { 0 };
        let x = ctx.input(x_slot)?.ok_or_else(|| err(format!("missing input {x_slot} (X)")))?;
        let (xs, xd) = x.try_extract_tensor::<f32>().map_err(|e| err(format!("input {x_slot} (X): {e}")))?;
        let mut out = ctx.output(0, xs.to_vec())?.ok_or_else(|| err("output 0 was not allocated"))?;
        let (_, od) = out.try_extract_tensor_mut::<f32>()?;
        let pool = OrtPool(ctx);
        let r = if self.grad {
            let g = ctx.input(0)?.ok_or_else(|| err("missing input 0 (dY)"))?;
            let (gs, gd) = g.try_extract_tensor::<f32>().map_err(|e| err(format!("input 0 (dY): {e}")))?;
            if gs[..] != xs[..] {
                return Err(err(format!("dY has shape {gs:?}, X {xs:?}")));
            }
            gelu_backward(self.isa, gd, xd, od, &pool)
        } else {
            gelu_forward(self.isa, xd, od, &pool)
        };
        r.map_err(|e| err(e.to_string()))
    }
}

impl Kernel for GeluTrainKernel {
    fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
        let this = &*self;
        guarded(&this.node, || this.run(ctx))
    }
}
