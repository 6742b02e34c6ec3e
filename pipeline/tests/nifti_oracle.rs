//! The reader against independent references: nibabel 5.4.2 and the NIfTI C
//! library, on every real file in `data/` (see `data/oracles/`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use dino3d_pipeline::Error;
use dino3d_pipeline::nifti::{
    self, DType, Endian, FallbackAffine, NiftiHeader, NiftiVersion, ReadOptions, affine,
};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data")
}

fn oracle() -> BTreeMap<String, Value> {
    let text = std::fs::read_to_string(data_dir().join("oracles/nibabel_oracle.json")).unwrap();
    // numpy writes NaN as a bare token, which is not JSON.
    let v: Value = serde_json::from_str(&text.replace("NaN", "null")).unwrap();
    serde_json::from_value(v["files"].clone()).unwrap()
}

fn matrix(v: &Value) -> [[f64; 4]; 4] {
    let mut m = [[0.0; 4]; 4];
    for i in 0..4 {
        for j in 0..4 {
            m[i][j] = v[i][j].as_f64().unwrap();
        }
    }
    m
}

fn assert_close(got: &[[f64; 4]; 4], want: &[[f64; 4]; 4], tol: f64, what: &str) {
    for i in 0..4 {
        for j in 0..4 {
            let (g, w) = (got[i][j], want[i][j]);
            assert!(
                (g - w).abs() <= tol * (1.0 + w.abs()),
                "{what}: [{i}][{j}] got {g}, want {w}\ngot {got:?}\nwant {want:?}"
            );
        }
    }
}

fn numpy_dtype(d: DType, e: Endian) -> String {
    let code = match d {
        DType::U8 => "u1",
        DType::I8 => "i1",
        DType::U16 => "u2",
        DType::I16 => "i2",
        DType::U32 => "u4",
        DType::I32 => "i4",
        DType::U64 => "u8",
        DType::I64 => "i8",
        DType::F32 => "f4",
        DType::F64 => "f8",
    };
    let order = match (d.size(), e) {
        (1, _) => "|",
        (_, Endian::Little) => "<",
        (_, Endian::Big) => ">",
    };
    format!("{order}{code}")
}

/// Parses the raw header bytes of a file (inflating with flate2 if needed), even
/// when its data file is missing.
fn raw_header(path: &std::path::Path) -> NiftiHeader {
    use std::io::Read;
    let bytes = std::fs::read(path).unwrap();
    let mut buf = Vec::new();
    if bytes.starts_with(&[0x1f, 0x8b]) {
        flate2::read::MultiGzDecoder::new(&bytes[..])
            .take(544)
            .read_to_end(&mut buf)
            .unwrap();
    } else {
        buf = bytes;
        buf.truncate(544);
    }
    NiftiHeader::parse(&buf).unwrap()
}

