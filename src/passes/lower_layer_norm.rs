//! `LowerLayerNorm`: ONNX `LayerNormalization` over the last axis rewritten to sparsec's
//! `ai.sparsec::LayerNorm`, which computes ONNX Runtime's CPU arithmetic bit for bit, several rows
//! at a time (ORT's own kernel sums each row in a scalar loop).

use serde::{Deserialize, Serialize};

use super::{Pass, PassError, PassReport};
use crate::ir::ops::sparsec::DOMAIN;
use crate::ir::{Attribute, Attrs, DType, Model, NodeSpec, Patch};

/// Rewrites each last-axis f32 `LayerNormalization` whose statistics outputs are unused.
///
/// - Matches: a `LayerNormalization` (default domain) with an f32 input of known rank `r`, `axis`
///   −1 or `r − 1`, a scale input, and outputs 1 (`Mean`) and 2 (`InvStdDev`) absent or read by no
///   node and no graph output.
/// - Emits: `ai.sparsec::LayerNorm(X, scale, bias?)` named `sparsec.ln/<node>`, with the node's
///   `epsilon` (default 1e-5), writing the same output value; the original node is removed.
/// - Assumes: ONNX Runtime's CPU `LayerNormalization` semantics, which the kernel reproduces bit
///   for bit (sums of `x` and `x·x` in index order in f32, `sqrt(mean(x²) − mean² + ε)`, a true
///   division); `stash_type` does not change ORT's f32 arithmetic for an f32 input.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LowerLayerNorm {}

impl Pass for LowerLayerNorm {
    fn name(&self) -> &'static str {
        "LowerLayerNorm"
    }

    fn run(&self, model: &mut Model) -> Result<PassReport, PassError> {
        let pass = self.name();
        let mut report = PassReport { pass: pass.into(), ..PassReport::default() };
        model
            .graph
            .edit(|p: &mut Patch| -> Result<(), PassError> {
                let g = p.graph();
                let consumers = g.consumers();
                let used = |v| g.outputs().contains(&v) || consumers.get(&v).is_some_and(|c| !c.is_empty());
                for (id, n) in g.nodes() {
                    if n.op_type != "LayerNormalization" || !n.domain.is_empty() {
                        continue;
                    }
                    let (Some(x), Some(scale), Some(y)) = (n.input(0), n.input(1), n.output(0)) else { continue };
                    let facts = &g.value(x).facts;
                    let Some(rank) = facts.rank() else { continue };
                    let axis = n.attr_int("axis").unwrap_or(-1);
                    if facts.dtype != Some(DType::F32) || rank == 0 || !(axis == -1 || axis == rank as i64 - 1) {
                        continue;
                    }
                    if (1..3).any(|slot| n.output(slot).is_some_and(used)) {
                        continue;
                    }
                    let epsilon = n.attr_float("epsilon").unwrap_or(1e-5);
                    let mut inputs = vec![x, scale];
                    inputs.extend(n.input(2));
                    let spec = NodeSpec::new("LayerNorm", format!("sparsec.ln/{}", n.name), &inputs)
                        .domain(DOMAIN)
                        .attr(Attribute::float("epsilon", epsilon));
                    p.remove_node(id);
                    p.add_node_with_outputs(spec, vec![Some(y)]);
                    report.rewritten += 1;
                }
                Ok(())
            })
            .map_err(|e| e.in_pass(pass))?;
        Ok(report)
    }
}
