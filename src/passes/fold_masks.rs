//! `FoldMasks`: pruning masks multiplied into the weights.

use super::{bound, Pass, PassError, PassReport};
use crate::ir::{Model, Patch, Tensor};

/// Folds each bound mask into its weight, the first lowering step of `sparsec export`.
///
/// - Matches: each `Mul` node named `sparsec.mask/<param>` (inserted by `InsertMasks`) whose two
///   inputs `W` and `M` are initializers that are not graph inputs (the trained values bound).
/// - Emits: `W ⊙ M` as the new value of `W` (a new initializer `<param>.pruned` when something
///   else still reads `W`); every consumer of the product (and a graph output that was the
///   product) reads it; the `Mul` is removed; `M` is left for dead-code removal.
/// - Assumes: the product `W ⊙ M` is exactly what the graph computed (f32 multiply, same order),
///   so outputs are unchanged bit for bit.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct FoldMasks {}

impl Pass for FoldMasks {
    fn name(&self) -> &'static str {
        "FoldMasks"
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
                    let Some(param) = n.name.strip_prefix("sparsec.mask/") else { continue };
                    if n.op_type != "Mul" {
                        continue;
                    }
                    let err = |message: String| PassError::Target { pass, target: n.name.clone(), message };
                    let (Some(w), Some(m), Some(out)) = (n.input(0), n.input(1), n.output(0)) else {
                        return Err(err("expects Mul(W, mask) with one output".into()));
                    };
                    let (Some(wt), Some(mt)) = (bound(g, w), bound(g, m)) else {
                        return Err(err(format!(
                            "'{}' or '{}' is not a bound constant: export a trained folder (or use --one-shot)",
                            g.value(w).name,
                            g.value(m).name
                        )));
                    };
                    let (Some(wv), Some(mv)) = (wt.as_f32s(), mt.as_f32s()) else {
                        return Err(err("weight and mask must be f32".into()));
                    };
                    if wv.len() != mv.len() {
                        return Err(err(format!("weight has {} elements, mask {}", wv.len(), mv.len())));
                    }
                    let folded: Vec<f32> = wv.iter().zip(&mv).map(|(a, b)| a * b).collect();
                    let t = Tensor::from_f32(wt.dims.clone(), &folded);
                    let shared = consumers.get(&w).is_some_and(|c| c.len() > 1) || g.outputs().contains(&w);
                    let target = if shared {
                        p.add_initializer(&format!("{param}.pruned"), t)
                    } else {
                        p.set_initializer(w, t);
                        w
                    };
                    p.replace_uses(out, target);
                    p.remove_node(id);
                    report.rewritten += 1;
                }
                Ok(())
            })
            .map_err(|e: PassError| e.in_pass(pass))?;
        Ok(report)
    }
}
