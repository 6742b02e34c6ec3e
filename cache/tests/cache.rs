//! The cache end to end: exact round trips (integers + window bit-identical to
//! the float path), box reads, keys, damage detection and rebuild, concurrent
//! warmers, and unwritable folders.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use dino3d_cache::format::{ArrayToWrite, Codec, Layout, Window, write_entry};
use dino3d_cache::{CacheDir, CacheSource, Entry, Lookup, StoredType, Warmed, entry_key};
use dino3d_pipeline::exec::{Pipeline, PlaneRect, PreparedSource};
use dino3d_pipeline::manifest::{ManifestEntry, write_manifest_json};
use dino3d_pipeline::nifti::{WriteOptions, affine::IDENTITY, write_volume};
use dino3d_pipeline::recipe::compile_str;
use dino3d_pipeline::transforms::{Image, ScaleIntensityRange, scale_intensity_range};
use dino3d_pipeline::{Volume, VolumeMeta, VoxelData, Voxels};

fn wavy(shape: [usize; 4], integral: bool) -> Image {
    let n: usize = shape.iter().product();
    Image {
        data: (0..n)
            .map(|i| {
                let v = ((i * 7919) % 2003) as f32 - 1000.0;
                if integral { v } else { v / 7.3 }
            })
            .collect(),
        shape,
        spacing: [0.8, 0.9, 2.5],
        affine: IDENTITY,
    }
}

fn crop(img: &Image, start: [usize; 3], extent: [usize; 3]) -> Image {
    let mut data = Vec::new();
    for c in 0..img.shape[0] {
        for k in start[2]..start[2] + extent[2] {
            for j in start[1]..start[1] + extent[1] {
                let at = img.index(c, start[0], j, k);
                data.extend_from_slice(&img.data[at..at + extent[0]]);
            }
        }
    }
    let mut affine = img.affine;
    for row in affine.iter_mut().take(3) {
        row[3] += (0..3).map(|a| row[a] * start[a] as f64).sum::<f64>();
    }
    Image {
        data,
        shape: [img.shape[0], extent[0], extent[1], extent[2]],
        spacing: img.spacing,
        affine,
    }
}

#[test]
fn entries_round_trip_exactly_and_boxes_decode_only_what_they_need() {
    for codec in [Codec::Zstd, Codec::Lz4] {
        round_trip(codec);
    }
}

