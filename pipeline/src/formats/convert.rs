//! Any readable volume (or DICOM series) written as NIfTI with the same
//! voxels, stored type, scaling and RAS affine (`dino-run convert`).

use std::path::Path;

use crate::error::{Error, Result};
use crate::nifti::{ReadOptions, WriteOptions, write_volume};
use crate::volume::Volume;

/// Reads `input` in any format and writes it to `output` (`.nii` or
/// `.nii.gz`); returns the volume written.
///
/// # Errors
/// An output name that is not NIfTI, and any read or write error (naming
/// the file).
pub fn convert_to_nifti(input: &Path, output: &Path, opts: &ReadOptions) -> Result<Volume> {
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    if !(name.ends_with(".nii") || name.ends_with(".nii.gz")) {
        return Err(Error::Unsupported {
            path: output.to_path_buf(),
            what: "output name: convert writes NIfTI (.nii or .nii.gz)".into(),
        });
    }
    let vol = super::read_volume_with(input, opts)?;
    write_volume(output, &vol, &WriteOptions::default())?;
    Ok(vol)
}
