//! `InsertMasks`: pruning masks as graph inputs.

use serde::{Deserialize, Serialize};

use super::{Pass, PassError, PassReport};
use crate::ir::{DType, Dim, Facts, Model, NodeSpec, Patch};

/// One weight to mask.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MaskTarget {
    /// The PyTorch parameter name (`bert.encoder.layer.0.attention.self.query.weight`); the mask
    /// input is named `<param>.mask`.
    pub param: String,
    /// The initializer holding the weight.
    pub initializer: String,
}

/// Masks weights with a multiplicative mask fed at run time.
///
/// - Matches: each target initializer `W` (f32, any rank).
/// - Emits: a graph input `<param>.mask` (f32, exactly `W`'s stored shape, i.e. the ONNX layout,
///   `[in, out]` for MatMul weights) and a node `Mul(W, mask)` named `sparsec.mask/<param>`;
///   every former consumer of `W` (and any graph output that was `W`) now reads the product.
///   `W` itself stays an initializer, so its value and name are unchanged.
/// - Assumes: `W` is an initializer of dtype f32. With a mask of ones the graph computes exactly
///   what it did before (x * 1.0 == x in IEEE arithmetic).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InsertMasks {
    pub targets: Vec<MaskTarget>,
}

impl Pass for InsertMasks {
    fn name(&self) -> &'static str {
        "InsertMasks"
    }

    fn run(&self, model: &mut Model) -> Result<PassReport, PassError> {
        let pass = self.name();
        let mut report = PassReport { pass: pass.into(), ..PassReport::default() };
        model
            .graph
            .edit(|p: &mut Patch| {
                let g = p.graph();
                for t in &self.targets {
                    let err = |message: String| PassError::Target { pass, target: t.param.clone(), message };
                    let w = g
                        .value_by_name(&t.initializer)
                        .ok_or_else(|| err(format!("no value named '{}'", t.initializer)))?;
                    let tensor =
                        g.initializer(w).ok_or_else(|| err(format!("'{}' is not an initializer", t.initializer)))?;
                    if tensor.dtype != DType::F32 {
                        return Err(err(format!("weight has dtype {}, expected f32", tensor.dtype)));
                    }
                    let facts = Facts::new(DType::F32, tensor.dims.iter().map(|&d| Dim::Known(d)).collect());
                    let name = format!("{}.mask", t.param);
                    if g.value_by_name(&name).is_some() {
                        return Err(err(format!("a value named '{name}' already exists (masks inserted twice?)")));
                    }
                    let mask = p.add_input(&name, facts.clone());
                    let (node, outs) = p.add_node(
                        NodeSpec::new("Mul", format!("sparsec.mask/{}", t.param), &[w, mask]),
                        &[(&format!("{}.masked", t.param), facts)],
                    );
                    p.replace_uses_except(w, outs[0], &[node]);
                    report.new_inputs.push(name);
                    report.rewritten += 1;
                }
                Ok(())
            })
            .map_err(|e: PassError| e.in_pass(pass))?;
        Ok(report)
    }
}

impl From<crate::ir::IrError> for PassError {
    fn from(source: crate::ir::IrError) -> PassError {
        PassError::Ir { pass: "patch", source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Graph, Tensor};

    fn tiny() -> Model {
        let mut m = Model { opset_imports: vec![(String::new(), 17)], ..Model::default() };
        m.graph = Graph::default();
        m.graph
            .edit(|p: &mut Patch| -> Result<(), PassError> {
                let x = p.add_input("x", Facts::new(DType::F32, vec![Dim::Known(1), Dim::Known(2)]));
                let w = p.add_initializer("w", Tensor::from_f32(vec![2, 3], &[1., 2., 3., 4., 5., 6.]));
                let y = p.op(NodeSpec::new("MatMul", "mm", &[x, w]), "y", Facts::default());
                p.add_output(y);
                Ok(())
            })
            .unwrap();
        m
    }

    #[test]
    fn weight_feeds_matmul_through_mul_with_new_mask_input() {
        let mut m = tiny();
        let pass = InsertMasks { targets: vec![MaskTarget { param: "fc.weight".into(), initializer: "w".into() }] };
        let r = pass.run(&mut m).unwrap();
        assert_eq!(r.new_inputs, vec!["fc.weight.mask"]);
        let g = &m.graph;
        let mask = g.value_by_name("fc.weight.mask").unwrap();
        assert!(g.inputs().contains(&mask));
        assert_eq!(g.value(mask).facts.shape, Some(vec![Dim::Known(2), Dim::Known(3)]));
        let (_, mm) = g.nodes().find(|(_, n)| n.op_type == "MatMul").unwrap();
        let (_, mul) = g.producer(mm.input(1).unwrap()).unwrap();
        assert_eq!(mul.op_type, "Mul");
        assert_eq!(mul.inputs, vec![g.value_by_name("w"), Some(mask)]);
        assert!(g.is_initializer(g.value_by_name("w").unwrap()));
        assert!(pass.run(&mut m).is_err(), "inserting twice must fail");
    }
}
