//! The training attention operators, `ai.sparsec::AttentionTrain` and `AttentionTrainGrad`: the
//! exported graph's attention core (`MatMul(Q, Kᵀ)`, `Add` of the mask bias, `Softmax`, `MatMul`
//! with V) as one forward that keeps two f32 per query row, and its gradient, which recomputes
//! the probabilities from them (`sparsec_kernels::attention::AttentionTrain`).

use ort::operator::{
    ComputeContext, Kernel, KernelContext, Operator, OperatorInput, OperatorOutput, ShapeInferenceContext,
};
use ort::value::{TensorElementType as T, ValueType};
use sparsec_kernels::attention::{AttentionTrain, TrainBias, TrainDims};

use super::{err, f32_type, guarded, input_names, kernel_isa, present, OrtPool};

pub const ATTENTION_TRAIN: &str = "AttentionTrain";
pub const ATTENTION_TRAIN_GRAD: &str = "AttentionTrainGrad";

/// `AttentionTrain(Q f32[B, H, S, D], Kt f32[B, H, D, S], V f32[B, H, S, D], Bias f32?) ->
/// (Ctx f32[B, H, S, D], Stats f32[B, H, S, 2])`, attribute `scale` (default 1):
/// `Ctx = softmax(scale·Q·Kt + Bias)·V`, `Bias` broadcasting to `[B, H, S, S]` (ONNX rules, last
/// axis `S`); `Stats` holds each query row's score max and reciprocal exponential sum.
pub struct AttentionTrainOp;

/// `AttentionTrainGrad(dCtx, Q, Kt, V, Ctx, Stats, Bias?) -> (dQ, dKt, dV)`, attribute `scale`.
pub struct AttentionTrainGradOp;

pub struct AttentionTrainKernel {
    node: String,
    grad: bool,
    bias: bool,
    scale: f32,
    kernel: AttentionTrain,
}

fn create(kctx: &KernelContext, default_name: &str, grad: bool) -> ort::Result<AttentionTrainKernel> {
    let node = kctx.node_name().unwrap_or_else(|_| default_name.into());
    let names = input_names(kctx)?;
    let scale = kctx.get::<f32>("scale").unwrap_or(1.0);
    let kernel = AttentionTrain::new(kernel_isa()?).map_err(|e| err(format!("{node}: {e}")))?;
    Ok(AttentionTrainKernel { bias: present(&names, if grad { 6 } else { 3 }), grad, node, scale, kernel })
}

/// Output `out` of the shape of input `slot`, its last axis replaced by `last` when given.
fn like(ctx: &mut ShapeInferenceContext, op: &str, out: usize, slot: usize, last: Option<i64>) -> ort::Result<()> {
    let inputs = ctx.inputs();
    let Some(ValueType::Tensor { shape, dimension_symbols, .. }) = inputs.get(slot) else {
        return Err(err(format!("{op}: input {slot} must be a tensor")));
    };
    let mut dims: Vec<i64> = shape.to_vec();
    let mut syms: Vec<String> = dimension_symbols.to_vec();
    if let Some(l) = last {
        if let Some(d) = dims.last_mut() {
            *d = l;
        }
        if let Some(s) = syms.last_mut() {
            s.clear();
        }
    }
    ctx.set_output(out, &f32_type(dims, syms))
}

impl Operator for AttentionTrainOp {
    type Kernel<'a> = AttentionTrainKernel;

    fn name(&self) -> &str {
        ATTENTION_TRAIN
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
        [OperatorOutput::required(T::Float32), OperatorOutput::required(T::Float32)]
    }

    fn create_kernel<'a>(&self, kctx: &KernelContext<'a>) -> ort::Result<AttentionTrainKernel> {
        create(kctx, ATTENTION_TRAIN, false)
    }

    fn infer_shape(&self, ctx: &mut ShapeInferenceContext) -> ort::Result<()> {
        like(ctx, ATTENTION_TRAIN, 0, 0, None)?;
        like(ctx, ATTENTION_TRAIN, 1, 0, Some(2))
    }
}

impl Operator for AttentionTrainGradOp {
    type Kernel<'a> = AttentionTrainKernel;

    fn name(&self) -> &str {
        ATTENTION_TRAIN_GRAD
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        let mut v: Vec<OperatorInput> = (0..6).map(|_| OperatorInput::required(T::Float32)).collect();
        v.push(OperatorInput::optional(T::Float32));
        v
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [
            OperatorOutput::required(T::Float32),
            OperatorOutput::required(T::Float32),
            OperatorOutput::required(T::Float32),
        ]
    }

    fn create_kernel<'a>(&self, kctx: &KernelContext<'a>) -> ort::Result<AttentionTrainKernel> {
        create(kctx, ATTENTION_TRAIN_GRAD, true)
    }

    fn infer_shape(&self, ctx: &mut ShapeInferenceContext) -> ort::Result<()> {
        like(ctx, ATTENTION_TRAIN_GRAD, 0, 1, None)?;
        like(ctx, ATTENTION_TRAIN_GRAD, 1, 2, None)?;
        like(ctx, ATTENTION_TRAIN_GRAD, 2, 3, None)
    }
}

