//! `dino-run recipe check FILE`: validate a recipe and print its compiled plan.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

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
        overrides: crate::recipe_load::Overrides,
    },
}

pub(crate) fn run(cmd: RecipeCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        RecipeCmd::Check { file, overrides } => {
            match dino3d_tasks::compile_file_with(&file, &overrides.sets) {
                Ok((plan, task)) => {
                    println!("{}: ok", file.display());
                    print!("{}", dino3d_tasks::describe(&plan, &task));
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
