//! `LowerFakeQuant`: bound fake quantization lowered to ONNX QDQ form.

use super::{bound, is_row_lookup, Pass, PassError, PassReport, MIN_SCALE};
use std::collections::HashMap;

use crate::ir::{Attribute, Attrs, DType, Facts, Graph, Model, Node, NodeId, NodeSpec, Patch, Tensor, ValueId};

/// Lowers each `InsertFakeQuant` site whose switch is a bound constant, for `sparsec export`.
///
/// - Matches: each `Where` node named `sparsec.fq/<tag>/select` whose condition is a bound bool
///   initializer; its inputs are `(flag, DQ(Q(x)), x)`.
/// - Emits, when the switch is off: consumers read `x`; the whole site becomes dead. When on, for
///   a weight site (`x` a bound f32 initializer, the `sparsec.fq/<tag>/quantize` node with or
///   without `axis`): the int8 weight `<tag>.int8 = saturate(round_half_even(x / s))` with
///   `s = max(max|x| / 127.5, eps)` per channel (or per tensor), exactly the values the site's
///   QuantizeLinear computed, as an initializer with its scale `<tag>.scale` and zero point, and
///   one `DequantizeLinear` node `sparsec.qdq/<tag>` that consumers read instead of the `Where`;
///   a per-tensor site read only by `Gather` on input 0 (an embedding table) is instead looked up
///   first, `DequantizeLinear(Gather(<tag>.int8, ids))` per `Gather`, so that only the gathered
///   rows are dequantized at run time.
///   For an activation site (scale and zero point bound constants): consumers read the site's own
///   `DequantizeLinear(QuantizeLinear(x))` output. Leftover nodes are left for dead-code removal.
/// - Assumes: with the switch on, the graph's outputs are unchanged bit for bit (the dequantized
///   int8 weights equal the fake-quantized ones); ONNX Runtime then fuses QDQ pairs into integer
///   kernels (which changes float rounding, as any int8 lowering does).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct LowerFakeQuant {}

/// Per-channel (or per-tensor when `axis` is `None`) symmetric int8 quantization of a 2-D weight.
pub fn quantize_weight(w: &[f32], dims: &[i64], axis: Option<usize>) -> (Vec<i8>, Vec<f32>) {
    let (rows, cols) =
        (dims.first().copied().unwrap_or(1).max(0) as usize, dims.get(1).copied().unwrap_or(1).max(0) as usize);
    let channels = match axis {
        Some(0) => rows,
        Some(_) => cols,
        None => 1,
    };
    let channel = |i: usize| match axis {
        Some(0) => i / cols,
        Some(_) => i % cols,
        None => 0,
    };
    let mut absmax = vec![0f32; channels];
    for (i, &x) in w.iter().enumerate() {
        let c = channel(i);
        absmax[c] = absmax[c].max(x.abs());
    }
    let scales: Vec<f32> = absmax.iter().map(|&m| (m / 127.5).max(MIN_SCALE)).collect();
    let q = w
        .iter()
        .enumerate()
        .map(|(i, &x)| (x / scales[channel(i)]).round_ties_even().clamp(-128.0, 127.0) as i8)
        .collect();
    (q, scales)
}

impl Pass for LowerFakeQuant {
    fn name(&self) -> &'static str {
        "LowerFakeQuant"
    }

    fn run(&self, model: &mut Model) -> Result<PassReport, PassError> {
        let pass = self.name();
        let mut report = PassReport { pass: pass.into(), ..PassReport::default() };
        model
            .graph
            .edit(|p: &mut Patch| {
                let g = p.graph();
                let consumers = g.consumers();
                for (id, n) in g.nodes() {
                    let Some(tag) = n.name.strip_prefix("sparsec.fq/").and_then(|s| s.strip_suffix("/select")) else {
                        continue;
                    };
                    Site { g, pass, id, n, tag }.lower(p, &consumers)?;
                    report.rewritten += 1;
                }
                Ok(())
            })
            .map_err(|e: PassError| e.in_pass(pass))?;
        Ok(report)
    }
}

/// One `sparsec.fq/<tag>/select` node being lowered.
struct Site<'g> {
    g: &'g Graph,
    pass: &'static str,
    id: NodeId,
    n: &'g Node,
    tag: &'g str,
}

