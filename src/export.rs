//! The exporter behind `sparsec export` and `sparsec sparsify`: lowers a trained folder (from
//! `sparsec train`, or `train --one-shot`) to an inference ONNX — masks folded into the weights, fake quantization
//! lowered to int8 QDQ, observer outputs and dead nodes removed — and writes a deployment folder:
//! `model.onnx`, tokenizer and config files, `recipe.yaml`, and `sparsity.json` (per-layer zeros,
//! bytes). `sparsec export --one-shot` first prunes a `sparsec compile` folder by
//! [`crate::sparsify::one_shot_export`].

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::ir::{infer, DType, Model};
use crate::onnx::{self, SaveOptions};
use crate::passes::{FoldMasks, LowerFakeQuant, LowerQOperator, Pass, PassReport, QuantizeEmbeddings, RemoveDead};

/// What `export_folder` is asked to do (the flags of `sparsec export`).
#[derive(Clone, Debug)]
pub struct ExportOptions {
    /// A trained folder.
    pub model: PathBuf,
    /// The deployment folder, replaced atomically.
    pub output: PathBuf,
    pub quantize_embeddings: bool,
    pub format: Format,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Qdq,
    Qoperator,
    Sparse,
}

/// What `lower` does beyond folding masks and lowering fake quantization to QDQ.
#[derive(Clone, Copy, Debug)]
pub struct LowerOptions {
    pub quantize_embeddings: bool,
    pub format: Format,
}

/// One weight of the exported model.
#[derive(Clone, Debug, Serialize)]
pub struct LayerReport {
    pub name: String,
    pub shape: Vec<i64>,
    pub dtype: String,
    pub zeros: f64,
}

/// `sparsity.json`.
#[derive(Clone, Debug, Serialize)]
pub struct ExportReport {
    pub source: String,
    pub output: String,
    pub model_bytes: u64,
    /// The model `sparsec compile` started from, when it is still there.
    pub dense_model_bytes: Option<u64>,
    /// gzip -6 of model.onnx: how much the zeros are worth in a compressed download.
    pub model_gzip_bytes: u64,
    /// Zeros over all weights of the pruned layers.
    pub pruned_layers_sparsity: f64,
    /// How many weights had a pruning mask in the source (0 when it holds no masks, e.g. a
    /// deployment folder exported again).
    pub pruned_layers: usize,
    /// Zeros over every weight of the model.
    pub overall_sparsity: f64,
    pub int8_weights: usize,
    pub format: Format,
    pub passes: Vec<PassReport>,
    pub layers: Vec<LayerReport>,
    pub storage: String,
}

/// Lowers a trained model (all training inputs bound) to the deployable graph.
pub fn lower(model: &mut Model, opts: LowerOptions) -> Result<Vec<PassReport>> {
    let g = &model.graph;
    let unbound: Vec<String> = g
        .runtime_inputs()
        .map(|v| g.value(v).name.clone())
        .filter(|n| n.ends_with(".mask") || n.contains(".input_quant.") || n == crate::passes::QUANT_ENABLED_INPUT)
        .collect();
    if !unbound.is_empty() {
        bail!(
            "the model still takes training inputs ({}…): export a folder written by `sparsec train`, or pass --one-shot",
            unbound.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
        );
    }
    let mut reports = vec![FoldMasks::default().apply(model)?, LowerFakeQuant::default().apply(model)?];
    if opts.format == Format::Qoperator {
        reports.push(LowerQOperator::default().apply(model)?);
    }
    if opts.quantize_embeddings {
        reports.push(QuantizeEmbeddings::default().apply(model)?);
    }
    reports.push(
        RemoveDead {
            drop_outputs: Vec::new(),
            drop_suffixes: vec![".input_quant.min".into(), ".input_quant.max".into()],
        }
        .apply(model)?,
    );
    if opts.format == Format::Sparse {
        reports.extend(crate::passes::lower_for_sparse_export(model, &Default::default())?);
    }
    infer::infer_facts(model).context("the lowered graph failed validation")?;
    Ok(reports)
}

