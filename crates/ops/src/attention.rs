//! `ai.sparsec::Attention`: multi-head scaled-dot-product self-attention in one kernel, reading
//! Q, K and V as token rows (separately or from one fused QKV projection) and writing the heads
//! merged back, `[B, S, H·D]`; the per-layer transposes, score tensors and mask arithmetic of the
//! exported graph disappear.

use ort::operator::{
    ComputeContext, Kernel, KernelContext, Operator, OperatorInput, OperatorOutput, ShapeInferenceContext,
};
use ort::value::{TensorElementType as T, ValueType};
use sparsec_kernels::attention::{Attention, AttentionPrecision};

use super::{err, f32_type, guarded, input_names, kernel_isa, positive_int, present, OrtPool};

pub const ATTENTION: &str = "Attention";

/// `Attention(QKV or Q f32[B, S, *], mask f32, K f32[B, S, H·D]?, V f32[B, S, H·D]?) -> Y f32[B, S, H·D]`.
///
/// Attributes: `num_heads`, `head_dim`, `scale` (applied to `Q·Kᵀ` before the mask is added),
/// `has_mask` (0: input 1 is a placeholder and ignored, so that K and V never follow an omitted input),
/// `qkv_fused` (1: input 0 holds Q, K and V side by side, `[B, S, 3·H·D]`), `precision`
/// (`"f32"` or `"bf16"`), `zero_masked_rows` (1: a query whose keys are all masked yields 0, as
/// the `IsNaN`/`Where` guard after torch's softmax does; 0: a uniform average, as plain softmax
/// over equal scores). The mask is additive, shaped `[B, S]`, `[B, 1, 1, S]` or `[B, 1, S, S]`.
pub struct AttentionOp;

pub struct AttentionKernel {
    node: String,
    attn: Attention,
    heads: usize,
    head_dim: usize,
    scale: f32,
    fused: bool,
    has_mask: bool,
    zero_masked_rows: bool,
}

impl Operator for AttentionOp {
    type Kernel<'a> = AttentionKernel;

    fn name(&self) -> &str {
        ATTENTION
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        [
            OperatorInput::required(T::Float32),
            OperatorInput::optional(T::Float32),
            OperatorInput::optional(T::Float32),
            OperatorInput::optional(T::Float32),
        ]
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(T::Float32)]
    }

    fn create_kernel<'a>(&self, kctx: &KernelContext<'a>) -> ort::Result<AttentionKernel> {
        let node = kctx.node_name().unwrap_or_else(|_| ATTENTION.into());
        let names = input_names(kctx)?;
        let heads = positive_int(kctx, &node, "num_heads")?;
        let head_dim = positive_int(kctx, &node, "head_dim")?;
        let scale = kctx.get::<f32>("scale").ok_or_else(|| err(format!("{node}: attribute 'scale' is required")))?;
        let fused = kctx.get::<i64>("qkv_fused").unwrap_or(0) != 0;
        if !(fused || present(&names, 2) && present(&names, 3)) {
            return Err(err(format!("{node}: K and V inputs are required unless qkv_fused=1")));
        }
        let precision = match kctx.get::<String>("precision").as_deref().unwrap_or("f32") {
            "f32" => AttentionPrecision::F32,
            "bf16" => AttentionPrecision::Bf16,
            other => return Err(err(format!("{node}: unknown precision '{other}' (f32, bf16)"))),
        };
        let attn =
            Attention::new(heads, head_dim, precision, kernel_isa()?).map_err(|e| err(format!("{node}: {e}")))?;
        Ok(AttentionKernel {
            has_mask: kctx.get::<i64>("has_mask").unwrap_or(1) != 0 && present(&names, 1),
            zero_masked_rows: kctx.get::<i64>("zero_masked_rows").unwrap_or(0) != 0,
            node,
            attn,
            heads,
            head_dim,
            scale,
            fused,
        })
    }

    fn infer_shape(&self, ctx: &mut ShapeInferenceContext) -> ort::Result<()> {
        let heads = ctx.attr::<i64>("num_heads")?;
        let head_dim = ctx.attr::<i64>("head_dim")?;
        let inputs = ctx.inputs();
        let Some(ValueType::Tensor { shape, dimension_symbols, .. }) = inputs.first() else {
            return Err(err("Attention: input 0 must be a tensor"));
        };
        let mut dims: Vec<i64> = shape.to_vec();
        if let Some(last) = dims.last_mut() {
            *last = heads * head_dim;
        }
        ctx.set_output(0, &f32_type(dims, dimension_symbols.to_vec()))
    }
}

