//! Writing and reading back: every dtype, both compressions, pairs, big-endian
//! and multi-member gzip; our files read by an independent reader (nifti-rs);
//! and bad input giving clear, file-naming errors instead of panics.

use std::path::{Path, PathBuf};

use dino3d_pipeline::nifti::{
    self, DType, NiftiHeader, NiftiVersion, WriteOptions, affine, header_for, write_volume,
};
use dino3d_pipeline::{Error, Volume, VolumeMeta, VoxelData};

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data")
}

fn oblique_affine() -> nifti::Affine {
    let (s, c) = (0.2f64.sin(), 0.2f64.cos());
    [
        [-0.8 * c, 0.0, 2.5 * s, 10.5],
        [0.0, 0.9, 0.0, -20.25],
        [0.8 * s, 0.0, 2.5 * c, 30.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
}

fn volume(dtype: DType, shape: [usize; 4]) -> Volume {
    let n: usize = shape.iter().product();
    let mut data = VoxelData::zeroed(dtype, n);
    // Values that exercise every byte and the sign.
    for (i, b) in data.as_bytes_mut().iter_mut().enumerate() {
        *b = (i.wrapping_mul(2_654_435_761) >> 7) as u8;
    }
    if let VoxelData::F32(v) = &mut data {
        v.iter_mut()
            .enumerate()
            .for_each(|(i, x)| *x = i as f32 * 0.25 - 3.0);
    }
    if let VoxelData::F64(v) = &mut data {
        v.iter_mut()
            .enumerate()
            .for_each(|(i, x)| *x = i as f64 * -1.5e-3 + 7.0);
    }
    Volume {
        data,
        shape,
        spacing: [0.8, 0.9, 2.5],
        affine: oblique_affine(),
        scaling: None,
        meta: VolumeMeta::default(),
    }
}

fn assert_affine_close(a: &nifti::Affine, b: &nifti::Affine) {
    for i in 0..4 {
        for j in 0..4 {
            assert!((a[i][j] - b[i][j]).abs() < 1e-5, "{a:?} vs {b:?}");
        }
    }
}

#[test]
fn every_dtype_round_trips_through_nii_and_nii_gz() {
    let dir = tempfile::tempdir().unwrap();
    for dtype in DType::ALL {
        for name in ["v.nii", "v.nii.gz"] {
            let mut vol = volume(dtype, [2, 5, 6, 7]);
            vol.scaling = if dtype.is_float() {
                None
            } else {
                Some((0.5, -10.0))
            };
            let path = dir.path().join(format!("{dtype}-{name}"));
            write_volume(&path, &vol, &WriteOptions::default()).unwrap();
            let back = nifti::read_volume(&path).unwrap();
            assert_eq!(back.data, vol.data, "{dtype} {name}");
            assert_eq!(back.shape, vol.shape);
            assert_eq!(back.scaling, vol.scaling);
            assert_affine_close(&back.affine, &vol.affine);
            // qform written from the affine reproduces it too (no shear here).
            let info = nifti::read_header(&path).unwrap();
            assert_affine_close(&affine::qform_affine(&info.header), &vol.affine);
            assert_eq!(info.disk_shape, vec![5, 6, 7, 2]);
        }
    }
}

#[test]
fn an_independent_reader_agrees_with_our_files() {
    let dir = tempfile::tempdir().unwrap();
    let vol = volume(DType::I16, [1, 9, 8, 7]);
    let path = dir.path().join("ours.nii.gz");
    write_volume(&path, &vol, &WriteOptions::default()).unwrap();
    let obj = ::nifti::ReaderOptions::new().read_file(&path).unwrap();
    let h = obj.header();
    assert_eq!(&h.dim[..4], &[3, 9, 8, 7]);
    assert_eq!(h.datatype, 4);
    for (row, srow) in [h.srow_x, h.srow_y, h.srow_z].iter().enumerate() {
        for (got, want) in srow.iter().zip(&vol.affine[row]) {
            assert!((f64::from(*got) - want).abs() < 1e-5);
        }
    }
    use ::nifti::NiftiObject;
    assert_eq!(obj.volume().raw_data(), vol.data.as_bytes());
}

#[test]
fn real_files_survive_a_write_read_cycle() {
    let dir = tempfile::tempdir().unwrap();
    for rel in [
        "nifti/nibabel/anatomical.nii",
        "nifti/nibabel/functional.nii",
        "nifti/dipy/small_64D.nii",
    ] {
        let vol = nifti::read_volume(data_dir().join(rel)).unwrap();
        let out = dir.path().join("copy.nii.gz");
        write_volume(&out, &vol, &WriteOptions { gzip_level: 1 }).unwrap();
        let back = nifti::read_volume(&out).unwrap();
        assert_eq!(back.data, vol.data, "{rel}");
        assert_eq!(back.scaling, vol.scaling, "{rel}");
        assert_affine_close(&back.affine, &vol.affine);
        let want_code = if vol.meta.sform_code > 0 {
            vol.meta.sform_code
        } else {
            2
        };
        assert_eq!(back.meta.sform_code, want_code, "{rel}");
    }
}

/// Writes `vol` as a header/data pair by hand (our writer writes single files).
fn write_pair(hdr: &Path, img: &Path, vol: &Volume, gz_img: bool) {
    let mut h = header_for(vol);
    h.single_file = false;
    h.vox_offset = 0.0;
    std::fs::write(hdr, &h.to_bytes()[..348]).unwrap();
    let bytes = vol.data.as_bytes().to_vec();
    if gz_img {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&bytes).unwrap();
        std::fs::write(img, e.finish().unwrap()).unwrap();
    } else {
        std::fs::write(img, bytes).unwrap();
    }
}

#[test]
fn header_data_pairs_are_read_from_either_name() {
    let dir = tempfile::tempdir().unwrap();
    let vol = volume(DType::F32, [1, 4, 5, 6]);
    for gz in [false, true] {
        let hdr = dir.path().join(format!("pair{gz}.hdr"));
        let img = dir
            .path()
            .join(format!("pair{gz}.img{}", if gz { ".gz" } else { "" }));
        write_pair(&hdr, &img, &vol, gz);
        for p in [&hdr, &img] {
            let back = nifti::read_volume(p).unwrap();
            assert_eq!(back.data, vol.data, "{}", p.display());
        }
        let info = nifti::read_header(&hdr).unwrap();
        assert_eq!(info.data_path, img);
        assert_eq!(info.header.version, NiftiVersion::Nifti1);
    }
}

#[test]
fn big_endian_files_of_every_dtype_read_correctly() {
    let dir = tempfile::tempdir().unwrap();
    for dtype in DType::ALL {
        let vol = volume(dtype, [1, 3, 4, 5]);
        let h = header_for(&vol);
        // Build a big-endian file by swapping the fields the reader needs.
        let mut bytes = h.to_bytes();
        let swap = |b: &mut Vec<u8>, at: usize, n: usize| b[at..at + n].reverse();
        swap(&mut bytes, 0, 4);
        for i in 0..8 {
            swap(&mut bytes, 40 + 2 * i, 2);
            swap(&mut bytes, 76 + 4 * i, 4);
        }
        for at in [70, 72, 252, 254] {
            swap(&mut bytes, at, 2);
        }
        for at in [108, 112, 116] {
            swap(&mut bytes, at, 4);
        }
        for i in 0..6 {
            swap(&mut bytes, 256 + 4 * i, 4);
        }
        for i in 0..3 {
            for c in 0..4 {
                swap(&mut bytes, 280 + 16 * i + 4 * c, 4);
            }
        }
        let parsed = NiftiHeader::parse(&bytes).unwrap();
        assert_eq!(parsed.endian, nifti::Endian::Big);
        for chunk in vol.data.as_bytes().chunks(dtype.size()) {
            bytes.extend(chunk.iter().rev());
        }
        let path = dir.path().join(format!("be-{dtype}.nii"));
        std::fs::write(&path, &bytes).unwrap();
        let back = nifti::read_volume(&path).unwrap();
        assert_eq!(back.data, vol.data, "{dtype}");
        assert_affine_close(&back.affine, &vol.affine);
    }
}

#[test]
fn multi_member_gzip_reads_like_single_member() {
    let dir = tempfile::tempdir().unwrap();
    let vol = volume(DType::I16, [1, 64, 64, 16]);
    let single = dir.path().join("single.nii");
    write_volume(&single, &vol, &WriteOptions::default()).unwrap();
    let raw = std::fs::read(&single).unwrap();
    // bgzip-style: independent members of 10 000 bytes.
    let mut multi = Vec::new();
    for chunk in raw.chunks(10_000) {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(chunk).unwrap();
        multi.extend(e.finish().unwrap());
    }
    let path = dir.path().join("multi.nii.gz");
    std::fs::write(&path, multi).unwrap();
    assert_eq!(nifti::read_volume(&path).unwrap().data, vol.data);
}

fn expect_format_error(path: &Path, needle: &str) {
    for result in [
        nifti::read_volume(path).map(|_| ()),
        nifti::read_header(path).map(|_| ()),
    ] {
        if let Err(e) = result {
            let msg = e.to_string();
            assert!(
                msg.contains(&path.display().to_string()),
                "error must name the file: {msg}"
            );
            assert!(msg.contains(needle), "expected {needle:?} in {msg:?}");
            return;
        }
    }
    panic!("{} read without error", path.display());
}

#[test]
fn bad_input_gives_clear_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let good = std::fs::read(data_dir().join("nifti/dipy/aniso_vox.nii.gz")).unwrap();

    let p = d.join("truncated.nii.gz");
    std::fs::write(&p, &good[..good.len() / 2]).unwrap();
    let e = nifti::read_volume(&p).unwrap_err().to_string();
    assert!(
        e.contains("truncated") && e.contains("truncated.nii.gz"),
        "{e}"
    );

    let mut corrupt = good.clone();
    let mid = corrupt.len() / 2;
    for b in &mut corrupt[mid..mid + 500] {
        *b = !*b;
    }
    let p = d.join("corrupt.nii.gz");
    std::fs::write(&p, &corrupt).unwrap();
    expect_format_error(&p, "gzip");

    let p = d.join("garbage.nii");
    std::fs::write(&p, vec![7u8; 4000]).unwrap();
    expect_format_error(&p, "sizeof_hdr");

    let p = d.join("empty.nii");
    std::fs::write(&p, b"").unwrap();
    expect_format_error(&p, "too short");

    let vol = volume(DType::I16, [1, 10, 10, 10]);
    let mut h = header_for(&vol);
    let with = |h: &NiftiHeader, extra: usize| {
        let mut b = h.to_bytes();
        b.extend(vec![0u8; extra]);
        b
    };
    // A .nii whose magic was damaged is not "a pair missing its .img".
    for (name, compress) in [("badmagic.nii", false), ("badmagic.nii.gz", true)] {
        let mut bytes = with(&h, 2000);
        bytes[344..348].copy_from_slice(b"xyz\0");
        if compress {
            use std::io::Write;
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&bytes).unwrap();
            bytes = e.finish().unwrap();
        }
        let p = d.join(name);
        std::fs::write(&p, bytes).unwrap();
        expect_format_error(&p, "not a NIfTI-1 file: bytes 344..348 are \"xyz\\x00\"");
    }

    // Data shorter than the dims say.
    let p = d.join("short.nii");
    std::fs::write(&p, with(&h, 1999)).unwrap();
    expect_format_error(&p, "truncated");

    // Zero and negative dims, bad rank.
    for (name, dim) in [
        ("zero.nii", [3, 10, 0, 10, 1, 1, 1, 1]),
        ("negative.nii", [3, 10, -5, 10, 1, 1, 1, 1]),
        ("rank.nii", [0, 10, 10, 10, 1, 1, 1, 1]),
    ] {
        h.dim = dim;
        let p = d.join(name);
        std::fs::write(&p, with(&h, 2000)).unwrap();
        expect_format_error(&p, "dim");
    }

    // Absurd dims (10^6 per axis) in NIfTI-2: refused before any allocation.
    h.version = NiftiVersion::Nifti2;
    h.vox_offset = 544.0;
    h.dim = [3, 1_000_000, 1_000_000, 1_000_000, 1, 1, 1, 1];
    for name in ["huge.nii", "huge.nii.gz"] {
        let p = d.join(name);
        let bytes = with(&h, 2000);
        if name.ends_with(".gz") {
            use std::io::Write;
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&bytes).unwrap();
            std::fs::write(&p, e.finish().unwrap()).unwrap();
        } else {
            std::fs::write(&p, bytes).unwrap();
        }
        let e = nifti::read_volume(&p).unwrap_err().to_string();
        assert!(
            e.contains(name)
                && (e.contains("overflow") || e.contains("can hold") || e.contains("truncated")),
            "{e}"
        );
    }
    // 10^6 x 10^6 x 1: fits 64 bits, but no file backs it.
    h.dim = [3, 1_000_000, 1_000_000, 1, 1, 1, 1, 1];
    let p = d.join("wide.nii.gz");
    {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&with(&h, 100)).unwrap();
        std::fs::write(&p, e.finish().unwrap()).unwrap();
    }
    expect_format_error(&p, "can hold");
}

