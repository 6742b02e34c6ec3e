//! Fuzz NIfTI-1/2 / Analyze header parsing and volume decoding.
//!
//! 1. `NiftiHeader::parse` on the raw bytes and, when it succeeds, every derived
//!    accessor and the affine code.
//! 2. The path-based readers: the bytes go to a per-process file under /dev/shm
//!    (named `.nii` or `.nii.gz` by the parity of the first byte; gzip itself is
//!    sniffed from the magic, so both names see both kinds of content), then
//!    `read_header` and `read_volume`.
//!
//! Errors are expected; any panic (including the consistency asserts below) or
//! an out-of-memory abort is a bug.

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use dino3d_pipeline::nifti::affine::{FallbackAffine, axcodes, best_affine, qform_affine};
use dino3d_pipeline::nifti::{NiftiHeader, read_header, read_volume};
use libfuzzer_sys::fuzz_target;

fn paths() -> &'static [PathBuf; 2] {
    static PATHS: OnceLock<[PathBuf; 2]> = OnceLock::new();
    PATHS.get_or_init(|| {
        let pid = std::process::id();
        [
            PathBuf::from(format!("/dev/shm/dino3d-fuzz-{pid}.nii")),
            PathBuf::from(format!("/dev/shm/dino3d-fuzz-{pid}.nii.gz")),
        ]
    })
}

fuzz_target!(|data: &[u8]| {
    // (a) In-memory header parsing and everything derived from a header.
    if let Ok(h) = NiftiHeader::parse(data) {
        let shape = h.shape();
        let count = h.voxel_count();
        if let (Ok(s), Ok(n)) = (&shape, &count) {
            let product = s.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
            assert_eq!(product, Some(*n), "voxel_count disagrees with shape");
        }
        let _ = h.data_offset();
        if let Some((slope, inter)) = h.scaling() {
            assert!(slope.is_finite() && slope != 0.0 && inter.is_finite());
        }
        let _ = h.rank();
        let _ = h.header_size();
        let best = best_affine(&h, FallbackAffine::Nibabel);
        let _ = best_affine(&h, FallbackAffine::Method1);
        let q = qform_affine(&h);
        let _ = axcodes(&best);
        let _ = axcodes(&q);
        // Serialising a parsed header must not panic either.
        let _ = h.to_bytes();
    }

    // (b) The path-based readers on the same bytes.
    let path = &paths()[usize::from(data.first().is_some_and(|b| b & 1 == 1))];
    if std::fs::write(path, data).is_err() {
        return;
    }
    let info = read_header(path);
    let vol = read_volume(path);
    if let Ok(vol) = &vol {
        // A volume that decodes must have exactly the voxels its shape says, and
        // the header-only read must agree with it.
        let n: usize = vol.shape.iter().product();
        assert_eq!(vol.data.len(), n, "voxel buffer length != shape product");
        match &info {
            Ok(info) => {
                assert_eq!(info.shape, vol.shape, "read_header and read_volume disagree on shape");
                assert_eq!(info.dtype, vol.data.dtype(), "read_header and read_volume disagree on dtype");
            }
            Err(e) => panic!("read_volume succeeded but read_header failed: {e}"),
        }
    }
    let _ = std::fs::remove_file(path);
});
