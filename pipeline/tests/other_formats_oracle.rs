//! The MetaImage and NRRD readers against SimpleITK (as MONAI's ITKReader
//! reports it), on every such file in `data/other_formats/` (see
//! `data/oracles/other_formats_oracle.json` and the script that wrote it), and
//! bad input: each failure is an error naming the file, never a panic.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dino3d_pipeline::Error;
use dino3d_pipeline::formats::{self, Format};
use dino3d_pipeline::nifti::ReadOptions;
use serde_json::Value;
use sha2::{Digest, Sha256};

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data")
}

fn oracle() -> BTreeMap<String, Value> {
    let text =
        std::fs::read_to_string(data_dir().join("oracles/other_formats_oracle.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    serde_json::from_value(v["files"].clone()).unwrap()
}

fn close(g: f64, w: f64) -> bool {
    (g - w).abs() <= 1e-6 * (1.0 + w.abs())
}

#[test]
fn every_file_reads_as_simpleitk_and_monai_give_it() {
    let oracle = oracle();
    assert!(
        oracle.len() >= 20,
        "the oracle lists {} files",
        oracle.len()
    );
    for (rel, want) in &oracle {
        let path = data_dir().join(rel);
        let info = formats::read_header(&path).unwrap_or_else(|e| panic!("{rel}: {e}"));
        let vol = formats::read_volume(&path).unwrap_or_else(|e| panic!("{rel}: {e}"));
        let shape: Vec<usize> = serde_json::from_value(want["shape"].clone()).unwrap();
        assert_eq!(vol.shape.to_vec(), shape, "{rel}: shape");
        assert_eq!(info.shape, vol.shape, "{rel}: header shape");
        assert_eq!(vol.data.dtype().name(), want["dtype"], "{rel}: dtype");
        assert_eq!(info.dtype, vol.data.dtype(), "{rel}: header dtype");
        for a in 0..3 {
            let w = want["spacing"][a].as_f64().unwrap();
            assert!(
                close(vol.spacing[a], w),
                "{rel}: spacing {:?} vs {w}",
                vol.spacing
            );
        }
        for i in 0..4 {
            for j in 0..4 {
                let w = want["affine_ras"][i][j].as_f64().unwrap();
                let g = vol.affine[i][j];
                assert!(
                    close(g, w),
                    "{rel}: affine[{i}][{j}] {g} vs {w}: {:?}",
                    vol.affine
                );
            }
        }
        assert_eq!(info.affine, vol.affine, "{rel}: header affine");
        // Voxels: little-endian bytes in (C, X, Y, Z) order, x fastest.
        let mut bytes = Vec::with_capacity(vol.data.as_bytes().len());
        let size = vol.data.dtype().size();
        for v in vol.data.as_bytes().chunks(size) {
            if cfg!(target_endian = "big") {
                bytes.extend(v.iter().rev());
            } else {
                bytes.extend(v);
            }
        }
        let sha = format!("{:x}", Sha256::digest(&bytes));
        assert_eq!(sha, want["sha256"].as_str().unwrap(), "{rel}: voxel sha256");
        for s in want["samples"].as_array().unwrap() {
            let i = s[0].as_u64().unwrap() as usize;
            let w = s[1].as_f64().unwrap();
            assert_eq!(vol.data.get_f64(i), w, "{rel}: voxel {i}");
        }
        let fmt = match rel.rsplit('.').next().unwrap() {
            "mha" | "mhd" => Format::MetaImage,
            _ => Format::Nrrd,
        };
        assert_eq!(info.format, fmt, "{rel}: format");
    }
}

#[test]
fn the_oracle_covers_every_metaimage_and_nrrd_file() {
    let oracle = oracle();
    // (DICOM folders have their own oracle: tests/dicom_oracle.rs.)
    let found = dino3d_pipeline::manifest::discover(&[
        data_dir().join("other_formats/itk").display().to_string(),
        data_dir()
            .join("other_formats/generated")
            .display()
            .to_string(),
    ])
    .unwrap();
    assert!(!found.is_empty());
    for p in found {
        let rel = p.strip_prefix(data_dir()).unwrap().display().to_string();
        assert!(oracle.contains_key(&rel), "{rel} has no oracle entry");
    }
}

/// Copies `names` from the generated fixtures into a fresh folder.
fn copy_fixtures(names: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for n in names {
        let from = data_dir().join("other_formats/generated").join(n);
        std::fs::copy(&from, dir.path().join(n)).unwrap();
    }
    dir
}

fn truncate(path: &Path, keep: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(keep)
        .unwrap();
}

fn names(err: &Error, file: &Path) -> String {
    let text = err.to_string();
    assert!(
        text.contains(&file.display().to_string()),
        "the error does not name {}: {text}",
        file.display()
    );
    text
}

#[test]
fn truncated_data_is_an_error_naming_the_data_file() {
    let dir = copy_fixtures(&["ct_raw.mhd", "ct_raw.raw"]);
    let raw = dir.path().join("ct_raw.raw");
    truncate(&raw, 1000);
    let err = formats::read_header(dir.path().join("ct_raw.mhd")).unwrap_err();
    assert!(names(&err, &raw).contains("truncated"), "{err}");
    assert!(formats::read_volume(dir.path().join("ct_raw.mhd")).is_err());

    // A cut zlib stream inside an .mha: the header is fine, the read is not.
    let dir = copy_fixtures(&["ct_zlib_oblique.mha"]);
    let mha = dir.path().join("ct_zlib_oblique.mha");
    truncate(&mha, 3000);
    let err = formats::read_volume(&mha).unwrap_err();
    assert!(names(&err, &mha).contains("zlib"), "{err}");

    // A cut gzip data file of a detached NRRD.
    let dir = copy_fixtures(&["detached_gzip.nhdr", "detached_gzip.raw.gz"]);
    let gz = dir.path().join("detached_gzip.raw.gz");
    truncate(&gz, 2000);
    let err = formats::read_volume(dir.path().join("detached_gzip.nhdr")).unwrap_err();
    assert!(names(&err, &gz).contains("gzip"), "{err}");

    // An attached raw NRRD cut short.
    let dir = copy_fixtures(&["oblique_ras.nrrd"]);
    let nrrd = dir.path().join("oblique_ras.nrrd");
    truncate(&nrrd, 5000);
    let err = formats::read_header(&nrrd).unwrap_err();
    assert!(names(&err, &nrrd).contains("truncated"), "{err}");
}

#[test]
fn a_header_naming_a_missing_file_is_an_error_naming_both() {
    let dir = copy_fixtures(&["ct_raw.mhd", "list_slices.nhdr", "list_slice0.raw"]);
    for h in ["ct_raw.mhd", "list_slices.nhdr"] {
        let header = dir.path().join(h);
        let err = formats::read_header(&header).unwrap_err();
        assert!(matches!(err, Error::DataFileMissing { .. }), "{err}");
        let text = names(&err, &header);
        assert!(text.contains(".raw"), "{text}");
    }
}

#[test]
fn absurd_sizes_are_refused_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let mha = dir.path().join("huge.mha");
    std::fs::write(
        &mha,
        "NDims = 3\nDimSize = 100000 100000 100000\nElementType = MET_DOUBLE\nElementDataFile = LOCAL\n",
    )
    .unwrap();
    let err = formats::read_volume(&mha).unwrap_err();
    names(&err, &mha);
    let mha = dir.path().join("overflow.mha");
    std::fs::write(
        &mha,
        "NDims = 4\nDimSize = 4294967296 4294967296 4294967296 9\nElementType = MET_SHORT\nElementDataFile = LOCAL\n",
    )
    .unwrap();
    let err = formats::read_header(&mha).unwrap_err();
    assert!(names(&err, &mha).contains("overflow"), "{err}");
    // A small gzip NRRD claiming a big array.
    let nrrd = dir.path().join("bomb.nrrd");
    let mut bytes = b"NRRD0004\ntype: float\ndimension: 3\nsizes: 2000 2000 2000\nencoding: gzip\nendian: little\n\n".to_vec();
    bytes.extend([0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3]);
    std::fs::write(&nrrd, bytes).unwrap();
    let err = formats::read_header(&nrrd).unwrap_err();
    assert!(names(&err, &nrrd).contains("can hold"), "{err}");
    // The voxel budget applies as for NIfTI.
    let fixture = data_dir().join("other_formats/generated/ct_zlib_oblique.mha");
    let opts = ReadOptions {
        max_voxels: 100,
        ..ReadOptions::default()
    };
    let err = formats::read_volume_with(&fixture, &opts).unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }), "{err}");
    names(&err, &fixture);
}

