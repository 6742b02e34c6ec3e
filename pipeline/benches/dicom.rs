//! DICOM series read vs the same voxels as an uncompressed NIfTI (divan).
//!
//! Reads `series/` (one file per slice) and `vol.nii` from the directory in
//! `DINO3D_DICOM_BENCH` (default `/tmp/dino3d-dicom-bench`), as written by
//! `benches/make_dicom_series.py` (512x512x300 int16). Run on one core:
//!
//! ```text
//! RAYON_NUM_THREADS=1 DIVAN_THREADS=1 taskset -c 0 cargo bench -p dino3d-pipeline --bench dicom
//! ```
//!
//! or `benches/dicom_vs_simpleitk.sh`, which also makes the data and times
//! SimpleITK and pydicom on the same files.

use std::hint::black_box;
use std::path::PathBuf;

use dino3d_pipeline::formats::{read_header, read_volume};

fn dir() -> PathBuf {
    std::env::var_os("DINO3D_DICOM_BENCH")
        .map_or_else(|| PathBuf::from("/tmp/dino3d-dicom-bench"), PathBuf::from)
}

fn main() {
    if !dir().join("series").is_dir() {
        eprintln!(
            "no DICOM bench data in {} (run benches/make_dicom_series.py): skipped",
            dir().display()
        );
        return;
    }
    divan::main();
}

/// The whole series: headers, sort, checks and pixel data of 300 files.
#[divan::bench(sample_count = 10, sample_size = 1)]
fn series_read_volume() {
    black_box(read_volume(dir().join("series")).unwrap());
}

/// Headers only (what `manifest build` and `inspect` pay).
#[divan::bench(sample_count = 10, sample_size = 1)]
fn series_read_header() {
    black_box(read_header(dir().join("series")).unwrap());
}

/// The same voxels from one uncompressed NIfTI.
#[divan::bench(sample_count = 10, sample_size = 1)]
fn nifti_read_volume() {
    black_box(read_volume(dir().join("vol.nii")).unwrap());
}