#[test]
fn complex_and_rgb_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let vol = volume(DType::U8, [1, 4, 4, 4]);
    for (code, word) in [
        (32i16, "complex"),
        (128, "RGB"),
        (2304, "RGB"),
        (1792, "complex"),
    ] {
        let mut h = header_for(&vol);
        h.datatype = code;
        let mut bytes = h.to_bytes();
        bytes.extend(vec![0u8; 64 * 16]);
        let p = dir.path().join(format!("t{code}.nii"));
        std::fs::write(&p, bytes).unwrap();
        let e = nifti::read_volume(&p).unwrap_err();
        assert!(matches!(e, Error::Unsupported { .. }), "{e}");
        assert!(
            e.to_string().contains(word) && e.to_string().contains(&format!("t{code}.nii")),
            "{e}"
        );
    }
}

#[test]
fn header_only_read_does_not_touch_the_voxels() {
    // A gzip whose voxel part is corrupt still gives its header.
    let dir = tempfile::tempdir().unwrap();
    let vol = volume(DType::I16, [1, 64, 64, 64]);
    let path = dir.path().join("v.nii.gz");
    write_volume(&path, &vol, &WriteOptions::default()).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    let n = bytes.len();
    for b in &mut bytes[n - 2000..n - 100] {
        *b = 0;
    }
    std::fs::write(&path, &bytes).unwrap();
    let info = nifti::read_header(&path).unwrap();
    assert_eq!(info.shape, [1, 64, 64, 64]);
    assert!(nifti::read_volume(&path).is_err());
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
            if let Ok(h) = NiftiHeader::parse(&bytes) {
                let _ = h.voxel_count();
                let _ = h.data_offset();
                let _ = affine::axcodes(&affine::best_affine(&h, nifti::FallbackAffine::Nibabel));
            }
        }

        #[test]
        fn random_volumes_round_trip(
            dtype in prop::sample::select(DType::ALL.to_vec()),
            x in 1usize..7, y in 1usize..7, z in 1usize..7, c in 1usize..3,
            gz in any::<bool>(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let vol = volume(dtype, [c, x, y, z]);
            let path = dir.path().join(if gz { "r.nii.gz" } else { "r.nii" });
            write_volume(&path, &vol, &WriteOptions::default()).unwrap();
            let back = nifti::read_volume(&path).unwrap();
            prop_assert_eq!(back.data, vol.data);
            prop_assert_eq!(back.shape, vol.shape);
        }
    }
}

