//! `task: segment`: runs the tasks crate's finetuning, then writes each test
//! case's prediction (NIfTI with its affine), `curves.png` and
//! `results.json`, and prints the scores.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use dino3d_pipeline::recipe::Plan;
use dino3d_tasks::segment::config::SegmentConfig;

use crate::progress::Terminal;

/// `task: segment`.
pub(crate) fn run(
    plan: &Plan,
    config: &SegmentConfig,
    recipe: &Path,
    device: &dino3d_model::candle_core::Device,
) -> anyhow::Result<ExitCode> {
    let report = dino3d_tasks::segment::run(plan, config, recipe, &Terminal, device)?;
    for (path, volume) in &report.predictions {
        dino3d_pipeline::nifti::write_volume(path, volume, &Default::default())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let results = &report.results;
    crate::plot::curves::curves(
        &results.loss_curve,
        &results.val_dice_curve,
        &report.out.join("curves.png"),
    )?;
    let json = report.out.join("results.json");
    std::fs::write(&json, serde_json::to_string_pretty(results)?)
        .with_context(|| format!("writing {}", json.display()))?;
    println!(
        "best validation Dice {:.4} (iteration {}); test mean Dice {:.4}, per class {:?}",
        results.best_val_dice,
        results.best_iteration,
        results.test_mean_dice,
        results
            .test_dice_per_class
            .iter()
            .map(|d| (d * 1000.0).round() / 1000.0)
            .collect::<Vec<_>>()
    );
    println!("-> {}", json.display());
    Ok(ExitCode::SUCCESS)
}
