//! Structural validation of a [`Graph`]: every read value is defined, outputs exist, one producer per
//! value (checked while linking), acyclic (checked by the topological sort).

use super::{Graph, IrError};

/// Checks that every node input and graph output is defined by a graph input, an initializer or a
/// node earlier in topological order. Errors name the offending node.
pub fn validate(g: &Graph) -> Result<(), IrError> {
    for (_, node) in g.nodes() {
        for v in node.inputs.iter().flatten() {
            let value = g.value(*v);
            if value.producer.is_none() && !g.is_initializer(*v) && !g.inputs.contains(v) {
                return Err(IrError::UndefinedInput {
                    node: node.name.clone(),
                    op: node.op_type.clone(),
                    value: value.name.clone(),
                });
            }
        }
    }
    for v in &g.outputs {
        let value = g.value(*v);
        if value.producer.is_none() && !g.is_initializer(*v) && !g.inputs.contains(v) {
            return Err(IrError::UndefinedOutput(value.name.clone()));
        }
    }
    Ok(())
}
