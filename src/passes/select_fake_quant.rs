//! `SelectFakeQuant`: a training graph's fake-quantization switch fixed on, so that each site
//! computes its quantized branch only, forward and backward.

use super::{Pass, PassError, PassReport};
use crate::ir::{Model, Patch};

/// Removes the switches of `InsertFakeQuant` sites whose flag is bound to `true`.
///
/// - Matches: each `Where` node named `sparsec.fq/<tag>/select` whose condition is a bound bool
///   scalar initializer holding `true`; its inputs are `(flag, DQ(Q(x)), x)`.
/// - Emits: every node reading the `Where`'s output reads its second input, the fake-quantized
///   value, instead; the `Where` is removed (a `Where` whose output is a graph output is left, so
///   that the output keeps its name). Nothing else changes: the
///   quantize-dequantize nodes, their scale computations and the observers' outputs stay.
/// - Assumes: nothing; the values computed are the switched graph's with the flag on, bit for bit.
///   For training: `Where`'s gradient rule sends zeros to the branch not taken, so the gradient
///   graph loses two selects per site and the zeros, and computes the same gradients. Run it after
///   `BindInputs` has bound `sparsec.quant_enabled` to `true` (a flag bound to `false` is for
///   `LowerFakeQuant`, which removes the sites).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct SelectFakeQuant {}

impl Pass for SelectFakeQuant {
    fn name(&self) -> &'static str {
        "SelectFakeQuant"
    }

    fn run(&self, model: &mut Model) -> Result<PassReport, PassError> {
        let pass = self.name();
        let mut report = PassReport { pass: pass.into(), ..PassReport::default() };
        model
            .graph
            .edit(|p: &mut Patch| -> Result<(), PassError> {
                let g = p.graph();
                for (id, n) in g.nodes() {
                    if n.op_type != "Where" || !n.domain.is_empty() {
                        continue;
                    }
                    if !(n.name.starts_with("sparsec.fq/") && n.name.ends_with("/select")) {
                        continue;
                    }
                    let (Some(flag), Some(quantized), Some(out)) = (n.input(0), n.input(1), n.output(0)) else {
                        continue;
                    };
                    let on = g.constant(flag).is_some_and(|t| {
                        t.dtype == crate::ir::DType::Bool && t.numel() == 1 && t.raw().first() == Some(&1)
                    });
                    // A switch whose output is a graph output keeps its name there: left as it is.
                    if !on || g.outputs().contains(&out) {
                        continue;
                    }
                    p.replace_uses(out, quantized);
                    p.remove_node(id);
                    report.rewritten += 1;
                }
                Ok(())
            })
            .map_err(|e| e.in_pass(pass))?;
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{DType, Dim, Facts, NodeSpec, Tensor};
    use crate::passes::{BindInputs, FakeQuantTarget, InsertFakeQuant, QUANT_ENABLED_INPUT};

    fn linear() -> Model {
        let mut m = Model { opset_imports: vec![(String::new(), 17)], ..Model::default() };
        m.graph
            .edit(|p: &mut Patch| -> Result<(), PassError> {
                let x = p.add_input("x", Facts::new(DType::F32, vec![Dim::Known(2), Dim::Known(8)]));
                let w = p.add_initializer("w", Tensor::from_f32(vec![8, 4], &[0.5; 32]));
                let y = p.op(NodeSpec::new("MatMul", "/fc/MatMul", &[x, w]), "y", Facts::default());
                p.add_output(y);
                Ok(())
            })
            .unwrap();
        let targets = vec![FakeQuantTarget { node: "/fc/MatMul".into(), module: "fc".into() }];
        let fq = InsertFakeQuant {
            targets,
            embeddings: vec![],
            quantize_activations: true,
            activation_symmetric: false,
            weight_per_channel: true,
            attention: false,
        };
        fq.apply(&mut m).unwrap();
        m
    }

    #[test]
    fn a_switch_bound_on_is_replaced_by_its_quantized_branch() {
        let mut m = linear();
        let wheres = |m: &Model| m.graph.nodes().filter(|(_, n)| n.op_type == "Where").count();
        assert_eq!(wheres(&m), 2, "one weight and one activation site");
        assert_eq!(SelectFakeQuant::default().apply(&mut m).unwrap().rewritten, 0, "a run-time flag stays");
        BindInputs { values: vec![(QUANT_ENABLED_INPUT.into(), Tensor::from_bool(vec![], &[true]))] }
            .apply(&mut m)
            .unwrap();
        assert_eq!(SelectFakeQuant::default().apply(&mut m).unwrap().rewritten, 2);
        assert_eq!(wheres(&m), 0);
        let g = &m.graph;
        let (_, mm) = g.nodes().find(|(_, n)| n.op_type == "MatMul").unwrap();
        for slot in 0..2 {
            let (_, dq) = g.producer(mm.input(slot).unwrap()).unwrap();
            assert_eq!(dq.op_type, "DequantizeLinear", "input {slot} reads the fake-quantized value");
        }
    }

    #[test]
    fn a_switch_bound_off_is_left_to_lower_fake_quant() {
        let mut m = linear();
        BindInputs { values: vec![(QUANT_ENABLED_INPUT.into(), Tensor::from_bool(vec![], &[false]))] }
            .apply(&mut m)
            .unwrap();
        assert_eq!(SelectFakeQuant::default().apply(&mut m).unwrap().rewritten, 0);
    }
}
