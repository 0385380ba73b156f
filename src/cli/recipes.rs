//! `sparsec recipes [show NAME]`: lists the recipes built into the binary, or prints one.

use anyhow::{bail, Result};

use crate::recipe::builtin;

#[derive(clap::Args)]
pub struct RecipesArgs {
    #[command(subcommand)]
    command: Option<RecipesCommand>,
}

#[derive(clap::Subcommand)]
enum RecipesCommand {
    /// Print a built-in recipe (pass the name to `--recipe`, or save and edit it).
    Show {
        /// A name from `sparsec recipes`.
        name: String,
    },
}

pub fn run(args: RecipesArgs) -> Result<()> {
    match args.command {
        None => {
            println!("built-in recipes (use the name as --recipe NAME; `sparsec recipes show NAME` prints one):");
            print!("{}", builtin::listing());
        }
        Some(RecipesCommand::Show { name }) => match builtin::find(&name) {
            Some(b) => print!("{}", b.text),
            None => {
                bail!("'{name}' is not a built-in recipe; the built-in recipes are:\n{}", builtin::listing().trim_end())
            }
        },
    }
    Ok(())
}
