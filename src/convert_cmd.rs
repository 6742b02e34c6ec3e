//! `dino-run convert IN OUT.nii.gz`: any readable volume or DICOM series
//! written as NIfTI (the work is `formats::convert_to_nifti`).

use std::path::PathBuf;
use std::process::ExitCode;

use dino3d_pipeline::formats;
use dino3d_pipeline::nifti::ReadOptions;

/// Arguments of `dino-run convert`.
#[derive(Debug, clap::Args)]
pub(crate) struct ConvertArgs {
    /// The volume to read: NIfTI, Analyze, MetaImage, NRRD, a DICOM file, a
    /// DICOM series folder or FOLDER#SERIES_UID.
    input: PathBuf,
    /// The NIfTI file to write (.nii or .nii.gz).
    output: PathBuf,
}

pub(crate) fn run(args: &ConvertArgs) -> anyhow::Result<ExitCode> {
    let vol = formats::convert_to_nifti(&args.input, &args.output, &ReadOptions::default())?;
    let [c, x, y, z] = vol.shape;
    let scaling = match vol.scaling {
        Some((s, i)) => format!(", scaling stored * {s} + {i}"),
        None => String::new(),
    };
    println!(
        "wrote {} ({x}x{y}x{z}, {c} channel(s), {}{scaling})",
        args.output.display(),
        vol.data.dtype()
    );
    Ok(ExitCode::SUCCESS)
}
