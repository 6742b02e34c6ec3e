//! `dino-run manifest build|stats|split`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Subcommand;
use dino3d_pipeline::manifest::{
    self, DatalistItem, ManifestEntry, PathStyle, ScanOptions, ScanRecord, scan::relative_to,
};
use dino3d_pipeline::nifti::write_atomic;

use crate::progress;
use crate::stats::{SummaryRow, summarize};

/// Manifest subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum ManifestCmd {
    /// Scan folders, files or globs (headers only, in parallel) and write a
    /// 3DINO pretraining list (.json) or a Parquet manifest (.parquet).
    Build(BuildArgs),
    /// Summarise an existing manifest (JSON or Parquet).
    Stats {
        /// The manifest.
        file: PathBuf,
    },
    /// Build a finetuning datalist {"training", "validation", "test"}.
    Split(SplitArgs),
}

/// Arguments of `manifest build`.
#[derive(Debug, clap::Args)]
pub(crate) struct BuildArgs {
    /// Folders (scanned recursively), files or glob patterns.
    #[arg(required = true)]
    inputs: Vec<String>,
    /// Output: `.json` (3DINO list) or `.parquet` (same rows plus filter columns).
    #[arg(short, long)]
    output: PathBuf,
    /// Drop volumes whose smallest spatial axis is <= N (3DINO's data_min_axis_size).
    #[arg(long, value_name = "N")]
    min_axis: Option<u64>,
    /// Write absolute paths (default: relative to the manifest's folder).
    #[arg(long)]
    absolute: bool,
    /// Fail (and write nothing) if any file is unreadable.
    #[arg(long)]
    strict: bool,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Where to write the rejects report (default: OUTPUT.rejects.json).
    #[arg(long)]
    rejects: Option<PathBuf>,
}

/// Arguments of `manifest split`.
#[derive(Debug, clap::Args)]
pub(crate) struct SplitArgs {
    /// Folder of images (paired with --labels by file name).
    #[arg(long, requires = "labels", conflicts_with = "csv")]
    images: Option<PathBuf>,
    /// Folder of label maps.
    #[arg(long)]
    labels: Option<PathBuf>,
    /// CSV with `image,label` columns; integer labels give a classification list.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Training, validation and test fractions.
    #[arg(long, default_value = "0.7,0.15,0.15", value_delimiter = ',')]
    ratios: Vec<f64>,
    /// Seed of the deterministic split.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output datalist (.json).
    #[arg(short, long)]
    output: PathBuf,
    /// Write absolute paths (default: relative to the datalist's folder).
    #[arg(long)]
    absolute: bool,
    /// Leave unpaired images and labels out instead of failing.
    #[arg(long)]
    allow_unpaired: bool,
}

pub(crate) fn run(cmd: ManifestCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        ManifestCmd::Build(args) => build(&args),
        ManifestCmd::Stats { file } => stats(&file),
        ManifestCmd::Split(args) => split(&args),
    }
}

fn build(args: &BuildArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let (files, unlistable) = manifest::scan::discover_reporting(&args.inputs)?;
    if files.is_empty() && unlistable.is_empty() {
        bail!(
            "no volume files (.nii, .nii.gz, .hdr, .mha, .mhd, .nrrd, .nhdr, DICOM series folders) found in {:?}",
            args.inputs
        );
    }
    let opts = ScanOptions {
        min_axis: args.min_axis,
        path_style: if args.absolute {
            PathStyle::Absolute
        } else {
            PathStyle::RelativeToManifest
        },
        manifest_path: Some(args.output.clone()),
    };
    let bar = progress::bar(files.len() as u64, "headers");
    let scan = || manifest::scan(&files, &opts, &|_| bar.inc(1));
    let result = match args.threads {
        Some(n) => rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()?
            .install(scan),
        None => scan(),
    };
    bar.finish_and_clear();
    let mut result = result;
    let unlistable_count = unlistable.len();
    // Entries that could not even be listed are rejects too, reported first.
    result.rejects.splice(0..0, unlistable);
    let secs = started.elapsed().as_secs_f64();
    // Every entry found is kept, rejected or dropped: the counts add up.
    let found = files.len() + unlistable_count;
    eprintln!(
        "scanned {found} entries in {:.2} s ({:.0} files/s): {} kept, {} rejected, {} dropped by --min-axis",
        secs,
        files.len() as f64 / secs.max(1e-9),
        result.records.len(),
        result.rejects.len(),
        result.too_small,
    );
    for r in &result.rejects {
        eprintln!("  rejected {}: {}", r.file, r.reason);
    }
    if args.strict && !result.rejects.is_empty() {
        bail!(
            "{} unreadable files (--strict): nothing written",
            result.rejects.len()
        );
    }
    if let Some(dir) = args.output.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if manifest::is_parquet(&args.output) {
        manifest::parquet::write_records(&args.output, &result.records)?;
    } else {
        let entries: Vec<ManifestEntry> = result.records.iter().map(ScanRecord::to_entry).collect();
        manifest::write_manifest_json(&args.output, &entries)?;
    }
    let rejects_path = args
        .rejects
        .clone()
        .unwrap_or_else(|| args.output.with_extension("rejects.json"));
    write_atomic(
        &rejects_path,
        serde_json::to_string_pretty(&result.rejects)?.as_bytes(),
    )?;
    eprintln!(
        "wrote {} ({} volumes); rejects report {}",
        args.output.display(),
        result.records.len(),
        rejects_path.display()
    );
    let rows: Vec<SummaryRow> = result
        .records
        .iter()
        .map(|r| SummaryRow {
            dtype: Some(r.dtype.name().to_string()),
            shape: Some(r.shape.clone()),
            spacing: Some(r.spacing.to_vec()),
            file_bytes: Some(r.file_bytes),
        })
        .collect();
    if !rows.is_empty() {
        println!("{}", summarize(&rows)?);
    }
    println!(
        "rejected: {}; dropped by --min-axis: {}",
        result.rejects.len(),
        result.too_small
    );
    Ok(ExitCode::SUCCESS)
}