#[test]
fn voxel_offsets_not_aligned_to_the_type_read_correctly() {
    // vox_offset 355 is not a multiple of 8: the reader must move the voxels.
    let dir = tempfile::tempdir().unwrap();
    let vol = volume(DType::F64, [1, 5, 4, 3]);
    let mut h = header_for(&vol);
    h.vox_offset = 355.0;
    let mut bytes = h.to_bytes();
    bytes.extend([0u8; 3]);
    bytes.extend_from_slice(vol.data.as_bytes());
    for gz in [false, true] {
        let p = dir.path().join(if gz { "odd.nii.gz" } else { "odd.nii" });
        if gz {
            use std::io::Write;
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&bytes).unwrap();
            std::fs::write(&p, e.finish().unwrap()).unwrap();
        } else {
            std::fs::write(&p, &bytes).unwrap();
        }
        assert_eq!(nifti::read_volume(&p).unwrap().data, vol.data, "gz {gz}");
    }
}

/// Defect 5 of the reliability issue: NaN or infinite voxel sizes are
/// refused when the volume is read, naming the file and the field, so they
/// never reach a transform or a cache entry.
#[test]
fn non_finite_voxel_sizes_are_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let vol = volume(DType::I16, [1, 6, 5, 4]);
    for (i, bad) in [f32::NAN, f32::INFINITY].into_iter().enumerate() {
        let p = dir.path().join(format!("bad_pixdim{i}.nii"));
        write_volume(&p, &vol, &WriteOptions::default()).unwrap();
        let mut bytes = std::fs::read(&p).unwrap();
        // NIfTI-1: pixdim[0..8] are f32 from byte 76; pixdim[2] at 84.
        bytes[84..88].copy_from_slice(&bad.to_le_bytes());
        std::fs::write(&p, &bytes).unwrap();
        expect_format_error(&p, "pixdim[2]");
    }
}

/// Defect 6: a volume above the voxel budget is refused before its voxels
/// are allocated, with the budget named; within it, it reads.
#[test]
fn volumes_above_the_voxel_budget_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("big.nii.gz");
    write_volume(
        &p,
        &volume(DType::I16, [1, 20, 20, 20]),
        &WriteOptions::default(),
    )
    .unwrap();
    let small = nifti::ReadOptions {
        max_voxels: 7999,
        ..nifti::ReadOptions::default()
    };
    match nifti::read_volume_with(&p, &small) {
        Err(Error::TooLarge { voxels, budget, .. }) => assert_eq!((voxels, budget), (8000, 7999)),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    let msg = nifti::read_volume_with(&p, &small).unwrap_err().to_string();
    assert!(
        msg.contains("big.nii.gz") && msg.contains("data.max_voxels"),
        "{msg}"
    );
    let enough = nifti::ReadOptions {
        max_voxels: 8000,
        ..nifti::ReadOptions::default()
    };
    assert!(nifti::read_volume_with(&p, &enough).is_ok());
}
