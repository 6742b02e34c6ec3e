//! The cache on the CT-like 256×256×128 int16 volumes of `DINO3D_BENCH_DATA`
//! (default `/tmp/dino3d-bench-data`, made by `benches/decode_vs_nibabel.sh`),
//! prepared by 3DINO's prefix and cached as int16 + window in a temporary folder:
//!
//! * `crop_96`: a random 96³ box read from a warm entry (decodes only the
//!   chunks it touches, applies the window): crops/s per core;
//! * `full_sample_from_cache`: a full 3DINO sample (recipes/pretrain.yaml
//!   views) as the loader gets it from the cache (cut plane by plane as the
//!   entry decodes), vs `full_sample_in_ram` from the same prepared volumes
//!   already in memory;
//! * `warm_one`: build one entry from its `.nii.gz` (load, prefix, chunk,
//!   compress, write).
//!
//! ```text
//! taskset -c 0 cargo bench -p dino3d-pipeline --bench cache
//! DINO3D_CACHE_CODEC=zstd DINO3D_CACHE_CHUNK=16 taskset -c 0 cargo bench -p dino3d-pipeline --bench cache
//! ```

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use dino3d_cache::{CacheDir, Codec, Entry};
use dino3d_pipeline::exec::{CacheSource, Pipeline, PreparedSource};
use dino3d_pipeline::manifest::ManifestEntry;
use dino3d_pipeline::recipe::compile_file;
use divan::counter::ItemsCount;
use rand::{Rng, SeedableRng};

fn main() {
    // As dino-run does at start-up (DINO3D_DEFAULT_ALLOCATOR=1 measures without).
    if std::env::var_os("DINO3D_DEFAULT_ALLOCATOR").is_none() {
        dino3d_cache::reuse_large_buffers();
    }
    if let Some(n) = std::env::var("DINO3D_PAIRED_SAMPLES")
        .ok()
        .and_then(|n| n.parse().ok())
    {
        paired_samples(n);
    } else {
        divan::main();
    }
    if let Some(s) = SETUP.get() {
        let _ = std::fs::remove_dir_all(s.dir.path());
    }
}

/// `DINO3D_PAIRED_SAMPLES=N`: the full-sample ratio measured in pairs. Sample
/// `i` is cut once from the cache and once from the same entry's prepared
/// volume in RAM, back to back (same draws, same volume; which goes first
/// alternates), so the sample's own cost (which varies several-fold with its
/// random draws) and slow drifts of a shared machine cancel in the ratio of
/// the sums. The two results are checked equal.
fn paired_samples(n: usize) {
    let s = setup();
    let in_ram: Vec<_> = (0..s.paths.len())
        .map(|i| s.source.prepared(i).unwrap())
        .collect();
    let (mut cache_s, mut ram_s) = (0f64, 0f64);
    for i in 0..n {
        // Item e in epoch i / entries: every sample draws anew.
        let (e, epoch) = (i % s.paths.len(), (i / s.paths.len()) as u64);
        let from_cache = || {
            let t = std::time::Instant::now();
            let out = one_thread(|| s.source.output(&s.pipeline, epoch, e).unwrap());
            (out, t.elapsed().as_secs_f64())
        };
        let from_ram = || {
            let t = std::time::Instant::now();
            let out = one_thread(|| {
                s.pipeline
                    .finish(&in_ram[e], epoch, e as u64, Path::new("bench"))
                    .unwrap()
            });
            (out, t.elapsed().as_secs_f64())
        };
        // Alternate which goes first, so that neither gains from running second.
        let ((cache, tc), (ram, tr)) = if i % 2 == 0 {
            let c = from_cache();
            (c, from_ram())
        } else {
            let r = from_ram();
            (from_cache(), r)
        };
        cache_s += tc;
        ram_s += tr;
        assert!(cache == ram, "sample {i}: cache and RAM differ");
    }
    println!(
        "paired full samples: {n}; from cache {:.2} ms, in RAM {:.2} ms per sample; \
         from cache at {:.1}% of the in-RAM rate",
        1e3 * cache_s / n as f64,
        1e3 * ram_s / n as f64,
        100.0 * ram_s / cache_s
    );
}

struct Setup {
    source: CacheSource,
    /// The entry files.
    paths: Vec<PathBuf>,
    pipeline: Arc<Pipeline>,
    dir: tempfile::TempDir,
}

/// Built on first use. A static is never dropped, so `main` removes the
/// cache directory itself when the benches are done.
static SETUP: OnceLock<Setup> = OnceLock::new();