fn stats(file: &Path) -> anyhow::Result<ExitCode> {
    let entries = manifest::read_manifest(file)?;
    let rows: Vec<SummaryRow> = entries
        .iter()
        .map(|e| SummaryRow {
            dtype: e
                .extra
                .get("dtype")
                .and_then(|v| v.as_str())
                .map(str::to_string),
            shape: e.shape.clone(),
            spacing: e.spacing.clone(),
            file_bytes: e
                .extra
                .get("file_bytes")
                .and_then(serde_json::Value::as_u64),
        })
        .collect();
    if rows.is_empty() {
        println!("volumes: 0");
    } else {
        println!("{}", summarize(&rows)?);
    }
    let missing = entries
        .iter()
        .filter(|e| !dino3d_pipeline::formats::exists(e.resolve(file)))
        .count();
    if missing > 0 {
        println!(
            "warning: {missing} listed images do not exist (paths resolved against the manifest's folder)"
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn split(args: &SplitArgs) -> anyhow::Result<ExitCode> {
    let ratios: [f64; 3] = args
        .ratios
        .clone()
        .try_into()
        .map_err(|_| anyhow::anyhow!("--ratios takes three numbers"))?;
    let out_dir = manifest::scan::manifest_dir(&args.output);
    let shown = |p: &Path| -> String {
        let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        if args.absolute {
            abs
        } else {
            relative_to(&abs, &out_dir)
        }
        .to_string_lossy()
        .into_owned()
    };
    let items: Vec<DatalistItem> = match (&args.images, &args.labels, &args.csv) {
        (Some(images), Some(labels), None) => {
            let imgs = manifest::discover(&[images.to_string_lossy().into_owned()])?;
            let labs = manifest::discover(&[labels.to_string_lossy().into_owned()])?;
            let manifest::Pairing {
                pairs,
                unpaired_images: lonely_imgs,
                unpaired_labels: lonely_labs,
            } = manifest::pair_by_name(&imgs, &labs)?;
            if !(lonely_imgs.is_empty() && lonely_labs.is_empty()) {
                for p in &lonely_imgs {
                    eprintln!("  no label for image {}", p.display());
                }
                for p in &lonely_labs {
                    eprintln!("  no image for label {}", p.display());
                }
                if !args.allow_unpaired {
                    bail!(
                        "{} images and {} labels are unpaired (--allow-unpaired leaves them out)",
                        lonely_imgs.len(),
                        lonely_labs.len()
                    );
                }
            }
            pairs
                .iter()
                .map(|(i, l)| DatalistItem {
                    image: shown(i),
                    label: shown(l).into(),
                    extra: Default::default(),
                })
                .collect()
        }
        (None, None, Some(csv)) => {
            let base = csv.parent().unwrap_or(Path::new(""));
            manifest::read_csv(csv)?
                .into_iter()
                .map(|mut it| {
                    it.image = shown(&base.join(&it.image));
                    if let Some(s) = it.label.as_str() {
                        it.label = shown(&base.join(s)).into();
                    }
                    it
                })
                .collect()
        }
        _ => bail!("give either --images with --labels, or --csv"),
    };
    if items.is_empty() {
        bail!("no items to split");
    }
    let list = manifest::split(items, ratios, args.seed)?;
    if let Some(dir) = args.output.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    write_atomic(
        &args.output,
        serde_json::to_string_pretty(&list)?.as_bytes(),
    )?;
    println!(
        "wrote {}: {} training, {} validation, {} test",
        args.output.display(),
        list.training.len(),
        list.validation.len(),
        list.test.len()
    );
    Ok(ExitCode::SUCCESS)
}
