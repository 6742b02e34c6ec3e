//! `task: linear_probe`: runs the tasks crate's probe, then writes
//! `results.json` and each backbone's `test_logits_<name>.json` into the
//! probe's output folder, and prints the chosen classifiers.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use dino3d_pipeline::recipe::Plan;
use dino3d_tasks::linear_probe::config::LinearProbeConfig;
use dino3d_tasks::linear_probe::{Report, TestLogits};

use crate::progress::Terminal;

/// Runs `task: linear_probe`.
pub(crate) fn run(
    plan: &Plan,
    p: &LinearProbeConfig,
    recipe: &Path,
    device: &dino3d_model::candle_core::Device,
) -> anyhow::Result<ExitCode> {
    let report = dino3d_tasks::linear_probe::run(plan, p, recipe, &Terminal, device)?;
    let out = &report.output_dir;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut results = serde_json::Map::new();
    for probed in &report.probed {
        let o = &probed.outcome;
        write_logits(
            &out.join(&o.test_logits),
            &probed.test_logits,
            &report.class_names,
        )?;
        println!(
            "{}: best {} (val {:.3} at it {}): test accuracy {:.3}, macro AUC {}",
            probed.name,
            o.best_classifier,
            o.val_accuracy,
            o.best_val_iteration,
            o.test_accuracy,
            o.test_auc_macro_ovr
                .map_or("n/a".into(), |a| format!("{a:.3}"))
        );
        results.insert(probed.name.to_string(), serde_json::to_value(o)?);
    }
    let doc = results_json(&report, p, recipe, results);
    let json = out.join("results.json");
    std::fs::write(&json, serde_json::to_vec_pretty(&doc)?)
        .with_context(|| format!("writing {}", json.display()))?;
    println!("-> {}", json.display());
    Ok(ExitCode::SUCCESS)
}

/// `results.json`.
fn results_json(
    report: &Report,
    p: &LinearProbeConfig,
    recipe: &Path,
    results: serde_json::Map<String, serde_json::Value>,
) -> serde_json::Value {
    serde_json::json!({
        "recipe": recipe.display().to_string(),
        "datalist": report.datalist.display().to_string(),
        "weights": report.weights.display().to_string(),
        "arch": p.arch,
        "image_size": p.image_size,
        "classes": report.classes,
        "class_names": report.class_names,
        "counts": {
            "training": report.counts[0],
            "validation": report.counts[1],
            "test": report.counts[2],
        },
        "skipped": report.skipped,
        "iterations": p.total_iterations(),
        "batch_size": p.batch_size,
        "lr_scale": p.batch_size as f64 / 256.0,
        "classifiers": report.classifiers,
        "results": results,
    })
}

/// `test_logits_<name>.json`.
fn write_logits(path: &Path, t: &TestLogits, class_names: &[String]) -> anyhow::Result<()> {
    let doc = serde_json::json!({
        "classifier": t.classifier,
        "class_names": class_names,
        "images": t.images,
        "targets": t.targets,
        "logits": t.logits,
    });
    std::fs::write(path, serde_json::to_vec(&doc)?)
        .with_context(|| format!("writing {}", path.display()))
}
