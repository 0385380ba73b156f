//! `sparsec export --model TRAINED -o DEPLOYMENT [--format F] [...]`: parses the flags and prints
//! what was written; the exporter is [`crate::export`] (after [`crate::sparsify::one_shot_export`]
//! with `--one-shot`).

use std::path::PathBuf;

use anyhow::Result;

use crate::export::{export_folder, ExportOptions, Format};

#[derive(clap::Args)]
pub struct ExportArgs {
    /// A trained folder (`sparsec train` output), or with --one-shot a `sparsec compile` folder.
    #[arg(long)]
    model: PathBuf,
    /// Deployment folder (replaced atomically).
    #[arg(short, long)]
    output: PathBuf,
    /// Prune to the recipe's final sparsity by magnitude first (no training); calibrate
    /// quantization on N windows of --calibration-file.
    #[arg(long, value_name = "N")]
    one_shot: Option<usize>,
    /// SQuAD-format data for --one-shot calibration.
    #[arg(long)]
    calibration_file: Option<PathBuf>,
    /// Store embedding tables (read only by Gather) as int8 with one scale per row, dequantized
    /// after the lookup: about 4x smaller tables, at an accuracy cost to measure with `sparsec eval`.
    #[arg(long)]
    quantize_embeddings: bool,
    /// `qdq`: int8 weights and activations as Quantize/DequantizeLinear pairs around float
    /// operators (runtimes fuse them); `qoperator`: int8 linear layers as `MatMulInteger` + rescale;
    /// `sparse`: the QDQ model lowered to sparsec's kernels (`ai.sparsec` ops: sparse linears,
    /// fused attention), which needs sparsec or `libsparsec_ops.so` to run.
    #[arg(long, value_enum, default_value_t = Format::Qdq)]
    format: Format,
    #[arg(long)]
    json: bool,
}

pub fn run(args: ExportArgs) -> Result<()> {
    let opts = ExportOptions {
        model: args.model,
        output: args.output,
        quantize_embeddings: args.quantize_embeddings,
        format: args.format,
    };
    let report = match args.one_shot {
        None => export_folder(&opts)?,
        Some(n) => crate::sparsify::one_shot_export(&opts.model, args.calibration_file, n, &opts)?,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let zeros = if report.pruned_layers == 0 {
            format!("no pruning masks in the source, {:.2}% zeros overall", report.overall_sparsity * 100.0)
        } else {
            format!("pruned layers {:.2}% zeros", report.pruned_layers_sparsity * 100.0)
        };
        println!(
            "exported {} → {}: {:.1} MB{} ({:.1} MB gzipped), {zeros}, {} int8 weights",
            report.source,
            report.output,
            report.model_bytes as f64 / 1e6,
            report.dense_model_bytes.map(|d| format!(" vs dense {:.1} MB", d as f64 / 1e6)).unwrap_or_default(),
            report.model_gzip_bytes as f64 / 1e6,
            report.int8_weights
        );
    }
    Ok(())
}
