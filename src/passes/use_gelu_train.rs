//! `UseGeluTrain`: the exact-erf GELUs of a graph about to be differentiated rewritten to sparsec's
//! training operator `ai.sparsec::GeluTrain`, whose gradient rule (`autodiff::rules::gelu_train`)
//! emits one `GeluTrainGrad`: one pass each way, and one tensor kept per GELU (its input) instead
//! of the `Div/Erf/Add/Mul/Mul` chain's intermediates and their gradients' accumulation.

use serde::{Deserialize, Serialize};

use super::pattern::gelu_tail;
use super::{Pass, PassError, PassReport};
use crate::ir::ops::gelu_train::GELU_TRAIN;
use crate::ir::ops::sparsec::DOMAIN;
use crate::ir::{Model, NodeSpec, Patch, ValueId};

/// Rewrites each exact-erf GELU of an f32 value.
///
/// - Matches: what `pattern::gelu_tail` matches (torch's legacy `Mul(Mul(x, 1 + erf(x/√2)), 0.5)`,
///   the dynamo exporter's `Mul(x, Mul(0.5, 1 + erf(x/√2)))`, or `Gelu(x)` with
///   `approximate = "none"`), the intermediate values read by the chain alone.
/// - Emits: `ai.sparsec::GeluTrain(x)` writing the chain's output value, named `<scope>/GeluTrain`
///   after the chain's first node (or `<its name>_GeluTrain` when it has no scope) with its
///   metadata; the chain is removed. The model gains the `ai.sparsec` opset import.
/// - Assumes: the kernel's erf (`sparsec_kernels::gelu`, absolute error below 4e-7) stands in for
///   ONNX Runtime's: outputs differ from the chain's by about 1e-6 absolute at most, and the
///   gradient is the analytic derivative of the exact GELU.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct UseGeluTrain {}

impl Pass for UseGeluTrain {
    fn name(&self) -> &'static str {
        "UseGeluTrain"
    }

    fn run(&self, model: &mut Model) -> Result<PassReport, PassError> {
        let pass = self.name();
        let mut report = PassReport { pass: pass.into(), ..PassReport::default() };
        model
            .graph
            .edit(|p: &mut Patch| -> Result<(), PassError> {
                let g = p.graph();
                let consumers = g.consumers();
                let candidates: Vec<ValueId> = g
                    .nodes()
                    .flat_map(|(_, n)| n.outputs.iter().flatten().copied().collect::<Vec<_>>())
                    .chain(g.inputs().iter().copied())
                    .chain(g.initializers().keys().copied())
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect();
                for x in candidates {
                    if g.value(x).facts.dtype != Some(crate::ir::DType::F32) {
                        continue;
                    }
                    let Some((out, dead)) = gelu_tail(g, &consumers, x) else { continue };
                    let first = &g.node(dead[0]).name;
                    let name = match first.rsplit_once('/') {
                        Some((scope, _)) if !scope.is_empty() => format!("{scope}/GeluTrain"),
                        _ => format!("{first}_GeluTrain"),
                    };
                    let mut spec = NodeSpec::new(GELU_TRAIN, name, &[x]).domain(DOMAIN);
                    spec.metadata = g.node(dead[0]).metadata.clone();
                    for &d in &dead {
                        p.remove_node(d);
                    }
                    p.add_node_with_outputs(spec, vec![Some(out)]);
                    report.rewritten += 1;
                }
                Ok(())
            })
            .map_err(|e| e.in_pass(pass))?;
        if report.rewritten > 0 && !model.opset_imports.iter().any(|(d, _)| d == DOMAIN) {
            model.opset_imports.push((DOMAIN.to_string(), 1));
        }
        Ok(report)
    }
}
