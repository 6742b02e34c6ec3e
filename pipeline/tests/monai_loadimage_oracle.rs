//! dino3d's MetaImage, NRRD and DICOM readers against MONAI's own
//! `LoadImage(reader=..., image_only=True)` + `EnsureChannelFirst`, with
//! ITKReader on every key and PydicomReader on the DICOM ones (see
//! `data/oracles/monai_loadimage_oracle.json`, written by
//! `scripts/oracles/monai_loadimage_oracle.py`). Where MONAI and dino3d
//! differ on purpose, the test checks the difference is exactly the one
//! documented here, so that any other change fails.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use dino3d_pipeline::Volume;
use dino3d_pipeline::formats;
use serde_json::Value;
use sha2::{Digest, Sha256};

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data")
}

fn load(name: &str) -> Value {
    let text = std::fs::read_to_string(data_dir().join("oracles").join(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn files(doc: &Value) -> BTreeMap<String, Value> {
    serde_json::from_value(doc["files"].clone()).unwrap()
}

/// Files ITK's Python wheels cannot hold (int8, int64, a 3-vector of uint8
/// pixels: `itk.Image` is not wrapped for them), so MONAI's ITKReader refuses
/// them; SimpleITK, and so dino3d, reads them (tests/other_formats_oracle.rs).
const ITK_PYTHON_UNWRAPPED: [&str; 3] = [
    "other_formats/generated/types/met_char.mha",
    "other_formats/generated/types/met_long_long.mha",
    "other_formats/generated/vector3.nrrd",
];

/// PydicomReader hands torch pydicom's big-endian array, which torch refuses
/// with `LoadImage(dtype=None)`; plain LoadImage converts to float32 first
/// and reads it, as dino3d does.
const PYDICOM_NATIVE_FAILS: [&str; 1] = ["other_formats/dicom/MR_small_bigendian.dcm"];

fn tol(dicom: bool) -> f64 {
    // The tolerances of tests/other_formats_oracle.rs and tests/dicom_oracle.rs.
    if dicom { 1e-5 } else { 1e-6 }
}

fn close(g: f64, w: f64, tol: f64) -> bool {
    (g - w).abs() <= tol * (1.0 + w.abs())
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn matrix(v: &Value) -> Vec<Vec<f64>> {
    v.as_array().unwrap().iter().map(f64s).collect()
}

fn sha_le<T: Copy>(values: impl IntoIterator<Item = T>, le: impl Fn(T) -> Vec<u8>) -> String {
    let mut h = Sha256::new();
    for v in values {
        h.update(le(v));
    }
    format!("{:x}", h.finalize())
}

/// Scaled values in memory order (x fastest), as MONAI's oracle hashes them.
fn values(vol: &Volume) -> Vec<f64> {
    (0..vol.data.len())
        .map(|i| match vol.scaling {
            Some((s, b)) => vol.data.get_f64(i) * s + b,
            None => vol.data.get_f64(i),
        })
        .collect()
}

fn sha_f64(v: &[f64]) -> String {
    sha_le(v.iter().copied(), |x| x.to_le_bytes().to_vec())
}

fn sha_f32(v: &[f32]) -> String {
    sha_le(v.iter().copied(), |x| x.to_le_bytes().to_vec())
}

/// The stored voxels as little-endian bytes.
fn sha_stored(vol: &Volume) -> String {
    let size = vol.data.dtype().size();
    let mut b = vol.data.as_bytes().to_vec();
    if cfg!(target_endian = "big") {
        b.chunks_exact_mut(size).for_each(<[u8]>::reverse);
    }
    format!("{:x}", Sha256::digest(&b))
}

/// dino3d's `[C, X, Y, Z]` shape as MONAI gives it: a one-slice image that
/// MONAI reads as 2-D (`want` has three entries) is `(C, X, Y)` there.
fn monai_shape(vol: &Volume, want: &[usize]) -> Vec<usize> {
    if want.len() == 3 && vol.shape[3] == 1 {
        vol.shape[..3].to_vec()
    } else {
        vol.shape.to_vec()
    }
}

/// A 2-D affine (3x3) as dino3d's 4x4: the z axis an identity row and column.
fn as_4x4(a: &[Vec<f64>]) -> Vec<Vec<f64>> {
    if a.len() == 4 {
        return a.to_vec();
    }
    vec![
        vec![a[0][0], a[0][1], 0.0, a[0][2]],
        vec![a[1][0], a[1][1], 0.0, a[1][2]],
        vec![0.0, 0.0, 1.0, 0.0],
        vec![0.0, 0.0, 0.0, 1.0],
    ]
}

fn assert_affine(rel: &str, got: &[[f64; 4]; 4], want: &[Vec<f64>], tol: f64) {
    for i in 0..4 {
        for j in 0..4 {
            assert!(
                close(got[i][j], want[i][j], tol),
                "{rel}: affine[{i}][{j}] {} vs MONAI {}: {got:?} vs {want:?}",
                got[i][j],
                want[i][j]
            );
        }
    }
}

/// The dtype MONAI's tensors take for a reader array of `reader_dtype` with
/// `LoadImage(dtype=None)`: torch lacks unsigned types above 8 bits.
fn monai_native(reader_dtype: &str) -> &str {
    match reader_dtype {
        "uint16" => "int32",
        "uint32" | "uint64" => "int64",
        d => d,
    }
}

#[test]
fn the_oracle_has_the_simpleitk_oracles_keys() {
    let monai = files(&load("monai_loadimage_oracle.json"));
    let mut sitk: BTreeSet<String> = files(&load("other_formats_oracle.json"))
        .into_keys()
        .collect();
    sitk.extend(files(&load("dicom_oracle.json")).into_keys());
    let keys: BTreeSet<String> = monai.keys().cloned().collect();
    assert_eq!(keys, sitk);
    assert!(keys.len() >= 44, "{} keys", keys.len());
    // Plain LoadImage() picks ITKReader for every one of these paths (itk
    // installed, pynrrd not), so the ITKReader records are MONAI's default.
    for (rel, want) in &monai {
        assert_eq!(want["default_reader"], "ITKReader", "{rel}");
    }
}

#[test]
fn every_key_reads_as_monai_itkreader_gives_it() {
    let monai = files(&load("monai_loadimage_oracle.json"));
    let mut refused = BTreeSet::new();
    for (rel, rec) in &monai {
        let want = &rec["ITKReader"];
        let path = data_dir().join(rel);
        let vol = formats::read_volume(&path).unwrap_or_else(|e| panic!("{rel}: {e}"));
        let info = formats::read_header(&path).unwrap_or_else(|e| panic!("{rel}: {e}"));
        assert_eq!(info.shape, vol.shape, "{rel}");
        if let Some(err) = want["error"].as_str() {
            assert!(err.contains("is not wrapped"), "{rel}: {err}");
            refused.insert(rel.as_str());
            continue;
        }
        let dicom = info.format == formats::Format::Dicom;
        let tol = tol(dicom);
        let shape: Vec<usize> = serde_json::from_value(want["shape"].clone()).unwrap();
        assert_eq!(monai_shape(&vol, &shape), shape, "{rel}: shape");
        // Spacing: ITK's own (every axis; 4 for 4-D, 2 for 2-D) and MONAI's
        // pixdim (from the affine).
        let spacing = f64s(&want["spacing"]);
        let pixdim = f64s(&want["pixdim"]);
        for a in 0..3 {
            let (w, p) = match spacing.len() {
                2 if a == 2 => (1.0, 1.0),
                _ => (spacing[a], pixdim[a]),
            };
            assert!(close(vol.spacing[a], w, tol), "{rel}: spacing {a}");
            assert!(close(vol.spacing[a], p, tol), "{rel}: pixdim {a}");
        }
        assert_affine(rel, &vol.affine, &as_4x4(&matrix(&want["affine"])), tol);

        // Voxels. Plain LoadImage gives float32: dino3d's to_f32 must be it.
        assert_eq!(want["dtype"], "float32", "{rel}");
        assert_eq!(
            sha_f32(&vol.to_f32()),
            want["float32_sha256"],
            "{rel}: float32 voxels"
        );
        let vals = values(&vol);
        assert_eq!(
            sha_f64(&vals),
            want["values_sha256_f64"],
            "{rel}: voxel values"
        );
        for s in want["samples"].as_array().unwrap() {
            let i = s[0].as_u64().unwrap() as usize;
            assert_eq!(vals[i], s[1].as_f64().unwrap(), "{rel}: voxel {i}");
        }
        let reader_dtype = want["reader_dtype"].as_str().unwrap();
        assert_eq!(
            want["native_dtype"],
            monai_native(reader_dtype),
            "{rel}: MONAI's dtype=None tensor"
        );
        if vol.scaling.is_none() && !(dicom && rel.ends_with("rescale_per_slice")) {
            // Same stored type, same bytes.
            assert_eq!(vol.data.dtype().name(), reader_dtype, "{rel}: dtype");
            assert_eq!(sha_stored(&vol), want["sha256"], "{rel}: stored voxels");
        } else {
            // DICOM with RescaleSlope/Intercept: GDCM hands ITK the rescaled
            // values in a type it picks (int32, float64); dino3d keeps the
            // stored integers and the rescale (or float32 values when the
            // slices disagree), compared above as values.
            assert!(dicom, "{rel}: scaled non-DICOM");
            assert!(
                ["int32", "float64"].contains(&reader_dtype),
                "{rel}: {reader_dtype}"
            );
        }
        if let Some(files) = want["files"].as_array() {
            let names: Vec<String> = formats::source_files(&path)
                .unwrap()
                .iter()
                .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
                .collect();
            assert_eq!(names, *files, "{rel}: slice order");
        }
    }
    assert_eq!(refused, BTreeSet::from(ITK_PYTHON_UNWRAPPED));
}

/// dino3d's values (`scaled`, or the stored ones) in PydicomReader's layout:
/// its array is `perm(C, X, Y, Z)` with slice `k` taken from dino3d's slice
/// `slices[k]`, hashed with its first spatial axis fastest.
fn pydicom_layout(vol: &Volume, axes: [usize; 3], slices: &[usize], scaled: bool) -> Vec<f64> {
    let [c, x, y, z] = vol.shape;
    let dims = [x, y, z];
    let (n0, n1, n2) = (dims[axes[0]], dims[axes[1]], dims[axes[2]]);
    let mut out = Vec::with_capacity(vol.data.len());
    for ch in 0..c {
        for a2 in 0..n2 {
            for a1 in 0..n1 {
                for a0 in 0..n0 {
                    let mut ijk = [0; 3];
                    ijk[axes[0]] = a0;
                    ijk[axes[1]] = a1;
                    ijk[axes[2]] = a2;
                    ijk[2] = slices[ijk[2]];
                    out.push(if scaled {
                        vol.value(ch, ijk[0], ijk[1], ijk[2])
                    } else {
                        vol.data.get_f64(vol.index(ch, ijk[0], ijk[1], ijk[2]))
                    });
                }
            }
        }
    }
    out
}

#[test]
fn dicom_reads_as_monai_pydicomreader_gives_it_up_to_its_documented_layouts() {
    let monai = files(&load("monai_loadimage_oracle.json"));
    let dicom: BTreeMap<String, Value> = files(&load("dicom_oracle.json"));
    let mut native_failed = BTreeSet::new();
    for rel in dicom.keys() {
        let want = &monai[rel]["PydicomReader"];
        if want.get("not_expressible").is_some() {
            // PydicomReader has no series selection (see the next test).
            assert!(rel.contains('#'), "{rel}");
            continue;
        }
        assert!(want.get("error").is_none(), "{rel}: {}", want["error"]);
        if let Some(err) = want["native_error"].as_str() {
            assert!(err.contains("byte order"), "{rel}: {err}");
            native_failed.insert(rel.as_str());
        }
        let path = data_dir().join(rel);
        let vol = formats::read_volume(&path).unwrap_or_else(|e| panic!("{rel}: {e}"));
        let [c, x, y, z] = vol.shape;
        let shape: Vec<usize> = serde_json::from_value(want["shape"].clone()).unwrap();
        let affine = matrix(&want["affine"]);
        let tol = tol(true);
        // Plain LoadImage gives float32 here too.
        assert_eq!(want["dtype"], "float32", "{rel}");
        let mut scaled = true;
        let (layout, slices): ([usize; 3], Vec<usize>) = if shape.len() == 3 {
            // One frame: PydicomReader's image is 2-D, (C, X, Y), and its
            // affine's third column the placeholder (0, 0, 1), where dino3d
            // (as ITK) puts the slice normal times the slice spacing.
            assert_eq!(shape, [c, x, y], "{rel}: shape");
            assert_eq!(z, 1, "{rel}");
            for (i, w) in [0.0, 0.0, 1.0, 0.0].iter().enumerate() {
                assert_eq!(affine[i][2], *w, "{rel}: third column");
            }
            for i in 0..4 {
                for j in [0, 1, 3] {
                    assert!(
                        close(vol.affine[i][j], affine[i][j], tol),
                        "{rel}: affine[{i}][{j}] {:?} vs {affine:?}",
                        vol.affine
                    );
                }
            }
            ([0, 1, 2], vec![0])
        } else if want.get("files").is_none() {
            // A multi-frame file: swap_ij swaps the first two axes of pydicom's
            // (frames, rows, columns) array, so MONAI's axes are (Y, Z, X);
            // lacking a top-level ImagePositionPatient, the affine is the
            // identity (permuted by the swap), no geometry at all. Its rescale
            // sits in the functional groups, which PydicomReader does not read:
            // it gives the stored integers, dino3d (as ITK) the rescaled values.
            assert_eq!(shape, [c, y, z, x], "{rel}: shape");
            let swap = [
                [0.0, 1.0, 0.0, 0.0],
                [1.0, 0.0, 0.0, 0.0],
                [0.0, 0.0, 1.0, 0.0],
                [0.0, 0.0, 0.0, 1.0],
            ];
            assert_eq!(affine, swap, "{rel}: affine");
            assert!(
                want["warnings"][0]
                    .as_str()
                    .unwrap()
                    .contains("ImagePositionPatient"),
                "{rel}"
            );
            assert!(vol.scaling.is_some(), "{rel}: no rescale to ignore");
            assert_eq!(want["reader_dtype"], vol.data.dtype().name(), "{rel}");
            scaled = false;
            ([1, 2, 0], (0..z).collect())
        } else {
            // A series, stacked by InstanceNumber: dino3d's slices (ordered by
            // position, as ITK) in that order must be a reversal or the same.
            assert_eq!(shape, [c, x, y, z], "{rel}: shape");
            let ours: Vec<String> = formats::source_files(&path)
                .unwrap()
                .iter()
                .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
                .collect();
            let slices: Vec<usize> = want["files"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| ours.iter().position(|o| o == f).unwrap())
                .collect();
            let same: Vec<usize> = (0..z).collect();
            let reversed: Vec<usize> = (0..z).rev().collect();
            assert!(slices == same || slices == reversed, "{rel}: {slices:?}");
            // A reversed stack: the z column negated, the origin at the last slice.
            let mut a = vol.affine;
            if slices == reversed {
                for row in a.iter_mut().take(3) {
                    row[3] += (z - 1) as f64 * row[2];
                    row[2] = -row[2];
                }
            }
            assert_affine(rel, &a, &affine, tol);
            let pixdim = f64s(&want["pixdim"]);
            for (k, (&g, &w)) in vol.spacing.iter().zip(&pixdim).enumerate() {
                assert!(close(g, w, tol), "{rel}: pixdim {k}");
            }
            ([0, 1, 2], slices)
        };
        // Values: PydicomReader rescales in float64 (pydicom's DS values are
        // float subclasses numpy does not demote), dino3d in f64 too.
        let vals = pydicom_layout(&vol, layout, &slices, scaled);
        assert_eq!(
            sha_f64(&vals),
            want["values_sha256_f64"],
            "{rel}: voxel values"
        );
        let f32s: Vec<f32> = vals.iter().map(|&v| v as f32).collect();
        assert_eq!(sha_f32(&f32s), want["float32_sha256"], "{rel}: float32");
        for s in want["samples"].as_array().unwrap() {
            let i = s[0].as_u64().unwrap() as usize;
            assert_eq!(vals[i], s[1].as_f64().unwrap(), "{rel}: voxel {i}");
        }
    }
    assert_eq!(native_failed, BTreeSet::from(PYDICOM_NATIVE_FAILS));
}

#[test]
fn a_folder_of_several_series_is_refused_where_monai_guesses() {
    let doc = load("monai_loadimage_oracle.json");
    let monai = files(&doc);
    let several: BTreeMap<String, Value> =
        serde_json::from_value(doc["folders_holding_several_series"].clone()).unwrap();
    assert!(!several.is_empty());
    for (rel, want) in &several {
        let dir = data_dir().join(rel);
        let e = formats::read_header(&dir).unwrap_err().to_string();
        assert!(e.contains("series"), "{rel}: {e}");
        let series = formats::dicom::series_paths(&dir).unwrap();
        assert!(series.len() > 1, "{rel}");
        // ITKReader warns and reads the first series GDCM lists, the one
        // dino3d lists first and reads as FOLDER#UID.
        let itk = &want["ITKReader"];
        let first = series[0].strip_prefix(data_dir()).unwrap();
        let first = monai[&first.display().to_string()]["ITKReader"].clone();
        for k in ["shape", "affine", "values_sha256_f64", "files"] {
            assert_eq!(itk[k], first[k], "{rel}: {k}");
        }
        assert!(
            itk["warnings"][0]
                .as_str()
                .unwrap()
                .contains("more than one DICOM series"),
            "{rel}"
        );
        // PydicomReader stacks every file of every series as one volume.
        let total: usize = series
            .iter()
            .map(|s| formats::read_header(s).unwrap().shape[3])
            .sum();
        let shape: Vec<usize> =
            serde_json::from_value(want["PydicomReader"]["shape"].clone()).unwrap();
        assert_eq!(shape[3], total, "{rel}: PydicomReader stacks all files");
    }
}
