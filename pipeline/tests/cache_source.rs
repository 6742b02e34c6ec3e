//! The pipeline's on-disk cache source end to end: what it serves equals
//! what the pipeline prepares (integers + window bit-identical to the float
//! path), views cut plane by plane equal views cut from the prepared volume,
//! keys change with the file and the prefix only, damage is rebuilt,
//! concurrent warmers build each entry once, and unwritable folders fail
//! clearly or serve uncached.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use dino3d_cache::{CacheDir, Entry, StoredType, entry_key};
use dino3d_pipeline::exec::{CacheSource, Pipeline, PreparedSource, Warmed};
use dino3d_pipeline::manifest::{ManifestEntry, write_manifest_json};
use dino3d_pipeline::nifti::{WriteOptions, affine::IDENTITY, write_volume};
use dino3d_pipeline::recipe::compile_str;
use dino3d_pipeline::{Volume, VolumeMeta, VoxelData, Voxels};

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
    // Stored as int16 + the window as decode map: about half a float32
    // volume or less.
    let entry = Entry::open(&CacheDir::new(cache.path()).unwrap().entries()[0]).unwrap();
    assert_eq!(entry.header.arrays[0].dtype, StoredType::I16);
    assert!(entry.header.arrays[0].decode.is_some());
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
    // Crop sides must be multiples of the patch size: 6 divides both.
    format!(
        "{recipe}{}\nbatch:\n  size: 2\n  patch_size: 6\n",
        views.trim_start_matches('\n')
    )
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

