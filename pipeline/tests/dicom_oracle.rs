//! The DICOM reader against SimpleITK (as MONAI's ITKReader reports it) and
//! pydicom, on every DICOM volume in `data/other_formats/` (see
//! `data/oracles/dicom_oracle.json` and `scripts/oracles/`), and bad input:
//! each failure is an error naming the file, never a panic.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dino3d_pipeline::formats::{self, Encoding, Format};
use dino3d_pipeline::nifti::{DType, ReadOptions};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data")
}

fn generated(rel: &str) -> PathBuf {
    data_dir().join("other_formats/dicom_generated").join(rel)
}

fn oracle() -> BTreeMap<String, Value> {
    let text = std::fs::read_to_string(data_dir().join("oracles/dicom_oracle.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    serde_json::from_value(v["files"].clone()).unwrap()
}

fn close(g: f64, w: f64) -> bool {
    (g - w).abs() <= 1e-5 * (1.0 + w.abs())
}

#[test]
fn every_dicom_volume_reads_as_simpleitk_and_pydicom_give_it() {
    let oracle = oracle();
    assert!(
        oracle.len() >= 17,
        "the oracle lists {} volumes",
        oracle.len()
    );
    for (rel, want) in &oracle {
        let path = data_dir().join(rel);
        let info = formats::read_header(&path).unwrap_or_else(|e| panic!("{rel}: {e}"));
        let vol = formats::read_volume(&path).unwrap_or_else(|e| panic!("{rel}: {e}"));
        assert_eq!(info.format, Format::Dicom, "{rel}");
        let shape: Vec<usize> = serde_json::from_value(want["shape"].clone()).unwrap();
        assert_eq!(vol.shape.to_vec(), shape, "{rel}: shape");
        assert_eq!(info.shape, vol.shape, "{rel}: header shape");
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
        // Values after RescaleSlope/Intercept, as ITK applies them.
        let [_, x, y, z] = vol.shape;
        let mut values = Vec::with_capacity(vol.data.len());
        for k in 0..z {
            for j in 0..y {
                for i in 0..x {
                    values.push(vol.value(0, i, j, k));
                }
            }
        }
        for s in want["samples"].as_array().unwrap() {
            let (i, w) = (s[0].as_u64().unwrap() as usize, s[1].as_f64().unwrap());
            assert_eq!(values[i], w, "{rel}: value at flat index {i}");
        }
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let sha = format!("{:x}", Sha256::digest(&bytes));
        assert_eq!(sha, want["values_sha256_f64"], "{rel}: values");
        // The stored integers and the rescale, as pydicom gives them (a series
        // whose slices disagree on the rescale is float32 values instead).
        let pd = &want["pydicom"];
        if rel.ends_with("rescale_per_slice") {
            assert_eq!(vol.data.dtype(), DType::F32, "{rel}");
            assert_eq!(vol.scaling, None, "{rel}");
            continue;
        }
        assert_eq!(
            vol.data.dtype().name(),
            pd["stored_dtype"],
            "{rel}: stored dtype"
        );
        let stored: Vec<u8> = {
            let mut b = vol.data.as_bytes().to_vec();
            if cfg!(target_endian = "big") {
                let n = vol.data.dtype().size();
                b.chunks_exact_mut(n).for_each(<[u8]>::reverse);
            }
            b
        };
        let sha = format!("{:x}", Sha256::digest(&stored));
        assert_eq!(sha, pd["stored_sha256"], "{rel}: stored integers");
        let rescale = (
            pd["rescale"][0].as_f64().unwrap(),
            pd["rescale"][1].as_f64().unwrap(),
        );
        let want_scaling = (rescale != (1.0, 0.0)).then_some(rescale);
        assert_eq!(vol.scaling, want_scaling, "{rel}: scaling");
        assert_eq!(info.scaling, want_scaling, "{rel}: header scaling");
        // A series' files are its sources, in ITK's slice order.
        if let Some(files) = want.get("files").and_then(Value::as_array) {
            let names: Vec<String> = formats::source_files(&path)
                .unwrap()
                .iter()
                .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
                .collect();
            let want: Vec<&str> = files.iter().map(|f| f.as_str().unwrap()).collect();
            assert_eq!(names, want, "{rel}: files in slice order");
        }
    }
}

#[test]
fn every_series_a_folder_scan_finds_has_an_oracle_entry() {
    let oracle = oracle();
    let dirs = [
        "dicom/CT5N_series",
        "dicom_generated/two_series",
        "dicom_generated/oblique",
    ];
    let inputs: Vec<String> = dirs
        .iter()
        .map(|d| {
            data_dir()
                .join("other_formats")
                .join(d)
                .display()
                .to_string()
        })
        .collect();
    let found = dino3d_pipeline::manifest::discover(&inputs).unwrap();
    assert_eq!(found.len(), 4, "{found:?}");
    for p in found {
        let rel = p.strip_prefix(data_dir()).unwrap().display().to_string();
        assert!(oracle.contains_key(&rel), "{rel} has no oracle entry");
    }
}

#[test]
fn a_folder_with_two_series_lists_both_and_needs_a_uid() {
    let dir = generated("two_series");
    let series = formats::dicom::series_paths(&dir).unwrap();
    assert_eq!(series.len(), 2);
    assert!(
        series[0]
            .to_string_lossy()
            .ends_with("#1.2.826.0.1.3680043.10.1078.1")
    );
    let e = formats::read_header(&dir).unwrap_err().to_string();
    assert!(
        e.contains("holds 2 series") && e.contains("two_series"),
        "{e}"
    );
    let none = PathBuf::from(format!("{}#9.9.9", dir.display()));
    let e = formats::read_header(&none).unwrap_err().to_string();
    assert!(e.contains("no series 9.9.9"), "{e}");
    // A folder of one series is that series.
    let one = formats::dicom::series_paths(&generated("oblique")).unwrap();
    assert_eq!(one, [generated("oblique")]);
}

/// The error reading `path` (header and whole volume must both fail), which
/// must name `names` and say `what`.
fn refused(path: &Path, names: &str, what: &[&str]) {
    let header = formats::read_header(path).map(|_| ());
    let volume = formats::read_volume(path).map(|_| ());
    for e in [header.unwrap_err(), volume.unwrap_err()] {
        let msg = e.to_string();
        assert!(msg.contains(names), "{}: {msg}", path.display());
        for w in what {
            assert!(msg.contains(w), "{}: {msg} lacks {w}", path.display());
        }
    }
}

#[test]
fn bad_series_and_files_are_errors_naming_the_files() {
    refused(
        &generated("bad/missing_slice"),
        "slice01.dcm and",
        &["gap", "missing slice", "slice02.dcm"],
    );
    refused(&generated("bad/duplicate"), "slice0", &["duplicate slice"]);
    refused(
        &generated("bad/tilt"),
        "slice00.dcm",
        &["gantry tilt", "slice04.dcm"],
    );
    refused(
        &generated("bad/mixed_sizes"),
        "slice02.dcm",
        &["8x8", "16x16", "mixed"],
    );
    refused(&generated("bad/truncated.dcm"), "truncated.dcm", &[]);
    refused(
        &generated("bad/enhanced_no_positions.dcm"),
        "enhanced_no_positions.dcm",
        &["multi-frame", "PlanePositionSequence"],
    );
}

#[test]
fn jpeg_2000_lossless_reads_exactly_as_the_uncompressed_file() {
    // pydicom's MR_small_jp2klossless.dcm and the generated HTJ2K file are
    // MR_small.dcm with its pixels coded losslessly (by OpenJPEG and by
    // OpenJPH): bit-identical voxels, a check independent of any other reader.
    let raw = formats::read_volume(data_dir().join("other_formats/dicom/MR_small.dcm")).unwrap();
    for (path, ts) in [
        (
            data_dir().join("other_formats/dicom/MR_small_jp2klossless.dcm"),
            "JPEG 2000 Image Compression (Lossless Only) (1.2.840.10008.1.2.4.90)",
        ),
        (
            generated("htj2k_lossless.dcm"),
            "High-Throughput JPEG 2000 Image Compression (Lossless Only) \
             (1.2.840.10008.1.2.4.201)",
        ),
    ] {
        let name = path.display();
        let j2k = formats::read_volume(&path).unwrap();
        assert_eq!(j2k.shape, raw.shape, "{name}");
        assert_eq!(j2k.data.dtype(), raw.data.dtype(), "{name}");
        assert!(j2k.data == raw.data, "{name}: voxels differ");
        assert_eq!(j2k.spacing, raw.spacing, "{name}");
        assert_eq!(j2k.affine, raw.affine, "{name}");
        assert_eq!(j2k.scaling, raw.scaling, "{name}");
        let info = formats::read_header(&path).unwrap();
        assert_eq!(info.encoding, Encoding::Jpeg2000, "{name}");
        assert!(info.data_compressed, "{name}");
        let got = info
            .header
            .fields()
            .iter()
            .find(|(k, _)| k == "TransferSyntax");
        assert_eq!(got.map(|(_, v)| v.as_str()), Some(ts), "{name}");
    }
}

#[test]
fn a_jpeg_2000_file_whose_fragment_is_no_codestream_is_an_error_naming_it() {
    // The header is fine, so only decoding fails: with the file and the
    // transfer syntax in the message, never a panic.
    let path = generated("bad/jpeg2000.dcm");
    let info = formats::read_header(&path).unwrap();
    assert_eq!(info.encoding, Encoding::Jpeg2000);
    let e = formats::read_volume(&path).unwrap_err().to_string();
    for w in [
        "jpeg2000.dcm",
        "cannot decode pixel data",
        "JPEG 2000",
        "1.2.840.10008.1.2.4.90",
    ] {
        assert!(e.contains(w), "{e} lacks {w}");
    }
}

#[test]
fn a_jpeg_2000_codestream_of_another_size_than_the_header_is_an_error() {
    // MR_small_jp2klossless.dcm with Columns 64 -> 128: the 64x64 codestream
    // would otherwise fill half of each 128-wide row and leave zeros.
    let mut bytes =
        std::fs::read(data_dir().join("other_formats/dicom/MR_small_jp2klossless.dcm")).unwrap();
    let columns = [0x28, 0x00, 0x11, 0x00, b'U', b'S', 0x02, 0x00, 64, 0];
    let at = bytes.windows(10).position(|w| w == columns).unwrap();
    bytes[at + 8] = 128;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wide.dcm");
    std::fs::write(&path, bytes).unwrap();
    assert_eq!(formats::read_header(&path).unwrap().shape, [1, 128, 64, 1]);
    let e = formats::read_volume(&path).unwrap_err().to_string();
    for w in ["wide.dcm", "JPEG 2000", "64x64", "128x64"] {
        assert!(e.contains(w), "{e} lacks {w}");
    }
}

#[test]
fn jpeg_ls_is_refused_naming_the_file_and_the_transfer_syntax() {
    // No pure-Rust JPEG-LS decoder in dicom-rs (CharLS is C++): both JPEG-LS
    // syntaxes are refused before any decoding, saying which they are.
    let src = data_dir().join("other_formats/dicom/unsupported/MR_small_jpeg_ls_lossless.dcm");
    refused(
        &src,
        "MR_small_jpeg_ls_lossless.dcm",
        &[
            "unsupported",
            "transfer syntax",
            "JPEG-LS Lossless",
            "1.2.840.10008.1.2.4.80",
            "CharLS",
        ],
    );
    // The same file labelled JPEG-LS near-lossless (a UID of the same length).
    let bytes = std::fs::read(&src).unwrap();
    let (from, to) = (b"1.2.840.10008.1.2.4.80", b"1.2.840.10008.1.2.4.81");
    let at = bytes.windows(from.len()).position(|w| w == from).unwrap();
    let mut lossy = bytes.clone();
    lossy[at..at + to.len()].copy_from_slice(to);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("near_lossless.dcm");
    std::fs::write(&path, lossy).unwrap();
    refused(
        &path,
        "near_lossless.dcm",
        &["JPEG-LS Lossy (Near-Lossless)", "1.2.840.10008.1.2.4.81"],
    );
}

#[test]
fn a_volume_over_the_budget_is_refused_before_decoding() {
    let opts = ReadOptions {
        max_voxels: 100,
        ..ReadOptions::default()
    };
    let e = formats::read_volume_with(data_dir().join("other_formats/dicom/CT5N_series"), &opts)
        .unwrap_err()
        .to_string();
    assert!(e.contains("budget"), "{e}");
}

#[test]
fn convert_writes_nifti_with_the_same_voxels_and_geometry() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ct.nii.gz");
    let src = generated("oblique");
    let vol = formats::convert_to_nifti(&src, &out, &ReadOptions::default()).unwrap();
    let back = formats::read_volume(&out).unwrap();
    assert_eq!(back.data, vol.data);
    assert_eq!(back.scaling, vol.scaling);
    for (r, w) in back.affine.iter().zip(&vol.affine) {
        for (g, w) in r.iter().zip(w) {
            assert!(
                (g - w).abs() < 1e-5,
                "{:?} vs {:?}",
                back.affine,
                vol.affine
            );
        }
    }
    let e = formats::convert_to_nifti(&src, &dir.path().join("x.mha"), &ReadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("x.mha") && e.contains("NIfTI"), "{e}");
}