#[test]
fn unsupported_content_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "a.nrrd",
            "NRRD0004\ntype: short\ndimension: 3\nsizes: 2 2 2\nencoding: bzip2\nendian: little\n\nxx",
            "bzip2",
        ),
        (
            "b.nrrd",
            "NRRD0004\ntype: block\nblock size: 4\ndimension: 3\nsizes: 2 2 2\nencoding: raw\n\nxx",
            "block",
        ),
        (
            "c.mha",
            "NDims = 3\nDimSize = 2 2 2\nElementType = MET_UCHAR_ARRAY\nElementDataFile = LOCAL\nxxxxxxxx",
            "MET_UCHAR_ARRAY",
        ),
        (
            "d.mha",
            "NDims = 3\nBinaryData = False\nDimSize = 2 2 2\nElementType = MET_UCHAR\nElementDataFile = LOCAL\n1 2 3",
            "ASCII",
        ),
        ("e.mha", "just some text\nwithout a header\n", "MetaImage"),
        ("f.nrrd", "not nrrd at all\n", "magic"),
        ("g.dat", "plain text, no format\n", "not a volume format"),
    ];
    for (name, text, what) in cases {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        let err = formats::read_header(&p).unwrap_err();
        assert!(names(&err, &p).contains(what), "{name}: {err}");
    }
}

#[test]
fn formats_are_recognised_by_content_under_other_names() {
    let dir = tempfile::tempdir().unwrap();
    let src = data_dir().join("other_formats/generated");
    let a = dir.path().join("scan.dat");
    std::fs::copy(src.join("oblique_ras.nrrd"), &a).unwrap();
    assert_eq!(formats::read_header(&a).unwrap().format, Format::Nrrd);
    let b = dir.path().join("scan2.bin");
    std::fs::copy(src.join("types/met_short.mha"), &b).unwrap();
    let want = formats::read_volume(src.join("types/met_short.mha")).unwrap();
    assert_eq!(formats::read_volume(&b).unwrap().data, want.data);
}

#[test]
fn source_files_list_detached_data_files() {
    let src = data_dir().join("other_formats/generated");
    let files = formats::source_files(&src.join("list_slices.nhdr")).unwrap();
    assert_eq!(files.len(), 4, "{files:?}");
    let files = formats::source_files(&src.join("ct_zlib_oblique.mha")).unwrap();
    assert_eq!(files, vec![src.join("ct_zlib_oblique.mha")]);
    let files = formats::source_files(&src.join("ct_raw.mhd")).unwrap();
    assert_eq!(files, vec![src.join("ct_raw.mhd"), src.join("ct_raw.raw")]);
}
