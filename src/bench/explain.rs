//! `sparsec bench --explain`: what runs where. After the sparse lowering, every node of the model
//! is either one of sparsec's kernels or stays on ONNX Runtime; for each that stays, the reason
//! (the lowering's own, where a pass matched the node and left it; else what kind of op it is),
//! and from an ONNX Runtime profile of a few runs, the share of the node time spent in sparsec's
//! kernels. DeepSparse reported only `fraction_of_supported_ops`; this says why.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::ir::ops::sparsec::DOMAIN;
use crate::ir::Graph;
use crate::qa::ModelFile;
use crate::runtime::{EngineKind, EngineOptions, HostTensor, Kernels};

/// Nodes that share where they run, their op and the reason.
#[derive(Clone, Debug, Serialize)]
pub struct Group {
    /// `sparsec` or `onnxruntime`.
    pub runs_on: &'static str,
    pub op: String,
    pub nodes: usize,
    /// Why the nodes stay on ONNX Runtime (`None` for sparsec's kernels).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Node time per run, from the profile.
    pub ms_per_run: f64,
    /// Share of all node time.
    pub share: f64,
    /// Up to three of the nodes' names.
    pub examples: Vec<String>,
}

/// What runs where in one model.
#[derive(Clone, Debug, Serialize)]
pub struct Explanation {
    pub model: String,
    pub kernels: Kernels,
    pub batch_size: usize,
    pub seq_len: usize,
    pub runs: usize,
    /// Nodes of the lowered model on sparsec's kernels, and all of its nodes.
    pub sparsec_nodes: usize,
    pub nodes: usize,
    /// Share of the node time spent in sparsec's kernels.
    pub sparsec_time_share: f64,
    /// Node time per run, all nodes.
    pub node_ms_per_run: f64,
    /// Largest time first.
    pub groups: Vec<Group>,
}