fn round_trip(codec: Codec) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("e.d3c");
    let float = wavy([2, 37, 29, 19], false);
    let ints = wavy([1, 40, 33, 21], true);
    let window = ScaleIntensityRange {
        a_min: -700.0,
        a_max: 600.0,
        b_min: Some(-1.0),
        b_max: Some(1.0),
        clip: true,
    };
    write_entry(
        &path,
        &[
            ArrayToWrite {
                key: "image",
                image: &float,
                dtype: StoredType::F32,
                window: None,
            },
            ArrayToWrite {
                key: "ct",
                image: &ints,
                dtype: StoredType::I16,
                window: Some(Window::from(window)),
            },
        ],
        Layout {
            chunk: [16, 16, 8],
            codec,
        },
        "src.nii.gz",
        "k",
    )
    .unwrap();
    let e = Entry::open(&path).unwrap();
    e.verify().unwrap();
    assert_eq!(e.read_all(0).unwrap(), float);
    let mut scaled = ints.clone();
    scale_intensity_range(&mut scaled, &window);
    let all = e.read_all(1).unwrap();
    assert_eq!(
        all, scaled,
        "integers + window == the float path, bit for bit"
    );
    for (start, extent) in [
        ([0, 0, 0], [1, 1, 1]),
        ([3, 5, 7], [20, 17, 9]),
        ([15, 15, 7], [2, 2, 2]),
        ([0, 0, 0], [40, 33, 21]),
    ] {
        assert_eq!(
            e.read_box(1, start, extent).unwrap(),
            crop(&scaled, start, extent),
            "{start:?} {extent:?}"
        );
    }
    assert_eq!(
        e.read_box(0, [30, 20, 10], [7, 9, 9]).unwrap(),
        crop(&float, [30, 20, 10], [7, 9, 9])
    );
    assert!(
        e.read_box(0, [30, 20, 10], [8, 9, 9]).is_err(),
        "a box leaving the array"
    );
    // Plane by plane: the planes of the whole read, in order, bit for bit
    // (float and windowed integers, two channels, edge chunks), only the
    // planes asked for, and inside each the rectangle asked for (whole
    // planes, one voxel, rectangles across chunk edges, one running past
    // the plane's edge).
    for (array, whole) in [(0, &float), (1, &scaled)] {
        let [c, nx, ny, nz] = whole.shape;
        let rect = |z: usize| match z % 4 {
            1 => None,
            0 => Some(PlaneRect::whole([nx, ny])),
            2 => Some(PlaneRect {
                start: [z % 7, 3 + z % 5],
                end: [z % 7 + 19, 3 + z % 5 + 17],
            }),
            _ if z % 8 == 3 => Some(PlaneRect {
                start: [16, 15],
                end: [17, 16],
            }),
            _ => Some(PlaneRect {
                start: [20, 20],
                end: [nx + 9, ny + 4],
            }),
        };
        let mut seen = Vec::new();
        e.for_each_plane(array, rect, |ch, z, plane| {
            let r = rect(z).unwrap().clamped([nx, ny]);
            for y in r.start[1]..r.end[1] {
                let at = y * nx;
                assert_eq!(
                    plane[at + r.start[0]..at + r.end[0]],
                    whole.data[(ch * nz + z) * nx * ny + at..][r.start[0]..r.end[0]],
                    "array {array} channel {ch} plane {z} row {y}"
                );
            }
            seen.push((ch, z));
        })
        .unwrap();
        let want: Vec<(usize, usize)> = (0..c)
            .flat_map(|ch| (0..nz).filter(|z| z % 4 != 1).map(move |z| (ch, z)))
            .collect();
        assert_eq!(seen, want, "array {array}: planes in order, as asked");
    }
}

/// An open entry is mapped for random reads (`MADV_RANDOM`, "rr" in the
/// mapping's flags), so a cold read fetches the chunks it touches rather than
/// whole entries by the device's readahead window.
#[cfg(target_os = "linux")]
#[test]
fn entries_are_mapped_for_random_reads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("random.d3c");
    let img = wavy([1, 20, 20, 20], true);
    write_entry(
        &path,
        &[ArrayToWrite {
            key: "image",
            image: &img,
            dtype: StoredType::I16,
            window: None,
        }],
        Layout {
            chunk: [8, 8, 8],
            codec: Codec::Lz4,
        },
        "src.nii.gz",
        "k",
    )
    .unwrap();
    let entry = Entry::open(&path).unwrap();
    assert_eq!(entry.read_all(0).unwrap(), img);
    // /proc/self/smaps: a header line per mapping (ending in its file's
    // path), then its fields, the last being `VmFlags: rd mr ...`.
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let name = path.to_string_lossy();
    let mut in_entry = false;
    let mut flags = None;
    for line in smaps.lines() {
        if let Some(f) = line.strip_prefix("VmFlags:") {
            if in_entry {
                flags = Some(f.to_string());
            }
        } else if !line.contains(':') || line.split_whitespace().count() >= 5 {
            // A mapping's header (fields are `Name: value`; headers start
            // with an address range and have five or six columns).
            if line
                .split_whitespace()
                .next()
                .is_some_and(|r| r.contains('-'))
            {
                in_entry = line.ends_with(&*name);
            }
        }
    }
    let flags = flags.unwrap_or_else(|| panic!("no mapping of {name} in /proc/self/smaps"));
    assert!(
        flags.split_whitespace().any(|f| f == "rr"),
        "VmFlags of the entry's mapping: {flags}"
    );
    drop(entry);
}

