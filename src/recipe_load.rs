//! Reading a recipe on the command line: `--set` overrides, and the compiled
//! plan and task with every error printed.

use std::path::Path;

use clap::Args;
use dino3d_pipeline::recipe::Plan;
use dino3d_tasks::Task;

/// `--set` overrides shared by every command that reads a recipe.
#[derive(Debug, Args, Clone, Default)]
pub(crate) struct Overrides {
    /// Override a recipe value: `--set batch.size=4 --set views.2.count=4`.
    #[arg(long = "set", value_name = "PATH=VALUE")]
    pub(crate) sets: Vec<String>,
}

/// Compiles a recipe with overrides, printing every error.
pub(crate) fn load_recipe(recipe: &Path, overrides: &Overrides) -> anyhow::Result<(Plan, Task)> {
    dino3d_tasks::compile_file_with(recipe, &overrides.sets).map_err(|errors| {
        anyhow::anyhow!(
            "{errors}\n{}: {} error(s)",
            recipe.display(),
            errors.0.len()
        )
    })
}
