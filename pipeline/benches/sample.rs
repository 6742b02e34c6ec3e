//! One full 3DINO training sample: the views of recipes/pretrain.yaml (2
//! global 96³ + 8 local 48³ crops, each RandomResizedCrop3d, flips/rot90,
//! contrast/noise/histogram OneOf, smooth/sharpen/Gibbs) cut from an
//! in-memory prepared 256×256×128 volume. MONAI on this machine: 2.08
//! samples/s per core (../shared/spec/pipeline-reference.md §5).
//!
//! ```text
//! taskset -c 0 cargo bench -p dino3d-pipeline --bench sample -- one_thread
//! cargo bench -p dino3d-pipeline --bench sample -- two_threads
//! ```

use std::path::Path;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use dino3d_pipeline::exec::{Output, Pipeline, Sample};
use dino3d_pipeline::nifti::affine::IDENTITY;
use dino3d_pipeline::recipe::compile_file;
use dino3d_pipeline::transforms::Image;
use divan::counter::ItemsCount;

fn main() {
    divan::main();
}

fn pipeline() -> &'static Pipeline {
    static P: OnceLock<Pipeline> = OnceLock::new();
    P.get_or_init(|| {
        let recipe = Path::new(env!("CARGO_MANIFEST_DIR")).join("../recipes/pretrain.yaml");
        Pipeline::new(&compile_file(&recipe).unwrap_or_else(|e| panic!("{e}")))
    })
}

/// The prepared (3DINO prefix) `vol_000.nii.gz` of `DINO3D_BENCH_DATA`
/// (default `/tmp/dino3d-bench-data`, made by `benches/decode_vs_nibabel.sh`),
/// the volume the MONAI side uses; else a synthetic CT-like volume in [-1, 1].
fn prepared() -> &'static Sample {
    static S: OnceLock<Sample> = OnceLock::new();
    S.get_or_init(|| {
        let dir =
            std::env::var("DINO3D_BENCH_DATA").unwrap_or_else(|_| "/tmp/dino3d-bench-data".into());
        let file = Path::new(&dir).join("vol_000.nii.gz");
        if let Ok(vol) = dino3d_pipeline::nifti::read_volume(&file) {
            eprintln!("prepared volume: {}", file.display());
            return Sample::single(dino3d_pipeline::transforms::threedino_prefix(&vol, 0).unwrap());
        }
        eprintln!("{} not found: using a synthetic volume", file.display());
        let (x, y, z) = (256usize, 256usize, 128usize);
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut data = Vec::with_capacity(x * y * z);
        for _k in 0..z {
            for j in 0..y {
                for i in 0..x {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    let (u, v) = (i as f32 / 128.0 - 1.0, j as f32 / 128.0 - 1.0);
                    let body = u * u / 0.8 + v * v / 0.6 < 1.0;
                    let noise = (state % 1000) as f32 / 25_000.0;
                    data.push(if body {
                        -0.1 + 0.2 * u + noise
                    } else {
                        -1.0 + noise * 0.1
                    });
                }
            }
        }
        Sample::single(Image {
            data,
            shape: [1, x, y, z],
            spacing: [0.8, 0.8, 2.5],
            affine: IDENTITY,
        })
    })
}

fn bench_with(bencher: divan::Bencher, threads: usize) {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let (p, s) = (pipeline(), prepared());
    let next = AtomicU64::new(0);
    // Two samples per iteration so both threads have a sample of their own.
    bencher.counter(ItemsCount::new(2usize)).bench(|| {
        pool.install(|| {
            let i = next.fetch_add(2, Ordering::Relaxed);
            rayon::join(
                || match p.finish(s, 0, i, Path::new("bench")).unwrap() {
                    Output::Crops(c) => c,
                    Output::Samples(_) => unreachable!(),
                },
                || p.finish(s, 0, i + 1, Path::new("bench")).unwrap(),
            )
        })
    });
}

/// Full samples per second on one core (target >= 25).
#[divan::bench(sample_count = 20, sample_size = 2)]
fn one_thread(bencher: divan::Bencher) {
    bench_with(bencher, 1);
}

/// The same with two worker threads (scaling).
#[divan::bench(sample_count = 20, sample_size = 2)]
fn two_threads(bencher: divan::Bencher) {
    bench_with(bencher, 2);
}
