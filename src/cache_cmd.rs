//! `dino-run cache warm|stats|verify|gc`: fill, inspect, check and prune the
//! on-disk cache of a recipe's deterministic prefix.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Subcommand};
use dino3d_cache::{CacheDir, Entry};
use dino3d_pipeline::exec::{CacheSource, Dataset, Keep};
use dino3d_pipeline::recipe::Plan;
use rayon::prelude::*;

use crate::progress;
use crate::recipe_load::{Overrides, load_recipe};

/// Cache subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum CacheCmd {
    /// Fill the cache for a recipe's manifest (progress, then hits, misses,
    /// failures, bytes in/out and the compression ratio).
    Warm(WarmArgs),
    /// Summarise a cache folder (entries, bytes, stored types).
    Stats {
        /// The cache folder.
        dir: PathBuf,
    },
    /// Check every chunk of every entry; exits non-zero on damage.
    Verify {
        /// The cache folder.
        dir: PathBuf,
        /// Remove damaged entries (they are rebuilt on next use).
        #[arg(long)]
        remove: bool,
    },
    /// Remove entries the recipe and its manifest no longer reach, and
    /// leftovers of interrupted writes.
    Gc {
        /// The recipe.
        recipe: PathBuf,
        #[command(flatten)]
        overrides: Overrides,
        /// Only list what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
}

/// Arguments of `cache warm`.
#[derive(Debug, Args)]
pub(crate) struct WarmArgs {
    /// The recipe.
    recipe: PathBuf,
    #[command(flatten)]
    overrides: Overrides,
    /// Warm only shard I of N (items with index % N == I), e.g. `--shard 3/16`
    /// in a SLURM array job; shards share one cache folder safely. Without
    /// it, the launch variables decide (RANK/WORLD_SIZE of torchrun or
    /// `dino-run launch`, or an srun task's): one srun line warms a cache.
    #[arg(long, value_parser = parse_shard)]
    shard: Option<(usize, usize)>,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Keep going without writing when the cache folder cannot be written.
    #[arg(long)]
    allow_uncached: bool,
}

fn parse_shard(s: &str) -> Result<(usize, usize), String> {
    let (i, n) = s.split_once('/').ok_or("expected I/N, e.g. 0/4")?;
    let (i, n): (usize, usize) = (
        i.parse().map_err(|_| "I is not a number")?,
        n.parse().map_err(|_| "N is not a number")?,
    );
    if n == 0 || i >= n {
        return Err(format!("shard {i}/{n}: need 0 <= I < N"));
    }
    Ok((i, n))
}

pub(crate) fn run(cmd: CacheCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        CacheCmd::Warm(args) => warm(&args),
        CacheCmd::Stats { dir } => stats(&dir),
        CacheCmd::Verify { dir, remove } => verify(&dir, remove),
        CacheCmd::Gc {
            recipe,
            overrides,
            dry_run,
        } => gc(&recipe, &overrides, dry_run),
    }
}

/// The on-disk cache of a recipe, failing when it names none.
fn cache_of(plan: &Plan, recipe: &Path, allow_uncached: bool) -> anyhow::Result<Arc<CacheSource>> {
    let keep = Keep {
        disk: true,
        allow_uncached,
        memory: false,
    };
    let data = Dataset::open(plan, recipe, keep)
        .with_context(|| format!("opening the data of {}", recipe.display()))?;
    dino3d_tasks::data::log_items(&data.items);
    data.cache.with_context(|| {
        format!(
            "{}: the recipe names no cache (cache.dir)",
            recipe.display()
        )
    })
}

