//! `ai.sparsec::EmbeddingGrad`: the weight gradient of an embedding lookup, one pass into the
//! `[rows, E]` table gradient (`sparsec_kernels::embedding_grad`), instead of a zero-filled tensor,
//! a `ScatterND` add and a `Mul` that zeroes the padding row.

use ort::operator::{
    ComputeContext, Kernel, KernelContext, Operator, OperatorInput, OperatorOutput, ShapeInferenceContext,
};
use ort::value::{TensorElementType as T, ValueType};
use sparsec_kernels::embedding_grad::embedding_grad;

use super::{err, f32_type, guarded, OrtPool};

pub const EMBEDDING_GRAD: &str = "EmbeddingGrad";

/// `EmbeddingGrad(Indices int64[...], dY f32[..., E]) -> dTable f32[rows, E]`, attributes `rows`
/// (the table's row count) and `zero_rows` (rows whose gradient is forced to 0, optional).
pub struct EmbeddingGradOp;

pub struct EmbeddingGradKernel {
    node: String,
    rows: usize,
    zero_rows: Vec<usize>,
}

impl Operator for EmbeddingGradOp {
    type Kernel<'a> = EmbeddingGradKernel;

    fn name(&self) -> &str {
        EMBEDDING_GRAD
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        [OperatorInput::required(T::Int64), OperatorInput::required(T::Float32)]
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(T::Float32)]
    }

    fn create_kernel<'a>(&self, kctx: &KernelContext<'a>) -> ort::Result<EmbeddingGradKernel> {
        let node = kctx.node_name().unwrap_or_else(|_| EMBEDDING_GRAD.into());
        let rows = kctx.get::<i64>("rows").ok_or_else(|| err(format!("{node}: attribute 'rows' is required")))?;
        if rows <= 0 {
            return Err(err(format!("{node}: attribute 'rows' must be positive, got {rows}")));
        }
        let zero_rows = kctx.get::<Vec<i64>>("zero_rows").unwrap_or_default();
        let zero_rows = zero_rows
            .into_iter()
            .map(|r| if r < 0 { r + rows } else { r })
            .map(|r| usize::try_from(r).map_err(|_| err(format!("{node}: zero row {r} is negative"))))
            .collect::<ort::Result<Vec<usize>>>()?;
        Ok(EmbeddingGradKernel { node, rows: rows as usize, zero_rows })
    }

    fn infer_shape(&self, ctx: &mut ShapeInferenceContext) -> ort::Result<()> {
        let rows = ctx.attr::<i64>("rows")?;
        let inputs = ctx.inputs();
        let Some(ValueType::Tensor { shape, dimension_symbols, .. }) = inputs.get(1) else {
            return Err(err(format!("{EMBEDDING_GRAD}: input 1 must be a tensor")));
        };
        let width = shape.last().copied().unwrap_or(-1);
        let sym = dimension_symbols.last().cloned().unwrap_or_default();
        ctx.set_output(0, &f32_type(vec![rows, width], vec![String::new(), sym]))
    }
}

impl EmbeddingGradKernel {
    fn run(&self, ctx: &ComputeContext) -> ort::Result<()> {
        let idx = ctx.input(0)?.ok_or_else(|| err("missing input 0 (Indices)"))?;
        let dy = ctx.input(1)?.ok_or_else(|| err("missing input 1 (dY)"))?;
        let (is, id) = idx.try_extract_tensor::<i64>().map_err(|e| err(format!("input 0 (Indices): {e}")))?;
        let (gs, gd) = dy.try_extract_tensor::<f32>().map_err(|e| err(format!("input 1 (dY): {e}")))?;
        let width = match gs.last() {
            Some(&w) if w >= 0 && gs.len() == is.len() + 1 && gs[..is.len()] == is[..] => w as usize,
            _ => return Err(err(format!("dY has shape {gs:?}, Indices {is:?}: dY must be [*Indices shape, E]"))),
        };
        let mut out =
            ctx.output(0, vec![self.rows as i64, width as i64])?.ok_or_else(|| err("output 0 was not allocated"))?;
        let (_, od) = out.try_extract_tensor_mut::<f32>()?;
        embedding_grad(id, gd, self.rows, width, &self.zero_rows, od, &OrtPool(ctx)).map_err(|e| err(e.to_string()))
    }
}

impl Kernel for EmbeddingGradKernel {
    fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
        let this = &*self;
        guarded(&this.node, || this.run(ctx))
    }
}