#[test]
fn damage_is_detected_and_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let store = CacheDir::new(dir.path()).unwrap();
    let img = wavy([1, 20, 20, 20], true);
    let stored = vec![(
        "image".to_string(),
        dino3d_pipeline::exec::Stored::Float(img.clone()),
    )];
    let written = store.store("ab12", "src", &stored).unwrap();
    assert!(written > 0);
    let path = store.entry_path("ab12");
    let fresh = Entry::open(&path).unwrap();
    assert_eq!(fresh.header.arrays[0].codec, dino3d_cache::DEFAULT_CODEC);
    assert_eq!(fresh.header.arrays[0].chunk, dino3d_cache::DEFAULT_CHUNK);
    drop(fresh);
    let good = std::fs::read(&path).unwrap();
    // A flipped payload byte: the framing is fine, the chunk checksum is not.
    let mut bad = good.clone();
    let at = good.len() - 40;
    bad[at] ^= 0x5a;
    std::fs::write(&path, &bad).unwrap();
    let Lookup::Hit(e) = store.lookup("ab12") else {
        panic!("framing intact")
    };
    let err = e.verify().unwrap_err().to_string();
    assert!(
        err.contains("checksum mismatch") && err.contains("ab12.d3c"),
        "{err}"
    );
    // Truncated (a torn write that somehow got renamed): removed on lookup.
    std::fs::write(&path, &good[..good.len() / 2]).unwrap();
    assert!(matches!(store.lookup("ab12"), Lookup::Removed(_)));
    assert!(!path.exists());
    // A temporary file of an interrupted write is never an entry.
    std::fs::write(
        path.parent().unwrap().join(".ab12.d3c.tmp.999999"),
        &good[..100],
    )
    .unwrap();
    assert!(matches!(store.lookup("ab12"), Lookup::Miss));
    assert_eq!(store.leftovers().len(), 1);
}

/// CT-like int16 volumes (constant air, noisy tissue) and their manifest.
fn dataset(dir: &Path, n: usize) -> (PathBuf, Vec<ManifestEntry>) {
    let mut entries = Vec::new();
    for s in 0..n {
        let (x, y, z) = (30 + s, 28, 20);
        let mut v = Vec::with_capacity(x * y * z);
        for k in 0..z {
            for j in 0..y {
                for i in 0..x {
                    let inside = (3..x - 3).contains(&i)
                        && (4..y - 2).contains(&j)
                        && (2..z - 3).contains(&k);
                    v.push(if inside {
                        ((i * 31 + j * 17 + k * 7 + s) % 300) as i16 - 100
                    } else {
                        -1000
                    });
                }
            }
        }
        let mut affine = IDENTITY;
        affine[2][2] = 2.5;
        let vol = Volume {
            data: VoxelData::I16(Voxels::from(v)),
            shape: [1, x, y, z],
            spacing: [1.0, 1.0, 2.5],
            affine,
            scaling: None,
            meta: VolumeMeta::default(),
        };
        let name = format!("v{s}.nii.gz");
        write_volume(dir.join(&name), &vol, &WriteOptions::default()).unwrap();
        entries.push(ManifestEntry {
            image: name,
            shape: None,
            spacing: None,
            extra: Default::default(),
        });
    }
    let manifest = dir.join("m.json");
    write_manifest_json(&manifest, &entries).unwrap();
    (manifest, entries)
}

const RECIPE: &str = "\
task: pretrain
data:
  manifest: m.json
cache:
  dir: cache
  prefix: 6
pipeline:
  - name: LoadImage
  - name: RandTimeFrame
  - name: NanToMean
  - name: ScaleIntensityRangePercentiles
    lower: 0.05
    upper: 99.95
    b_min: -1
    b_max: 1
    clip: true
  - name: PermuteInPlaneFirst
  - name: CropForeground
    threshold: -1
";

fn source(
    data: &Path,
    cache: &Path,
    recipe: &str,
    allow_uncached: bool,
) -> (CacheSource, Arc<Pipeline>) {
    let plan = compile_str(recipe, Path::new("r.yaml")).unwrap();
    let pipeline = Arc::new(Pipeline::new(&plan));
    let (manifest, entries) = (
        data.join("m.json"),
        dino3d_pipeline::manifest::read_manifest(&data.join("m.json")).unwrap(),
    );
    let src = CacheSource::new(
        pipeline.clone(),
        entries,
        &manifest,
        CacheDir::new(cache).unwrap(),
        &plan.prefix_hash,
        allow_uncached,
    );
    (src, pipeline)
}

