//! `ai.sparsec::LayerNormGrad`: the gradient of `LayerNormalization` over the last axis in one pass
//! (`sparsec_kernels::layer_norm::layer_norm_grad`), from the forward's saved `Mean` and
//! `InvStdDev`, instead of the eleven standard nodes the autodiff rule writes otherwise.

use ort::operator::{
    ComputeContext, Kernel, KernelContext, Operator, OperatorInput, OperatorOutput, ShapeInferenceContext,
};
use ort::value::{TensorElementType as T, ValueType};
use sparsec_kernels::layer_norm::layer_norm_grad;
use sparsec_kernels::Isa;

use super::{err, f32_type, guarded, kernel_isa, OrtPool};

pub const LAYER_NORM_GRAD: &str = "LayerNormGrad";

/// `LayerNormGrad(dY f32[..., N], X f32[..., N], Scale f32[N], Mean f32[..., 1], InvStdDev f32[..., 1])
/// -> (dX f32[..., N], dScale f32[N], dBias f32[N])`.
pub struct LayerNormGradOp;

pub struct LayerNormGradKernel {
    node: String,
    isa: Isa,
}

impl Operator for LayerNormGradOp {
    type Kernel<'a> = LayerNormGradKernel;

    fn name(&self) -> &str {
        LAYER_NORM_GRAD
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        (0..5).map(|_| OperatorInput::required(T::Float32)).collect::<Vec<_>>()
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        (0..3).map(|_| OperatorOutput::required(T::Float32)).collect::<Vec<_>>()
    }

    fn create_kernel<'a>(&self, kctx: &KernelContext<'a>) -> ort::Result<LayerNormGradKernel> {
        let node = kctx.node_name().unwrap_or_else(|_| LAYER_NORM_GRAD.into());
        Ok(LayerNormGradKernel { node, isa: kernel_isa()? })
    }

    fn infer_shape(&self, ctx: &mut ShapeInferenceContext) -> ort::Result<()> {
        let inputs = ctx.inputs();
        let shape_of = |slot: usize| match inputs.get(slot) {
            Some(ValueType::Tensor { shape, dimension_symbols, .. }) => {
                Ok((shape.to_vec(), dimension_symbols.to_vec()))
            }
            _ => Err(err(format!("{LAYER_NORM_GRAD}: input {slot} must be a tensor"))),
        };
        let (xs, xsym) = shape_of(1)?;
        let (ss, ssym) = shape_of(2)?;
        ctx.set_output(0, &f32_type(xs, xsym))?;
        ctx.set_output(1, &f32_type(ss.clone(), ssym.clone()))?;
        ctx.set_output(2, &f32_type(ss, ssym))
    }
}

impl LayerNormGradKernel {
    fn run(&self, ctx: &ComputeContext) -> ort::Result<()> {
        let input = |slot: usize, what: &str| -> ort::Result<(Vec<i64>, ort::value::ValueRef<'_>)> {
            let v = ctx.input(slot)?.ok_or_else(|| err(format!("missing input {slot} ({what})")))?;
            let shape =
                v.try_extract_tensor::<f32>().map_err(|e| err(format!("input {slot} ({what}): {e}")))?.0.to_vec();
            Ok((shape, v))
        };
        let (gs, g) = input(0, "dY")?;
        let (xs, x) = input(1, "X")?;
        let (ss, s) = input(2, "Scale")?;
        let (_, m) = input(3, "Mean")?;
        let (_, i) = input(4, "InvStdDev")?;
        let n = match (xs.last(), ss.as_slice()) {
            (Some(&last), [k]) if last == *k && last > 0 => last as usize,
            _ => return Err(err(format!("X has shape {xs:?} and Scale {ss:?}: Scale must be [N], N X's last axis"))),
        };
        if gs != xs {
            return Err(err(format!("dY has shape {gs:?}, X {xs:?}")));
        }
        let mut dx = ctx.output(0, xs.clone())?.ok_or_else(|| err("output 0 was not allocated"))?;
        let mut ds = ctx.output(1, ss.clone())?.ok_or_else(|| err("output 1 was not allocated"))?;
        let mut db = ctx.output(2, ss.clone())?.ok_or_else(|| err("output 2 was not allocated"))?;
        let (_, dxd) = dx.try_extract_tensor_mut::<f32>()?;
        let (_, dsd) = ds.try_extract_tensor_mut::<f32>()?;
        let (_, dbd) = db.try_extract_tensor_mut::<f32>()?;
        let (gd, xd, sd) =
            (g.try_extract_tensor::<f32>()?.1, x.try_extract_tensor::<f32>()?.1, s.try_extract_tensor::<f32>()?.1);
        let (md, id) = (m.try_extract_tensor::<f32>()?.1, i.try_extract_tensor::<f32>()?.1);
        layer_norm_grad(self.isa, gd, xd, n, sd, md, id, dxd, dsd, dbd, &OrtPool(ctx)).map_err(err)
    }
}

impl Kernel for LayerNormGradKernel {
    fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
        let this = &*self;
        guarded(&this.node, || this.run(ctx))
    }
}
