//! `sparsec compile MODEL --recipe R [--recipe-args JSON] -o OUT [--explain] [--json]`: parses the
//! flags and prints the plan; the compiler is [`crate::compile`].

use std::path::PathBuf;

use anyhow::Result;

use crate::compile::{compile_folder, parse_recipe_args, print_table};
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
    let plan = compile_folder(&model_path, &recipe, &overrides, &args.output)?;
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
