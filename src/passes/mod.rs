//! Graph rewrites that turn an inference graph into a sparsification training graph, one pass per
//! file behind the [`Pass`] trait and a registry by name. Passes edit only through
//! [`Graph::edit`](crate::ir::Graph::edit) and are configured with explicit targets (initializer
//! and node names) that `sparsec compile` resolves from the recipe beforehand, so a pass never
//! depends on what an earlier pass did to module-name recovery.
//!
//! Sits between `recipe/` (which decides the targets) and `autodiff/` (which differentiates the
//! result).

mod bind_inputs;
mod expose_trainable_params;
mod fold_masks;
mod fuse_attention;
mod fuse_qkv;
mod fuse_quantized_attention;
mod insert_fake_quant;
mod insert_masks;
mod lower_fake_quant;
mod lower_layer_norm;
mod lower_qoperator;
mod lower_sparse_linear;
mod pack_sparse_weights;
mod pattern;
pub use pattern::weight_structure;
mod quantize_embeddings;
mod remove_dead;
mod select_fake_quant;
mod use_attention_train;
mod use_gelu_train;
mod use_masked_linear;

use serde::Serialize;

pub use bind_inputs::BindInputs;
pub use expose_trainable_params::ExposeTrainableParams;
pub use fold_masks::FoldMasks;
pub use fuse_attention::FuseAttention;
pub use fuse_qkv::FuseQkv;
pub use fuse_quantized_attention::FuseQuantizedAttention;
pub use insert_fake_quant::{FakeQuantTarget, InsertFakeQuant, MIN_SCALE, QUANT_ENABLED_INPUT};
pub use insert_masks::{InsertMasks, MaskTarget};
pub use lower_fake_quant::{quantize_weight, LowerFakeQuant};
pub use lower_layer_norm::LowerLayerNorm;
pub use lower_qoperator::LowerQOperator;
pub(crate) use lower_sparse_linear::matmul_integer_weight;
pub use lower_sparse_linear::LowerSparseLinear;
pub use pack_sparse_weights::PackSparseWeights;
pub use quantize_embeddings::QuantizeEmbeddings;
pub use remove_dead::RemoveDead;
pub use select_fake_quant::SelectFakeQuant;
pub use use_attention_train::UseAttentionTrain;
pub use use_gelu_train::UseGeluTrain;
pub use use_masked_linear::{LinearPrecision, UseMaskedLinear};

use crate::ir::{check_schemas, Attrs, Graph, IrError, Model, NodeId, Tensor, ValueId};

/// The value of `v` when it is a bound constant: an initializer that is not also a graph input.
pub(crate) fn bound(g: &Graph, v: ValueId) -> Option<&Tensor> {
    g.initializer(v).filter(|_| !g.inputs().contains(&v))
}

/// Whether input `slot` of `node` is the table of a row lookup: `Gather` on input 0, axis 0.
pub(crate) fn is_row_lookup(g: &Graph, node: NodeId, slot: usize) -> bool {
    let n = g.node(node);
    n.op_type == "Gather" && slot == 0 && n.attr_int("axis").unwrap_or(0) == 0
}

#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error("unknown pass '{name}'; known passes: {known}")]
    UnknownPass { name: String, known: String },
    #[error("pass {pass}: bad configuration: {message}")]
    Config { pass: &'static str, message: String },
    #[error("pass {pass}: target '{target}': {message}")]
    Target { pass: &'static str, target: String, message: String },
    #[error("pass {pass}: {source}")]
    Ir { pass: &'static str, source: IrError },
}

impl PassError {
    /// Attributes an IR error raised while applying a pass's patch to that pass.
    pub(crate) fn in_pass(self, pass: &'static str) -> PassError {
        match self {
            PassError::Ir { source, .. } => PassError::Ir { pass, source },
            other => other,
        }
    }
}

/// What a pass did: the graph inputs and outputs it added and how many sites it rewrote.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PassReport {
    pub pass: String,
    pub rewritten: usize,
    pub new_inputs: Vec<String>,
    pub new_outputs: Vec<String>,
    /// Nodes the pass matched but left as they were, each with the reason (for `sparsec bench
    /// --explain`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kept: Vec<(String, String)>,
}

/// One graph rewrite.
pub trait Pass {
    fn name(&self) -> &'static str;
    fn run(&self, model: &mut Model) -> Result<PassReport, PassError>;

    /// [`run`](Pass::run), then the result held to the ONNX operator schemas of the model's opset
    /// ([`check_schemas`]): a node in the wrong opset's form is reported with this pass's name and
    /// the node's, at the step that made it.
    fn apply(&self, model: &mut Model) -> Result<PassReport, PassError> {
        let report = self.run(model)?;
        check_schemas(model).map_err(|source| PassError::Ir { pass: self.name(), source })?;
        Ok(report)
    }
}

type Constructor = fn(serde_json::Value) -> Result<Box<dyn Pass>, PassError>;

fn build<P: Pass + serde::de::DeserializeOwned + 'static>(
    name: &'static str,
) -> impl Fn(serde_json::Value) -> Result<Box<dyn Pass>, PassError> {
    move |cfg| {
        serde_json::from_value::<P>(cfg)
            .map(|p| Box::new(p) as Box<dyn Pass>)
            .map_err(|e| PassError::Config { pass: name, message: e.to_string() })
    }
}

