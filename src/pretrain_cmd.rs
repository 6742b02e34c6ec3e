//! `task: pretrain`: runs the tasks crate's training loop, redraws
//! `loss.png` at every checkpoint and prints how the run ended.

use std::path::Path;
use std::process::ExitCode;

use dino3d_model::candle_core::Device;
use dino3d_model::dist::Collective;
use dino3d_pipeline::recipe::Plan;
use dino3d_tasks::pretrain::config::PretrainConfig;
use dino3d_tasks::pretrain::{self, Outcome};

use crate::progress::Terminal;

/// Runs (or resumes) the pretraining a recipe describes, as rank
/// `comm.rank()` of `comm.world_size()` (`SingleProcess` for one).
pub(crate) fn run(
    plan: &Plan,
    config: &PretrainConfig,
    recipe: &Path,
    device: &Device,
    options: &pretrain::Options,
    comm: &dyn Collective,
) -> anyhow::Result<ExitCode> {
    let mut redraw = |history: &[pretrain::metrics::Record], out: &Path| {
        if let Err(e) = crate::plot::loss::loss_curve(history, &out.join("loss.png")) {
            tracing::warn!("loss curve: {e:#}");
        }
    };
    match pretrain::run_ranked(
        plan,
        config,
        recipe,
        device,
        options,
        &Terminal,
        &mut redraw,
        comm,
    )? {
        Outcome::NothingToDo { done, total, out } => println!(
            "nothing to do: {done} of {total} iterations done ({})",
            out.display()
        ),
        Outcome::Trained {
            start,
            end,
            total,
            last_loss,
            seconds_per_iteration,
            data_wait_percent,
            out,
        } => println!(
            "iterations {start}..{end} of {total}: last loss {last_loss:.4}; {seconds_per_iteration:.2} s/it, data wait {data_wait_percent:.1}% of step time; output {}",
            out.display()
        ),
    }
    Ok(ExitCode::SUCCESS)
}
