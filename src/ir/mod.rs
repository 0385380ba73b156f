//! The graph IR every stage shares: [`Model`] and [`Graph`] with typed ids, constant [`Tensor`]s,
//! static [`Facts`] (dtype, symbolic shape), the one edit API ([`Patch`] via [`Graph::edit`]),
//! per-op inference rules ([`ops`]), validation (structural, and against the ONNX operator
//! schemas per opset: [`schema`]), opset-aware node builders ([`emit`]), and module-name
//! resolution for prunable layers.
//!
//! Sits between `onnx/` (which builds and serialises it) and `passes/`, `autodiff/`, `runtime/`.

mod attr;
mod dtype;
pub mod emit;
mod facts;
mod graph;
mod ids;
pub mod infer;
pub mod modules;
pub mod ops;
mod patch;
pub mod schema;
mod tensor;
mod validate;

pub use attr::{AttrValue, Attribute, Attrs};
pub use dtype::DType;
pub use facts::{Dim, Facts};
pub use graph::{Graph, Model, Node, Value};
pub use ids::{NodeId, ValueId};
pub use patch::{NodeSpec, Patch};
pub use schema::check_schemas;
pub(crate) use tensor::numel;
pub use tensor::{Tensor, TensorData, TensorError};

/// Structural errors of the IR. Each names the node or value at fault.
#[derive(Debug, thiserror::Error)]
pub enum IrError {
    #[error("value '{0}' is defined twice")]
    DuplicateValue(String),
    #[error("value '{value}' has more than one producer (node '{node}')")]
    MultipleProducers { value: String, node: String },
    #[error("node '{node}' ({op}) reads '{value}', which nothing defines")]
    UndefinedInput { node: String, op: String, value: String },
    #[error("graph output '{0}' is not defined")]
    UndefinedOutput(String),
    #[error("graph has a cycle through node '{0}'")]
    Cycle(String),
    #[error("node '{node}': op '{op}' (domain '{domain}') is not supported by sparsec")]
    UnsupportedOp { node: String, op: String, domain: String },
    #[error("node '{node}' ({op}): {message}")]
    Inference { node: String, op: String, message: String },
    #[error("node '{node}' ({op}) is not valid ONNX at opset {opset}: {message}")]
    Schema { node: String, op: String, opset: i64, message: String },
    #[error("invalid patch: {0}")]
    Patch(String),
}
