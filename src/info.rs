//! What `sparsec info` reports about a model: opsets, op histogram, parameter totals, one row
//! per prunable linear layer (PyTorch module name, weight shape, sparsity) and one per int8 linear
//! layer in any form sparsec lowers.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::ir::{modules, Model};

#[derive(Serialize)]
pub struct ModelInfo {
    pub path: String,
    pub ir_version: i64,
    pub opsets: BTreeMap<String, i64>,
    pub producer: String,
    pub inputs: Vec<(String, String)>,
    pub outputs: Vec<(String, String)>,
    pub nodes: usize,
    pub op_histogram: BTreeMap<String, usize>,
    /// Elements of the float and the quantized (8-bit, int32) initializers; int64 shape
    /// constants are not parameters.
    pub parameters: usize,
    pub parameter_bytes: usize,
    pub layers: Vec<LayerInfo>,
    /// Linear layers whose weights are stored int8, whatever tool quantized them.
    pub int8_layers: Vec<Int8LayerInfo>,
}

/// An int8 linear layer: `MatMul` over a dequantized int8 weight (QDQ), `MatMulInteger`,
/// `QLinearMatMul`, or sparsec's `SparseLinear`.
#[derive(Serialize)]
pub struct Int8LayerInfo {
    pub node: String,
    /// `qdq`, `matmul_integer`, `qlinear_matmul` or `sparsec`.
    pub form: String,
    pub initializer: String,
    /// PyTorch layout `[out, in]`.
    pub weight_shape: Vec<i64>,
    /// Share of the weights equal to the zero point (0 for int8 with zero point 0; SparseML stores
    /// its pruned uint8 weights as 128, their zero point).
    pub sparsity: f64,
    /// `[4, 1]`, `[1, 4]`, `unstructured` or `dense`.
    pub structure: String,
}

#[derive(Serialize)]
pub struct LayerInfo {
    pub module: String,
    pub op: String,
    /// PyTorch layout `[out, in]`.
    pub weight_shape: Vec<i64>,
    pub initializer: String,
    pub has_bias: bool,
    pub sparsity: f64,
}

/// Gathers the summary `sparsec info` prints.
pub fn model_info(model: &Model, path: &str) -> ModelInfo {
    let g = &model.graph;
    let mut op_histogram = BTreeMap::new();
    for (_, n) in g.nodes() {
        let key = if n.domain.is_empty() { n.op_type.clone() } else { format!("{}::{}", n.domain, n.op_type) };
        *op_histogram.entry(key).or_insert(0) += 1;
    }
    let is_param = |t: &&crate::ir::Tensor| {
        t.dtype.is_float() || matches!(t.dtype, crate::ir::DType::I8 | crate::ir::DType::U8 | crate::ir::DType::I32)
    };
    let parameters = g.initializers().values().filter(is_param).map(|t| t.numel()).sum();
    let parameter_bytes = g.initializers().values().map(|t| t.byte_len()).sum();
    let layers = modules::linear_layers(g)
        .into_iter()
        .map(|l| {
            let t = g.initializer(l.weight).expect("layer weight is an initializer");
            let mut shape = t.dims.clone();
            if l.transposed {
                shape.reverse();
            }
            LayerInfo {
                module: l.module.clone(),
                op: g.node(l.node).op_type.clone(),
                weight_shape: shape,
                initializer: g.value(l.weight).name.clone(),
                has_bias: l.bias.is_some(),
                sparsity: t.sparsity(),
            }
        })
        .collect();
    let int8_layers = int8_layers(g);
    let describe = |v: &crate::ir::ValueId| (g.value(*v).name.clone(), g.value(*v).facts.to_string());
    ModelInfo {
        path: path.to_string(),
        ir_version: model.ir_version,
        opsets: model
            .opset_imports
            .iter()
            .map(|(d, v)| (if d.is_empty() { "ai.onnx".into() } else { d.clone() }, *v))
            .collect(),
        producer: format!(
            "{} {}",
            model.producer_name.clone().unwrap_or_default(),
            model.producer_version.clone().unwrap_or_default()
        )
        .trim()
        .to_string(),
        inputs: g.runtime_inputs().map(|v| describe(&v)).collect(),
        outputs: g.outputs().iter().map(describe).collect(),
        nodes: g.node_count(),
        op_histogram,
        parameters,
        parameter_bytes,
        layers,
        int8_layers,
    }
}

/// The int8 linear layers of a model in any of the forms sparsec lowers (QDQ `MatMul`,
/// `MatMulInteger`, `QLinearMatMul`, and its own `SparseLinear`), with sparsity and block structure.
pub fn int8_layers(g: &crate::ir::Graph) -> Vec<Int8LayerInfo> {
    let mut out = Vec::new();
    for (_, n) in g.nodes() {
        let (form, w) = match (n.domain.as_str(), n.op_type.as_str()) {
            ("", "MatMul") => {
                let dq = n.input(1).and_then(|b| g.producer(b)).filter(|(_, d)| d.op_type == "DequantizeLinear");
                match dq.and_then(|(_, d)| d.input(0)) {
                    Some(w) => ("qdq", w),
                    None => continue,
                }
            }
            ("", "MatMulInteger") => match n.input(1) {
                Some(w) => ("matmul_integer", w),
                None => continue,
            },
            ("", "QLinearMatMul") => match n.input(3) {
                Some(w) => ("qlinear_matmul", w),
                None => continue,
            },
            ("ai.sparsec", "SparseLinear") => match n.input(1) {
                Some(w) => ("sparsec", w),
                None => continue,
            },
            _ => continue,
        };
        let unpacked = match form {
            "sparsec" => crate::ir::ops::sparsec::linear_weight_dense(g, n)
                .and_then(Result::ok)
                .map(|(k, cols, w)| crate::ir::Tensor::from_i8(vec![k as i64, cols as i64], &w)),
            "matmul_integer" => crate::passes::matmul_integer_weight(g, n),
            _ => None,
        };
        let Some(t) =
            unpacked.as_ref().or(g.constant(w)).filter(|t| t.dtype == crate::ir::DType::I8 && t.dims.len() == 2)
        else {
            continue;
        };
        let (k, cols) = (t.dims[0] as usize, t.dims[1] as usize);
        let raw = t.raw();
        let nonzero = |kk: usize, j: usize| raw[kk * cols + j] != 0;
        out.push(Int8LayerInfo {
            node: n.name.clone(),
            form: form.into(),
            initializer: g.value(w).name.clone(),
            weight_shape: vec![t.dims[1], t.dims[0]],
            sparsity: raw.iter().filter(|&&b| b == 0).count() as f64 / raw.len().max(1) as f64,
            structure: crate::passes::weight_structure(nonzero, k, cols).into(),
        });
    }
    out
}
