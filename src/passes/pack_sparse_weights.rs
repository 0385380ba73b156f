//! `PackSparseWeights`: the last step of `sparsec export --format sparse`, storing each lowered
//! int8 linear's weight in the packed block-sparse form its kernel loads, so the file holds the
//! kept weights and one bit per (4-channel block, input index) instead of a dense int8 matrix.

use serde::{Deserialize, Serialize};

use super::{bound, Pass, PassError, PassReport};
use crate::ir::ops::sparsec::{weight_format, WeightFormat, BLOCK4X1, DOMAIN};
use crate::ir::{Attribute, DType, Facts, Model, Patch, Tensor};
use sparsec_kernels::linear_i8::packed;

/// Packs the dense weights of `ai.sparsec::SparseLinear` nodes.
///
/// - Matches: `SparseLinear` nodes whose weight (input 1) is a bound int8 `[K, N]` initializer
///   (the form `LowerSparseLinear` and `FuseQkv` emit) read by no other node, whose stored form
///   is smaller than the dense matrix (layers the kernel runs densely stay dense on disk).
/// - Emits: the initializer replaced (same name) by the 1-D int8 stored form
///   ([`packed`](sparsec_kernels::linear_i8::packed)) and the node's attributes
///   `weight_format = "block4x1"`, `weight_shape = [K, N]`. The stored form holds the blocks,
///   groups and dense fallback the kernel would choose from the dense weight, so the packed model
///   computes bit for bit what the unpacked one does.
/// - Assumes: nothing else; `SparseLinearF32` and already-packed nodes are left as they are.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PackSparseWeights {}

impl Pass for PackSparseWeights {
    fn name(&self) -> &'static str {
        "PackSparseWeights"
    }

    fn run(&self, model: &mut Model) -> Result<PassReport, PassError> {
        let pass = self.name();
        let mut report = PassReport { pass: pass.into(), ..PassReport::default() };
        model.graph.edit(|p: &mut Patch| -> Result<(), PassError> {
            let g = p.graph();
            let consumers = g.consumers();
            for (id, node) in g.nodes() {
                if node.domain != DOMAIN || node.op_type != "SparseLinear" {
                    continue;
                }
                let err = |message: String| PassError::Target { pass, target: node.name.clone(), message };
                if weight_format(node).map_err(err)? != WeightFormat::Dense {
                    continue;
                }
                let Some(w) = node.input(1) else { continue };
                let Some(t) = bound(g, w).filter(|t| t.dtype == DType::I8 && t.dims.len() == 2) else { continue };
                if consumers.get(&w).is_some_and(|c| c.len() > 1) {
                    continue;
                }
                let (k, n) = (t.dims[0] as usize, t.dims[1] as usize);
                let dense: Vec<i8> = t.raw().iter().map(|&b| b as i8).collect();
                let stored = packed::encode(&dense, k, n).map_err(|e| err(e.to_string()))?;
                if stored.len() >= dense.len() {
                    continue;
                }
                let stored = Tensor::from_i8(vec![stored.len() as i64], &stored);
                p.set_facts(w, Facts::of_tensor(&stored).type_only());
                p.set_initializer(w, stored);
                p.set_attr(id, Attribute::string("weight_format", BLOCK4X1));
                p.set_attr(id, Attribute::ints("weight_shape", vec![k as i64, n as i64]));
                report.rewritten += 1;
            }
            Ok(())
        })?;
        Ok(report)
    }
}
