//! `dino-run RECIPE` (the recipe's `task:` picks the job) and
//! `dino-run pipeline run RECIPE`: stream batches from a recipe's data
//! pipeline, report throughput and skipped items, and save a batch's crops as
//! NIfTI for a look.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use dino3d_pipeline::exec::{
    Dataset, Items, Keep, Loader, LoaderConfig, Pipeline, Tensor5, plan_items,
};
use dino3d_pipeline::manifest::ManifestEntry;
use dino3d_pipeline::nifti::{WriteOptions, affine::IDENTITY, write_volume};
use dino3d_pipeline::recipe::{Plan, compile_file_with};
use dino3d_pipeline::{Volume, VolumeMeta, VoxelData, Voxels};
use rayon::prelude::*;

use crate::progress;

/// `--set` overrides shared by every command that reads a recipe.
#[derive(Debug, Args, Clone, Default)]
pub(crate) struct Overrides {
    /// Override a recipe value: `--set batch.size=4 --set views.2.count=4`.
    #[arg(long = "set", value_name = "PATH=VALUE")]
    pub(crate) sets: Vec<String>,
}

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
}

pub(crate) fn run_pipeline(cmd: PipelineCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        PipelineCmd::Run(args) => pipeline_run(&args),
    }
}

/// Compiles a recipe with overrides, printing every error.
pub(crate) fn load_plan(recipe: &Path, overrides: &Overrides) -> anyhow::Result<Plan> {
    compile_file_with(recipe, &overrides.sets).map_err(|errors| {
        anyhow::anyhow!(
            "{errors}\n{}: {} error(s)",
            recipe.display(),
            errors.0.len()
        )
    })
}

/// The manifest a plan names (relative to the recipe's folder), filtered by
/// `data.min_axis` as 3DINO does; what was dropped or unreadable is logged.
pub(crate) fn plan_entries(
    plan: &Plan,
    recipe: &Path,
) -> anyhow::Result<(PathBuf, Vec<ManifestEntry>)> {
    let items = plan_items(plan, recipe)?;
    log_items(&items);
    Ok((items.manifest, items.entries))
}

/// Logs the items a recipe's data dropped (`data.min_axis`) or could not read.
pub(crate) fn log_items(items: &Items) {
    for r in &items.rejects {
        tracing::warn!("skipped {}: {}", r.file, r.reason);
    }
    if items.dropped_by_min_axis > 0 {
        tracing::info!(
            "{} of {} items dropped by data.min_axis",
            items.dropped_by_min_axis,
            items.dropped_by_min_axis + items.entries.len()
        );
    }
}

fn pipeline_run(args: &PipelineRunArgs) -> anyhow::Result<ExitCode> {
    let plan = load_plan(&args.recipe, &args.overrides)?;
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
    let loader = Loader::start(pipeline, source, config).map_err(anyhow::Error::msg)?;
    for loaded in loader.take(args.batches) {
        let loaded = loaded.map_err(anyhow::Error::msg)?;
        for s in &loaded.skipped {
            tracing::warn!("skipped: {s}");
        }
        skipped += loaded.skipped.len();
        samples += loaded.batch.items.len();
        if loaded.index == 0
            && let Some(dir) = &args.save_batch
        {
            save_batch(dir, &loaded)?;
        }
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

/// Writes crop `n` of `t` as a NIfTI volume (back to x-fastest).
fn tensor_volume(t: &Tensor5, n: usize) -> Volume {
    let [_, c, x, y, z] = t.shape;
    let mut data = Vec::with_capacity(c * x * y * z);
    for ch in 0..c {
        for k in 0..z {
            for j in 0..y {
                for i in 0..x {
                    data.push(t.at(n, ch, i, j, k));
                }
            }
        }
    }
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

/// `dino-run RECIPE`: the job its `task:` names.
pub(crate) fn run_recipe(
    recipe: &Path,
    overrides: &Overrides,
    device: &dino3d_model::candle_core::Device,
) -> anyhow::Result<ExitCode> {
    let plan = load_plan(recipe, overrides)?;
    if plan.task != "pretrain" {
        crate::device::require_cpu(device, &plan.task)?;
    }
    match plan.task.as_str() {
        "prepare" => prepare_all(&plan, recipe),
        "pretrain" => crate::train::pretrain(&plan, recipe, device),
        "segment" => crate::segment::run(&plan, recipe),
        "linear_probe" => crate::linear::run(&plan, recipe),
        "embed" => crate::embed_table::run_recipe(&plan, recipe),
        other => bail!(
            "{}: unknown task `{other}` (available: prepare, pretrain, segment, linear_probe, embed)",
            recipe.display()
        ),
    }
}

/// `task: prepare`: runs the deterministic prefix over every item in parallel
/// and reports what fails (the on-disk cache that keeps the results is issue 4).
fn prepare_all(plan: &Plan, recipe: &Path) -> anyhow::Result<ExitCode> {
    let (manifest, entries) = plan_entries(plan, recipe)?;
    let pipeline = Pipeline::new(plan);
    let bar = progress::bar(entries.len() as u64, "volumes");
    let start = Instant::now();
    let results: Vec<(String, Result<[usize; 4], String>)> = entries
        .par_iter()
        .map(|e| {
            let r = pipeline
                .prepare(e, &manifest)
                .map(|s| s.images.first().map_or([0; 4], |(_, i)| i.shape))
                .map_err(|err| err.to_string());
            bar.inc(1);
            (e.image.clone(), r)
        })
        .collect();
    bar.finish_and_clear();
    let failed: Vec<&String> = results
        .iter()
        .filter_map(|(_, r)| r.as_ref().err())
        .collect();
    for f in &failed {
        eprintln!("failed: {f}");
    }
    println!(
        "prepared {} of {} volumes in {:.2} s ({:.2} vol/s); {} failed",
        results.len() - failed.len(),
        results.len(),
        start.elapsed().as_secs_f64(),
        results.len() as f64 / start.elapsed().as_secs_f64(),
        failed.len()
    );
    Ok(if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
