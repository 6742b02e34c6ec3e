//! Header scanning throughput (files/s) for `manifest build`, on a folder of
//! many volumes. Generate one with `benches/scan_vs_nibabel.sh` (10,000 files).
//!
//! Run: `DINO3D_SCAN_DATA=/tmp/dino3d-scan-10k cargo bench -p dino3d-pipeline --bench scan`

use std::path::PathBuf;
use std::sync::OnceLock;

use dino3d_pipeline::manifest::{self, ScanOptions};

fn files() -> &'static Vec<PathBuf> {
    static FILES: OnceLock<Vec<PathBuf>> = OnceLock::new();
    FILES.get_or_init(|| {
        let dir =
            std::env::var("DINO3D_SCAN_DATA").unwrap_or_else(|_| "/tmp/dino3d-scan-10k".into());
        match manifest::discover(std::slice::from_ref(&dir)) {
            Ok(f) if !f.is_empty() => f,
            _ => {
                eprintln!("no volumes in {dir}: run benches/scan_vs_nibabel.sh to generate them");
                std::process::exit(2);
            }
        }
    })
}

fn main() {
    divan::main();
}

/// Discover + read every header, with 1 and 2 rayon threads.
#[divan::bench(args = [1, 2], sample_count = 3, sample_size = 1)]
fn scan_headers(bencher: divan::Bencher, threads: usize) {
    let files = files();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    bencher
        .counter(divan::counter::ItemsCount::new(files.len()))
        .bench(|| {
            pool.install(|| {
                let found = manifest::discover(&[std::env::var("DINO3D_SCAN_DATA")
                    .unwrap_or_else(|_| "/tmp/dino3d-scan-10k".into())])
                .unwrap();
                let r = manifest::scan(&found, &ScanOptions::default(), &|_| {});
                assert_eq!(r.records.len(), files.len());
                r
            })
        });
}
