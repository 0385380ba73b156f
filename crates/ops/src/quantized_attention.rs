//! `ai.sparsec::QuantizedAttention`: the quantized self-attention of SparseML's int8 exports
//! (`QuantizeLinear` of Q, Kᵀ, V, two `MatMulInteger`s and the f32/QDQ steps between them) in one
//! kernel, reading Q, K and V as f32 token rows and writing the heads merged back, `[B, S, H·D]`.

use ort::operator::{
    ComputeContext, Kernel, KernelContext, Operator, OperatorInput, OperatorOutput, ShapeInferenceContext,
};
use ort::value::{TensorElementType as T, ValueType};
use sparsec_kernels::attention_i8::{Quant, QuantAttention, QuantAttentionParams};

use super::attention::{key_mask, KeyMask};
use super::{err, f32_type, guarded, input_names, kernel_isa, positive_int, present, OrtPool};

pub const QUANTIZED_ATTENTION: &str = "QuantizedAttention";

/// `QuantizedAttention(Q f32[B, S, H·D], K f32[B, S, H·D], V f32[B, S, H·D], mask f32?) -> Y f32[B, S, H·D]`.
///
/// Attributes: `num_heads`, `head_dim`; the per-tensor quantizations `{q,k,v,scores,probs,context}_scale`
/// (float) and `…_zero_point` (int, 0–255), where `scores_…` and `context_…` may both be absent
/// (no requantization of the scores or the context: sparsec's own QAT form); `scores_mul` and
/// `context_mul` (the `Mul` after each product's `Cast`), `divisor` (the `Div` of the scores). The mask is additive, one bias per key:
/// `[B, S]` or `[B|1, 1, 1, S]` (or `[B|1, 1, S, S]` with equal rows).
pub struct QuantizedAttentionOp;

pub struct QuantizedAttentionKernel {
    node: String,
    attn: QuantAttention,
    heads: usize,
    head_dim: usize,
    has_mask: bool,
}

/// The quantization constants from a node's attributes, or an error naming the missing one.
fn params(kctx: &KernelContext, node: &str) -> ort::Result<QuantAttentionParams> {
    let float = |name: &str| -> ort::Result<f32> {
        kctx.get::<f32>(name).ok_or_else(|| err(format!("{node}: float attribute '{name}' is required")))
    };
    let quant = |what: &str| -> ort::Result<Quant> {
        let scale = float(&format!("{what}_scale"))?;
        let zp = kctx.get::<i64>(&format!("{what}_zero_point")).unwrap_or(0);
        let zero_point = u8::try_from(zp)
            .map_err(|_| err(format!("{node}: attribute '{what}_zero_point' = {zp} is not in 0..=255")))?;
        Ok(Quant { scale, zero_point })
    };
    let optional = |what: &str| -> ort::Result<Option<Quant>> {
        match kctx.get::<f32>(&format!("{what}_scale")) {
            Some(_) => quant(what).map(Some),
            None => Ok(None),
        }
    };
    Ok(QuantAttentionParams {
        q: quant("q")?,
        k: quant("k")?,
        v: quant("v")?,
        scores_mul: float("scores_mul")?,
        scores: optional("scores")?,
        divisor: float("divisor")?,
        probs: quant("probs")?,
        context_mul: float("context_mul")?,
        context: optional("context")?,
    })
}

impl Operator for QuantizedAttentionOp {
    type Kernel<'a> = QuantizedAttentionKernel;

    fn name(&self) -> &str {
        QUANTIZED_ATTENTION
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

    fn create_kernel<'a>(&self, kctx: &KernelContext<'a>) -> ort::Result<QuantizedAttentionKernel> {
        let node = kctx.node_name().unwrap_or_else(|_| QUANTIZED_ATTENTION.into());
        let names = input_names(kctx)?;
        let heads = positive_int(kctx, &node, "num_heads")?;
        let head_dim = positive_int(kctx, &node, "head_dim")?;
        let p = params(kctx, &node)?;
        let attn = QuantAttention::new(heads, head_dim, p, kernel_isa()?).map_err(|e| err(format!("{node}: {e}")))?;
        Ok(QuantizedAttentionKernel { has_mask: present(&names, 3), node, attn, heads, head_dim })
    }

    fn infer_shape(&self, ctx: &mut ShapeInferenceContext) -> ort::Result<()> {
        let inputs = ctx.inputs();
        let Some(ValueType::Tensor { shape, dimension_symbols, .. }) = inputs.first() else {
            return Err(err("QuantizedAttention: input 0 must be a tensor"));
        };
        ctx.set_output(0, &f32_type(shape.to_vec(), dimension_symbols.to_vec()))
    }
}

impl QuantizedAttentionKernel {
    fn run(&self, ctx: &ComputeContext) -> ort::Result<()> {
        let hd = self.heads * self.head_dim;
        let input = |i: usize, what: &str| ctx.input(i)?.ok_or_else(|| err(format!("missing input {i} ({what})")));
        let (qv, kv, vv) = (input(0, "Q")?, input(1, "K")?, input(2, "V")?);
        let (qs, qd) = qv.try_extract_tensor::<f32>()?;
        let (ks, kd) = kv.try_extract_tensor::<f32>()?;
        let (vs, vd) = vv.try_extract_tensor::<f32>()?;
        let [b, s, w] = qs.to_vec()[..] else {
            return Err(err(format!("Q must be [B, S, {hd}], got {:?}", qs.to_vec())));
        };
        if w as usize != hd || ks.to_vec() != qs.to_vec() || vs.to_vec() != qs.to_vec() {
            return Err(err(format!(
                "Q, K, V must all be [B, S, {hd}], got {:?}, {:?}, {:?}",
                qs.to_vec(),
                ks.to_vec(),
                vs.to_vec()
            )));
        }
        let (b, s) = (b as usize, s as usize);
        let mask_in = if self.has_mask { Some(input(3, "mask")?) } else { None };
        let bias = match &mask_in {
            Some(m) => {
                let (ms, md) = m.try_extract_tensor::<f32>()?;
                match key_mask(ms, md, b, s).map_err(err)? {
                    KeyMask::PerKey(bias) => Some(bias),
                    KeyMask::None => None,
                    KeyMask::Full(_) => return Err(err("a mask that varies over queries is not supported")),
                }
            }
            None => None,
        };
        let mut y =
            ctx.output(0, vec![b as i64, s as i64, hd as i64])?.ok_or_else(|| err("output 0 was not allocated"))?;
        let (_, yd) = y.try_extract_tensor_mut::<f32>()?;
        self.attn.forward(b, s, qd, kd, vd, hd, bias.as_deref(), yd, &OrtPool(ctx)).map_err(|e| err(e.to_string()))
    }
}

impl Kernel for QuantizedAttentionKernel {
    fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
        let this = &*self;
        guarded(&this.node, || this.run(ctx))
    }
}
