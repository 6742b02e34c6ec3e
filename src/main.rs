//! `dino-run`: the dino3d command line.
//!
//! The edge only: command line, progress bars, pictures, printing and result
//! files live here; the work is done by the `tasks` crate (training and
//! evaluation) on the `pipeline`, `cache` and `model` crates.

mod atlas_crops_cmd;
mod cache_cmd;
mod convert_cmd;
mod device;
mod embed_cmd;
mod embed_parts;
mod embed_table;
mod inspect_cmd;
mod launch_cmd;
mod linear_probe_cmd;
mod manifest_cmd;
mod pipeline_cmd;
mod plot;
mod pretrain_cmd;
mod probe_cmd;
mod progress;
mod ranks;
mod recipe_cmd;
mod recipe_load;
mod run_cmd;
mod segment_cmd;
mod stats;
mod visualize;

use clap::{Parser, Subcommand};

/// dino3d: self-supervised learning (3DINO) on 3D medical images.
#[derive(Debug, Parser)]
#[command(
    name = "dino-run",
    version,
    about,
    long_about = None,
    args_conflicts_with_subcommands = true,
    subcommand_value_name = "RECIPE | COMMAND"
)]
struct Cli {
    /// More log output (-v info, -vv debug). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Run the job a recipe's `task:` names (e.g. recipes/prepare.yaml).
    recipe: Option<std::path::PathBuf>,
    #[command(flatten)]
    overrides: recipe_load::Overrides,
    /// Where the recipe's model runs: cpu, cuda or cuda:N (CUDA needs a build
    /// with `--features cuda`; task prepare has no model and stays on the CPU).
    #[arg(long, default_value = "cpu", value_name = "cpu|cuda:N")]
    device: String,
    /// Pretrain on uncached samples when the recipe's cache folder cannot be
    /// written (read-only, full); without it that is an error at start.
    #[arg(long)]
    allow_uncached: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build, summarise and split dataset manifests.
    #[command(subcommand)]
    Manifest(manifest_cmd::ManifestCmd),
    /// Print what a volume's header says (shape, type, spacing, affine).
    Inspect(inspect_cmd::InspectArgs),
    /// Write any readable volume or DICOM series as NIfTI with the same
    /// voxels, scaling and geometry.
    Convert(convert_cmd::ConvertArgs),
    /// Validate YAML recipes and show their compiled plan.
    #[command(subcommand)]
    Recipe(recipe_cmd::RecipeCmd),
    /// Run a recipe's data pipeline (batches, throughput, saved crops).
    #[command(subcommand)]
    Pipeline(pipeline_cmd::PipelineCmd),
    /// Fill, summarise, check and prune the on-disk cache.
    #[command(subcommand)]
    Cache(cache_cmd::CacheCmd),
    /// Embed one volume (safetensors) or a whole manifest (Parquet) with a
    /// backbone: normed [CLS], mean patch token and optionally patch tokens.
    Embed(embed_cmd::EmbedArgs),
    /// Frozen features of a pretrained teacher vs its random initialisation:
    /// kNN tissue and Brodmann-area classification on held-out regions.
    Probe(probe_cmd::ProbeArgs),
    /// PCA and attention maps of one volume, as NIfTI, PNG and GIF.
    Visualize(visualize::VisualizeArgs),
    /// Start N ranks of a recipe on this node with the torchrun variables
    /// (RANK, WORLD_SIZE, LOCAL_RANK, ...); a failing rank stops them all.
    Launch(launch_cmd::LaunchArgs),
    /// Cut a labelled classification set (Brodmann-area groups, left
    /// hemisphere for training, right for test) from the bundled Colin27
    /// brain: the linear probe's example data.
    AtlasCrops(atlas_crops_cmd::CropsArgs),
}

fn main() -> std::process::ExitCode {
    restore_sigpipe();
    // Decoded volumes and batches are tens to hundreds of MiB: keep freed
    // ones for the next sample (DINO3D_DEFAULT_ALLOCATOR=1: glibc's defaults,
    // to compare).
    if std::env::var_os("DINO3D_DEFAULT_ALLOCATOR").is_none() {
        dino3d_cache::reuse_large_buffers();
    }
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let result = match (cli.command, cli.recipe) {
        (Some(Command::Manifest(cmd)), _) => manifest_cmd::run(cmd),
        (Some(Command::Inspect(args)), _) => inspect_cmd::run(&args),
        (Some(Command::Convert(args)), _) => convert_cmd::run(&args),
        (Some(Command::Recipe(cmd)), _) => recipe_cmd::run(cmd),
        (Some(Command::Pipeline(cmd)), _) => pipeline_cmd::run_pipeline(cmd),
        (Some(Command::Cache(cmd)), _) => cache_cmd::run(cmd),
        (Some(Command::Embed(args)), _) => embed_cmd::run(&args),
        (Some(Command::Probe(args)), _) => probe_cmd::run(&args),
        (Some(Command::Visualize(args)), _) => visualize::run(&args),
        (Some(Command::AtlasCrops(args)), _) => atlas_crops_cmd::run(&args),
        (Some(Command::Launch(args)), _) => launch_cmd::run(&args),
        (None, Some(recipe)) => device::parse(&cli.device).and_then(|device| {
            run_cmd::run_recipe(&recipe, &cli.overrides, &device, cli.allow_uncached)
        }),
        (None, None) => {
            use clap::CommandFactory;
            let _ = Cli::command().print_help();
            Ok(std::process::ExitCode::from(2))
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", error_text(&e));
            std::process::ExitCode::from(2)
        }
    }
}

/// The error and its causes on one line, each said once: library errors
/// often quote their source in their own text ("FILE: No such file or
/// directory (os error 2)"), which `{:#}` would repeat.
fn error_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

/// Lets a closed pipe end the process quietly, as Unix tools do
/// (`dino-run inspect *.nii.gz | head -1`): Rust ignores SIGPIPE, which
/// turns every later `println!` into a panic.
fn restore_sigpipe() {
    #[cfg(unix)]
    // SAFETY: called first thing in `main`, before any other thread exists;
    // setting a signal's disposition to its default installs no handler
    // code. Tested by `tests/cli.rs::a_closed_pipe_ends_quietly`.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colour only on a terminal: no escape codes in redirected logs.
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}