/// An f32 input's shape and data, or an error naming the slot.
fn input<'c>(ctx: &'c ComputeContext, slot: usize, what: &str) -> ort::Result<(Vec<i64>, ort::value::ValueRef<'c>)> {
    let v = ctx.input(slot)?.ok_or_else(|| err(format!("missing input {slot} ({what})")))?;
    let shape = v.try_extract_tensor::<f32>().map_err(|e| err(format!("input {slot} ({what}): {e}")))?.0.to_vec();
    Ok((shape, v))
}

/// `[B, H, S, D]` from Q's shape, checked against Kt's and V's.
fn dims_of(q: &[i64], kt: &[i64], v: &[i64]) -> ort::Result<TrainDims> {
    let d = match q {
        [b, h, s, d] if q.iter().all(|&x| x >= 0) => {
            TrainDims { batch: *b as usize, heads: *h as usize, seq: *s as usize, head_dim: *d as usize }
        }
        _ => return Err(err(format!("Q must be [B, H, S, D], got {q:?}"))),
    };
    if kt != [q[0], q[1], q[3], q[2]] || v != q {
        return Err(err(format!("Q {q:?}, Kt {kt:?} and V {v:?} are not [B, H, S, D], [B, H, D, S], [B, H, S, D]")));
    }
    Ok(d)
}

/// The bias's `[Bb, Hb, Sq]` after left-padding its shape to rank 4; its last axis must be `S`.
fn bias_dims(shape: &[i64], seq: usize) -> ort::Result<[usize; 3]> {
    if shape.is_empty() || shape.len() > 4 || shape[shape.len() - 1] != seq as i64 {
        return Err(err(format!("the bias has shape {shape:?}, its last axis must be S = {seq} (rank <= 4)")));
    }
    let mut full = [1usize; 4];
    for (f, &x) in full[4 - shape.len()..].iter_mut().zip(shape) {
        *f = x as usize;
    }
    Ok([full[0], full[1], full[2]])
}

impl AttentionTrainKernel {
    fn run(&self, ctx: &ComputeContext) -> ort::Result<()> {
        let pool = OrtPool(ctx);
        let base = if self.grad { 1 } else { 0 };
        let (qs, q) = input(ctx, base, "Q")?;
        let (ks, k) = input(ctx, base + 1, "Kt")?;
        let (vs, v) = input(ctx, base + 2, "V")?;
        let dims = dims_of(&qs, &ks, &vs)?;
        let bias_slot = if self.grad { 6 } else { 3 };
        let bias = if self.bias { Some(input(ctx, bias_slot, "Bias")?) } else { None };
        let bias_view = match &bias {
            Some((shape, b)) => {
                let dims3 = bias_dims(shape, dims.seq)?;
                Some(TrainBias { data: b.try_extract_tensor::<f32>()?.1, dims: dims3 })
            }
            None => None,
        };
        let (qd, kd, vd) =
            (q.try_extract_tensor::<f32>()?.1, k.try_extract_tensor::<f32>()?.1, v.try_extract_tensor::<f32>()?.1);
        let kerr = |e: sparsec_kernels::attention::AttnError| err(e.to_string());
        if !self.grad {
            let mut out = ctx.output(0, qs.clone())?.ok_or_else(|| err("output 0 was not allocated"))?;
            let mut stats_shape = qs.clone();
            stats_shape[3] = 2;
            let mut stats = ctx.output(1, stats_shape)?.ok_or_else(|| err("output 1 was not allocated"))?;
            let (_, od) = out.try_extract_tensor_mut::<f32>()?;
            let (_, sd) = stats.try_extract_tensor_mut::<f32>()?;
            return self.kernel.forward(dims, qd, kd, vd, bias_view, self.scale, od, sd, &pool).map_err(kerr);
        }
        let (gs, g) = input(ctx, 0, "dCtx")?;
        let (cs, c) = input(ctx, 4, "Ctx")?;
        let (_, st) = input(ctx, 5, "Stats")?;
        if gs != qs || cs != qs {
            return Err(err(format!("dCtx {gs:?} and Ctx {cs:?} must have Q's shape {qs:?}")));
        }
        let mut dq = ctx.output(0, qs.clone())?.ok_or_else(|| err("output 0 was not allocated"))?;
        let mut dk = ctx.output(1, ks.clone())?.ok_or_else(|| err("output 1 was not allocated"))?;
        let mut dv = ctx.output(2, vs.clone())?.ok_or_else(|| err("output 2 was not allocated"))?;
        let (_, dqd) = dq.try_extract_tensor_mut::<f32>()?;
        let (_, dkd) = dk.try_extract_tensor_mut::<f32>()?;
        let (_, dvd) = dv.try_extract_tensor_mut::<f32>()?;
        let (gd, cd, sd) =
            (g.try_extract_tensor::<f32>()?.1, c.try_extract_tensor::<f32>()?.1, st.try_extract_tensor::<f32>()?.1);
        self.kernel.backward(dims, qd, kd, vd, bias_view, self.scale, cd, sd, gd, dqd, dkd, dvd, &pool).map_err(kerr)
    }
}

impl Kernel for AttentionTrainKernel {
    fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
        let this = &*self;
        guarded(&this.node, || this.run(ctx))
    }
}
