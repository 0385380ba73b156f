//! `LowerQOperator`: QDQ linear layers rewritten to integer operators (`MatMulInteger`), the
//! `--format qoperator` step of `sparsec export` for runtimes that do not fuse QDQ themselves.

use super::{bound, Pass, PassError, PassReport};
use crate::ir::{Attribute, Attrs, DType, Facts, Graph, Model, NodeSpec, Patch, Tensor, ValueId};

/// Rewrites each int8 QDQ `MatMul` into an integer product and one float rescale.
///
/// - Matches: each `MatMul` `M` whose input 0 is `DequantizeLinear(q_a, s_a, zp_a)` with `q_a`
///   produced by a `QuantizeLinear` and `s_a`, `zp_a` bound scalar initializers, and whose input 1
///   is `DequantizeLinear(W_q, s_w, zp_w)` with `W_q` a bound int8 `[K, N]` initializer, `s_w` a
///   scalar or `[N]` (`axis` 1) and `zp_w` zero.
/// - Emits: `MatMulInteger(q_a, W_q, zp_a)` (int32), `Cast` to f32, and `Mul` by a new
///   initializer `<W_q>.rescale` = `s_a · s_w` (scalar or `[N]`); `M`'s consumers read the `Mul`,
///   nodes are named `sparsec.qop/<M>/…`; the dequantize nodes are left for dead-code removal.
///   `QLinearMatMul` is not used: it needs an output scale, which QAT of the inputs does not give.
/// - Assumes: `K·128·255 < 2³¹`, so the int32 accumulation is exact; the outputs then equal the
///   QDQ graph's up to f32 rounding of the sum and of `s_a · s_w`.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct LowerQOperator {}

struct Site {
    q_a: ValueId,
    zp_a: ValueId,
    s_a: f32,
    w_q: ValueId,
    s_w: Vec<f32>,
    n: i64,
}

fn site(g: &Graph, a: ValueId, b: ValueId) -> Option<Site> {
    let (_, dq_a) = g.producer(a).filter(|(_, n)| n.op_type == "DequantizeLinear")?;
    let (q_a, s_a, zp_a) = (dq_a.input(0)?, dq_a.input(1)?, dq_a.input(2)?);
    g.producer(q_a).filter(|(_, n)| n.op_type == "QuantizeLinear")?;
    let s_a = bound(g, s_a).filter(|t| t.numel() == 1)?.as_f32s()?[0];
    bound(g, zp_a).filter(|t| t.numel() == 1 && matches!(t.dtype, DType::U8 | DType::I8))?;
    let (_, dq_w) = g.producer(b).filter(|(_, n)| n.op_type == "DequantizeLinear")?;
    let w_q = dq_w.input(0)?;
    let w = bound(g, w_q).filter(|t| t.dtype == DType::I8 && t.dims.len() == 2)?;
    let n = w.dims[1];
    let s_w = bound(g, dq_w.input(1)?)?.as_f32s()?;
    let per_channel = s_w.len() as i64 == n && dq_w.attr_int("axis").unwrap_or(1) == 1;
    if !(s_w.len() == 1 || per_channel) || (w.dims[0] * 128 * 255) >= i64::from(i32::MAX) {
        return None;
    }
    if let Some(zp_w) = dq_w.input(2) {
        bound(g, zp_w).filter(|t| t.raw().iter().all(|&x| x == 0))?;
    }
    Some(Site { q_a, zp_a, s_a, w_q, s_w, n })
}

impl Pass for LowerQOperator {
    fn name(&self) -> &'static str {
        "LowerQOperator"
    }

    fn run(&self, model: &mut Model) -> Result<PassReport, PassError> {
        let pass = self.name();
        let mut report = PassReport { pass: pass.into(), ..PassReport::default() };
        model
            .graph
            .edit(|p: &mut Patch| -> Result<(), PassError> {
                let g = p.graph();
                for (id, m) in g.nodes() {
                    if m.op_type != "MatMul" {
                        continue;
                    }
                    let (Some(a), Some(b), Some(out)) = (m.input(0), m.input(1), m.output(0)) else { continue };
                    let Some(s) = site(g, a, b) else { continue };
                    let facts = g.value(out).facts.type_only();
                    let w_name = g.value(s.w_q).name.clone();
                    let rescale: Vec<f32> = s.s_w.iter().map(|&w| s.s_a * w).collect();
                    let rescale_dims = if rescale.len() == 1 { vec![] } else { vec![s.n] };
                    let rv = p.add_initializer(&format!("{w_name}.rescale"), Tensor::from_f32(rescale_dims, &rescale));
                    let tag = format!("sparsec.qop/{}", m.name);
                    let acc = p.op(
                        NodeSpec::new("MatMulInteger", format!("{tag}/matmul"), &[s.q_a, s.w_q, s.zp_a]),
                        &format!("{}.int32", m.name),
                        Facts { dtype: Some(DType::I32), ..facts.clone() },
                    );
                    let acc_f = p.op(
                        NodeSpec::new("Cast", format!("{tag}/cast"), &[acc])
                            .attr(Attribute::int("to", DType::F32.onnx_code() as i64)),
                        &format!("{}.int32_f32", m.name),
                        facts.clone(),
                    );
                    let y = p.op(
                        NodeSpec::new("Mul", format!("{tag}/rescale"), &[acc_f, rv]),
                        &format!("{}.rescaled", m.name),
                        facts,
                    );
                    p.replace_uses(out, y);
                    p.remove_node(id);
                    report.rewritten += 1;
                }
                Ok(())
            })
            .map_err(|e| e.in_pass(pass))?;
        Ok(report)
    }
}