/// Lowers `path` as `kernels` asks, runs it `runs` times on synthetic windows under ONNX
/// Runtime's profiler, and says where each node ran and why.
pub fn explain(
    path: &Path,
    kernels: Kernels,
    batch: usize,
    seq: usize,
    threads: Option<usize>,
    runs: usize,
) -> Result<Explanation> {
    let mut file = ModelFile::open(path)?;
    file.lower(EngineKind::Ort, kernels)?;
    let kept: HashMap<String, String> =
        file.lowering().unwrap_or_default().iter().flat_map(|r| r.kept.iter().cloned()).collect();
    let g = &file.model.graph;
    let mut place: HashMap<String, (&'static str, String, Option<String>)> = HashMap::new();
    for (_, n) in g.nodes() {
        let entry = if n.domain == DOMAIN {
            ("sparsec", n.op_type.clone(), None)
        } else {
            ("onnxruntime", n.op_type.clone(), Some(reason(g, n, kernels, &kept)))
        };
        place.insert(n.name.clone(), entry);
    }
    let profile = profile(&file, batch, seq, threads, runs)?;

    let mut groups: BTreeMap<(&'static str, String, Option<String>), Group> = BTreeMap::new();
    let mut add = |key: (&'static str, String, Option<String>), name: &str, ms: f64| {
        let grp = groups.entry(key.clone()).or_insert_with(|| Group {
            runs_on: key.0,
            op: key.1.clone(),
            nodes: 0,
            reason: key.2.clone(),
            ms_per_run: 0.0,
            share: 0.0,
            examples: Vec::new(),
        });
        grp.nodes += 1;
        grp.ms_per_run += ms;
        if grp.examples.len() < 3 {
            grp.examples.push(name.to_string());
        }
    };
    let mut seen = std::collections::HashSet::new();
    for (name, (op, ms)) in &profile.nodes {
        let key = match place.get(name) {
            Some(k) => k.clone(),
            // A node ONNX Runtime made itself when it fused graph nodes at load.
            None => ("onnxruntime", op.clone(), Some("a node ONNX Runtime fused from graph nodes at load".into())),
        };
        seen.insert(name.clone());
        add(key, name, ms / profile.runs as f64);
    }
    for (name, key) in &place {
        if !seen.contains(name) {
            let mut key = key.clone();
            if key.0 == "onnxruntime" {
                key.2 = Some(format!(
                    "{}; not in the profile (folded or fused away by ONNX Runtime at load)",
                    key.2.unwrap_or_default()
                ));
            }
            add(key, name, 0.0);
        }
    }
    let total: f64 = groups.values().map(|g| g.ms_per_run).sum();
    let mut groups: Vec<Group> = groups.into_values().collect();
    for grp in &mut groups {
        grp.share = if total > 0.0 { grp.ms_per_run / total } else { 0.0 };
    }
    groups.sort_by(|a, b| b.ms_per_run.total_cmp(&a.ms_per_run).then(a.op.cmp(&b.op)));
    let sparsec_ms: f64 = groups.iter().filter(|g| g.runs_on == "sparsec").map(|g| g.ms_per_run).sum();
    Ok(Explanation {
        model: path.display().to_string(),
        kernels,
        batch_size: batch,
        seq_len: seq,
        runs: profile.runs,
        sparsec_nodes: place.values().filter(|p| p.0 == "sparsec").count(),
        nodes: place.len(),
        sparsec_time_share: if total > 0.0 { sparsec_ms / total } else { 0.0 },
        node_ms_per_run: total,
        groups,
    })
}

/// Why a node stays on ONNX Runtime.
fn reason(g: &Graph, n: &crate::ir::Node, kernels: Kernels, kept: &HashMap<String, String>) -> String {
    if let Some(why) = kept.get(&n.name) {
        return why.clone();
    }
    let weight = n.input(1).is_some_and(|w| g.constant(w).is_some());
    match n.op_type.as_str() {
        "MatMul" | "MatMulInteger" | "QLinearMatMul" | "Gemm" | "MatMulNBits" if weight => {
            if matches!(kernels, Kernels::Attention | Kernels::Off) {
                format!("a linear layer; --kernels {kernels:?} leaves linears on ONNX Runtime").to_lowercase()
            } else {
                "a linear layer in a form sparsec's lowering does not match (README, Sparse execution, lists the \
                 forms)"
                    .into()
            }
        }
        "MatMul" | "MatMulInteger" | "QLinearMatMul" | "Softmax" => {
            if matches!(kernels, Kernels::Linear | Kernels::Off) {
                "part of an attention; this --kernels setting leaves attention on ONNX Runtime".into()
            } else {
                "part of an attention whose pattern sparsec's attention fusion does not match".into()
            }
        }
        "LayerNormalization" => "a LayerNorm over more than the last axis, or with this --kernels setting".into(),
        "QuantizeLinear" | "DequantizeLinear" | "DynamicQuantizeLinear" | "Cast" => {
            "quantization glue between int8 and f32 regions (memory-bound; ONNX Runtime's kernel)".into()
        }
        "Shape" | "Gather" | "Unsqueeze" | "Squeeze" | "Concat" | "Reshape" | "Transpose" | "Slice" | "Split"
        | "Expand" | "ConstantOfShape" | "Range" | "Constant" | "Identity" | "Flatten" => {
            "shape or layout op: no arithmetic to accelerate".into()
        }
        "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Sqrt" | "Erf" | "Tanh" | "Where" | "Equal" | "Not" | "Neg"
        | "Reciprocal" | "Relu" | "Gelu" | "Sigmoid" | "Exp" | "Log" | "Min" | "Max" => {
            "elementwise op outside a fused kernel (memory-bound; ONNX Runtime's kernel)".into()
        }
        "ReduceMean" | "ReduceSum" | "ReduceMax" => {
            "a reduction outside a fused kernel (a LayerNorm pattern sparsec does not match, or other)".into()
        }
        _ => format!("no sparsec kernel for {}", n.op_type),
    }
}

struct Profile {
    runs: usize,
    /// Node name → (op type, total ms over all runs).
    nodes: HashMap<String, (String, f64)>,
}

/// Runs the lowered model once to warm up and then `runs` times, in one profiled session; the
/// node times of the warm-up run are left out.
fn profile(file: &ModelFile, batch: usize, seq: usize, threads: Option<usize>, runs: usize) -> Result<Profile> {
    let dir = tempfile::tempdir().context("a temporary folder for ONNX Runtime's profile")?;
    let prefix = dir.path().join("explain");
    {
        let opts = EngineOptions { threads, profile: Some(prefix.clone()), ..Default::default() };
        let mut backend = file.load(EngineKind::Ort, &opts)?;
        let feed = super::synthetic_inputs(backend.as_ref(), &file.path, batch, seq)?;
        let f: Vec<(&str, HostTensor)> = feed.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
        for _ in 0..runs.max(1) + 1 {
            backend.run(&f)?;
        }
    }
    let trace = std::fs::read_dir(dir.path())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "json"))
        .context("ONNX Runtime wrote no profile")?;
    let events: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(&trace)?)
        .with_context(|| format!("ONNX Runtime's profile '{}'", trace.display()))?;
    // Model runs in order; node events belong to the run whose span holds them.
    let mut starts: Vec<(f64, f64)> = events
        .iter()
        .filter(|e| e["cat"] == "Session" && e["name"] == "model_run")
        .filter_map(|e| Some((e["ts"].as_f64()?, e["dur"].as_f64()?)))
        .collect();
    starts.sort_by(|a, b| a.0.total_cmp(&b.0));
    if starts.len() < 2 {
        bail!("ONNX Runtime's profile holds {} model runs, expected {}", starts.len(), runs + 1);
    }
    let after_warmup = starts[0].0 + starts[0].1;
    let mut nodes: HashMap<String, (String, f64)> = HashMap::new();
    for e in &events {
        let Some(name) = e["name"].as_str().and_then(|n| n.strip_suffix("_kernel_time")) else { continue };
        if e["cat"] != "Node" || e["ts"].as_f64().is_none_or(|ts| ts < after_warmup) {
            continue;
        }
        let op = e["args"]["op_name"].as_str().unwrap_or("?").to_string();
        let ms = e["dur"].as_f64().unwrap_or(0.0) / 1e3;
        nodes.entry(name.to_string()).or_insert((op, 0.0)).1 += ms;
    }
    Ok(Profile { runs: starts.len() - 1, nodes })
}
