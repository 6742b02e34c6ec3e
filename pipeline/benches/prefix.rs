//! 3DINO's deterministic prefix (load, time frame, NaN to mean, percentile
//! scaling, in-plane-first permutation, crop foreground) on the CT-like
//! 256×256×128 int16 `.nii.gz` volumes of `DINO3D_BENCH_DATA` (default
//! `/tmp/dino3d-bench-data`, made by `benches/decode_vs_nibabel.sh`).
//!
//! ```text
//! DIVAN_THREADS=1 taskset -c 0 cargo bench -p dino3d-pipeline --bench prefix
//! ```

use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use dino3d_pipeline::Volume;
use dino3d_pipeline::nifti::read_volume;
use dino3d_pipeline::transforms::threedino_prefix;
use divan::counter::ItemsCount;

fn files() -> &'static Vec<PathBuf> {
    static FILES: OnceLock<Vec<PathBuf>> = OnceLock::new();
    FILES.get_or_init(|| {
        let dir =
            std::env::var("DINO3D_BENCH_DATA").unwrap_or_else(|_| "/tmp/dino3d-bench-data".into());
        let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.to_string_lossy().ends_with(".nii.gz"))
            .collect();
        v.sort();
        if v.is_empty() {
            eprintln!(
                "no .nii.gz volumes in {dir}: run benches/decode_vs_nibabel.sh to generate them"
            );
            if std::env::args().any(|a| a == "--bench") {
                std::process::exit(2);
            }
        }
        v
    })
}

fn main() {
    divan::main();
}

/// Load from `.nii.gz` and run the prefix: vol/s per core (MONAI: 0.91).
#[divan::bench(sample_count = 24, sample_size = 1)]
fn load_and_prefix(bencher: divan::Bencher) {
    let files = files();
    if files.is_empty() {
        return;
    }
    let next = AtomicUsize::new(0);
    bencher.counter(ItemsCount::new(1usize)).bench(|| {
        let i = next.fetch_add(1, Ordering::Relaxed) % files.len();
        let vol = read_volume(&files[i]).unwrap();
        threedino_prefix(&vol, i as u64).unwrap()
    });
}

/// The prefix alone on volumes already in memory.
#[divan::bench(sample_count = 24, sample_size = 1)]
fn prefix_only(bencher: divan::Bencher) {
    let files = files();
    if files.is_empty() {
        return;
    }
    let vols: Vec<Volume> = files
        .iter()
        .take(4)
        .map(|f| read_volume(f).unwrap())
        .collect();
    let next = AtomicUsize::new(0);
    bencher.counter(ItemsCount::new(1usize)).bench(|| {
        let i = next.fetch_add(1, Ordering::Relaxed) % vols.len();
        threedino_prefix(&vols[i], i as u64).unwrap()
    });
}
