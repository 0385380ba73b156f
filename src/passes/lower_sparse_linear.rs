//! `LowerSparseLinear`: int8 and fp32 linear layers with enough zeros rewritten to sparsec's
//! block-sparse kernels (`ai.sparsec::SparseLinear`, `SparseLinearF32`), with the bias, GELU and
//! residual add that follow fused into the kernel's epilogue.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::pattern::{
    const_f32_scalar, gelu_tail, other_input, producer_op, sole_consumer, stored_density_4x1, Consumers,
};
use super::{Pass, PassError, PassReport};
use crate::ir::ops::sparsec::DOMAIN;
use crate::ir::{Attribute, Attrs, DType, Graph, Model, Node, NodeId, NodeSpec, Patch, Tensor, ValueId};

/// Rewrites linear layers, found by pattern (not by name), to sparsec's sparse kernels.
///
/// - Matches, for int8 (`SparseLinear`):
///   - QDQ: `MatMul(DequantizeLinear(QuantizeLinear(x, s, zp), s, zp), DequantizeLinear(W, s_w, 0))`
///     with `W` a constant int8 `[K, N]`, `s_w` a scalar or `[N]` on axis 1, `s`/`zp` constant
///     scalars (uint8 or int8 zero point) — sparsec's own QDQ export and ORT's `quantize_static`;
///   - `MatMulInteger(DynamicQuantizeLinear(x), W, zp_x[, 0]) → Cast → Mul(·, Mul(s_x, s_w))` —
///     ORT's `quantize_dynamic`;
///   - `MatMulInteger(QuantizeLinear(x, s, zp), W, zp[, zp_w]) [→ Add(·, b)] → Cast → Mul(·, r)` with
///     `r` constant (one or `[N]`) — sparsec's `--format qoperator` and SparseML's exporter
///     (`convert_qat`: uint8 `W` with `zp_w = 128`, an int32 bias `b`). `s_w` is chosen so that
///     `s · s_w == r` in f32 where such an f32 exists (else `r / s`, within one ulp of `r`);
///     `b` is added to the exact int32 product inside the kernel (attribute `bias_i32`), as the
///     graph's int32 `Add` does, so the rescale is the graph's `Cast` and `Mul` bit for bit;
///     a following `QuantizeLinear → DequantizeLinear` pair with constant scalar parameters is
///     fused as the kernel's requantization after the rescale (`y_rounding = "quantize_linear"`:
///     a true division by the scale, as `QuantizeLinear` computes it);
///   - `DequantizeLinear(QLinearMatMul(QuantizeLinear(x, s, zp), s, zp, W, s_w, 0, s_y, zp_y), s_y, zp_y)`
///     — ORT's `quantize_static` in `QOperator` format; the node requantizes its product to
///     `s_y`, `zp_y` (attributes `y_scale`, `y_zero_point`, `y_signed`) before the bias, as
///     `QLinearMatMul` does, so the integer output is the same.
///
///   For fp32 (`SparseLinearF32`): `MatMul(x, W)` with `W` a constant f32 `[K, N]`.
///   A layer is lowered only when the `[4, 1]`-block kernel would store at most
///   `max_int8_density` (fp32: `max_f32_density`) of its weights; denser layers stay as they are,
///   on ONNX Runtime's own kernels.
/// - Emits one sparsec node per layer, named `sparsec.sparse/<MatMul>`, reading `x` and the
///   original weight initializer; new initializers hold the weight scales and the bias (zeros when
///   there is none), attributes the static activation scale and zero point. With `fuse_epilogues`, a following `Add` of a constant `[N]` bias, an exact-erf
///   GELU (`Div(√2)`/`Erf`/`Add(1)`/`Mul`/`Mul(0.5)`, or `Gelu`) and then, without GELU, an `Add`
///   of another tensor of the output's shape (the residual) are folded into the node.
///   Replaced nodes are removed; quantize/dequantize nodes left unused are for `RemoveDead`.
/// - Weights: int8 with zero point 0 (or none) as they are. A `MatMulInteger` weight of uint8 or
///   int8 with a constant zero point — one, or one per output column — becomes a new int8
///   initializer `W − zp_w` when every value fits int8 (always, for uint8 with `zp_w = 128`);
///   the integer products `(x − zp_x)·(W − zp_w)` are unchanged, so this is exact. Other zero
///   points do not match. Sparsity and the density limit count weights equal to the zero point.
/// - Assumes: the kernels compute the same integer products exactly and rescale in f32, so outputs
///   equal the QDQ graph's up to f32 rounding (and a rare one-step difference where `x / s` lands
///   within rounding of a half-integer); the `MatMulInteger → [Add] → Cast → Mul` forms equal the
///   graph bit for bit where `s · s_w == r` holds (the fused GELU is within 1.5e-6 of erf's).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LowerSparseLinear {
    #[serde(default = "default_int8_density")]
    pub max_int8_density: f64,
    #[serde(default = "default_f32_density")]
    pub max_f32_density: f64,
    #[serde(default = "yes")]
    pub fuse_epilogues: bool,
}