fn warm(args: &WarmArgs) -> anyhow::Result<ExitCode> {
    let (plan, _) = load_recipe(&args.recipe, &args.overrides)?;
    let source = cache_of(&plan, &args.recipe, args.allow_uncached)?;
    // Without --shard, a launcher's ranks (torchrun, srun, `dino-run
    // launch`) each warm their share.
    let (shard, shards) = match args.shard {
        Some(s) => s,
        None => {
            let env = dino3d_tasks::distributed::LaunchEnv::from_process_env()?;
            (env.rank, env.world_size)
        }
    };
    let items: Vec<usize> = (0..source.items().len())
        .filter(|i| i % shards == shard)
        .collect();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads.unwrap_or(0))
        .build()?;
    let bar = progress::bar(items.len() as u64, "volumes");
    let start = Instant::now();
    let failures: Vec<String> = pool.install(|| {
        items
            .par_iter()
            .filter_map(|&i| {
                let r = source.ensure(i);
                bar.inc(1);
                r.err().map(|e| e.to_string())
            })
            .collect()
    });
    bar.finish_and_clear();
    for f in &failures {
        eprintln!("failed: {f}");
    }
    for r in source.reports.lock().map(|r| r.clone()).unwrap_or_default() {
        eprintln!("{r}");
    }
    let s = &source.stats;
    let (bytes_in, bytes_out) = (s.bytes_in.load(Relaxed), s.bytes_out.load(Relaxed));
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{} items (shard {shard}/{shards}) in {secs:.1} s ({:.2} vol/s): {} hits, {} built, {} damaged and rebuilt, {} failed",
        items.len(),
        items.len() as f64 / secs,
        s.hits.load(Relaxed),
        s.misses.load(Relaxed),
        s.damaged.load(Relaxed),
        failures.len()
    );
    if bytes_out > 0 {
        println!(
            "built: {:.1} MiB of sources -> {:.1} MiB of cache ({:.2}x the source size)",
            bytes_in as f64 / 1048576.0,
            bytes_out as f64 / 1048576.0,
            bytes_out as f64 / bytes_in.max(1) as f64
        );
    }
    Ok(if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn stats(dir: &Path) -> anyhow::Result<ExitCode> {
    let cache = CacheDir::open_existing(dir)?;
    let entries = cache.entries();
    let (mut bytes, mut voxels, mut types) = (
        0u64,
        0u64,
        std::collections::BTreeMap::<String, usize>::new(),
    );
    let mut unreadable = 0;
    for p in &entries {
        match Entry::open(p) {
            Ok(e) => {
                bytes += e.len();
                for a in &e.header.arrays {
                    voxels += a.shape.iter().product::<usize>() as u64;
                    *types
                        .entry(format!(
                            "{}{}, {} chunks of {:?}",
                            a.dtype.name(),
                            if a.decode.is_some() { " + window" } else { "" },
                            a.codec.name(),
                            a.chunk
                        ))
                        .or_default() += 1;
                }
            }
            Err(_) => unreadable += 1,
        }
    }
    println!(
        "{}: {} entries, {:.1} MiB, {:.2} bytes/voxel",
        dir.display(),
        entries.len(),
        bytes as f64 / 1048576.0,
        bytes as f64 / voxels.max(1) as f64
    );
    for (t, n) in types {
        println!("  {n} arrays stored as {t}");
    }
    if unreadable > 0 {
        println!("  {unreadable} damaged entries (run `dino-run cache verify`)");
    }
    let left = cache.leftovers();
    if !left.is_empty() {
        println!(
            "  {} leftovers of interrupted writes (removed by `dino-run cache gc`)",
            left.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn verify(dir: &Path, remove: bool) -> anyhow::Result<ExitCode> {
    let cache = CacheDir::open_existing(dir)?;
    let entries = cache.entries();
    let bar = progress::bar(entries.len() as u64, "entries");
    let damaged: Vec<String> = entries
        .par_iter()
        .filter_map(|p| {
            let r = cache.verify(p);
            bar.inc(1);
            match r {
                Ok(_) => None,
                Err(e) => {
                    if remove {
                        let _ = std::fs::remove_file(p);
                    }
                    Some(e.to_string())
                }
            }
        })
        .collect();
    bar.finish_and_clear();
    for d in &damaged {
        eprintln!("{d}");
    }
    println!(
        "{}: {} entries checked, {} damaged{}",
        dir.display(),
        entries.len(),
        damaged.len(),
        if remove && !damaged.is_empty() {
            " (removed)"
        } else {
            ""
        }
    );
    Ok(if damaged.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn gc(recipe: &Path, overrides: &Overrides, dry_run: bool) -> anyhow::Result<ExitCode> {
    let (plan, _) = load_recipe(recipe, overrides)?;
    // gc writes no entries: an unwritable folder is reported when it deletes.
    let source = cache_of(&plan, recipe, true)?;
    let dir = source.dir();
    let live: std::collections::HashSet<PathBuf> = (0..source.items().len())
        .filter_map(|i| source.key(i).ok())
        .map(|k| dir.entry_path(&k))
        .collect();
    let mut removed = 0u64;
    let mut freed = 0u64;
    for p in dir
        .entries()
        .into_iter()
        .filter(|p| !live.contains(p))
        .chain(dir.leftovers())
    {
        freed += std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        removed += 1;
        if dry_run {
            println!("would remove {}", p.display());
        } else {
            std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
        }
    }
    println!(
        "{} {removed} files ({:.1} MiB); {} entries reachable",
        if dry_run { "would remove" } else { "removed" },
        freed as f64 / 1048576.0,
        live.len()
    );
    Ok(ExitCode::SUCCESS)
}