/// Threads of one source that miss the same entry at once prepare it once:
/// the others wait for the builder and read its entry (a second build would
/// cost the work and a volume's memory again). What they get is what the
/// pipeline prepares.
#[test]
fn threads_missing_one_entry_build_it_once() {
    let data = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let (manifest, entries) = dataset(data.path(), 2);
    let (src, pipeline) = source(data.path(), cache.path(), RECIPE, false);
    let want: Vec<_> = entries
        .iter()
        .map(|e| pipeline.prepare(e, &manifest).unwrap())
        .collect();
    let barrier = std::sync::Barrier::new(6);
    std::thread::scope(|s| {
        for t in 0..6 {
            let (src, want, barrier) = (&src, &want, &barrier);
            s.spawn(move || {
                barrier.wait();
                let i = t % 2;
                assert_eq!(*src.prepared(i).unwrap(), want[i], "thread {t}, item {i}");
            });
        }
    });
    use std::sync::atomic::Ordering::Relaxed;
    let s = &src.stats;
    assert_eq!(
        (s.misses.load(Relaxed), s.hits.load(Relaxed)),
        (2, 4),
        "each entry built once, read by the other threads"
    );
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

/// A full disk while an entry is written costs no sample: the prepared item
/// is served uncached and reported, even without `allow_uncached` (the folder
/// was writable at start), and the entry is written once space is back.
#[cfg(target_os = "linux")]
#[test]
fn a_full_disk_serves_the_item_uncached_and_writes_it_later() {
    use std::sync::atomic::Ordering::Relaxed;
    let data = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let (manifest, entries) = dataset(data.path(), 1);
    let (src, pipeline) = source(data.path(), cache.path(), RECIPE, false);
    let key = src.key(0).unwrap();
    let entry = CacheDir::new(cache.path()).unwrap().entry_path(&key);
    std::fs::create_dir_all(entry.parent().unwrap()).unwrap();
    // The entry's temporary file is /dev/full: every write is ENOSPC.
    let name = entry.file_name().unwrap().to_string_lossy().into_owned();
    let tmp = entry.with_file_name(format!(".{name}.tmp.{}", std::process::id()));
    std::os::unix::fs::symlink("/dev/full", &tmp).unwrap();
    let expected = pipeline.prepare(&entries[0], &manifest).unwrap();
    assert_eq!(*src.prepared(0).unwrap(), expected);
    assert_eq!(src.stats.write_failures.load(Relaxed), 1);
    let reports = src.reports.lock().unwrap().clone();
    assert!(
        reports.len() == 1
            && reports[0].contains("No space left")
            && reports[0].contains("uncached"),
        "{reports:?}"
    );
    assert!(
        !entry.exists() && !tmp.exists(),
        "nothing half-written is left"
    );
    // A long run takes each report once, as it happens.
    let mut seen = 0;
    assert_eq!(src.new_reports(&mut seen), reports);
    assert!(src.new_reports(&mut seen).is_empty());
    // Still full: served again, but said once per entry.
    std::os::unix::fs::symlink("/dev/full", &tmp).unwrap();
    assert_eq!(*src.prepared(0).unwrap(), expected);
    assert_eq!(src.stats.write_failures.load(Relaxed), 2);
    assert!(src.new_reports(&mut seen).is_empty());
    // Space is back: the next read builds the entry, the one after hits it.
    assert_eq!(*src.prepared(0).unwrap(), expected);
    assert!(entry.exists());
    assert_eq!(*src.prepared(0).unwrap(), expected);
    assert_eq!(src.stats.hits.load(Relaxed), 1);
}

/// A source deleted during a run is that item's error, said as a read says
/// it (the file and the OS's reason), not as a cache failure.
#[test]
fn a_deleted_source_is_said_as_a_missing_file() {
    let data = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let (_, entries) = dataset(data.path(), 1);
    let (src, _) = source(data.path(), cache.path(), RECIPE, false);
    src.prepared(0).unwrap();
    let manifest = data.path().join("m.json");
    std::fs::remove_file(entries[0].resolve(&manifest)).unwrap();
    let e = src.prepared(0).unwrap_err().to_string();
    assert!(
        e.contains("v0.nii.gz") && e.contains("No such file") && !e.contains("cache"),
        "{e}"
    );
}

/// With the `cut_views_by_plane` pass off, the cache serves the same views
/// from the decoded volume, and never by plane.
#[test]
fn views_are_the_same_without_cutting_by_plane() {
    use dino3d_pipeline::exec::Passes;
    use std::sync::atomic::Ordering::Relaxed;
    let data = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let (manifest, entries) = dataset(data.path(), 2);
    let plan = compile_str(&with_views(RECIPE), Path::new("r.yaml")).unwrap();
    let off = Passes {
        cut_views_by_plane: false,
        ..Passes::ALL
    };
    let by_plane = Arc::new(Pipeline::new(&plan));
    let whole = Arc::new(Pipeline::with_passes(&plan, off));
    let src = |p: &Arc<Pipeline>| {
        CacheSource::new(
            p.clone(),
            entries.clone(),
            &manifest,
            CacheDir::new(cache.path()).unwrap().with_chunk([8, 8, 8]),
            false,
        )
    };
    let (a, b) = (src(&by_plane), src(&whole));
    for epoch in 0..2 {
        for i in 0..entries.len() {
            let x = a.output(&by_plane, epoch, i).unwrap();
            let y = b.output(&whole, epoch, i).unwrap();
            assert!(x == y, "item {i}, epoch {epoch}");
        }
    }
    assert_eq!(b.stats.by_plane.load(Relaxed), 0);
    assert!(a.stats.by_plane.load(Relaxed) > 0);
}

/// A 64³ int16 `.nii` whose first 16 slices (128 KiB, more than the 64 KiB
/// an entry key once hashed) are background, and whose tissue follows
/// `pattern`.
fn write_lookalike(path: &Path, pattern: i16) {
    let n = 64;
    let mut v = Vec::with_capacity(n * n * n);
    for k in 0..n {
        for j in 0..n {
            for i in 0..n {
                let tissue = k >= 16 && (8..56).contains(&i) && (8..56).contains(&j);
                v.push(if tissue {
                    ((i * 3 + j * 5 + k * pattern as usize) % 400) as i16 - 100
                } else {
                    -1000
                });
            }
        }
    }
    let vol = Volume {
        data: VoxelData::I16(Voxels::from(v)),
        shape: [1, n, n, n],
        spacing: [1.0, 1.0, 2.5],
        affine: IDENTITY,
        scaling: None,
        meta: VolumeMeta::default(),
    };
    write_volume(path, &vol, &WriteOptions::default()).unwrap();
}

/// Defect 1 of the reliability issue: two different files with the same
/// size, the same modification time and the same first 64 KiB get distinct
/// entries and each is served its own voxels; a file rewritten in place
/// with its size and mtime restored (`touch -r`) misses and is rebuilt.
#[test]
fn lookalike_files_and_restored_mtimes_never_share_an_entry() {
    let data = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let (a, b) = (data.path().join("a.nii"), data.path().join("b.nii"));
    write_lookalike(&a, 7);
    write_lookalike(&b, 11);
    let (ba, bb) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    assert_eq!(ba.len(), bb.len());
    assert_eq!(ba[..65536], bb[..65536], "the same first 64 KiB");
    assert_ne!(ba, bb);
    let mtime = std::fs::metadata(&a).unwrap().modified().unwrap();
    std::fs::File::options()
        .write(true)
        .open(&b)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let entries: Vec<ManifestEntry> = ["a.nii", "b.nii"]
        .iter()
        .map(|n| ManifestEntry {
            image: n.to_string(),
            shape: None,
            spacing: None,
            extra: Default::default(),
        })
        .collect();
    let manifest = data.path().join("m.json");
    write_manifest_json(&manifest, &entries).unwrap();
    let (src, pipeline) = source(data.path(), cache.path(), RECIPE, false);
    assert_ne!(src.key(0).unwrap(), src.key(1).unwrap());
    for round in 0..2 {
        for (i, e) in entries.iter().enumerate() {
            let want = pipeline.prepare(e, &manifest).unwrap();
            assert_eq!(*src.prepared(i).unwrap(), want, "item {i}, round {round}");
        }
    }
    // Rewrite a in place with b's bytes (same size), restore its mtime.
    let key = src.key(0).unwrap();
    std::fs::write(&a, &bb).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&a)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    assert_eq!(std::fs::metadata(&a).unwrap().modified().unwrap(), mtime);
    assert_ne!(src.key(0).unwrap(), key, "the status-change time moved");
    let want = pipeline.prepare(&entries[0], &manifest).unwrap();
    assert_eq!(*src.prepared(0).unwrap(), want, "the new content is served");
}

