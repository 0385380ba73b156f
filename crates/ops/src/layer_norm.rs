//! `ai.sparsec::LayerNorm`: layer normalization over the last axis with ONNX Runtime's own CPU
//! arithmetic (`sparsec_kernels::layer_norm`), so its outputs equal ORT's `LayerNormalization`
//! bit for bit, several rows at a time.

use ort::operator::{
    ComputeContext, Kernel, KernelContext, Operator, OperatorInput, OperatorOutput, ShapeInferenceContext,
};
use ort::value::{TensorElementType as T, ValueType};

use sparsec_kernels::Isa;

use super::{err, f32_type, guarded, input_names, kernel_isa, present, OrtPool};

pub const LAYER_NORM: &str = "LayerNorm";

/// `LayerNorm(X f32[..., N], scale f32[N], bias f32[N]?) -> Y f32[..., N]`, attribute `epsilon`
/// (float, default 1e-5): ONNX `LayerNormalization` with `axis = -1` and only its first output.
pub struct LayerNormOp;

pub struct LayerNormKernel {
    node: String,
    epsilon: f32,
    bias: bool,
    isa: Isa,
}

impl Operator for LayerNormOp {
    type Kernel<'a> = LayerNormKernel;

    fn name(&self) -> &str {
        LAYER_NORM
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        [OperatorInput::required(T::Float32), OperatorInput::required(T::Float32), OperatorInput::optional(T::Float32)]
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(T::Float32)]
    }

    fn create_kernel<'a>(&self, kctx: &KernelContext<'a>) -> ort::Result<LayerNormKernel> {
        let node = kctx.node_name().unwrap_or_else(|_| LAYER_NORM.into());
        let names = input_names(kctx)?;
        let epsilon = kctx.get::<f32>("epsilon").unwrap_or(1e-5);
        Ok(LayerNormKernel { bias: present(&names, 2), node, epsilon, isa: kernel_isa()? })
    }

    fn infer_shape(&self, ctx: &mut ShapeInferenceContext) -> ort::Result<()> {
        let inputs = ctx.inputs();
        let Some(ValueType::Tensor { shape, dimension_symbols, .. }) = inputs.first() else {
            return Err(err("LayerNorm: input 0 must be a tensor"));
        };
        ctx.set_output(0, &f32_type(shape.to_vec(), dimension_symbols.to_vec()))
    }
}

impl LayerNormKernel {
    fn run(&self, ctx: &ComputeContext) -> ort::Result<()> {
        let x = ctx.input(0)?.ok_or_else(|| err("missing input 0"))?;
        let (xs, xd) = x.try_extract_tensor::<f32>()?;
        let dims = xs.to_vec();
        let Some(&n) = dims.last() else { return Err(err("input 0 must have rank ≥ 1")) };
        let s = ctx.input(1)?.ok_or_else(|| err("missing input 1 (scale)"))?;
        let (_, sd) = s.try_extract_tensor::<f32>()?;
        let b = if self.bias { Some(ctx.input(2)?.ok_or_else(|| err("missing input 2 (bias)"))?) } else { None };
        let bd = match &b {
            Some(b) => Some(b.try_extract_tensor::<f32>()?.1),
            None => None,
        };
        let mut y = ctx.output(0, dims)?.ok_or_else(|| err("output 0 was not allocated"))?;
        let (_, yd) = y.try_extract_tensor_mut::<f32>()?;
        sparsec_kernels::layer_norm::layer_norm(self.isa, xd, n as usize, sd, bd, self.epsilon, yd, &OrtPool(ctx))
            .map_err(err)
    }
}

impl Kernel for LayerNormKernel {
    fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
        let this = &*self;
        guarded(&this.node, || this.run(ctx))
    }
}
