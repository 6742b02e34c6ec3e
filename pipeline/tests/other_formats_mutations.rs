//! MetaImage and NRRD readers on mutated headers and data: whatever the bytes,
//! an error or a consistent volume, never a panic or an out-of-memory abort
//! (a quick in-tree companion of the `other_formats_read` fuzz target).

use std::path::PathBuf;

use dino3d_pipeline::formats;
use dino3d_pipeline::nifti::ReadOptions;
use proptest::prelude::*;

fn fixture(name: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../data/other_formats/generated")
        .join(name);
    std::fs::read(p).unwrap()
}

/// Attached fixtures (header and data in one file) and their extensions.
const SEEDS: [(&str, &str); 5] = [
    ("types/met_short.mha", "mha"),
    ("slice2d.mha", "mha"),
    ("rgb_like_3ch.mha", "mha"),
    ("vector3.nrrd", "nrrd"),
    ("oblique_ras.nrrd", "nrrd"),
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn mutated_files_never_panic(
        seed in 0..SEEDS.len(),
        edits in proptest::collection::vec((0usize..400, any::<u8>()), 0..6),
        cut in proptest::option::of(0usize..20_000),
    ) {
        let (name, ext) = SEEDS[seed];
        let mut bytes = fixture(name);
        for (at, b) in edits {
            // Mostly the header: digits and separators matter most there.
            let at = at % bytes.len();
            bytes[at] = if b % 3 == 0 { b"0123456789-. \n=:"[b as usize % 16] } else { b };
        }
        if let Some(c) = cut {
            bytes.truncate(c.min(bytes.len()));
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(format!("m.{ext}"));
        std::fs::write(&path, &bytes).unwrap();
        let opts = ReadOptions { max_voxels: 1 << 22, ..ReadOptions::default() };
        let head = formats::read_header_with(&path, &opts);
        if let Ok(vol) = formats::read_volume_with(&path, &opts) {
            prop_assert_eq!(vol.data.len(), vol.shape.iter().product::<usize>());
            let info = head.expect("read_volume succeeded, so must read_header");
            prop_assert_eq!(info.shape, vol.shape);
            prop_assert_eq!(info.affine, vol.affine);
        }
    }
}