#[test]
fn detached_data_files_are_part_of_the_key_and_other_formats_are_cached() {
    let data = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let fixtures =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/other_formats/generated");
    let files = [
        "list_slices.nhdr",
        "list_slice0.raw",
        "list_slice1.raw",
        "list_slice2.raw",
        "detached_gzip.nhdr",
        "detached_gzip.raw.gz",
    ];
    for n in files {
        std::fs::copy(fixtures.join(n), data.path().join(n)).unwrap();
    }
    let entries: Vec<ManifestEntry> = ["list_slices.nhdr", "detached_gzip.nhdr"]
        .iter()
        .map(|n| ManifestEntry {
            image: n.to_string(),
            shape: None,
            spacing: None,
            extra: Default::default(),
        })
        .collect();
    write_manifest_json(&data.path().join("m.json"), &entries).unwrap();
    let (src, _) = source(data.path(), cache.path(), RECIPE, false);
    for i in 0..2 {
        assert!(matches!(src.ensure(i).unwrap(), Warmed::Built));
        assert!(matches!(src.ensure(i).unwrap(), Warmed::Hit));
    }
    // Rewriting only one slice file (same size, header untouched) misses.
    let k0 = src.key(0).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let raw = data.path().join("list_slice1.raw");
    let mut bytes = std::fs::read(&raw).unwrap();
    bytes.reverse();
    std::fs::write(&raw, bytes).unwrap();
    assert_ne!(k0, src.key(0).unwrap(), "a slice file changed");
}

#[test]
fn every_file_of_a_dicom_series_is_part_of_the_key() {
    let data = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let fixtures =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/other_formats/dicom_generated");
    let series = data.path().join("two");
    std::fs::create_dir(&series).unwrap();
    for e in std::fs::read_dir(fixtures.join("two_series")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, series.join(p.file_name().unwrap())).unwrap();
    }
    let entries: Vec<ManifestEntry> = dino3d_pipeline::formats::dicom::series_paths(&series)
        .unwrap()
        .iter()
        .map(|p| ManifestEntry {
            image: p.strip_prefix(data.path()).unwrap().display().to_string(),
            shape: None,
            spacing: None,
            extra: Default::default(),
        })
        .collect();
    assert_eq!(entries.len(), 2);
    write_manifest_json(&data.path().join("m.json"), &entries).unwrap();
    let (src, _) = source(data.path(), cache.path(), RECIPE, false);
    for i in 0..2 {
        assert!(matches!(src.ensure(i).unwrap(), Warmed::Built));
        assert!(matches!(src.ensure(i).unwrap(), Warmed::Hit));
    }
    // Rewriting one slice of the first series (not the first file) misses;
    // the other series keeps its key.
    let (k0, k1) = (src.key(0).unwrap(), src.key(1).unwrap());
    std::thread::sleep(std::time::Duration::from_millis(20));
    let slice = series.join("slice03.dcm");
    let bytes = std::fs::read(&slice).unwrap();
    std::fs::write(&slice, bytes).unwrap();
    assert_ne!(k0, src.key(0).unwrap(), "a slice file changed");
    assert_eq!(k1, src.key(1).unwrap(), "the other series is untouched");
}
