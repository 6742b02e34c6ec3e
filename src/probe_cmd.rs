//! `dino-run probe RECIPE`: does pretraining help? Runs the tasks crate's kNN
//! probe of the newest teacher against its random initialisation, prints
//! each atlas's scores and writes `probe.json` to the recipe's output folder.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use clap::Args;
use dino3d_tasks::Task;
use dino3d_tasks::probe::Options;

use crate::progress::Terminal;
use crate::recipe_load::{Overrides, load_recipe};

/// Arguments of `probe`.
#[derive(Debug, Args)]
pub(crate) struct ProbeArgs {
    /// The pretraining recipe (its model, seed and output folder).
    recipe: PathBuf,
    #[command(flatten)]
    overrides: Overrides,
    /// Teacher weights to probe (default: the newest checkpoint of the
    /// recipe's output folder).
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Neighbours of the kNN.
    #[arg(long, default_value_t = Options::K)]
    k: usize,
    /// Voxel size (mm) the volumes are resized to (default: what the
    /// global crops saw, about 2.4 mm for the demo's 64³ crops).
    #[arg(long, default_value_t = Options::MM)]
    mm: f64,
    /// Token-grid offsets are tried every this many voxels (denser = more
    /// tokens).
    #[arg(long, default_value_t = Options::STRIDE)]
    stride: usize,
    /// The bundled data folder.
    #[arg(long, default_value = Options::DATA)]
    data: PathBuf,
    /// Where the backbones run: cpu, cuda or cuda:N (CUDA needs a build with
    /// `--features cuda`).
    #[arg(long, default_value = "cpu", value_name = "cpu|cuda:N")]
    device: String,
}

pub(crate) fn run(args: &ProbeArgs) -> anyhow::Result<ExitCode> {
    let (plan, task) = load_recipe(&args.recipe, &args.overrides)?;
    let Task::Pretrain(config) = task else {
        bail!("the recipe has no training sections");
    };
    let options = Options {
        weights: args.weights.clone(),
        k: args.k,
        mm: args.mm,
        stride: args.stride,
        data: args.data.clone(),
    };
    let device = crate::device::parse(&args.device)?;
    let report =
        dino3d_tasks::probe::run(&plan, &config, &args.recipe, &options, &Terminal, &device)?;
    for r in &report.results {
        println!(
            "{}: {} train / {} test tokens; kNN (k={}) accuracy {:.3} pretrained vs {:.3} random init; balanced {:.3} vs {:.3}",
            r.task,
            r.train_tokens,
            r.test_tokens,
            args.k,
            r.pretrained.accuracy,
            r.random_init.accuracy,
            r.pretrained.balanced_accuracy,
            r.random_init.balanced_accuracy
        );
    }
    std::fs::create_dir_all(&report.out)?;
    let json = report.out.join("probe.json");
    std::fs::write(
        &json,
        serde_json::to_vec_pretty(&serde_json::json!({
            "weights": report.weights.display().to_string(),
            "k": args.k,
            "mm": args.mm,
            "results": report.results,
        }))?,
    )?;
    println!("-> {}", json.display());
    Ok(ExitCode::SUCCESS)
}