#[test]
fn the_cache_serves_exactly_what_the_pipeline_prepares_and_rebuilds_damage() {
    let data = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let (manifest, entries) = dataset(data.path(), 3);
    let (src, pipeline) = source(data.path(), cache.path(), RECIPE, false);
    assert!(pipeline.is_fused());
    for (i, entry) in entries.iter().enumerate() {
        let want = pipeline.prepare(entry, &manifest).unwrap();
        let miss = src.prepared(i).unwrap();
        let hit = src.prepared(i).unwrap();
        assert_eq!(*miss, want);
        assert_eq!(*hit, want, "item {i}: cached == uncached, bit for bit");
    }
    let s = &src.stats;
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!((s.misses.load(Relaxed), s.hits.load(Relaxed)), (3, 3));
    // Stored as int16 + window: about half a float32 volume or less.
    let entry = Entry::open(&CacheDir::new(cache.path()).unwrap().entries()[0]).unwrap();
    assert_eq!(entry.header.arrays[0].dtype, StoredType::I16);
    assert!(entry.header.arrays[0].window.is_some());
    // Damage one entry's payload: reported, rebuilt, the right data served.
    let key = src.key(1).unwrap();
    let path = CacheDir::new(cache.path()).unwrap().entry_path(&key);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() - 30;
    bytes[at] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    let again = src.prepared(1).unwrap();
    assert_eq!(*again, pipeline.prepare(&entries[1], &manifest).unwrap());
    assert_eq!(s.damaged.load(Relaxed), 1);
    let reports = src.reports.lock().unwrap().clone();
    assert!(
        reports[0].contains("checksum") && reports[0].contains("v1.nii.gz"),
        "{reports:?}"
    );
    assert!(Entry::open(&path).unwrap().verify().is_ok());
}

/// The pretraining views, small: what the loader asks the cache for.
fn with_views(recipe: &str) -> String {
    let views = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../recipes/pretrain.yaml"
    ))
    .unwrap();
    let views = &views[views.find("\nviews:").expect("pretrain.yaml has views")..];
    let views = views[..views.find("\nbatch:").unwrap_or(views.len())]
        .replace("size: 96", "size: 12")
        .replace("size: 48", "size: 6");
    format!("{recipe}{}\n", views.trim_start_matches('\n'))
}

/// The views the loader gets from the cache (cut plane by plane as an entry
/// decodes) equal those cut from the prepared volume, on a miss and on hits,
/// for several epochs; damage found while decoding planes is reported and
/// rebuilt, and the right views are still served.
#[test]
fn views_from_the_cache_equal_views_from_the_prepared_volume() {
    use std::sync::atomic::Ordering::Relaxed;
    let data = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let (manifest, entries) = dataset(data.path(), 3);
    // 8³ chunks: several chunk slabs and rows per entry, so rectangles and
    // chunk spans are exercised.
    let plan = compile_str(&with_views(RECIPE), Path::new("r.yaml")).unwrap();
    let pipeline = Arc::new(Pipeline::new(&plan));
    let src = CacheSource::new(
        pipeline.clone(),
        entries.clone(),
        &manifest,
        CacheDir::new(cache.path()).unwrap().with_chunk([8, 8, 8]),
        &plan.prefix_hash,
        false,
    );
    assert!(pipeline.cuts_views_by_plane());
    for epoch in 0..3 {
        for (i, entry) in entries.iter().enumerate() {
            let prepared = pipeline.prepare(entry, &manifest).unwrap();
            let want = pipeline
                .finish(&prepared, epoch, i as u64, Path::new("x"))
                .unwrap();
            let got = src.output(&pipeline, epoch, i).unwrap();
            assert!(got == want, "item {i}, epoch {epoch}: cache views differ");
        }
    }
    let s = &src.stats;
    assert_eq!((s.misses.load(Relaxed), s.hits.load(Relaxed)), (3, 6));
    assert_eq!(s.by_plane.load(Relaxed), 6, "every hit cut plane by plane");
    let entry = Entry::open(&CacheDir::new(cache.path()).unwrap().entries()[0]).unwrap();
    assert_eq!(entry.header.arrays[0].chunk, [8, 8, 8]);
    // Damage a chunk (not the framing): found while decoding planes.
    let key = src.key(2).unwrap();
    let path = CacheDir::new(cache.path()).unwrap().entry_path(&key);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() - 30;
    bytes[at] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    let prepared = pipeline.prepare(&entries[2], &manifest).unwrap();
    let want = pipeline.finish(&prepared, 7, 2, Path::new("x")).unwrap();
    assert!(src.output(&pipeline, 7, 2).unwrap() == want);
    assert_eq!((s.damaged.load(Relaxed), s.misses.load(Relaxed)), (1, 4));
    assert_eq!(s.by_plane.load(Relaxed), 6, "the damaged read was rebuilt");
    assert!(src.output(&pipeline, 7, 2).unwrap() == want);
    assert_eq!(
        s.by_plane.load(Relaxed),
        7,
        "and the rebuilt entry is read by plane"
    );
    let reports = src.reports.lock().unwrap().clone();
    assert!(
        reports[0].contains("checksum") && reports[0].contains("v2.nii.gz"),
        "{reports:?}"
    );
    assert!(
        Entry::open(&path).unwrap().verify().is_ok(),
        "rebuilt intact"
    );
}

