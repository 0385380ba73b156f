//! `BindInputs`: graph inputs become constants.

use super::{Pass, PassError, PassReport};
use crate::ir::{Model, Patch, Tensor};

/// Binds graph inputs (trained weights, masks, quantization parameters, switches) to values.
///
/// - Matches: each named graph input, with or without an initializer.
/// - Emits: the input removed from the graph inputs and its initializer set to the given tensor;
///   no nodes. Nothing else reads differently: consumers see the bound value.
/// - Assumes: each tensor has the dtype the graph declares for the input, and a shape the graph
///   accepts (checked against known dimensions). Not in the registry: its configuration is tensors.
#[derive(Clone, Debug)]
pub struct BindInputs {
    pub values: Vec<(String, Tensor)>,
}

impl Pass for BindInputs {
    fn name(&self) -> &'static str {
        "BindInputs"
    }

    fn run(&self, model: &mut Model) -> Result<PassReport, PassError> {
        let pass = self.name();
        let mut report = PassReport { pass: pass.into(), ..PassReport::default() };
        model
            .graph
            .edit(|p: &mut Patch| {
                let g = p.graph();
                for (name, t) in &self.values {
                    let err = |message: String| PassError::Target { pass, target: name.clone(), message };
                    let v = g.value_by_name(name).ok_or_else(|| err("no value with this name".into()))?;
                    if !g.inputs().contains(&v) {
                        return Err(err("is not a graph input".into()));
                    }
                    let facts = &g.value(v).facts;
                    if facts.dtype.is_some_and(|d| d != t.dtype) {
                        return Err(err(format!("declared {:?}, bound to a {} tensor", facts.dtype, t.dtype)));
                    }
                    if let Some(shape) = &facts.shape {
                        let fits = shape.len() == t.dims.len()
                            && shape.iter().zip(&t.dims).all(|(d, &n)| d.known().is_none_or(|k| k == n));
                        if !fits {
                            return Err(err(format!("declared shape {shape:?}, bound to {:?}", t.dims)));
                        }
                    }
                    p.remove_input(v);
                    p.set_initializer(v, t.clone());
                    report.rewritten += 1;
                }
                Ok(())
            })
            .map_err(|e: PassError| e.in_pass(pass))?;
        Ok(report)
    }
}
