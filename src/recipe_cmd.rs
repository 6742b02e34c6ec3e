//! `dino-run recipe check FILE`: validate a recipe and print its compiled plan
//! and the plan passes that apply; `dino-run recipe transforms`: the
//! transforms a recipe may name, from the registry.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use dino3d_pipeline::exec::Pipeline;
use dino3d_pipeline::transforms::registry;

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
    /// List every transform a recipe may name, with its parameters (kind,
    /// default) and a summary (Markdown, as in the README).
    Transforms,
}

pub(crate) fn run(cmd: RecipeCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        RecipeCmd::Check { file, overrides } => {
            match dino3d_tasks::compile_file_with(&file, &overrides.sets) {
                Ok((plan, task)) => {
                    println!("{}: ok", file.display());
                    print!("{}", dino3d_tasks::describe(&plan, &task));
                    let pipeline = Pipeline::new(&plan);
                    if pipeline.passes_applied().is_empty() {
                        println!("plan passes: none apply");
                    } else {
                        println!("plan passes:");
                        for pass in pipeline.passes_applied() {
                            println!("  {pass}");
                        }
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(errors) => {
                    eprintln!("{errors}");
                    eprintln!("{}: {} error(s)", file.display(), errors.0.len());
                    Ok(ExitCode::from(2))
                }
            }
        }
        RecipeCmd::Transforms => {
            print!("{}", registry::markdown());
            Ok(ExitCode::SUCCESS)
        }
    }
}