#[test]
fn every_oracle_file_matches_nibabel() {
    let files = oracle();
    assert!(files.len() >= 26, "oracle lists {} files", files.len());
    let mut checked_data = 0;
    for (rel, want) in &files {
        let path = data_dir().join(rel);
        if let Some(err) = want.get("data_error") {
            // Header-only pairs: a clean "data file missing" error naming the header.
            let e = nifti::read_volume(&path).unwrap_err();
            assert!(matches!(e, Error::DataFileMissing { .. }), "{rel}: {e}");
            let msg = e.to_string();
            assert!(
                msg.contains("data file missing") && msg.contains(rel.as_str()),
                "{msg}"
            );
            assert!(err.as_str().unwrap().contains("No such file"));
            assert!(nifti::read_header(&path).is_err());
            // The header itself still parses and gives nibabel's affine and shape.
            let h = raw_header(&path);
            let shape: Vec<u64> = serde_json::from_value(want["shape"].clone()).unwrap();
            assert_eq!(h.shape().unwrap(), shape, "{rel}");
            let a = affine::best_affine(&h, FallbackAffine::Nibabel);
            assert_close(&a, &matrix(&want["affine"]), 1e-6, rel);
            let code = want["disk_dtype"].as_str().unwrap();
            let dt = DType::from_nifti_code(h.datatype).unwrap();
            assert_eq!(numpy_dtype(dt, h.endian), code, "{rel}");
            continue;
        }
        if rel.ends_with("dconn.nii") {
            let e = nifti::read_volume(&path).unwrap_err();
            assert!(e.to_string().contains("CIFTI-2"), "{e}");
            continue;
        }
        let info = nifti::read_header(&path).unwrap_or_else(|e| panic!("{rel}: {e}"));
        let shape: Vec<u64> = serde_json::from_value(want["shape"].clone()).unwrap();
        assert_eq!(info.disk_shape, shape, "{rel}: shape");
        assert_eq!(
            numpy_dtype(info.dtype, info.header.endian),
            want["disk_dtype"].as_str().unwrap(),
            "{rel}: dtype"
        );
        let zooms: Vec<f64> = serde_json::from_value(want["zooms"].clone()).unwrap();
        for (i, z) in zooms.iter().enumerate() {
            assert!(
                (info.header.pixdim[i + 1] - z).abs() < 1e-6,
                "{rel}: zoom {i}"
            );
        }
        for (i, z) in zooms.iter().take(3).enumerate() {
            assert!((info.spacing[i] - z).abs() < 1e-6, "{rel}: spacing {i}");
        }
        // Affine: nibabel's choice, including the both-codes-0 fallback.
        assert_close(&info.affine, &matrix(&want["affine"]), 1e-5, rel);
        if !want["qform"].is_null() {
            assert_close(
                &affine::qform_affine(&info.header),
                &matrix(&want["qform"]),
                1e-5,
                rel,
            );
        }
        if !want["sform"].is_null() {
            assert_close(
                &affine::sform_affine(&info.header),
                &matrix(&want["sform"]),
                1e-6,
                rel,
            );
        }
        let codes: Vec<String> = serde_json::from_value(want["axcodes"].clone()).unwrap();
        let ours: Vec<String> = affine::axcodes(&info.affine)
            .iter()
            .map(|c| c.to_string())
            .collect();
        assert_eq!(ours, codes, "{rel}: axcodes");

        // Voxels: sha256 of the raw values, little-endian, file order.
        let vol = nifti::read_volume(&path).unwrap();
        assert_eq!(vol.shape, info.shape);
        assert_eq!(vol.data.dtype(), info.dtype);
        let channels: u64 = shape.iter().skip(3).product();
        assert_eq!(vol.shape[0] as u64, channels, "{rel}: channels");
        let digest = Sha256::digest(vol.data.as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            want["raw_sha256"].as_str().unwrap(),
            "{rel}: raw_sha256"
        );
        // Samples: raw and scaled values at the given (x, y, z[, t]).
        for (idx, pair) in want["samples"].as_object().unwrap() {
            let ix: Vec<usize> = idx.split(',').map(|s| s.parse().unwrap()).collect();
            let c = ix.get(3).copied().unwrap_or(0);
            let flat = vol.index(c, ix[0], ix[1], ix[2]);
            let raw = vol.data.get_f64(flat);
            let scaled = vol.value(c, ix[0], ix[1], ix[2]);
            if pair[0].is_null() {
                assert!(raw.is_nan() && scaled.is_nan(), "{rel}: NaN sample {idx}");
                continue;
            }
            let (wr, ws) = (pair[0].as_f64().unwrap(), pair[1].as_f64().unwrap());
            assert_eq!(raw, wr, "{rel}: raw sample {idx}");
            assert!(
                (scaled - ws).abs() <= 1e-9 * (1.0 + ws.abs()),
                "{rel}: scaled {idx}: {scaled} vs {ws}"
            );
        }
        // Summary statistics over all voxels.
        let n = vol.data.len();
        // nibabel's statistics skip NaN voxels.
        let raw_sum: f64 = (0..n)
            .map(|i| vol.data.get_f64(i))
            .filter(|v| !v.is_nan())
            .sum();
        let want_sum = want["raw_sum"].as_f64().unwrap();
        assert!(
            (raw_sum - want_sum).abs() <= 1e-6 * (1.0 + want_sum.abs()),
            "{rel}: raw_sum"
        );
        let scaled: Vec<f32> = vol.to_f32();
        let finite: Vec<f64> = scaled
            .iter()
            .map(|&v| v as f64)
            .filter(|v| !v.is_nan())
            .collect();
        let mean = finite.iter().sum::<f64>() / finite.len() as f64;
        let want_mean = want["scaled_mean"].as_f64().unwrap();
        assert!(
            (mean - want_mean).abs() <= 1e-5 * (1.0 + want_mean.abs()),
            "{rel}: mean {mean} vs {want_mean}"
        );
        checked_data += 1;
    }
    assert!(
        checked_data >= 20,
        "only {checked_data} files had their voxels checked"
    );
}