fn setup() -> &'static Setup {
    SETUP.get_or_init(|| {
        let data = PathBuf::from(
            std::env::var("DINO3D_BENCH_DATA").unwrap_or_else(|_| "/tmp/dino3d-bench-data".into()),
        );
        let mut files: Vec<String> = std::fs::read_dir(&data)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".nii.gz"))
            .collect();
        files.sort();
        assert!(
            !files.is_empty(),
            "no volumes in {}: run benches/decode_vs_nibabel.sh",
            data.display()
        );
        let recipe = Path::new(env!("CARGO_MANIFEST_DIR")).join("../recipes/pretrain.yaml");
        let plan = compile_file(&recipe).unwrap_or_else(|e| panic!("{e}"));
        let pipeline = Arc::new(Pipeline::new(&plan));
        let entries: Vec<ManifestEntry> = files
            .iter()
            .map(|f| ManifestEntry {
                image: f.clone(),
                shape: None,
                spacing: None,
                extra: Default::default(),
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        // Layout under test: DINO3D_CACHE_CODEC (zstd|lz4) and
        // DINO3D_CACHE_CHUNK (edge or x,y,z edges), defaulting to the crate's defaults.
        let mut cache = CacheDir::new(dir.path()).unwrap();
        match std::env::var("DINO3D_CACHE_CODEC").as_deref() {
            Ok("zstd") => cache = cache.with_codec(Codec::Zstd),
            Ok("lz4") => cache = cache.with_codec(Codec::Lz4),
            Ok(other) => panic!("DINO3D_CACHE_CODEC={other}: zstd or lz4"),
            Err(_) => {}
        }
        if let Ok(spec) = std::env::var("DINO3D_CACHE_CHUNK") {
            // One edge for all axes ("16") or one per axis ("32,16,16").
            let edges: Vec<usize> = spec
                .split(',')
                .map(|e| e.trim().parse().expect("DINO3D_CACHE_CHUNK: integers"))
                .collect();
            let chunk = match edges[..] {
                [e] => [e; 3],
                [x, y, z] => [x, y, z],
                _ => panic!("DINO3D_CACHE_CHUNK: one edge or three"),
            };
            cache = cache.with_chunk(chunk);
        }
        let source = CacheSource::new(
            pipeline.clone(),
            entries,
            &data.join("m.json"),
            cache.clone(),
            false,
        );
        let (mut src_bytes, mut out_bytes) = (0u64, 0u64);
        let mut paths = Vec::new();
        for (i, file) in files.iter().enumerate() {
            source.ensure(i).unwrap();
            let path = cache.entry_path(&source.key(i).unwrap());
            src_bytes += std::fs::metadata(data.join(file)).unwrap().len();
            out_bytes += std::fs::metadata(&path).unwrap().len();
            paths.push(path.clone());
        }
        eprintln!(
            "{} entries: cache {:.1} MiB for {:.1} MiB of .nii.gz ({:.2}x)",
            files.len(),
            out_bytes as f64 / 1048576.0,
            src_bytes as f64 / 1048576.0,
            out_bytes as f64 / src_bytes as f64
        );
        Setup {
            source,
            paths,
            pipeline,
            dir,
        }
    })
}

/// The entries, opened (mapped) on first use by the warm benches. The cold
/// bench never maps them here: pages mapped by a process cannot be evicted.
fn warm_entries() -> &'static [Entry] {
    static E: OnceLock<Vec<Entry>> = OnceLock::new();
    E.get_or_init(|| {
        setup()
            .paths
            .iter()
            .map(|p| Entry::open(p).unwrap())
            .collect()
    })
}

fn random_box(rng: &mut rand_chacha::ChaCha8Rng, e: &Entry) -> ([usize; 3], [usize; 3]) {
    let shape = e.header.arrays[0].shape;
    let start = [1, 2, 3].map(|a| rng.random_range(0..=shape[a].saturating_sub(96)));
    let extent = [1, 2, 3].map(|a| shape[a].min(96));
    (start, extent)
}

/// Random 96³ crops with the entry's pages evicted from the page cache first
/// (`posix_fadvise(DONTNEED)`, no root needed), so the touched chunks come
/// from disk: open + read. nnU-Net-style Blosc2 int16: 87/s (spec, cold).
/// Runs before `crop_96` (name order), which maps the entries for good.
#[divan::bench(sample_count = 30, sample_size = 4)]
fn cold_crop_96(bencher: divan::Bencher) {
    use std::os::fd::AsRawFd;
    let s = setup();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
    bencher
        .counter(ItemsCount::new(1usize))
        .with_inputs(|| {
            let path = &s.paths[rng.random_range(0..s.paths.len())];
            let f = std::fs::File::open(path).unwrap();
            // SAFETY: an advisory call on an open descriptor; no memory is touched.
            let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
            assert_eq!(rc, 0, "posix_fadvise");
            (path.clone(), rng.clone())
        })
        .bench_local_values(|(path, mut rng)| {
            let e = Entry::open(&path).unwrap();
            let (start, extent) = random_box(&mut rng, &e);
            e.read_box(0, start, extent).unwrap()
        });
}

