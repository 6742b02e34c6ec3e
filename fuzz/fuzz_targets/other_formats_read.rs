//! Fuzz the MetaImage, NRRD and DICOM readers (`pipeline/src/formats/`): the
//! bytes go to a per-process file under /dev/shm named `.dcm` when they hold
//! the DICOM magic at 128, else `.mha` or `.nrrd` by the parity of the first
//! byte, then `read_header` and `read_volume` (with a small voxel
//! budget, so a header claiming a huge array is refused rather than
//! allocated).
//!
//! Errors are expected; any panic (including the consistency asserts below) or
//! an out-of-memory abort is a bug.

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use dino3d_pipeline::formats::{read_header_with, read_volume_with};
use dino3d_pipeline::nifti::ReadOptions;
use libfuzzer_sys::fuzz_target;

fn paths() -> &'static [PathBuf; 3] {
    static PATHS: OnceLock<[PathBuf; 3]> = OnceLock::new();
    PATHS.get_or_init(|| {
        let pid = std::process::id();
        [
            PathBuf::from(format!("/dev/shm/dino3d-fuzz-{pid}.mha")),
            PathBuf::from(format!("/dev/shm/dino3d-fuzz-{pid}.nrrd")),
            PathBuf::from(format!("/dev/shm/dino3d-fuzz-{pid}.dcm")),
        ]
    })
}

/// libfuzzer-sys's panic hook aborts even on a panic the reader catches
/// (dicom-rs's RLE decoder panics on corrupt data; `formats::dicom` catches
/// it and reports an error). Print panics instead: one that escapes the
/// reader still aborts, through libfuzzer-sys's `catch_unwind`.
fn printing_panic_hook() {
    static SET: OnceLock<()> = OnceLock::new();
    SET.get_or_init(|| std::panic::set_hook(Box::new(|info| eprintln!("{info}"))));
}

fuzz_target!(|data: &[u8]| {
    printing_panic_hook();
    let kind = if data.get(128..132) == Some(b"DICM") {
        2
    } else {
        data.first().map_or(0, |b| (b & 1) as usize)
    };
    let path = &paths()[kind];
    if std::fs::write(path, data).is_err() {
        return;
    }
    let opts = ReadOptions {
        max_voxels: 1 << 24,
        ..ReadOptions::default()
    };
    let head = read_header_with(path, &opts);
    if let Ok(vol) = read_volume_with(path, &opts) {
        assert_eq!(vol.data.len(), vol.shape.iter().product::<usize>());
        let info = head.expect("read_volume succeeded but read_header failed");
        assert_eq!(info.shape, vol.shape);
        assert_eq!(info.affine, vol.affine);
    }
    let _ = std::fs::remove_file(path);
});
