//! `QuantizeEmbeddings`: weight-only int8 storage for embedding tables, an optional step of
//! `sparsec export` that shrinks the file where the word-embedding table dominates it.

use super::{bound, is_row_lookup, quantize_weight, Pass, PassError, PassReport};
use crate::ir::{Attribute, DType, Dim, Facts, Model, NodeSpec, Patch, Tensor};

/// Stores each embedding table as int8 with one scale per row, dequantized after the lookup.
///
/// - Matches: every f32 rank-2 initializer `E` (not a graph input) whose every reader is a
///   `Gather` on input 0 with `axis` 0, and that has at least `min_rows` rows (0: any).
/// - Emits: `<E>.int8` (int8, same shape) and `<E>.row_scale` (f32 `[rows, 1]`), per row
///   `s = max(max|row| / 127.5, eps)` and `q = saturate(round_half_even(row / s))` (the weight
///   scheme of `InsertFakeQuant`, per output row); each `Gather(E, ids)` becomes
///   `Mul(Cast<f32>(Gather(<E>.int8, ids)), Gather(<E>.row_scale, ids))`, nodes named
///   `sparsec.qemb/<E>/…`; `E` is left for dead-code removal.
/// - Assumes: nothing about the graph; outputs change exactly as if each table entry had been
///   replaced by `q·s` (error at most `s/2` per entry), which the caller must measure (F1).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct QuantizeEmbeddings {
    #[serde(default)]
    pub min_rows: i64,
}

impl Pass for QuantizeEmbeddings {
    fn name(&self) -> &'static str {
        "QuantizeEmbeddings"
    }

    fn run(&self, model: &mut Model) -> Result<PassReport, PassError> {
        let pass = self.name();
        let mut report = PassReport { pass: pass.into(), ..PassReport::default() };
        model
            .graph
            .edit(|p: &mut Patch| -> Result<(), PassError> {
                let g = p.graph();
                let consumers = g.consumers();
                for (&v, t) in g.initializers() {
                    if t.dtype != DType::F32 || t.dims.len() != 2 || t.dims[0] < self.min_rows || bound(g, v).is_none()
                    {
                        continue;
                    }
                    let readers = consumers.get(&v).map(Vec::as_slice).unwrap_or(&[]);
                    if readers.is_empty() || !readers.iter().all(|&(n, slot)| is_row_lookup(g, n, slot)) {
                        continue;
                    }
                    let name = g.value(v).name.clone();
                    let err = |message: String| PassError::Target { pass, target: name.clone(), message };
                    let w = t.as_f32s().ok_or_else(|| err("is not f32".into()))?;
                    let (q, scales) = quantize_weight(&w, &t.dims, Some(0));
                    let qv = p.add_initializer(&format!("{name}.int8"), Tensor::from_i8(t.dims.clone(), &q));
                    let sv =
                        p.add_initializer(&format!("{name}.row_scale"), Tensor::from_f32(vec![t.dims[0], 1], &scales));
                    for &(n, _) in readers {
                        let node = g.node(n);
                        let (Some(ids), Some(out)) = (node.input(1), node.output(0)) else {
                            return Err(err(format!("Gather '{}' has no indices or output", node.name)));
                        };
                        let facts = g.value(out).facts.type_only();
                        let scale_facts = Facts {
                            dtype: Some(DType::F32),
                            shape: g.value(ids).facts.shape.clone().map(|mut s| {
                                s.push(Dim::Known(1));
                                s
                            }),
                            ..Facts::default()
                        };
                        let tag = format!("sparsec.qemb/{name}/{}", node.name);
                        let rows = p.op(
                            NodeSpec::new("Gather", format!("{tag}/gather"), &[qv, ids]),
                            &format!("{name}.int8_rows"),
                            Facts { dtype: Some(DType::I8), ..facts.clone() },
                        );
                        let rows_f = p.op(
                            NodeSpec::new("Cast", format!("{tag}/cast"), &[rows])
                                .attr(Attribute::int("to", DType::F32.onnx_code() as i64)),
                            &format!("{name}.int8_rows_f32"),
                            facts.clone(),
                        );
                        let row_scales = p.op(
                            NodeSpec::new("Gather", format!("{tag}/gather_scale"), &[sv, ids]),
                            &format!("{name}.row_scales"),
                            scale_facts,
                        );
                        let deq = p.op(
                            NodeSpec::new("Mul", format!("{tag}/dequantize"), &[rows_f, row_scales]),
                            &format!("{name}.dequantized_rows"),
                            facts,
                        );
                        p.replace_uses(out, deq);
                        p.remove_node(n);
                    }
                    report.rewritten += 1;
                }
                Ok(())
            })
            .map_err(|e| e.in_pass(pass))?;
        Ok(report)
    }
}