/// The cold protocol of `bench_crop_store.py` (its Blosc2 figure): evict every
/// entry once, then 24 random crops over the entries in turn (entry k mod n,
/// each opened afresh), so a second crop of an entry may find pages the first
/// one read. Per-crop eviction (`cold_crop_96`) is the stricter measure.
/// With `DINO3D_DROP_CACHES=1` (root) the whole page cache is dropped instead,
/// exactly as the Python script does.
#[divan::bench(sample_count = 10, sample_size = 1)]
fn cold_sweep_24x96(bencher: divan::Bencher) {
    use std::os::fd::AsRawFd;
    let s = setup();
    let rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    // DINO3D_DROP_CACHES=1 (root): drop the whole page cache, dentries and
    // inodes as bench_crop_store.py does, instead of evicting the entries.
    let drop_all_caches = std::env::var("DINO3D_DROP_CACHES").as_deref() == Ok("1");
    bencher
        .counter(ItemsCount::new(24usize))
        .with_inputs(|| {
            if drop_all_caches {
                // SAFETY: `sync` takes no arguments and touches no memory of ours.
                unsafe { libc::sync() };
                std::fs::write("/proc/sys/vm/drop_caches", "3\n").expect("drop_caches (root)");
            } else {
                for path in &s.paths {
                    let f = std::fs::File::open(path).unwrap();
                    // SAFETY: an advisory call on an open descriptor; no memory is touched.
                    let rc = unsafe {
                        libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED)
                    };
                    assert_eq!(rc, 0, "posix_fadvise");
                }
            }
            rng.clone()
        })
        .bench_local_values(|mut rng| {
            for k in 0..24 {
                let e = Entry::open(&s.paths[k % s.paths.len()]).unwrap();
                let (start, extent) = random_box(&mut rng, &e);
                divan::black_box(e.read_box(0, start, extent).unwrap());
            }
        });
}

/// Random 96³ crops from warm entries (target ≥ 600/s per core; MONAI
/// PersistentDataset 25, nnU-Net-style Blosc2 int16 310).
#[divan::bench(sample_count = 40, sample_size = 10)]
fn crop_96(bencher: divan::Bencher) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    bencher.counter(ItemsCount::new(1usize)).bench_local(|| {
        let entries = warm_entries();
        let e = &entries[rng.random_range(0..entries.len())];
        let (start, extent) = random_box(&mut rng, e);
        e.read_box(0, start, extent).unwrap()
    });
}

/// Runs `f` on a one-thread pool (the views are cut on rayon): per core.
fn one_thread<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    pool.install(f)
}

/// A full sample from the cache, as the loader asks for it: the views are
/// cut from the entry plane by plane as it decodes (target ≥ 90% of the
/// in-RAM rate).
#[divan::bench(sample_count = 20, sample_size = 1)]
fn full_sample_from_cache(bencher: divan::Bencher) {
    let s = setup();
    let next = AtomicU64::new(0);
    bencher.counter(ItemsCount::new(1usize)).bench(|| {
        let i = next.fetch_add(1, Ordering::Relaxed) as usize;
        let (e, epoch) = (i % s.paths.len(), (i / s.paths.len()) as u64);
        one_thread(|| s.source.output(&s.pipeline, epoch, e).unwrap())
    });
}

/// The same samples cut from prepared volumes already in memory.
#[divan::bench(sample_count = 20, sample_size = 1)]
fn full_sample_in_ram(bencher: divan::Bencher) {
    let s = setup();
    let prepared: Vec<_> = (0..s.paths.len())
        .map(|i| s.source.prepared(i).unwrap())
        .collect();
    let next = AtomicU64::new(0);
    bencher.counter(ItemsCount::new(1usize)).bench(|| {
        let i = next.fetch_add(1, Ordering::Relaxed) as usize;
        let (e, epoch) = (i % s.paths.len(), (i / s.paths.len()) as u64);
        one_thread(|| {
            s.pipeline
                .finish(&prepared[e], epoch, e as u64, Path::new("bench"))
                .unwrap()
        })
    });
}

/// Decode a whole warm entry (the part of `full_sample_from_cache` that the
/// in-RAM sample does not pay).
#[divan::bench(sample_count = 20, sample_size = 2)]
fn decode_entry(bencher: divan::Bencher) {
    let next = AtomicU64::new(0);
    bencher.counter(ItemsCount::new(1usize)).bench(|| {
        let entries = warm_entries();
        let i = next.fetch_add(1, Ordering::Relaxed) as usize;
        entries[i % entries.len()].read_all(0).unwrap()
    });
}

/// The floor under `decode_entry`: writing one entry's worth of f32 voxels
/// into a fresh buffer, as every read that hands out an f32 volume must (and a
/// volume already in RAM need not). Same entries, same order as
/// `decode_entry`.
#[divan::bench(sample_count = 20, sample_size = 2)]
fn write_f32_floor(bencher: divan::Bencher) {
    let entries = warm_entries();
    let sizes: Vec<usize> = entries
        .iter()
        .map(|e| e.read_all(0).unwrap().data.len())
        .collect();
    let next = AtomicU64::new(0);
    bencher.counter(ItemsCount::new(1usize)).bench(|| {
        let i = next.fetch_add(1, Ordering::Relaxed) as usize;
        let n = sizes[i % sizes.len()];
        let mut v: Vec<f32> = Vec::with_capacity(n);
        v.resize(n, 0.5);
        v
    });
}
