//! `sparsec compile MODEL --recipe R [--recipe-args JSON] -o OUT [--explain] [--json]`: parses the
//! flags and prints the plan; the compiler is [`crate::compile`].

use std::path::PathBuf;

use anyhow::Result;

use super::parse_recipe_args;
use crate::compile::{compile_folder, Plan};
use crate::recipe::builtin::RecipeText;

#[derive(clap::Args)]
pub struct CompileArgs {
    /// A model.onnx, or a folder holding one.
    model: PathBuf,
    /// SparseML recipe: a file (.yaml, or .md with YAML front matter), a built-in name
    /// (`sparsec recipes`), or a SparseZoo stub that a built-in reproduces.
    #[arg(long)]
    recipe: String,
    /// JSON object overriding recipe variables, e.g. '{"num_epochs": 8}'.
    #[arg(long)]
    recipe_args: Option<String>,
    /// Output folder (replaced atomically).
    #[arg(short, long)]
    output: PathBuf,
    /// Print the plan as a table.
    #[arg(long)]
    explain: bool,
    /// Print the plan as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: CompileArgs) -> Result<()> {
    let model_path = super::resolve_model_path(&args.model);
    let overrides = parse_recipe_args(args.recipe_args.as_deref())?;
    let recipe = RecipeText::resolve(&args.recipe)?;
    if let Some(note) = &recipe.note {
        eprintln!("{note}");
    }
    let plan = compile_folder(&model_path, &recipe, &overrides, &args.output, &mut |f| eprintln!("warning: {f}"))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&plan)?);
    } else if args.explain {
        print_table(&plan);
    } else {
        let n = plan.modifiers.len();
        println!("compiled {} with {n} modifiers into {}", model_path.display(), args.output.display());
    }
    Ok(())
}

fn print_table(plan: &Plan) {
    println!("model   {}", plan.model);
    println!("recipe  {} (version {})", plan.recipe, plan.recipe_version.as_deref().unwrap_or("-"));
    println!("epochs  {}", plan.total_epochs);
    println!();
    println!("{:<3} {:<32} {:>5} {:>13} {:>7}  schedule / status", "#", "modifier", "line", "epochs", "targets");
    for m in &plan.modifiers {
        let epochs = format!("{}..{}", m.start_epoch, m.end_epoch);
        let sched = if !m.mask_updates.is_empty() {
            let ups: Vec<String> = m
                .mask_updates
                .iter()
                .map(|u| match u.sparsity {
                    Some(s) => format!("{}:{:.3}", u.epoch, s),
                    None => format!("{}:{:.0}%", u.epoch, u.progress * 100.0),
                })
                .collect();
            format!("mask updates (epoch:sparsity) {}", ups.join(" "))
        } else if let Some(q) = &m.quantization {
            format!("QAT from epoch {}, observers frozen at {}", q["qat_starts_epoch"], q["observers_frozen_epoch"])
        } else {
            String::new()
        };
        println!("{:<3} {:<32} {:>5} {:>13} {:>7}  {sched}", m.index, m.name, m.line, epochs, m.targets.len());
        if m.status != "applied" {
            println!("{:<3} {:<32} {:>5} {:>13} {:>7}  ({})", "", "", "", "", "", m.status);
        }
    }
    println!();
    println!("new graph inputs: {}", plan.graph_inputs.len());
    for p in &plan.passes {
        println!("pass {:<22} rewrote {} sites", p.pass, p.rewritten);
    }
    println!("loss/gradients: {}", plan.autodiff);
}
