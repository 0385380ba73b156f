//! A QA model file decoded once, for `qa`, `eval`, `bench` and `serve`: its fixed input shape and
//! the sparsity of its linear layers are read from the one decoded [`Model`], the sparse
//! lowering ([`crate::passes::lower_for_sparse_execution`]) is a step the caller asks for, and
//! the runtime loads the (lowered) model it is handed.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::ir::{Dim, Model};
use crate::passes::{PassReport, SparseExecution};
use crate::runtime::{self, Backend, EngineKind, EngineOptions, Kernels};

/// A decoded QA model and what was learnt from it before it runs.
pub struct ModelFile {
    pub path: PathBuf,
    pub model: Model,
    /// The input dims the model fixes (`[batch, 384]` for SparseML's exports).
    pub fixed: FixedShape,
    /// Fraction of zeros over the weights of the prunable linear layers, as stored in the file
    /// (read before any lowering moves the weights into sparsec's nodes); `None` when the model
    /// has no such layer.
    pub linear_sparsity: Option<f64>,
    lowering: Option<Vec<PassReport>>,
}

impl ModelFile {
    /// Decodes `path` (a `.onnx` file) once.
    pub fn open(path: &Path) -> Result<ModelFile> {
        if !path.exists() {
            bail!("model '{}' not found", path.display());
        }
        let model = crate::onnx::load(path)?;
        let fixed = FixedShape::of_model(&model).with_context(|| format!("model '{}'", path.display()))?;
        let linear_sparsity = linear_sparsity(&model);
        Ok(ModelFile { path: path.to_path_buf(), model, fixed, linear_sparsity, lowering: None })
    }

    /// Lowers the model to sparsec's kernels as `kernels` asks, when it will run on ONNX Runtime
    /// (the kernels are ONNX Runtime custom operators; tract runs the model as it is).
    pub fn lower(&mut self, engine: EngineKind, kernels: Kernels) -> Result<()> {
        match (engine, kernels.sparse_execution()) {
            (EngineKind::Ort, Some(cfg)) => self.lower_with(&cfg).map(|_| ()),
            _ => Ok(()),
        }
    }

    /// Lowers the model with the given settings; returns what each pass did.
    pub fn lower_with(&mut self, cfg: &SparseExecution) -> Result<&[PassReport]> {
        let what = || format!("lowering '{}' to sparse kernels", self.path.display());
        crate::ir::infer::infer_facts(&mut self.model).with_context(what)?;
        let reports = crate::passes::lower_for_sparse_execution(&mut self.model, cfg).with_context(what)?;
        Ok(self.lowering.insert(reports))
    }

    /// What the sparse lowering did (`None`: the model was not lowered).
    pub fn lowering(&self) -> Option<&[PassReport]> {
        self.lowering.as_deref()
    }

    /// Loads the model, as lowered, on `engine`.
    pub fn load(&self, engine: EngineKind, opts: &EngineOptions) -> Result<Box<dyn Backend>> {
        if opts.streams > 1 && self.fixed.batch.is_some_and(|b| b > 1) {
            bail!(
                "--streams {} runs one sequence per session, but '{}' fixes its batch at {}",
                opts.streams,
                self.path.display(),
                self.fixed.describe()
            );
        }
        let what = if self.lowering.is_some() { " lowered to sparse kernels" } else { "" };
        runtime::load_model(&self.model, engine, opts)
            .with_context(|| format!("{engine} cannot load '{}'{what}", self.path.display()))
    }
}

fn linear_sparsity(m: &Model) -> Option<f64> {
    let (mut zeros, mut total) = (0.0, 0.0);
    for l in crate::ir::modules::linear_layers(&m.graph) {
        let t = m.graph.initializer(l.weight)?;
        zeros += t.sparsity() * t.numel() as f64;
        total += t.numel() as f64;
    }
    (total > 0.0).then(|| zeros / total)
}

/// The input dims a QA model fixes: `None` where a dim is dynamic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FixedShape {
    pub batch: Option<usize>,
    pub seq: Option<usize>,
}

impl FixedShape {
    /// The fixed dims of the model's `input_ids`/`attention_mask`/`token_type_ids` (rank 2,
    /// `[batch, sequence]`); an error when the inputs disagree.
    pub fn of_model(model: &Model) -> Result<FixedShape> {
        let g = &model.graph;
        let mut shape: Option<(String, FixedShape)> = None;
        for v in g.runtime_inputs() {
            let value = g.value(v);
            if !["input_ids", "attention_mask", "token_type_ids"].contains(&value.name.as_str()) {
                continue;
            }
            let Some(dims) = &value.facts.shape else { continue };
            if dims.len() != 2 {
                bail!("input '{}' has rank {}, a QA model takes [batch, sequence]", value.name, dims.len());
            }
            let fixed = |d: &Dim| d.known().and_then(|n| usize::try_from(n).ok());
            let this = FixedShape { batch: fixed(&dims[0]), seq: fixed(&dims[1]) };
            match &shape {
                Some((other, s)) if *s != this => bail!(
                    "inputs '{other}' ({}) and '{}' ({}) have different fixed dims",
                    s.describe(),
                    value.name,
                    this.describe()
                ),
                Some(_) => {}
                None => shape = Some((value.name.clone(), this)),
            }
        }
        Ok(shape.map(|(_, s)| s).unwrap_or_default())
    }

    pub fn is_dynamic(&self) -> bool {
        self.batch.is_none() && self.seq.is_none()
    }

    /// `[batch, 384]`, `[1, 384]`, ….
    pub fn describe(&self) -> String {
        let d = |x: Option<usize>, name: &str| x.map_or(name.to_string(), |n| n.to_string());
        format!("[{}, {}]", d(self.batch, "batch"), d(self.seq, "sequence"))
    }
}
