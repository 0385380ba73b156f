//! `sparsec info MODEL [--json]`: opset, op histogram, parameter totals and one row per prunable
//! linear layer with its PyTorch module name, weight shape and sparsity.

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::info::model_info;
use crate::ir::infer;

#[derive(clap::Args)]
pub struct InfoArgs {
    /// A model.onnx, or a folder holding one.
    model: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: InfoArgs) -> Result<()> {
    let path = super::resolve_model_path(&args.model);
    let mut model = crate::onnx::load(&path)?;
    infer::infer_facts(&mut model).with_context(|| format!("'{}'", path.display()))?;
    let info = model_info(&model, &path.display().to_string());
    if args.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(());
    }
    println!("model      {}", info.path);
    println!("producer   {} (ir_version {})", info.producer, info.ir_version);
    println!("opsets     {}", info.opsets.iter().map(|(d, v)| format!("{d} {v}")).collect::<Vec<_>>().join(", "));
    for (n, f) in &info.inputs {
        println!("input      {n}: {f}");
    }
    for (n, f) in &info.outputs {
        println!("output     {n}: {f}");
    }
    println!("parameters {} ({:.1} MB)", info.parameters, info.parameter_bytes as f64 / 1e6);
    println!("nodes      {}", info.nodes);
    println!("ops        {}", info.op_histogram.iter().map(|(k, v)| format!("{k}:{v}")).collect::<Vec<_>>().join(" "));
    println!();
    println!("{} prunable layers", info.layers.len());
    let w = info.layers.iter().map(|l| l.module.len()).max().unwrap_or(6).max(6);
    println!("{:<w$}  {:<7} {:<13} {:>8}", "module", "op", "weight", "sparsity");
    for l in &info.layers {
        let shape = format!("{:?}", l.weight_shape);
        println!("{:<w$}  {:<7} {:<13} {:>7.2}%", l.module, l.op, shape, l.sparsity * 100.0);
    }
    if !info.int8_layers.is_empty() {
        println!();
        println!("{} int8 linear layers", info.int8_layers.len());
        let w = info.int8_layers.iter().map(|l| l.node.len()).max().unwrap_or(4).max(4);
        println!("{:<w$}  {:<14} {:<13} {:>8}  structure", "node", "form", "weight", "sparsity");
        for l in &info.int8_layers {
            let shape = format!("{:?}", l.weight_shape);
            println!("{:<w$}  {:<14} {:<13} {:>7.2}%  {}", l.node, l.form, shape, l.sparsity * 100.0, l.structure);
        }
    }
    Ok(())
}