/// nifti_tool's qto_xyz / sto_xyz (6 decimals), and its "method 1" when both
/// codes are 0, which dino3d offers as `FallbackAffine::Method1`.
#[test]
fn nifticlib_oracle_agrees_where_conventions_match() {
    let text = std::fs::read_to_string(data_dir().join("oracles/nifticlib_oracle.tsv")).unwrap();
    let mut rows = 0;
    for line in text.lines().skip(1) {
        let cols: Vec<&str> = line.split('\t').collect();
        let rel = cols[0];
        let path = data_dir().join(rel);
        let parse = |s: &str| -> [[f64; 4]; 4] {
            let v: Vec<f64> = s.split_whitespace().map(|x| x.parse().unwrap()).collect();
            let mut m = [[0.0; 4]; 4];
            for i in 0..16 {
                m[i / 4][i % 4] = v[i];
            }
            m
        };
        let (qcode, scode): (i32, i32) = (cols[2].parse().unwrap(), cols[3].parse().unwrap());
        let h = raw_header(&path);
        assert_eq!((h.qform_code, h.sform_code), (qcode, scode), "{rel}");
        let q = parse(cols[4]);
        if qcode > 0 {
            // The C library zeroes the quaternion's `a` when a² < 1e-7, where nibabel
            // (whom we follow) keeps it above 3 ulps of the header's float type: allow
            // that gap only there (NIfTI-2's example_nifti2, ~1e-4).
            let [b, c, d] = h.quatern;
            let near_half_turn = (1.0 - (b * b + c * c + d * d)).abs() < 1e-7;
            let tol = if near_half_turn { 2e-4 } else { 2e-6 };
            assert_close(&affine::qform_affine(&h), &q, tol, rel);
        } else {
            let m1 = affine::best_affine(&h, FallbackAffine::Method1);
            if scode == 0 {
                assert_close(&m1, &q, 1e-6, rel);
                let opts = ReadOptions {
                    fallback_affine: FallbackAffine::Method1,
                    ..ReadOptions::default()
                };
                if let Ok(info) = nifti::read_header_with(&path, &opts) {
                    assert_close(&info.affine, &q, 1e-6, rel);
                }
            }
        }
        if scode > 0 {
            assert_close(&affine::sform_affine(&h), &parse(cols[5]), 2e-6, rel);
        }
        let dt: i16 = cols[8].parse().unwrap();
        assert_eq!(h.datatype, dt, "{rel}");
        rows += 1;
    }
    assert!(rows >= 20);
}

#[test]
fn nifti2_header_is_recognised() {
    let info = nifti::read_header(data_dir().join("nifti/nibabel/example_nifti2.nii.gz")).unwrap();
    assert_eq!(info.header.version, NiftiVersion::Nifti2);
}
