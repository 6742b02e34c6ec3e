//! Decode throughput of the NIfTI reader on CT-like volumes (divan).
//!
//! Reads `vol_*.nii.gz` and `vol_*.nii` from the directory in
//! `DINO3D_BENCH_DATA` (default `/tmp/dino3d-bench-data`), as written by
//! `/work/shared/bench/monai/make_data.py` (256×256×128 int16, nibabel gzip
//! level 1). Each iteration reads the next file in turn, so the page cache is
//! warm but no single file is replayed from CPU caches; divan reports
//! `item/s` (= volumes/s) and, for full reads, decoded voxel bytes/s.
//! `ceiling_inflate_only_nii_gz` is libdeflate alone on in-memory bytes: the
//! most a single-threaded `.nii.gz` read can reach.
//!
//! Run single-threaded for figures comparable to nibabel:
//!
//! ```text
//! DIVAN_THREADS=1 taskset -c 0 cargo bench -p dino3d-pipeline --bench decode
//! ```
//!
//! or `benches/decode_vs_nibabel.sh`, which also makes the data and runs
//! nibabel on the same files.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use dino3d_pipeline::nifti::{read_header, read_volume};
use divan::Bencher;
use divan::counter::{BytesCount, ItemsCount};

const DEFAULT_DIR: &str = "/tmp/dino3d-bench-data";

/// The benchmark inputs: every `.nii.gz` and `.nii` volume in the data dir.
struct Data {
    gz: Vec<PathBuf>,
    nii: Vec<PathBuf>,
    /// Decoded voxel bytes per volume (identical for all files).
    voxel_bytes: u64,
}

fn data_dir() -> PathBuf {
    std::env::var_os("DINO3D_BENCH_DATA").map_or_else(|| PathBuf::from(DEFAULT_DIR), PathBuf::from)
}

fn how_to_generate(dir: &Path) -> String {
    format!(
        "generate the data with:\n  benches/decode_vs_nibabel.sh   (creates venv + data, then runs everything)\n\
         or by hand:\n  python3 -m venv /tmp/nbvenv && /tmp/nbvenv/bin/pip install nibabel numpy\n  \
         /tmp/nbvenv/bin/python /work/shared/bench/monai/make_data.py {} 12\n\
         (set DINO3D_BENCH_DATA to use another directory)",
        dir.display()
    )
}

fn list(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vol_") && n.ends_with(suffix))
        })
        .collect();
    v.sort();
    v
}

/// Loads and checks the file lists; exits non-zero with instructions when the
/// data is missing or not what the benchmark expects.
fn load_data() -> Result<Data, String> {
    let dir = data_dir();
    if !dir.is_dir() {
        return Err(format!(
            "benchmark data directory {} does not exist; {}",
            dir.display(),
            how_to_generate(&dir)
        ));
    }
    let gz = list(&dir, ".nii.gz");
    let nii = list(&dir, ".nii");
    if gz.is_empty() || nii.is_empty() {
        return Err(format!(
            "no vol_*.nii.gz / vol_*.nii files in {} ({} .nii.gz, {} .nii); {}",
            dir.display(),
            gz.len(),
            nii.len(),
            how_to_generate(&dir)
        ));
    }
    // Check every file once (fully decoded), so the benchmark never measures an
    // error path, and that all volumes have the same size.
    let mut voxel_bytes = None;
    for p in gz.iter().chain(&nii) {
        let v = read_volume(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
        let bytes = v.data.as_bytes().len() as u64;
        if *voxel_bytes.get_or_insert(bytes) != bytes {
            return Err(format!(
                "{}: {bytes} voxel bytes, other volumes have {}; the counters assume equal sizes",
                p.display(),
                voxel_bytes.unwrap_or(0)
            ));
        }
    }
    let first = read_volume(&gz[0]).map_err(|e| e.to_string())?;
    eprintln!(
        "dino3d decode bench: {} .nii.gz + {} .nii volumes from {}; shape (C,X,Y,Z) {:?}, {}, {:.1} MiB decoded each",
        gz.len(),
        nii.len(),
        dir.display(),
        first.shape,
        first.data.dtype(),
        voxel_bytes.unwrap_or(0) as f64 / (1 << 20) as f64,
    );
    Ok(Data {
        gz,
        nii,
        voxel_bytes: voxel_bytes.unwrap_or(0),
    })
}

/// The data, loaded and checked once.
fn try_data() -> &'static Result<Data, String> {
    static DATA: OnceLock<Result<Data, String>> = OnceLock::new();
    DATA.get_or_init(load_data)
}