/// The additive mask as one bias per key, `[B, S]`, when it does not vary over queries.
pub(crate) enum KeyMask {
    None,
    PerKey(Vec<f32>),
    /// A mask that differs between queries, `[B, S, S]`.
    Full(Vec<f32>),
}

pub(crate) fn key_mask(dims: &[i64], data: &[f32], b: usize, s: usize) -> Result<KeyMask, String> {
    let per_key = |d: &[f32]| d.iter().map(|&x| if x == f32::NEG_INFINITY { f32::MIN } else { x }).collect();
    let d: Vec<usize> = dims.iter().map(|&x| x as usize).collect();
    // Batch-broadcast masks ([1, …]) are repeated over the batch first.
    let repeat = |per_batch: usize| -> Vec<f32> {
        if d[0] == b {
            data.to_vec()
        } else {
            (0..b).flat_map(|_| data[..per_batch].iter().copied()).collect()
        }
    };
    let batch_ok = |db: usize| db == b || db == 1;
    match d[..] {
        [db, ds] if db == b && ds == s => Ok(KeyMask::PerKey(per_key(data))),
        [db, 1, 1, ds] if batch_ok(db) && ds == s => Ok(KeyMask::PerKey(per_key(&repeat(s)))),
        [db, 1, dq, ds] if batch_ok(db) && dq == s && ds == s => {
            let data = repeat(s * s);
            let uniform = (0..b).all(|bi| {
                let m = &data[bi * s * s..(bi + 1) * s * s];
                m.chunks_exact(s).all(|row| row == &m[..s])
            });
            if uniform {
                let rows: Vec<f32> = (0..b).flat_map(|bi| data[bi * s * s..bi * s * s + s].iter().copied()).collect();
                Ok(KeyMask::PerKey(per_key(&rows)))
            } else {
                Ok(KeyMask::Full(per_key(&data)))
            }
        }
        _ => Err(format!("mask shape {dims:?} is not [B, S], [B|1, 1, 1, S] or [B|1, 1, S, S] for B = {b}, S = {s}")),
    }
}