fn layer_reports(model: &Model, pruned: &[String]) -> (Vec<LayerReport>, f64, f64, usize, usize) {
    let g = &model.graph;
    let mut layers = Vec::new();
    let (mut zeros, mut total, mut pz, mut pt, mut int8, mut np) = (0usize, 0usize, 0usize, 0usize, 0usize, 0usize);
    let unpacked = crate::ir::ops::sparsec::packed_weights_dense(g);
    for (&v, t) in g.initializers() {
        let t = unpacked.get(&v).unwrap_or(t);
        let name = g.value(v).name.clone();
        let z = match t.dtype {
            DType::F32 => t.as_f32s().map(|d| d.iter().filter(|&&x| x == 0.0).count()),
            DType::I8 if name.ends_with(".int8") => {
                int8 += t.numel();
                Some(t.raw().iter().filter(|&&b| b == 0).count())
            }
            _ => None,
        };
        let Some(z) = z else { continue };
        if t.numel() < 64 {
            continue;
        }
        zeros += z;
        total += t.numel();
        let base = name.trim_end_matches(".int8");
        if pruned.iter().any(|p| p == base) {
            pz += z;
            pt += t.numel();
            np += 1;
        }
        layers.push(LayerReport {
            name,
            shape: t.dims.clone(),
            dtype: t.dtype.to_string(),
            zeros: z as f64 / t.numel().max(1) as f64,
        });
    }
    let frac = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    (layers, frac(pz, pt), frac(zeros, total), int8, np)
}

/// Lowers `args.model` and writes the deployment folder `args.output` atomically; returns what
/// `sparsity.json` holds.
pub fn export_folder(args: &ExportOptions) -> Result<ExportReport> {
    let source = args.model.clone();
    let model_path = source.join("model.onnx");
    if !model_path.exists() {
        bail!("'{}' has no model.onnx", source.display());
    }
    let mut model = onnx::load(&model_path)?;
    infer::infer_facts(&mut model).with_context(|| format!("'{}'", model_path.display()))?;
    let masked: Vec<String> =
        model.graph.nodes().filter_map(|(_, n)| n.name.strip_prefix("sparsec.mask/").map(str::to_string)).collect();
    let mut pruned: Vec<String> = masked
        .iter()
        .filter_map(|p| {
            let n = model.graph.nodes().find(|(_, n)| n.name == format!("sparsec.mask/{p}"))?.1;
            Some(model.graph.value(n.input(0)?).name.clone())
        })
        .collect();
    pruned.extend(masked);
    let passes = lower(&mut model, LowerOptions { quantize_embeddings: args.quantize_embeddings, format: args.format })
        .with_context(|| format!("'{}'", model_path.display()))?;
    let plan_model = std::fs::read(source.join("plan.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|p| p["model"].as_str().map(PathBuf::from));
    let recipe_text = std::fs::read_to_string(source.join("recipe.yaml")).unwrap_or_default();
    model.metadata_props.retain(|(k, _)| !k.starts_with("sparsec."));
    model.set_metadata("sparsec.recipe", recipe_text);
    model.set_metadata("sparsec.exported_from", source.display().to_string());

    let deployment = crate::files::staging_dir(&args.output, ".sparsec-export-")?;
    let out_tmp = deployment.path().to_path_buf();
    let (layers, pruned_sparsity, overall, int8, pruned_layers) = layer_reports(&model, &pruned);
    model.set_metadata(
        "sparsec.sparsity",
        serde_json::json!({
            "pruned_layers": pruned_sparsity, "overall": overall, "int8_weights": int8, "format": args.format
        })
        .to_string(),
    );
    let out_model = out_tmp.join("model.onnx");
    onnx::save(&model, &out_model, &SaveOptions::default())?;
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "vocab.txt",
        "config.json",
        "recipe.yaml",
    ] {
        let src = source.join(f);
        if src.exists() {
            std::fs::copy(&src, out_tmp.join(f)).with_context(|| format!("cannot copy '{}'", src.display()))?;
        }
    }
    let bytes = std::fs::read(&out_model).with_context(|| format!("cannot read '{}'", out_model.display()))?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    gz.write_all(&bytes)?;
    let report = ExportReport {
        source: source.display().to_string(),
        output: args.output.display().to_string(),
        model_bytes: bytes.len() as u64,
        dense_model_bytes: plan_model.and_then(|p| std::fs::metadata(p).ok()).map(|m| m.len()),
        model_gzip_bytes: gz.finish()?.len() as u64,
        pruned_layers_sparsity: pruned_sparsity,
        pruned_layers,
        overall_sparsity: overall,
        int8_weights: int8,
        format: args.format,
        passes,
        layers,
        storage: "dense initializers: int8 for quantized weights and, with --quantize-embeddings, embedding \
                  tables (1 byte each, plus one f32 scale per channel or row), f32 otherwise; zeros are kept in \
                  place because ONNX sparse initializers need int64 indices (9 bytes per kept int8 weight) and \
                  ORT densifies them at load; the zeros compress (see model_gzip_bytes)"
            .into(),
    };
    let summary = out_tmp.join("sparsity.json");
    std::fs::write(&summary, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("cannot write '{}'", summary.display()))?;
    crate::files::swap_into_place(deployment, &args.output)?;
    Ok(report)
}