fn data() -> &'static Data {
    try_data().as_ref().unwrap_or_else(|e| fail(e))
}

fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    std::process::exit(2)
}

/// The compressed `.nii.gz` bytes held in memory, for the inflate-only ceiling.
struct Preloaded {
    blobs: Vec<Vec<u8>>,
    /// Header + voxel bytes: what `read_volume` inflates.
    inflated_bytes: usize,
}

fn preloaded() -> &'static Preloaded {
    static PRE: OnceLock<Preloaded> = OnceLock::new();
    PRE.get_or_init(|| {
        let d = data();
        let info = read_header(&d.gz[0]).unwrap_or_else(|e| fail(&e.to_string()));
        Preloaded {
            blobs: d
                .gz
                .iter()
                .map(|p| {
                    std::fs::read(p).unwrap_or_else(|e| fail(&format!("{}: {e}", p.display())))
                })
                .collect(),
            inflated_bytes: (info.data_offset + info.data_bytes) as usize,
        }
    })
}

/// A closure-owned cursor cycling through `files`.
fn cycle<'a>(files: &'a [PathBuf]) -> impl FnMut() -> &'a Path + 'a {
    let mut i = 0usize;
    move || {
        let p = &files[i % files.len()];
        i = i.wrapping_add(1);
        p.as_path()
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let has = |flag: &str| args.iter().any(|a| a == flag);
    if !has("--list") {
        // `cargo bench` passes `--bench`: missing data is then an error, before
        // divan prints an empty table. Without it (`cargo test --all-targets`
        // runs each bench once as a smoke test) missing data is only a skip.
        if has("--bench") {
            let _ = data();
        } else if let Err(e) = try_data() {
            eprintln!("decode bench skipped in test mode: {e}");
            return;
        }
    }
    divan::main();
}

/// Full reads of `files` in turn, counted as volumes and decoded voxel bytes.
fn bench_full_reads(bencher: Bencher, files: &[PathBuf], voxel_bytes: u64) {
    let mut next = cycle(files);
    bencher
        .counter(ItemsCount::new(1usize))
        .counter(BytesCount::new(voxel_bytes))
        .bench_local(|| {
            let v = read_volume(black_box(next())).expect("read_volume");
            black_box(&v);
            drop(v);
        });
}

/// Full read of a `.nii.gz`: read file, inflate, header, voxels as int16.
#[divan::bench(sample_count = 60, sample_size = 1)]
fn read_volume_nii_gz(bencher: Bencher) {
    let d = data();
    bench_full_reads(bencher, &d.gz, d.voxel_bytes);
}

/// Full read of an uncompressed `.nii`.
#[divan::bench(sample_count = 120, sample_size = 1)]
fn read_volume_nii(bencher: Bencher) {
    let d = data();
    bench_full_reads(bencher, &d.nii, d.voxel_bytes);
}

/// Header only of a `.nii.gz` (inflates a few hundred bytes).
#[divan::bench(sample_count = 200)]
fn read_header_nii_gz(bencher: Bencher) {
    let d = data();
    let mut next = cycle(&d.gz);
    bencher.counter(ItemsCount::new(1usize)).bench_local(|| {
        black_box(read_header(black_box(next())).expect("read_header"));
    });
}

/// Reference ceiling: libdeflate inflate alone of the same `.nii.gz` bytes,
/// already in memory, into one reused buffer (no file read, no allocation, no
/// header parse). `read_volume_nii_gz` can approach this, not beat it.
#[divan::bench(sample_count = 60, sample_size = 1)]
fn ceiling_inflate_only_nii_gz(bencher: Bencher) {
    let p = preloaded();
    let mut out = vec![0u8; p.inflated_bytes];
    let mut dec = libdeflater::Decompressor::new();
    let mut i = 0usize;
    bencher
        .counter(ItemsCount::new(1usize))
        .counter(BytesCount::new(data().voxel_bytes))
        .bench_local(|| {
            let blob = &p.blobs[i % p.blobs.len()];
            i = i.wrapping_add(1);
            black_box(
                dec.gzip_decompress(black_box(blob), &mut out)
                    .expect("inflate"),
            );
        });
}
