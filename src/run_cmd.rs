//! `dino-run RECIPE`: the job the recipe's `task:` names, and what it prints.

use std::path::Path;
use std::process::ExitCode;

use dino3d_pipeline::recipe::Plan;
use dino3d_tasks::Task;

use crate::progress::Terminal;
use crate::recipe_load::{Overrides, load_recipe};

/// `dino-run RECIPE`.
pub(crate) fn run_recipe(
    recipe: &Path,
    overrides: &Overrides,
    device: &dino3d_model::candle_core::Device,
    allow_uncached: bool,
) -> anyhow::Result<ExitCode> {
    let env = dino3d_tasks::distributed::LaunchEnv::from_process_env()?;
    let (plan, task) = load_recipe(recipe, overrides)?;
    if !matches!(task, Task::Pretrain(_)) {
        single_process_only(&env, task.name())?;
    }
    if matches!(task, Task::Prepare) {
        crate::device::require_cpu(device, task.name())?;
    }
    match &task {
        Task::Prepare => prepare(&plan, recipe),
        Task::Pretrain(config) => {
            let options = dino3d_tasks::pretrain::Options { allow_uncached };
            if env.world_size > 1 {
                return crate::ranks::pretrain_across_gpus(
                    &env, &plan, config, recipe, device, &options,
                );
            }
            let single = dino3d_model::dist::SingleProcess;
            crate::pretrain_cmd::run(&plan, config, recipe, device, &options, &single)
        }
        Task::Segment(config) => crate::segment_cmd::run(&plan, config, recipe, device),
        Task::LinearProbe(config) => crate::linear_probe_cmd::run(&plan, config, recipe, device),
        Task::Embed(config) => crate::embed_table::run_recipe(&plan, config, recipe, device),
    }
}

/// Refuses a launch of several ranks for tasks other than pretraining: each
/// rank would run the whole job and write the same files (README, "Several
/// GPUs").
fn single_process_only(
    env: &dino3d_tasks::distributed::LaunchEnv,
    task: &str,
) -> anyhow::Result<()> {
    if env.world_size > 1 {
        anyhow::bail!(
            "this process is rank {} of {} ({:?} launch variables), but task `{task}` runs \
             as one process (only `pretrain` runs across GPUs); unset the launcher's \
             variables (RANK, WORLD_SIZE, ...) or run one srun task",
            env.rank,
            env.world_size,
            env.source
        );
    }
    Ok(())
}

/// `task: prepare`: the deterministic prefix over every item, failures named.
fn prepare(plan: &Plan, recipe: &Path) -> anyhow::Result<ExitCode> {
    let report = dino3d_tasks::prepare::run(plan, recipe, &Terminal)?;
    let failed = report.failures();
    for f in &failed {
        eprintln!("failed: {f}");
    }
    let n = report.items.len();
    println!(
        "prepared {} of {n} volumes in {:.2} s ({:.2} vol/s); {} failed",
        n - failed.len(),
        report.seconds,
        n as f64 / report.seconds,
        failed.len()
    );
    Ok(if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