#[test]
fn keys_change_with_the_file_and_the_prefix_only() {
    let data = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    dataset(data.path(), 2);
    let (a, _) = source(data.path(), cache.path(), RECIPE, false);
    let (b, _) = source(
        data.path(),
        cache.path(),
        &RECIPE.replace("upper: 99.95", "upper: 99.9"),
        false,
    );
    let (c, _) = source(
        data.path(),
        cache.path(),
        &format!("{RECIPE}# a comment\n"),
        false,
    );
    let k0 = a.key(0).unwrap();
    assert_ne!(k0, a.key(1).unwrap());
    assert_ne!(k0, b.key(0).unwrap(), "a prefix parameter changed");
    assert_eq!(k0, c.key(0).unwrap(), "formatting is not part of the key");
    // Rewriting the file (new content and mtime) misses.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let f = data.path().join("v0.nii.gz");
    let bytes = std::fs::read(data.path().join("v1.nii.gz")).unwrap();
    std::fs::write(&f, bytes).unwrap();
    assert_ne!(k0, a.key(0).unwrap());
    assert_eq!(
        entry_key("h", std::slice::from_ref(&f)).unwrap(),
        entry_key("h", &[f]).unwrap()
    );
}

#[test]
fn concurrent_warmers_build_each_entry_once() {
    let data = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    dataset(data.path(), 2);
    let sources: Vec<CacheSource> = (0..4)
        .map(|_| source(data.path(), cache.path(), RECIPE, false).0)
        .collect();
    std::thread::scope(|s| {
        for src in &sources {
            s.spawn(move || {
                for i in 0..2 {
                    let w = src.ensure(i).unwrap();
                    assert!(matches!(w, Warmed::Hit | Warmed::Built));
                }
            });
        }
    });
    use std::sync::atomic::Ordering::Relaxed;
    let dir = CacheDir::new(cache.path()).unwrap();
    let total: u64 = sources
        .iter()
        .map(|s| s.stats.bytes_out.load(Relaxed))
        .sum();
    let on_disk: u64 = dir
        .entries()
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert_eq!(dir.entries().len(), 2);
    assert_eq!(total, on_disk, "each entry written exactly once");
    assert!(dir.leftovers().is_empty());
}

#[test]
fn an_unwritable_cache_fails_clearly_or_serves_uncached() {
    let data = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let (manifest, entries) = dataset(data.path(), 1);
    // A file where the entry's subfolder should be makes every write fail,
    // even for root (which ignores read-only permissions).
    let (probe, _) = source(data.path(), cache.path(), RECIPE, false);
    let key = probe.key(0).unwrap();
    std::fs::write(cache.path().join(&key[..2]), b"not a folder").unwrap();
    let err = probe.prepared(0).unwrap_err().to_string();
    assert!(err.contains("cache") && err.contains(&key[..2]), "{err}");
    let (lenient, pipeline) = source(data.path(), cache.path(), RECIPE, true);
    assert_eq!(
        *lenient.prepared(0).unwrap(),
        pipeline.prepare(&entries[0], &manifest).unwrap()
    );
    assert_eq!(
        lenient
            .stats
            .write_failures
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}
