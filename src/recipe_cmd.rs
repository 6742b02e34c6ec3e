//! `dino-run recipe check FILE`: validate a recipe and print its compiled plan.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use dino3d_pipeline::recipe;

/// Recipe subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum RecipeCmd {
    /// Validate a recipe (before any data is read) and print the compiled plan:
    /// cached prefix, random tail, views, batching, prefix hash. Exits non-zero
    /// on any error.
    Check {
        /// The recipe (YAML).
        file: PathBuf,
        #[command(flatten)]
        overrides: crate::run_cmd::Overrides,
    },
}

pub(crate) fn run(cmd: RecipeCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        RecipeCmd::Check { file, overrides } => {
            match recipe::compile_file_with(&file, &overrides.sets) {
                Ok(plan) => {
                    println!("{}: ok", file.display());
                    print!("{plan}");
                    Ok(ExitCode::SUCCESS)
                }
                Err(errors) => {
                    eprintln!("{errors}");
                    eprintln!("{}: {} error(s)", file.display(), errors.0.len());
                    Ok(ExitCode::from(2))
                }
            }
        }
    }
}
