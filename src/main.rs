//! `dino-run`: the dino3d command line.
//!
//! Glue only: parsing, progress bars and reports live here; the work is done by
//! the `pipeline`, `cache` and `model` crates.

mod inspect_cmd;
mod manifest_cmd;
mod progress;
mod recipe_cmd;
mod stats;

use clap::{Parser, Subcommand};

/// dino3d: self-supervised learning (3DINO) on 3D medical images.
#[derive(Debug, Parser)]
#[command(name = "dino-run", version, about, long_about = None)]
struct Cli {
    /// More log output (-v info, -vv debug). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build, summarise and split dataset manifests.
    #[command(subcommand)]
    Manifest(manifest_cmd::ManifestCmd),
    /// Print what a volume's header says (shape, type, spacing, affine).
    Inspect(inspect_cmd::InspectArgs),
    /// Validate YAML recipes and show their compiled plan.
    #[command(subcommand)]
    Recipe(recipe_cmd::RecipeCmd),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let result = match cli.command {
        Command::Manifest(cmd) => manifest_cmd::run(cmd),
        Command::Inspect(args) => inspect_cmd::run(&args),
        Command::Recipe(cmd) => recipe_cmd::run(cmd),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
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
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
