//! `dino-run pipeline run RECIPE`: stream batches from a recipe's data
//! pipeline, report throughput and skipped items, and save a batch's crops as
//! NIfTI for a look.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Subcommand};
use dino3d_pipeline::exec::{Dataset, Keep, Loader, LoaderConfig, Order, Tensor5};
use dino3d_pipeline::layout::to_x_fastest;
use dino3d_pipeline::nifti::{WriteOptions, affine::IDENTITY, write_volume};
use dino3d_pipeline::{Volume, VolumeMeta, VoxelData, Voxels};
use dino3d_tasks::data::log_items;
use rayon::prelude::*;

use crate::progress;
use crate::recipe_load::{Overrides, load_recipe};

/// Data-pipeline subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum PipelineCmd {
    /// Stream batches from a recipe (prefix, random tail, views, collate,
    /// masks) and report samples/s; optionally save one batch's crops.
    Run(PipelineRunArgs),
}

/// Arguments of `pipeline run`.
#[derive(Debug, Args)]
pub(crate) struct PipelineRunArgs {
    /// The recipe.
    recipe: PathBuf,
    #[command(flatten)]
    overrides: Overrides,
    /// Batches to produce.
    #[arg(long, default_value_t = 8)]
    batches: usize,
    /// Worker threads (default: the recipe's, else all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Keep prepared (prefix) samples in memory across epochs (instead of the
    /// recipe's on-disk cache).
    #[arg(long)]
    memory_cache: bool,
    /// Ignore the recipe's on-disk cache: prepare every item on every use.
    #[arg(long)]
    no_cache: bool,
    /// Serve samples uncached when the cache folder cannot be written.
    #[arg(long)]
    allow_uncached: bool,
    /// Write the first batch's crops here as NIfTI (z-fastest tensors turned
    /// back into volumes) with its masks as JSON.
    #[arg(long)]
    save_batch: Option<PathBuf>,
    /// Memory order of the batches' crops: `z` (PyTorch's layout, what CPU
    /// training takes) or `x` (as pretraining on a GPU takes them, the GPU
    /// turning them).
    #[arg(long, value_enum, default_value_t = BatchOrder::Z)]
    batch_order: BatchOrder,
}

/// `--batch-order`: which spatial axis runs fastest in a batch's crops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum BatchOrder {
    /// z fastest (PyTorch's layout).
    Z,
    /// x fastest (the stored order; a GPU turns it).
    X,
}

impl From<BatchOrder> for Order {
    fn from(order: BatchOrder) -> Order {
        match order {
            BatchOrder::Z => Order::ZFastest,
            BatchOrder::X => Order::XFastest,
        }
    }
}

pub(crate) fn run_pipeline(cmd: PipelineCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        PipelineCmd::Run(args) => pipeline_run(&args),
    }
}

