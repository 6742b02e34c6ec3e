//! The DICOM reader on mutated files: whatever the bytes, an error naming
//! the file or a consistent volume, never a panic or an out-of-memory abort
//! (dicom-rs parses untrusted lengths; the in-tree companion of the
//! `other_formats_read` fuzz target's `.dcm` inputs).

use std::path::PathBuf;

use dino3d_pipeline::formats;
use dino3d_pipeline::nifti::ReadOptions;
use proptest::prelude::*;

const SEEDS: [&str; 7] = [
    "dicom/MR_small.dcm",
    "dicom/MR_small_jp2klossless.dcm",
    "dicom/MR_small_bigendian.dcm",
    "dicom/MR_small_implicit.dcm",
    "dicom_generated/rle.dcm",
    "dicom_generated/deflate.dcm",
    "dicom_generated/enhanced_ct.dcm",
];

const J2K_SEEDS: [&str; 3] = [
    "dicom/MR_small_jp2klossless.dcm",
    "dicom_generated/jpeg2000_lossy.dcm",
    "dicom_generated/htj2k_lossless.dcm",
];

fn fixture(name: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../data/other_formats")
        .join(name);
    std::fs::read(p).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn mutated_dicom_files_never_panic(
        seed in 0..SEEDS.len(),
        edits in proptest::collection::vec((0usize..2000, any::<u8>()), 0..6),
        cut in proptest::option::of(0usize..12_000),
    ) {
        let mut bytes = fixture(SEEDS[seed]);
        for (at, b) in edits {
            // Mostly the meta group and the first elements: tags, VRs, lengths.
            let at = 128 + at % (bytes.len() - 128);
            bytes[at] = b;
        }
        if let Some(c) = cut {
            bytes.truncate(c.min(bytes.len()));
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.dcm");
        std::fs::write(&path, &bytes).unwrap();
        let opts = ReadOptions { max_voxels: 1 << 22, ..ReadOptions::default() };
        let head = formats::read_header_with(&path, &opts);
        if let Err(e) = &head {
            prop_assert!(e.to_string().contains("m.dcm"), "{}", e);
        }
        if let Ok(vol) = formats::read_volume_with(&path, &opts) {
            prop_assert_eq!(vol.data.len(), vol.shape.iter().product::<usize>());
            let info = head.expect("read_volume succeeded, so must read_header");
            prop_assert_eq!(info.shape, vol.shape);
            prop_assert_eq!(info.affine, vol.affine);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// JPEG 2000 goes through openjp2, a translation of OpenJPEG's C: its
    /// codestream parsing and decoding (reversible, irreversible and
    /// High-Throughput) on mutated codestreams (edits after the pixel data
    /// tag, which the test above seldom reaches) must give an error naming
    /// the file or a volume of the header's size.
    #[test]
    fn mutated_jpeg_2000_codestreams_never_panic(
        seed in 0..J2K_SEEDS.len(),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in proptest::option::of(any::<usize>()),
    ) {
        let mut bytes = fixture(J2K_SEEDS[seed]);
        let start = bytes
            .windows(4)
            .position(|w| w == [0xE0, 0x7F, 0x10, 0x00])
            .unwrap();
        for (at, b) in edits {
            let at = start + at % (bytes.len() - start);
            bytes[at] = b;
        }
        if let Some(c) = cut {
            bytes.truncate(start + c % (bytes.len() - start));
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.dcm");
        std::fs::write(&path, &bytes).unwrap();
        match formats::read_volume(&path) {
            Ok(vol) => prop_assert_eq!(vol.shape, [1, 64, 64, 1]),
            Err(e) => prop_assert!(e.to_string().contains("j.dcm"), "{}", e),
        }
    }
}

/// Inputs the fuzzer found (`fuzz/regressions/`), each a small DICOM file on
/// which dicom-rs would reserve and fill gigabytes that an element declares;
/// the length check refuses each before dicom-rs reads it:
/// - `declared-element-length`: 40 KB, element (0008,0201) declares 3.4 GB;
/// - `pixel-data-in-sequence`: 6 KB, pixel data inside a sequence item, then
///   garbage declaring 4.1 GB: dicom-rs's header read stops only at the
///   top-level pixel data, so the check must walk past nested ones;
/// - `meta-group-length`: 8 KB, two transfer syntaxes and group 0002 elements
///   past the meta group's length, which dicom-rs reads in the data set's
///   encoding (explicit big endian), where they declare 4.2 GB;
/// - `group-length-vr`: 9 KB, (0002,0000) of VR CS, which dicom-rs accepts
///   (it checks the tag and the length only), before a deflated data set
///   declaring 2 GB.
#[test]
fn inputs_the_fuzzer_found_are_refused_before_reading() {
    for (input, declared) in [
        ("declared-element-length", "(0008,0201) declares 3486502868"),
        ("pixel-data-in-sequence", "(EA01,C900) declares 4127241216"),
        ("meta-group-length", "(3901,3301) declares 4211151617"),
        ("group-length-vr", "(0100,7901) declares 2030117558"),
    ] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/regressions")
            .join(format!("other_formats_read-dicom-{input}"));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("evil.dcm");
        std::fs::copy(path, &file).unwrap();
        let e = dino3d_pipeline::formats::read_header(&file)
            .unwrap_err()
            .to_string();
        let named = e.contains("evil.dcm") && e.contains(declared);
        assert!(named, "{input}: {e}");
    }
}
