//! `ExposeTrainableParams`: trainable parameters become graph inputs.

use serde::{Deserialize, Serialize};

use super::{Pass, PassError, PassReport};
use crate::ir::{Model, Patch};

/// Makes parameters overridable at run time so the trainer can feed updated weights.
///
/// - Matches: each named initializer.
/// - Emits: the initializer listed among the graph inputs (its value stays the default, so a run
///   that does not feed it computes what the original graph did); no nodes.
/// - Assumes: the names are initializers; exposing one twice is a no-op.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExposeTrainableParams {
    pub initializers: Vec<String>,
}

impl Pass for ExposeTrainableParams {
    fn name(&self) -> &'static str {
        "ExposeTrainableParams"
    }

    fn run(&self, model: &mut Model) -> Result<PassReport, PassError> {
        let pass = self.name();
        let mut report = PassReport { pass: pass.into(), ..PassReport::default() };
        model.graph.edit(|p: &mut Patch| {
            let g = p.graph();
            for name in &self.initializers {
                let err = |message: &str| PassError::Target { pass, target: name.clone(), message: message.into() };
                let v = g.value_by_name(name).ok_or_else(|| err("no value with this name"))?;
                if !g.is_initializer(v) {
                    return Err(err("is not an initializer"));
                }
                if !g.inputs().contains(&v) {
                    p.expose_as_input(v);
                    report.new_inputs.push(name.clone());
                    report.rewritten += 1;
                }
            }
            Ok(())
        })?;
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{DType, Dim, Facts, NodeSpec, Tensor};

    #[test]
    fn initializer_becomes_an_input_with_its_default_kept() {
        let mut m = Model { opset_imports: vec![(String::new(), 17)], ..Model::default() };
        m.graph
            .edit(|p: &mut Patch| -> Result<(), PassError> {
                let x = p.add_input("x", Facts::new(DType::F32, vec![Dim::Known(2)]));
                let b = p.add_initializer("b", Tensor::from_f32(vec![2], &[1., 2.]));
                let y = p.op(NodeSpec::new("Add", "add", &[x, b]), "y", Facts::default());
                p.add_output(y);
                Ok(())
            })
            .unwrap();
        let pass = ExposeTrainableParams { initializers: vec!["b".into()] };
        assert_eq!(pass.run(&mut m).unwrap().new_inputs, vec!["b"]);
        let b = m.graph.value_by_name("b").unwrap();
        assert!(m.graph.inputs().contains(&b) && m.graph.is_initializer(b));
        assert_eq!(m.graph.runtime_inputs().count(), 1);
        assert_eq!(pass.run(&mut m).unwrap().rewritten, 0);
        assert!(ExposeTrainableParams { initializers: vec!["y".into()] }.run(&mut m).is_err());
    }
}