fn default_int8_density() -> f64 {
    0.6
}
fn default_f32_density() -> f64 {
    0.5
}
fn yes() -> bool {
    true
}

impl Default for LowerSparseLinear {
    fn default() -> Self {
        LowerSparseLinear {
            max_int8_density: default_int8_density(),
            max_f32_density: default_f32_density(),
            fuse_epilogues: true,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Act {
    Static { scale: f32, zero_point: u8 },
    Dynamic,
}

/// An integer output that `QLinearMatMul` requantizes to: scale, zero point, signedness.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Requant {
    scale: f32,
    zero_point: i64,
    signed: bool,
}

enum Weights {
    I8 { scale: Vec<f32>, act: Act, requant: Option<Requant> },
    F32,
}

/// One matched linear layer, before epilogue fusion.
struct Site {
    name: String,
    x: ValueId,
    w: ValueId,
    /// `w` converted to int8 with zero point 0, when it is not already ([`integer_weight`]).
    w_i8: Option<Vec<i8>>,
    /// An int32 bias added to the integer product before the rescale.
    int_bias: Option<Vec<i32>>,
    /// Whether a `QuantizeLinear → DequantizeLinear` pair on the output may be fused as a
    /// requantization after the rescale.
    requant_tail: bool,
    weights: Weights,
    n: usize,
    /// The value the kernel's plain product replaces.
    out: ValueId,
    dead: Vec<NodeId>,
}

#[derive(Default)]
struct Epilogue {
    /// Requantization after the rescale (`QuantizeLinear → DequantizeLinear`).
    requant: Option<Requant>,
    bias: Option<Vec<f32>>,
    gelu: bool,
    residual: Option<ValueId>,
    out: Option<ValueId>,
    dead: Vec<NodeId>,
}

/// A constant int8 `[K, N]` weight with zero point 0 (or none).
fn int8_weight(g: &Graph, w: ValueId) -> Option<(usize, usize)> {
    let t = g.constant(w).filter(|t| t.dtype == DType::I8 && t.dims.len() == 2)?;
    Some((t.dims[0] as usize, t.dims[1] as usize))
}

fn zero_or_absent(g: &Graph, v: Option<ValueId>) -> bool {
    match v {
        None => true,
        Some(v) => g.constant(v).is_some_and(|t| t.raw().iter().all(|&b| b == 0)),
    }
}

/// A constant activation zero point as its uint8 equivalent (int8 `z` is `z + 128` over `q + 128`).
fn zero_point_u8(g: &Graph, v: Option<ValueId>) -> Option<u8> {
    let Some(v) = v else { return Some(0) };
    let t = g.constant(v).filter(|t| t.numel() == 1)?;
    match t.dtype {
        DType::U8 => Some(t.raw()[0]),
        DType::I8 => Some((t.raw()[0] as i8 as i16 + 128) as u8),
        _ => None,
    }
}

/// `QuantizeLinear(x, s, zp)` with constant scalar parameters: `(x, s, zp as u8)`.
fn static_quant(g: &Graph, q: ValueId) -> Option<(ValueId, f32, u8)> {
    let (_, qn) = producer_op(g, q, "QuantizeLinear")?;
    let s = const_f32_scalar(g, qn.input(1)?)?;
    let zp = zero_point_u8(g, qn.input(2))?;
    Some((qn.input(0)?, s, zp))
}

fn qdq_site(g: &Graph, id: NodeId, mm: &Node) -> Option<Site> {
    let (a, b) = (mm.input(0)?, mm.input(1)?);
    let (_, dq_a) = producer_op(g, a, "DequantizeLinear")?;
    let s = const_f32_scalar(g, dq_a.input(1)?)?;
    let zp = zero_point_u8(g, dq_a.input(2))?;
    let (x, qs, qzp) = static_quant(g, dq_a.input(0)?)?;
    if qs != s || qzp != zp {
        return None;
    }
    let (_, dq_w) = producer_op(g, b, "DequantizeLinear")?;
    let w = dq_w.input(0)?;
    let (_, n) = int8_weight(g, w)?;
    let scale = g.constant(dq_w.input(1)?)?.as_f32s()?;
    let axis = dq_w.attr_int("axis").unwrap_or(1);
    if !(scale.len() == 1 || (scale.len() == n && (axis == 1 || axis == -1))) || !zero_or_absent(g, dq_w.input(2)) {
        return None;
    }
    Some(Site {
        name: mm.name.clone(),
        x,
        w,
        w_i8: None,
        int_bias: None,
        requant_tail: false,
        weights: Weights::I8 { scale, act: Act::Static { scale: s, zero_point: zp }, requant: None },
        n,
        out: mm.output(0)?,
        dead: vec![id],
    })
}

/// A constant `[K, N]` `MatMulInteger` weight as the kernel's int8 with zero point 0:
/// `(K, N, W − zp)` with `None` for the values when `W` is int8 and `zp` is 0 or absent (used as
/// it is), else the converted values. `None` when `W` is not a constant 8-bit matrix, `zp` is not
/// a constant of one or `N` values, or some `W − zp` does not fit int8.
fn integer_weight(g: &Graph, w: ValueId, zp: Option<ValueId>) -> Option<(usize, usize, Option<Vec<i8>>)> {
    let t = g.constant(w).filter(|t| t.dims.len() == 2)?;
    let (k, n) = (t.dims[0] as usize, t.dims[1] as usize);
    let widen = |t: &Tensor| -> Option<Vec<i16>> {
        match t.dtype {
            DType::I8 => Some(t.raw().iter().map(|&b| i16::from(b as i8)).collect()),
            DType::U8 => Some(t.raw().iter().map(|&b| i16::from(b)).collect()),
            _ => None,
        }
    };
    let values = widen(t)?;
    let zp = match zp {
        None => vec![0],
        Some(z) => {
            let zt = g.constant(z).filter(|zt| zt.dtype == t.dtype && zt.dims.len() <= 1)?;
            widen(zt).filter(|v| v.len() == 1 || v.len() == n)?
        }
    };
    if t.dtype == DType::I8 && zp.iter().all(|&z| z == 0) {
        return Some((k, n, None));
    }
    let converted = values
        .iter()
        .enumerate()
        .map(|(i, &v)| i8::try_from(v - zp[if zp.len() == 1 { 0 } else { i % n }]).ok())
        .collect::<Option<Vec<i8>>>()?;
    Some((k, n, Some(converted)))
}

/// The weight of a `MatMulInteger` node as int8 `[K, N]` with zero point 0 ([`integer_weight`]),
/// for reports: its zeros are the weights equal to the zero point. `None` when the weight is not a
/// constant 8-bit matrix with a zero point that keeps `W − zp` within int8.
pub(crate) fn matmul_integer_weight(g: &Graph, n: &Node) -> Option<Tensor> {
    let w = n.input(1)?;
    let (k, cols, converted) = integer_weight(g, w, n.input(3))?;
    Some(match converted {
        Some(v) => Tensor::from_i8(vec![k as i64, cols as i64], &v),
        None => g.constant(w)?.clone(),
    })
}

/// An f32 `s_w` with `s_x · s_w == r` in f32, searched a few ulps around `r / s_x` (the kernel
/// rescales by `s_x · s_w`, so the rescale then equals the graph's `Mul` by `r`); `r / s_x` when
/// there is none.
fn weight_scale_for(r: f32, s_x: f32) -> f32 {
    let guess = r / s_x;
    let mut c = guess;
    for _ in 0..8 {
        let p = s_x * c;
        if p == r || !p.is_finite() {
            return if p == r { c } else { guess };
        }
        c = if p < r { c.next_up() } else { c.next_down() };
    }
    guess
}

fn integer_site(g: &Graph, cons: &Consumers, id: NodeId, mmi: &Node) -> Option<Site> {
    let (xq, w) = (mmi.input(0)?, mmi.input(1)?);
    let (_, n, w_i8) = integer_weight(g, w, mmi.input(3))?;
    let mut dead = vec![id];
    let mut y = mmi.output(0)?;
    let mut int_bias = None;
    let (add_id, add, _) = sole_consumer(g, cons, y)?;
    if add.op_type == "Add" {
        let b = other_input(add, y).and_then(|b| g.constant(b))?;
        if b.dtype != DType::I32 || b.numel() != n || b.dims.len() != 1 {
            return None;
        }
        int_bias = Some(b.to_i32().ok()?);
        dead.push(add_id);
        y = add.output(0)?;
    }
    let (cast_id, cast, _) = sole_consumer(g, cons, y)?;
    if cast.op_type != "Cast" || cast.attr_int("to") != Some(DType::F32.onnx_code() as i64) {
        return None;
    }
    let (mul_id, mul, _) = sole_consumer(g, cons, cast.output(0)?)?;
    if mul.op_type != "Mul" {
        return None;
    }
    let r = other_input(mul, cast.output(0)?)?;
    let (x, weights) = if let Some((dq_id, dq)) = producer_op(g, xq, "DynamicQuantizeLinear") {
        if mmi.input(2) != dq.output(2) || dq.output(0) != Some(xq) {
            return None;
        }
        let (_, sm) = producer_op(g, r, "Mul")?;
        let s_x = dq.output(1)?;
        let ws = other_input(sm, s_x)?;
        let _ = dq_id;
        (dq.input(0)?, Weights::I8 { scale: g.constant(ws)?.as_f32s()?, act: Act::Dynamic, requant: None })
    } else {
        let (x, s, zp) = static_quant(g, xq)?;
        if zero_point_u8(g, mmi.input(2))? != zp {
            return None;
        }
        let r = g.constant(r)?.as_f32s()?;
        let scale = r.iter().map(|&v| weight_scale_for(v, s)).collect();
        (x, Weights::I8 { scale, act: Act::Static { scale: s, zero_point: zp }, requant: None })
    };
    let Weights::I8 { scale, .. } = &weights else { unreachable!() };
    if !(scale.len() == 1 || scale.len() == n) {
        return None;
    }
    dead.extend([cast_id, mul_id]);
    Some(Site {
        name: mmi.name.clone(),
        x,
        w,
        w_i8,
        int_bias,
        requant_tail: true,
        weights,
        n,
        out: mul.output(0)?,
        dead,
    })
}

/// A constant scalar zero point of either 8-bit type: `(value, signed)`.
fn zero_point_8bit(g: &Graph, v: ValueId) -> Option<(i64, bool)> {
    let t = g.constant(v).filter(|t| t.numel() == 1)?;
    match t.dtype {
        DType::U8 => Some((i64::from(t.raw()[0]), false)),
        DType::I8 => Some((i64::from(t.raw()[0] as i8), true)),
        _ => None,
    }
}

/// `DequantizeLinear(QLinearMatMul(QuantizeLinear(x, s, zp), s, zp, W, s_w, 0, s_y, zp_y), s_y, zp_y)`
/// (ORT's `quantize_static` in `QOperator` format): the kernel requantizes to `s_y`, `zp_y`.
fn qlinear_site(g: &Graph, cons: &Consumers, id: NodeId, qm: &Node) -> Option<Site> {
    let (x, s, zp) = static_quant(g, qm.input(0)?)?;
    if const_f32_scalar(g, qm.input(1)?)? != s || zero_point_u8(g, qm.input(2))? != zp {
        return None;
    }
    let w = qm.input(3)?;
    let (_, n) = int8_weight(g, w)?;
    let scale = g.constant(qm.input(4)?)?.as_f32s()?;
    if !(scale.len() == 1 || scale.len() == n) || !zero_or_absent(g, qm.input(5)) {
        return None;
    }
    let y_scale = const_f32_scalar(g, qm.input(6)?)?;
    let (y_zp, signed) = zero_point_8bit(g, qm.input(7)?)?;
    let (dq_id, dq, _) = sole_consumer(g, cons, qm.output(0)?).filter(|(_, n, _)| n.op_type == "DequantizeLinear")?;
    if const_f32_scalar(g, dq.input(1)?)? != y_scale || zero_point_8bit(g, dq.input(2)?)? != (y_zp, signed) {
        return None;
    }
    Some(Site {
        name: qm.name.clone(),
        x,
        w,
        w_i8: None,
        int_bias: None,
        requant_tail: false,
        weights: Weights::I8 {
            scale,
            act: Act::Static { scale: s, zero_point: zp },
            requant: Some(Requant { scale: y_scale, zero_point: y_zp, signed }),
        },
        n,
        out: dq.output(0)?,
        dead: vec![id, dq_id],
    })
}

fn f32_site(g: &Graph, id: NodeId, mm: &Node) -> Option<Site> {
    let (x, w) = (mm.input(0)?, mm.input(1)?);
    let t = g.constant(w).filter(|t| t.dtype == DType::F32 && t.dims.len() == 2)?;
    if g.value(x).facts.dtype != Some(DType::F32) {
        return None;
    }
    Some(Site {
        name: mm.name.clone(),
        x,
        w,
        w_i8: None,
        int_bias: None,
        requant_tail: false,
        weights: Weights::F32,
        n: t.dims[1] as usize,
        out: mm.output(0)?,
        dead: vec![id],
    })
}

fn density(g: &Graph, site: &Site) -> f64 {
    let t = g.constant(site.w).expect("matched weights are constants");
    let (k, n) = (t.dims[0] as usize, t.dims[1] as usize);
    if let Some(w) = &site.w_i8 {
        return stored_density_4x1(|kk, j| w[kk * n + j] != 0, k, n);
    }
    match t.dtype {
        DType::I8 => {
            let raw = t.raw();
            stored_density_4x1(|kk, j| raw[kk * n + j] != 0, k, n)
        }
        _ => {
            let v = t.as_f32s().unwrap_or_default();
            stored_density_4x1(|kk, j| v[kk * n + j] != 0.0, k, n)
        }
    }
}

/// `DequantizeLinear(QuantizeLinear(y, s, zp), s, zp)` with the same constant scalar 8-bit
/// parameters on both and `s` finite and positive: the requantization, the dequantized value and
/// the two nodes.
fn fake_quant_tail(g: &Graph, cons: &Consumers, y: ValueId) -> Option<(Requant, ValueId, Vec<NodeId>)> {
    let (q_id, q, _) = sole_consumer(g, cons, y).filter(|(_, n, _)| n.op_type == "QuantizeLinear")?;
    let scale = const_f32_scalar(g, q.input(1)?)?;
    let (zero_point, signed) = zero_point_8bit(g, q.input(2)?)?;
    let (dq_id, dq, _) = sole_consumer(g, cons, q.output(0)?).filter(|(_, n, _)| n.op_type == "DequantizeLinear")?;
    if !(scale.is_finite() && scale > 0.0)
        || const_f32_scalar(g, dq.input(1)?)? != scale
        || zero_point_8bit(g, dq.input(2)?)? != (zero_point, signed)
    {
        return None;
    }
    Some((Requant { scale, zero_point, signed }, dq.output(0)?, vec![q_id, dq_id]))
}

fn epilogue(g: &Graph, cons: &Consumers, site: &Site) -> Epilogue {
    let mut e = Epilogue::default();
    let mut y = site.out;
    if site.requant_tail {
        if let Some((r, out, dead)) = fake_quant_tail(g, cons, y) {
            e.requant = Some(r);
            e.dead.extend(dead);
            y = out;
        }
    }
    if let Some((id, add, _)) = sole_consumer(g, cons, y).filter(|(_, n, _)| n.op_type == "Add") {
        let b = other_input(add, y).and_then(|b| g.constant(b).filter(|t| t.numel() == site.n && t.dims.len() <= 1));
        if let Some(b) = b.and_then(|t| t.as_f32s()) {
            e.bias = Some(b);
            e.dead.push(id);
            y = add.output(0).expect("Add has an output");
        }
    }
    if let Some((out, dead)) = gelu_tail(g, cons, y) {
        e.gelu = true;
        e.dead.extend(dead);
        y = out;
    } else if let Some((id, add, _)) = sole_consumer(g, cons, y).filter(|(_, n, _)| n.op_type == "Add") {
        let r = other_input(add, y).filter(|&r| g.constant(r).is_none());
        let out = add.output(0).expect("Add has an output");
        let same_shape = |v: ValueId| g.value(v).facts.shape.clone();
        if let Some(r) = r.filter(|&r| same_shape(r).is_some() && same_shape(r) == same_shape(out)) {
            e.residual = Some(r);
            e.dead.push(id);
            y = out;
        }
    }
    e.out = Some(y);
    e
}

impl Pass for LowerSparseLinear {
    fn name(&self) -> &'static str {
        "LowerSparseLinear"
    }

    fn run(&self, model: &mut Model) -> Result<PassReport, PassError> {
        let pass = self.name();
        let mut report = PassReport { pass: pass.into(), ..PassReport::default() };
        model
            .graph
            .edit(|p: &mut Patch| -> Result<(), PassError> {
                let g = p.graph();
                let cons = g.consumers();
                // Replacements made earlier in this patch, which nodes added later must see too.
                let mut renamed: HashMap<ValueId, ValueId> = HashMap::new();
                for (id, node) in g.nodes() {
                    if !node.domain.is_empty() {
                        continue;
                    }
                    let site = match node.op_type.as_str() {
                        "MatMul" => qdq_site(g, id, node).or_else(|| f32_site(g, id, node)),
                        "MatMulInteger" => integer_site(g, &cons, id, node),
                        "QLinearMatMul" => qlinear_site(g, &cons, id, node),
                        _ => None,
                    };
                    let Some(site) = site else { continue };
                    let d = density(g, &site);
                    let limit = match site.weights {
                        Weights::I8 { .. } => self.max_int8_density,
                        Weights::F32 => self.max_f32_density,
                    };
                    if d > limit {
                        let why = format!(
                            "its weights are too dense for the sparse kernel: stored [4,1] density {d:.3} > {limit} \
                             (ONNX Runtime's dense kernels are faster there)"
                        );
                        tracing::debug!("{pass}: '{}' stays on ONNX Runtime: {why}", site.name);
                        report.kept.push((site.name.clone(), why));
                        continue;
                    }
                    let e = if self.fuse_epilogues { epilogue(g, &cons, &site) } else { Epilogue::default() };
                    if g.outputs().contains(&e.out.unwrap_or(site.out)) {
                        report.kept.push((site.name.clone(), "its output is a graph output".into()));
                        continue;
                    }
                    let (old, new) = emit(p, &site, &e, &renamed);
                    renamed.insert(old, new);
                    report.rewritten += 1;
                }
                Ok(())
            })
            .map_err(|e| e.in_pass(pass))?;
        Ok(report)
    }
}

/// Adds the sparsec node for `site`; returns (the value it replaces, its output).
fn emit(p: &mut Patch, site: &Site, e: &Epilogue, renamed: &HashMap<ValueId, ValueId>) -> (ValueId, ValueId) {
    let g = p.graph();
    let now = |v: ValueId| renamed.get(&v).copied().unwrap_or(v);
    let final_out = e.out.unwrap_or(site.out);
    let n = site.n as i64;
    let tag = format!("sparsec.sparse/{}", site.name);
    let bias = e.bias.clone().unwrap_or_else(|| vec![0.0; site.n]);
    let bias = p.add_initializer(&format!("{tag}.bias"), Tensor::from_f32(vec![n], &bias));
    let w = match &site.w_i8 {
        Some(w) => p.add_initializer(&format!("{tag}.weight"), Tensor::from_i8(vec![w.len() as i64 / n, n], w)),
        None => site.w,
    };
    let mut inputs: Vec<Option<ValueId>> = vec![Some(now(site.x)), Some(w)];
    let mut attrs = vec![Attribute::string("epilogue", if e.gelu { "gelu" } else { "none" })];
    let op = match &site.weights {
        Weights::I8 { scale, act, requant } => {
            let dims = if scale.len() == 1 { vec![] } else { vec![n] };
            inputs.push(Some(p.add_initializer(&format!("{tag}.w_scale"), Tensor::from_f32(dims, scale))));
            if let Act::Static { scale, zero_point } = act {
                attrs.push(Attribute::float("x_scale", *scale));
                attrs.push(Attribute::int("x_zero_point", i64::from(*zero_point)));
            }
            if let Some(r) = requant.or(e.requant) {
                attrs.push(Attribute::float("y_scale", r.scale));
                attrs.push(Attribute::int("y_zero_point", r.zero_point));
                attrs.push(Attribute::int("y_signed", i64::from(r.signed)));
                if requant.is_none() {
                    attrs.push(Attribute::string("y_rounding", "quantize_linear"));
                }
            }
            if let Some(b) = &site.int_bias {
                attrs.push(Attribute::ints("bias_i32", b.iter().map(|&v| i64::from(v)).collect()));
            }
            "SparseLinear"
        }
        Weights::F32 => "SparseLinearF32",
    };
    inputs.push(Some(bias));
    if let Some(r) = e.residual {
        inputs.push(Some(now(r)));
    }
    let spec =
        NodeSpec { name: tag.clone(), op_type: op.into(), domain: DOMAIN.into(), inputs, attrs, metadata: Vec::new() };
    let facts = g.value(final_out).facts.type_only();
    let y = p.op(spec, &format!("{tag}.out"), facts);
    p.replace_uses(final_out, y);
    for &d in site.dead.iter().chain(&e.dead) {
        p.remove_node(d);
    }
    (final_out, y)
}