impl AttentionKernel {
    fn run(&self, ctx: &ComputeContext) -> ort::Result<()> {
        let hd = self.heads * self.head_dim;
        let x = ctx.input(0)?.ok_or_else(|| err("missing input 0"))?;
        let (xs, xd) = x.try_extract_tensor::<f32>()?;
        let want = if self.fused { 3 * hd } else { hd };
        let [b, s, w] = xs.to_vec()[..] else {
            return Err(err(format!("input 0 must be [B, S, {want}], got {:?}", xs.to_vec())));
        };
        if w as usize != want {
            return Err(err(format!("input 0 must be [B, S, {want}], got {:?}", xs.to_vec())));
        }
        let (b, s) = (b as usize, s as usize);
        let (kv_in, vv_in) = if self.fused {
            (None, None)
        } else {
            (
                Some(ctx.input(2)?.ok_or_else(|| err("missing input K"))?),
                Some(ctx.input(3)?.ok_or_else(|| err("missing input V"))?),
            )
        };
        let (q, k, v, stride) = match (&kv_in, &vv_in) {
            (Some(kv), Some(vv)) => {
                let (ks, kd) = kv.try_extract_tensor::<f32>()?;
                let (vs, vd) = vv.try_extract_tensor::<f32>()?;
                if ks.to_vec() != xs.to_vec() || vs.to_vec() != xs.to_vec() {
                    return Err(err(format!(
                        "Q, K, V shapes differ: {:?}, {:?}, {:?}",
                        xs.to_vec(),
                        ks.to_vec(),
                        vs.to_vec()
                    )));
                }
                (xd, kd, vd, hd)
            }
            _ => (xd, &xd[hd..], &xd[2 * hd..], 3 * hd),
        };
        let mask_in = if self.has_mask { Some(ctx.input(1)?.ok_or_else(|| err("missing mask input"))?) } else { None };
        let mask = match &mask_in {
            Some(m) => {
                let (ms, md) = m.try_extract_tensor::<f32>()?;
                key_mask(ms, md, b, s).map_err(err)?
            }
            None => KeyMask::None,
        };
        let mut y =
            ctx.output(0, vec![b as i64, s as i64, hd as i64])?.ok_or_else(|| err("output 0 was not allocated"))?;
        let (_, yd) = y.try_extract_tensor_mut::<f32>()?;
        let pool = OrtPool(ctx);
        match &mask {
            KeyMask::None => {
                self.attn.forward(b, s, q, k, v, stride, None, self.scale, yd, &pool).map_err(|e| err(e.to_string()))?
            }
            KeyMask::PerKey(bias) => {
                self.attn
                    .forward(b, s, q, k, v, stride, Some(bias), self.scale, yd, &pool)
                    .map_err(|e| err(e.to_string()))?;
                if self.zero_masked_rows {
                    for (bi, keys) in bias.chunks_exact(s).enumerate() {
                        if keys.iter().all(|&x| x == f32::MIN) {
                            yd[bi * s * hd..(bi + 1) * s * hd].fill(0.0);
                        }
                    }
                }
            }
            KeyMask::Full(bias) => {
                // One query row at a time: each is a length-1 query block against all keys.
                full_mask_attention(self, b, s, q, k, v, stride, bias, yd);
            }
        }
        Ok(())
    }
}

/// Attention under a mask that varies over queries (causal or arbitrary), in plain f64 scalar
/// code: correct for any mask, not fast; BERT-style padding masks never take this path.
#[allow(clippy::too_many_arguments)]
fn full_mask_attention(
    a: &AttentionKernel,
    b: usize,
    s: usize,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    stride: usize,
    bias: &[f32],
    y: &mut [f32],
) {
    let (h, d) = (a.heads, a.head_dim);
    let hd = h * d;
    let mut p = vec![0f64; s];
    for bi in 0..b {
        for hi in 0..h {
            for qi in 0..s {
                let qrow = &q[(bi * s + qi) * stride + hi * d..][..d];
                let brow = &bias[(bi * s + qi) * s..][..s];
                let mut max = f64::NEG_INFINITY;
                for (j, pj) in p.iter_mut().enumerate() {
                    let krow = &k[(bi * s + j) * stride + hi * d..][..d];
                    let dot: f64 = qrow.iter().zip(krow).map(|(&x, &y)| f64::from(x) * f64::from(y)).sum();
                    *pj = f64::from(a.scale) * dot + f64::from(brow[j]);
                    max = max.max(*pj);
                }
                let all_masked = brow.iter().all(|&x| x == f32::MIN);
                let out = &mut y[(bi * s + qi) * hd + hi * d..][..d];
                if all_masked && a.zero_masked_rows {
                    out.fill(0.0);
                    continue;
                }
                let mut sum = 0f64;
                for pj in p.iter_mut() {
                    *pj = (*pj - max).exp();
                    sum += *pj;
                }
                for (di, o) in out.iter_mut().enumerate() {
                    let acc: f64 = p
                        .iter()
                        .enumerate()
                        .map(|(j, &pj)| pj * f64::from(v[(bi * s + j) * stride + hi * d + di]))
                        .sum();
                    *o = (acc / sum) as f32;
                }
            }
        }
    }
}

impl Kernel for AttentionKernel {
    fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
        let this = &*self;
        guarded(&this.node, || this.run(ctx))
    }
}