/// Every pass by name, with a constructor from its JSON configuration.
pub fn registry() -> Vec<(&'static str, Constructor)> {
    vec![
        ("InsertMasks", |c| build::<InsertMasks>("InsertMasks")(c)),
        ("InsertFakeQuant", |c| build::<InsertFakeQuant>("InsertFakeQuant")(c)),
        ("ExposeTrainableParams", |c| build::<ExposeTrainableParams>("ExposeTrainableParams")(c)),
        ("FoldMasks", |c| build::<FoldMasks>("FoldMasks")(c)),
        ("LowerFakeQuant", |c| build::<LowerFakeQuant>("LowerFakeQuant")(c)),
        ("LowerQOperator", |c| build::<LowerQOperator>("LowerQOperator")(c)),
        ("QuantizeEmbeddings", |c| build::<QuantizeEmbeddings>("QuantizeEmbeddings")(c)),
        ("RemoveDead", |c| build::<RemoveDead>("RemoveDead")(c)),
        ("LowerSparseLinear", |c| build::<LowerSparseLinear>("LowerSparseLinear")(c)),
        ("FuseAttention", |c| build::<FuseAttention>("FuseAttention")(c)),
        ("FuseQuantizedAttention", |c| build::<FuseQuantizedAttention>("FuseQuantizedAttention")(c)),
        ("FuseQkv", |c| build::<FuseQkv>("FuseQkv")(c)),
        ("LowerLayerNorm", |c| build::<LowerLayerNorm>("LowerLayerNorm")(c)),
        ("PackSparseWeights", |c| build::<PackSparseWeights>("PackSparseWeights")(c)),
        ("UseMaskedLinear", |c| build::<UseMaskedLinear>("UseMaskedLinear")(c)),
        ("SelectFakeQuant", |c| build::<SelectFakeQuant>("SelectFakeQuant")(c)),
    ]
}

/// Builds the pass `name` from its configuration.
pub fn by_name(name: &str, config: serde_json::Value) -> Result<Box<dyn Pass>, PassError> {
    let reg = registry();
    match reg.iter().find(|(n, _)| *n == name) {
        Some((_, make)) => make(config),
        None => Err(PassError::UnknownPass {
            name: name.to_string(),
            known: reg.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", "),
        }),
    }
}

/// How [`lower_for_sparse_execution`] lowers a model.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct SparseExecution {
    pub linear: LowerSparseLinear,
    pub attention: FuseAttention,
    /// Fuse attention only, leave linears on ONNX Runtime (for A/B measurements).
    #[serde(default)]
    pub no_linear: bool,
    /// Lower linears only, leave attention on ONNX Runtime.
    #[serde(default)]
    pub no_attention: bool,
    /// Leave `LayerNormalization` on ONNX Runtime.
    #[serde(default)]
    pub no_layer_norm: bool,
}

/// The sparse-execution pipeline sparsec applies in memory before running a model on ONNX
/// Runtime: `LowerSparseLinear`, `FuseAttention`, `FuseQuantizedAttention`, `FuseQkv`, `LowerLayerNorm`, `RemoveDead`. The
/// result needs the `ai.sparsec` operators (`sparsec-ops`) registered with the session.
pub fn lower_for_sparse_execution(model: &mut Model, cfg: &SparseExecution) -> Result<Vec<PassReport>, PassError> {
    let mut reports = Vec::new();
    if !cfg.no_linear {
        reports.push(cfg.linear.run(model)?);
    }
    if !cfg.no_attention {
        reports.push(cfg.attention.run(model)?);
        reports.push(FuseQuantizedAttention::default().run(model)?);
        // The replaced attention subgraphs still read the projections until they are removed.
        RemoveDead::default().run(model)?;
        reports.push(FuseQkv::default().run(model)?);
    }
    if !cfg.no_layer_norm {
        reports.push(LowerLayerNorm::default().run(model)?);
    }
    reports.push(RemoveDead::default().run(model)?);
    if reports.iter().any(|r| r.rewritten > 0 && r.pass != "RemoveDead")
        && !model.opset_imports.iter().any(|(d, _)| d == crate::ir::ops::sparsec::DOMAIN)
    {
        model.opset_imports.push((crate::ir::ops::sparsec::DOMAIN.to_string(), 1));
    }
    Ok(reports)
}

/// The model `sparsec export --format sparse` writes: [`lower_for_sparse_execution`] with every
/// int8 linear lowered, dense ones too (so the file computes the exact QDQ products on any CPU:
/// ONNX Runtime's own u8×s8 kernels saturate without VNNI, see
/// [`crate::runtime::ort_int8_is_exact`]), then [`PackSparseWeights`] (int8 weights in the packed
/// block-sparse form the kernels load).
pub fn lower_for_sparse_export(model: &mut Model, cfg: &SparseExecution) -> Result<Vec<PassReport>, PassError> {
    let mut cfg = cfg.clone();
    cfg.linear.max_int8_density = 1.0;
    let mut reports = lower_for_sparse_execution(model, &cfg)?;
    reports.push(PackSparseWeights::default().apply(model)?);
    Ok(reports)
}