fn pipeline_run(args: &PipelineRunArgs) -> anyhow::Result<ExitCode> {
    let (plan, _) = load_recipe(&args.recipe, &args.overrides)?;
    let keep = Keep {
        disk: !(args.memory_cache || args.no_cache),
        allow_uncached: args.allow_uncached,
        memory: args.memory_cache,
    };
    let data = Dataset::open(&plan, &args.recipe, keep)?;
    log_items(&data.items);
    let cache_note = if data.cache.is_some() {
        "on-disk cache"
    } else if args.memory_cache {
        "memory cache"
    } else {
        "no cache"
    };
    let (pipeline, source, cached) = (data.pipeline, data.source, data.cache);
    let mut config = LoaderConfig::from_plan(&plan);
    if let Some(t) = args.threads {
        config.threads = t;
    }
    config.order = args.batch_order.into();
    let threads = if config.threads == 0 {
        rayon::current_num_threads()
    } else {
        config.threads
    };
    eprintln!(
        "{} items, batch {}, {} thread(s), prefix {} ({cache_note})",
        source.len(),
        config.batch_size,
        threads,
        if pipeline.is_fused() {
            "fused 3DINO chain"
        } else {
            "step by step"
        }
    );
    let bar = progress::bar(args.batches as u64, "batches");
    let start = Instant::now();
    let (mut samples, mut skipped) = (0usize, 0usize);
    let mut loader = Loader::start(pipeline, source, config).map_err(anyhow::Error::msg)?;
    for _ in 0..args.batches {
        let Some(loaded) = loader.next() else {
            break;
        };
        let mut loaded = loaded.map_err(anyhow::Error::msg)?;
        for s in &loaded.skipped {
            tracing::warn!("skipped: {s}");
        }
        skipped += loaded.skipped.len() + loaded.skipped_again;
        samples += loaded.batch.items.len();
        if loaded.index == 0
            && let Some(dir) = &args.save_batch
        {
            save_batch(dir, &loaded)?;
        }
        loader.recycle(&mut loaded.batch);
        bar.inc(1);
        bar.set_message(format!(
            "{:.1} samples/s",
            samples as f64 / start.elapsed().as_secs_f64()
        ));
    }
    bar.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{samples} samples in {secs:.2} s: {:.2} samples/s with {threads} thread(s); {skipped} item(s) skipped",
        samples as f64 / secs
    );
    if let Some(c) = &cached {
        use std::sync::atomic::Ordering::Relaxed;
        for r in c.reports.lock().map(|r| r.clone()).unwrap_or_default() {
            tracing::warn!("{r}");
        }
        println!(
            "cache: {} hits, {} built, {} damaged and rebuilt",
            c.stats.hits.load(Relaxed),
            c.stats.misses.load(Relaxed),
            c.stats.damaged.load(Relaxed)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes crop `n` of `t` as a NIfTI volume (x fastest).
fn tensor_volume(t: &Tensor5, n: usize) -> Volume {
    let [_, c, x, y, z] = t.shape;
    let len = c * x * y * z;
    let crop = &t.data[n * len..(n + 1) * len];
    let data = match t.order {
        Order::ZFastest => to_x_fastest(crop, [c, x, y, z]),
        Order::XFastest => crop.to_vec(),
    };
    Volume {
        data: VoxelData::F32(Voxels::from(data)),
        shape: [c, x, y, z],
        spacing: [1.0; 3],
        affine: IDENTITY,
        scaling: None,
        meta: VolumeMeta::default(),
    }
}

fn save_batch(dir: &Path, loaded: &dino3d_pipeline::exec::LoadedBatch) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let b = &loaded.batch;
    let mut jobs: Vec<(String, &Tensor5, usize)> = Vec::new();
    for (name, t) in [("global", &b.global), ("local", &b.local)] {
        let per = b.items.len().max(1);
        for n in 0..t.shape[0] {
            jobs.push((
                format!("{name}_crop{}_sample{}.nii.gz", n / per, n % per),
                t,
                n,
            ));
        }
    }
    for (key, t) in &loaded.tensors {
        for n in 0..t.shape[0] {
            jobs.push((format!("{key}_sample{n}.nii.gz"), t, n));
        }
    }
    jobs.par_iter().try_for_each(|(name, t, n)| {
        write_volume(
            dir.join(name),
            &tensor_volume(t, *n),
            &WriteOptions { gzip_level: 1 },
        )
    })?;
    let masks = serde_json::json!({
        "items": b.items,
        "tokens": b.masks.tokens,
        "masked_per_crop": b.masks.mask.chunks(b.masks.tokens.max(1)).map(|r| r.iter().filter(|&&m| m).count()).collect::<Vec<_>>(),
        "n_masked": b.masks.n_masked(),
        "upperbound": b.masks.upperbound,
    });
    std::fs::write(
        dir.join("masks.json"),
        serde_json::to_string_pretty(&masks)?,
    )?;
    eprintln!(
        "saved batch 0 ({} files) to {}",
        jobs.len() + 1,
        dir.display()
    );
    Ok(())
}