impl Site<'_> {
    fn err(&self, message: String) -> PassError {
        PassError::Target { pass: self.pass, target: self.n.name.clone(), message }
    }

    /// The switch read: off, consumers read `x`; on, they read the activation site's own
    /// dequantized output, or the weight lowered to int8.
    fn lower(&self, p: &mut Patch, consumers: &HashMap<ValueId, Vec<(NodeId, usize)>>) -> Result<(), PassError> {
        let (g, n, id) = (self.g, self.n, self.id);
        let (Some(flag), Some(dq), Some(x), Some(out)) = (n.input(0), n.input(1), n.input(2), n.output(0)) else {
            return Err(self.err("expects Where(flag, fake-quantized, original)".into()));
        };
        let on = bound(g, flag).and_then(|t| t.raw().first().copied()).ok_or_else(|| {
            self.err(format!("the switch '{}' is not bound: export a trained folder", g.value(flag).name))
        })? != 0;
        if !on {
            p.replace_uses(out, x);
            p.remove_node(id);
            return Ok(());
        }
        let Some(wt) = bound(g, x) else {
            let (_, dqn) = g.producer(dq).ok_or_else(|| self.err("no DequantizeLinear".into()))?;
            for s in dqn.inputs.iter().skip(1).flatten() {
                if bound(g, *s).is_none() {
                    return Err(self.err(format!("'{}' is not bound", g.value(*s).name)));
                }
            }
            p.replace_uses(out, dq);
            p.remove_node(id);
            return Ok(());
        };
        self.lower_weight(p, consumers, x, out, wt)
    }

    /// A bound weight `x` (the select's output `out`) as int8 initializers and `DequantizeLinear`.
    fn lower_weight(
        &self,
        p: &mut Patch,
        consumers: &HashMap<ValueId, Vec<(NodeId, usize)>>,
        x: ValueId,
        out: ValueId,
        wt: &Tensor,
    ) -> Result<(), PassError> {
        let (g, tag) = (self.g, self.tag);
        let (_, qn) = g
            .nodes()
            .find(|(_, q)| q.name == format!("sparsec.fq/{tag}/quantize"))
            .ok_or_else(|| self.err("its QuantizeLinear node is missing".into()))?;
        let w = wt.as_f32s().ok_or_else(|| self.err("the weight is not f32".into()))?;
        let axis = match qn.attr_int("axis") {
            None => None,
            Some(_) if wt.dims.len() != 2 => {
                return Err(self.err(format!("per-channel weight of shape {:?} is not 2-D", wt.dims)))
            }
            Some(a @ -2..=1) => Some(a.rem_euclid(2) as usize),
            Some(a) => return Err(self.err(format!("axis {a} is out of range for a 2-D weight"))),
        };
        let (q, scales) = quantize_weight(&w, &wt.dims, axis);
        let qv = p.add_initializer(&format!("{tag}.int8"), Tensor::from_i8(wt.dims.clone(), &q));
        let (sv, zv) = match axis {
            Some(_) => (
                p.add_initializer(&format!("{tag}.scale"), Tensor::from_f32(vec![scales.len() as i64], &scales)),
                p.add_initializer(
                    &format!("{tag}.zero_point"),
                    Tensor::from_i8(vec![scales.len() as i64], &vec![0; scales.len()]),
                ),
            ),
            None => (
                p.add_initializer(&format!("{tag}.scale"), Tensor::from_f32(vec![], &scales)),
                p.add_initializer(&format!("{tag}.zero_point"), Tensor::from_i8(vec![], &[0])),
            ),
        };
        let readers = consumers.get(&out).map(Vec::as_slice).unwrap_or(&[]);
        if axis.is_none() && !readers.is_empty() && readers.iter().all(|&(r, s)| is_row_lookup(g, r, s)) {
            return self.lower_row_lookups(p, readers, qv, sv, zv);
        }
        let mut spec = NodeSpec::new("DequantizeLinear", format!("sparsec.qdq/{tag}"), &[qv, sv, zv]);
        if let Some(a) = axis {
            spec = spec.attr(Attribute::int("axis", a as i64));
        }
        let deq = p.op(spec, &format!("{tag}.dequantized"), g.value(x).facts.clone());
        p.replace_uses(out, deq);
        p.remove_node(self.id);
        Ok(())
    }

    /// A per-tensor table read only by row lookups: each `Gather` reads the int8 table and
    /// dequantizes its rows.
    fn lower_row_lookups(
        &self,
        p: &mut Patch,
        readers: &[(NodeId, usize)],
        qv: ValueId,
        sv: ValueId,
        zv: ValueId,
    ) -> Result<(), PassError> {
        let (g, tag) = (self.g, self.tag);
        for &(r, _) in readers {
            let rn = g.node(r);
            let (Some(ids), Some(rows)) = (rn.input(1), rn.output(0)) else {
                return Err(self.err(format!("Gather '{}' has no indices or output", rn.name)));
            };
            let facts = g.value(rows).facts.type_only();
            let q_rows = p.op(
                NodeSpec::new("Gather", format!("sparsec.qdq/{tag}/{}/gather", rn.name), &[qv, ids]),
                &format!("{tag}.int8_rows"),
                Facts { dtype: Some(DType::I8), ..facts.clone() },
            );
            let deq = p.op(
                NodeSpec::new(
                    "DequantizeLinear",
                    format!("sparsec.qdq/{tag}/{}/dequantize", rn.name),
                    &[q_rows, sv, zv],
                ),
                &format!("{tag}.rows"),
                facts,
            );
            p.replace_uses(rows, deq);
            p.remove_node(r);
        }
        p.remove_node(self.id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_channel_int8_matches_the_fake_quant_formula() {
        // [in=2, out=3] MatMul layout, channels along axis 1. Each channel's extreme lands on the
        // ±127.5 tie of torch's symmetric scale; f32 division decides the side, clamped to int8.
        let w = [1.0f32, -0.5, 0.0, -2.55, 0.25, 0.0];
        let (q, s) = quantize_weight(&w, &[2, 3], Some(1));
        assert_eq!(s, vec![2.55 / 127.5, 0.5 / 127.5, MIN_SCALE]);
        assert_eq!((q[0], q[2], q[4], q[5]), (50, 0, 64, 0));
        assert!([-128, -127].contains(&q[1]) && [-128, -127].contains(&q[3]), "{q:?}");
        for (i, &x) in w.iter().enumerate() {
            let want = (x / s[i % 3]).round_ties_even().clamp(-128.0, 127.0) as i8;
            assert_eq!(q[i], want, "element {i}");
        }
        let (qt, st) = quantize_weight(&w, &[2, 3], None);
        assert_eq!(st, vec![2.55 / 127.5]);
        assert_eq!(qt[4], (0.25f32 / st[0]).round_ties_even() as i8);
    }
}
