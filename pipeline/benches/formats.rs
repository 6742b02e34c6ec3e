//! MetaImage and NRRD reads vs the same voxels as an uncompressed NIfTI (divan).
//!
//! Reads `vol.mha` (raw), `vol_zlib.mha` (zlib), `vol.nrrd` (raw),
//! `vol_gz.nrrd` (gzip) and `vol.nii` from the directory in
//! `DINO3D_DICOM_BENCH` (default `/tmp/dino3d-dicom-bench`), as written by
//! `benches/make_dicom_series.py` (512x512x300 int16, written by SimpleITK).
//! Run on one core:
//!
//! ```text
//! RAYON_NUM_THREADS=1 DIVAN_THREADS=1 taskset -c 0 cargo bench -p dino3d-pipeline --bench formats
//! ```
//!
//! or `benches/formats_vs_simpleitk.sh`, which also makes the data and times
//! SimpleITK on the same files. Before timing, every file is read once and
//! its voxels' SHA-256 (stored type, little-endian, x fastest: the same bytes
//! as SimpleITK's `GetArrayViewFromImage(...).tobytes()`) is printed and
//! checked equal to `vol.nii`'s.

use std::hint::black_box;
use std::path::PathBuf;

use dino3d_pipeline::formats::read_volume;
use sha2::{Digest, Sha256};

const FILES: &[&str] = &[
    "vol.mha",
    "vol_zlib.mha",
    "vol.nrrd",
    "vol_gz.nrrd",
    "vol.nii",
];

fn dir() -> PathBuf {
    std::env::var_os("DINO3D_DICOM_BENCH")
        .map_or_else(|| PathBuf::from("/tmp/dino3d-dicom-bench"), PathBuf::from)
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn main() {
    if FILES.iter().any(|f| !dir().join(f).is_file()) {
        eprintln!(
            "no MetaImage/NRRD bench data in {} (run benches/make_dicom_series.py): skipped",
            dir().display()
        );
        return;
    }
    let nifti = read_volume(dir().join("vol.nii")).unwrap();
    let want = sha256_hex(nifti.data.as_bytes());
    for f in FILES {
        let v = read_volume(dir().join(f)).unwrap();
        let got = sha256_hex(v.data.as_bytes());
        println!("{f}: shape {:?}, voxels sha256 {got}", v.shape);
        assert_eq!(v.shape, nifti.shape, "{f}: shape differs from vol.nii");
        assert_eq!(got, want, "{f}: voxels differ from vol.nii");
    }
    divan::main();
}

/// The whole volume of each file.
#[divan::bench(args = FILES, sample_count = 10, sample_size = 1)]
fn read_volume_file(file: &str) {
    black_box(read_volume(dir().join(file)).unwrap());
}
