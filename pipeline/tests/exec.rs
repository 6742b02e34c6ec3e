//! Running recipes: multi-crop views, determinism across thread counts, the
//! fused paths against their step-by-step equivalents, and bad items skipped.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use dino3d_pipeline::exec::op::{CompiledStep, Context, run_steps};
use dino3d_pipeline::exec::passes::compose_flips;
use dino3d_pipeline::exec::{
    DirectSource, Loader, LoaderConfig, MemorySource, Order, Output, Passes, Pipeline,
    PreparedSource, Sample,
};
use dino3d_pipeline::manifest::ManifestEntry;
use dino3d_pipeline::nifti::{WriteOptions, affine::IDENTITY, write_volume};
use dino3d_pipeline::recipe::{Plan, compile_str};
use dino3d_pipeline::transforms::{DrawKey, Image};
use dino3d_pipeline::{Volume, VolumeMeta, VoxelData, Voxels};

/// A small version of recipes/pretrain.yaml: the same chain with 24³ global
/// and 12³ local crops (fast in debug builds).
fn small_recipe(manifest: &Path, extra_prefix_step: bool) -> String {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../recipes/pretrain.yaml"
    ))
    .unwrap();
    let mut text = text
        .replace("size: 128", "size: 2")
        .replace("size: 96", "size: 24")
        .replace("size: 48", "size: 12")
        .replace("patch_size: 16", "patch_size: 4")
        .replace("../out/volumes.json", &manifest.display().to_string());
    if extra_prefix_step {
        // EnsureChannelFirst is a no-op that defeats the fused 3DINO prefix.
        text = text
            .replace(
                "  - name: NanToMean\n",
                "  - name: NanToMean\n  - name: EnsureChannelFirst\n",
            )
            .replace("prefix: 6", "prefix: 7");
    }
    text
}

fn plan(text: &str) -> Plan {
    compile_str(text, Path::new("test.yaml")).unwrap_or_else(|e| panic!("{e}"))
}

/// An int16 CT-like volume: -1000 background, a noisy box of tissue,
/// anisotropic spacing with the slice axis first (so the permutation acts).
fn ct_like(seed: u64, dims: [usize; 3]) -> Volume {
    let [x, y, z] = dims;
    let mut v = Vec::with_capacity(x * y * z);
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for k in 0..z {
        for j in 0..y {
            for i in 0..x {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let inside =
                    (3..x - 3).contains(&i) && (4..y - 2).contains(&j) && (2..z - 5).contains(&k);
                // Constant air (so the foreground box is exact), noisy tissue.
                v.push(if inside {
                    40 + (i * 7 + j * 3 + k) as i16 + (state % 41) as i16 - 20
                } else {
                    -1000
                });
            }
        }
    }
    let mut affine = IDENTITY;
    for (a, s) in [2.5, 0.8, 0.8].into_iter().enumerate() {
        affine[a][a] = s;
    }
    Volume {
        data: VoxelData::I16(Voxels::from(v)),
        shape: [1, x, y, z],
        spacing: [2.5, 0.8, 0.8],
        affine,
        scaling: None,
        meta: VolumeMeta::default(),
    }
}

/// Writes `n` volumes and a manifest (plus, if asked, a corrupt file).
fn dataset(dir: &Path, n: usize, corrupt: bool) -> (PathBuf, Vec<ManifestEntry>) {
    let mut entries = Vec::new();
    for s in 0..n {
        let name = format!("vol{s}.nii.gz");
        write_volume(
            dir.join(&name),
            &ct_like(s as u64, [20 + s, 30, 28]),
            &WriteOptions::default(),
        )
        .unwrap();
        entries.push(ManifestEntry {
            image: name,
            shape: Some(vec![20 + s as u64, 30, 28]),
            spacing: Some(vec![2.5, 0.8, 0.8]),
            extra: Default::default(),
        });
    }
    if corrupt {
        let good = std::fs::read(dir.join("vol0.nii.gz")).unwrap();
        std::fs::write(dir.join("broken.nii.gz"), &good[..good.len() / 2]).unwrap();
        entries.push(ManifestEntry {
            image: "broken.nii.gz".into(),
            shape: Some(vec![20, 30, 28]),
            spacing: Some(vec![2.5, 0.8, 0.8]),
            extra: Default::default(),
        });
    }
    let manifest = dir.join("volumes.json");
    dino3d_pipeline::manifest::write_manifest_json(&manifest, &entries).unwrap();
    (manifest, entries)
}

fn batches(
    text: &str,
    manifest: &Path,
    entries: &[ManifestEntry],
    threads: usize,
    n: usize,
) -> Vec<dino3d_pipeline::exec::LoadedBatch> {
    start_loader(text, manifest, entries, threads)
        .take(n)
        .map(|b| b.unwrap())
        .collect()
}

fn start_loader(text: &str, manifest: &Path, entries: &[ManifestEntry], threads: usize) -> Loader {
    start_loader_in(text, manifest, entries, threads, Order::ZFastest)
}

fn start_loader_in(
    text: &str,
    manifest: &Path,
    entries: &[ManifestEntry],
    threads: usize,
    order: Order,
) -> Loader {
    let plan = plan(text);
    let pipeline = Arc::new(Pipeline::new(&plan));
    let source: Arc<dyn PreparedSource> = Arc::new(MemorySource::new(DirectSource::new(
        pipeline.clone(),
        entries.to_vec(),
        manifest,
    )));
    let config = LoaderConfig {
        threads,
        order,
        ..LoaderConfig::from_plan(&plan)
    };
    Loader::start(pipeline, source, config).unwrap()
}

/// Batches with their crops left x fastest (for a GPU) hold the values of
/// the z-fastest batches, crop by crop, and the same masks.
#[test]
fn x_fastest_batches_hold_the_z_fastest_values() {
    let dir = tempfile::tempdir().unwrap();
    let (manifest, entries) = dataset(dir.path(), 3, false);
    let text = small_recipe(&manifest, false).replace("size: 2 ", "size: 3 ");
    let z = batches(&text, &manifest, &entries, 2, 2);
    let x: Vec<_> = start_loader_in(&text, &manifest, &entries, 2, Order::XFastest)
        .take(2)
        .map(|b| b.unwrap())
        .collect();
    for (z, x) in z.iter().zip(&x) {
        assert_eq!(
            (z.batch.masks.clone(), &z.batch.items),
            (x.batch.masks.clone(), &x.batch.items)
        );
        for (tz, tx) in [
            (&z.batch.global, &x.batch.global),
            (&z.batch.local, &x.batch.local),
        ] {
            assert_eq!(
                (tz.shape, tz.order, tx.order),
                (tx.shape, Order::ZFastest, Order::XFastest)
            );
            let [n, c, sx, sy, sz] = tz.shape;
            for i in 0..n {
                for ch in 0..c {
                    for a in 0..sx {
                        for b in 0..sy {
                            for d in 0..sz {
                                assert_eq!(tz.at(i, ch, a, b, d), tx.at(i, ch, a, b, d));
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Batches written into buffers handed back by `recycle` are those of a
/// loader whose buffers are all new, and the buffers are used again.
#[test]
fn recycled_batch_buffers_are_filled_again_with_the_same_batches() {
    let dir = tempfile::tempdir().unwrap();
    let (manifest, entries) = dataset(dir.path(), 3, false);
    let text = small_recipe(&manifest, false).replace("size: 2 ", "size: 3 ");
    let expected = batches(&text, &manifest, &entries, 2, 6);
    let mut loader = start_loader(&text, &manifest, &entries, 2);
    // Every batch stays alive (as a copy), so no buffer address can come
    // back from the allocator: only from `recycle`.
    let (mut kept, mut handed_back, mut reused) = (Vec::new(), Vec::new(), 0);
    for want in &expected {
        let mut got = loader.next().unwrap().unwrap();
        assert_eq!(got.batch, want.batch, "batch {}", want.index);
        let at = [
            got.batch.global.data.as_ptr(),
            got.batch.local.data.as_ptr(),
        ];
        reused += at.iter().filter(|p| handed_back.contains(*p)).count();
        handed_back.extend(at);
        kept.push(got.batch.clone());
        loader.recycle(&mut got.batch);
        assert!(got.batch.global.data.is_empty() && got.batch.local.data.is_empty());
    }
    assert!(reused >= 4, "buffers reused {reused} times in 6 batches");
}

#[test]
fn batches_are_identical_for_any_thread_count_and_skip_bad_items() {
    let dir = tempfile::tempdir().unwrap();
    let (manifest, entries) = dataset(dir.path(), 3, true);
    let text = small_recipe(&manifest, false).replace("size: 2 ", "size: 3 ");
    let one = batches(&text, &manifest, &entries, 1, 4);
    let three = batches(&text, &manifest, &entries, 3, 4);
    for (a, b) in one.iter().zip(&three) {
        assert_eq!(a.batch, b.batch, "batch {}", a.index);
        let messages =
            |v: &[dino3d_pipeline::Error]| v.iter().map(|e| e.to_string()).collect::<Vec<_>>();
        assert_eq!(messages(&a.skipped), messages(&b.skipped));
    }
    let b = &one[0].batch;
    // 3 samples x (2 global 24³ + 8 local 12³), crop-major, z fastest.
    assert_eq!(b.global.shape, [6, 1, 24, 24, 24]);
    assert_eq!(b.local.shape, [24, 1, 12, 12, 12]);
    assert_eq!(b.items.len(), 3);
    // Masks: 6 global crops x 216 tokens (24 / 4 = 6 per axis), 3 masked.
    assert_eq!((b.masks.images, b.masks.tokens), (6, 216));
    let masked_rows = b
        .masks
        .mask
        .chunks(216)
        .filter(|r| r.iter().any(|&m| m))
        .count();
    assert_eq!(masked_rows, 3);
    // The broken file is skipped, named, and never in a batch.
    let skipped: Vec<String> = one
        .iter()
        .flat_map(|b| &b.skipped)
        .map(|e| e.to_string())
        .collect();
    assert!(!skipped.is_empty());
    assert!(
        skipped.iter().all(|s| s.contains("broken.nii.gz")),
        "{skipped:?}"
    );
    assert!(one.iter().all(|b| !b.batch.items.contains(&3)));
    assert!(
        b.global
            .data
            .iter()
            .chain(&b.local.data)
            .all(|v| v.is_finite())
    );
    // Different batches, different crops.
    assert_ne!(one[0].batch.global, one[1].batch.global);
}

/// A bad file is read and reported once per run, then passed over without
/// reading it again; the batches are those of a loader that retried it.
#[test]
fn a_bad_item_is_reported_once_not_every_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let (manifest, entries) = dataset(dir.path(), 3, true);
    let text = small_recipe(&manifest, false);
    // 4 items (one broken), batches of 2: 8 batches are about 5 epochs.
    let all = batches(&text, &manifest, &entries, 2, 8);
    let reported: usize = all.iter().map(|b| b.skipped.len()).sum();
    let again: usize = all.iter().map(|b| b.skipped_again).sum();
    assert_eq!(reported, 1, "reported once");
    assert!(again >= 3, "passed over in later epochs: {again}");
    assert!(all.iter().all(|b| !b.batch.items.contains(&3)));
}

#[test]
fn the_fused_prefix_equals_the_step_by_step_chain() {
    let dir = tempfile::tempdir().unwrap();
    let (manifest, entries) = dataset(dir.path(), 2, false);
    let fused = Pipeline::new(&plan(&small_recipe(&manifest, false)));
    let generic = Pipeline::new(&plan(&small_recipe(&manifest, true)));
    assert!(fused.is_fused() && !generic.is_fused());
    for e in &entries {
        let a = fused.prepare(e, &manifest).unwrap();
        let b = generic.prepare(e, &manifest).unwrap();
        assert_eq!(a, b);
        // Permuted (x, the 2.5 mm axis, goes last) and cropped to the tissue
        // box: x in 3..x-3, y in 4..y-2, z in 2..z-5.
        let img = a.get("image").unwrap();
        let x = e.shape.as_ref().unwrap()[0] as usize;
        assert_eq!(img.shape, [1, 30 - 6, 28 - 7, x - 6]);
        assert!(img.data.iter().all(|v| (-1.0..=1.0).contains(v)));
    }
}

#[test]
fn composed_flips_and_turns_equal_the_steps_one_by_one() {
    let text = small_recipe(Path::new("m.json"), false);
    let p = plan(&text);
    let local = &p.views[2];
    // Steps 1..=6 of a view: three flips and three quarter turns.
    let steps: Vec<CompiledStep> = local.steps[1..7].iter().map(CompiledStep::new).collect();
    // The `compose_flips` pass makes the six one step (one gather).
    let (composed, runs) = compose_flips(&steps);
    assert_eq!((composed.len(), runs), (1, 1));
    let ctx = Context::default();
    let mut img = Image {
        data: (0..5 * 6 * 7).map(|v| v as f32).collect(),
        shape: [1, 5, 6, 7],
        spacing: [1.0, 2.0, 3.0],
        affine: IDENTITY,
    };
    img.affine[0][3] = 4.0;
    let mut moved = 0;
    for sample in 0..64 {
        let key = DrawKey {
            sample,
            ..DrawKey::default()
        };
        let fused = run_steps(&composed, Sample::single(img.clone()), key, &ctx).unwrap();
        let mut one_by_one = Sample::single(img.clone());
        for s in &steps {
            one_by_one = run_steps(std::slice::from_ref(s), one_by_one, key, &ctx)
                .unwrap()
                .pop()
                .unwrap();
        }
        assert_eq!(fused[0], one_by_one, "sample {sample}");
        moved += usize::from(fused[0].get("image").unwrap() != &img);
    }
    // With six moves at p = 0.3, almost every sample moves.
    assert!(moved > 50, "{moved}");
}

#[test]
fn views_follow_their_recipe_and_differ() {
    let text = small_recipe(Path::new("m.json"), false);
    let pipeline = Pipeline::new(&plan(&text));
    assert_eq!(pipeline.crops_per_sample(), (2, 8));
    let vol = Image {
        data: (0..40 * 36 * 30)
            .map(|v| ((v % 97) as f32 / 48.0) - 1.0)
            .collect(),
        shape: [1, 40, 36, 30],
        spacing: [1.0; 3],
        affine: IDENTITY,
    };
    let prepared = Sample::single(vol);
    let Output::Crops(c) = pipeline.finish(&prepared, 0, 5, Path::new("x")).unwrap() else {
        panic!("views expected");
    };
    assert_eq!(c.global.len(), 2);
    assert_eq!(c.local.len(), 8);
    assert!(c.global.iter().all(|g| g.shape == [1, 24, 24, 24]));
    assert!(c.local.iter().all(|l| l.shape == [1, 12, 12, 12]));
    assert_ne!(c.global[0], c.global[1]);
    // Same (epoch, item) again: the same crops; another epoch: different ones.
    let Output::Crops(again) = pipeline.finish(&prepared, 0, 5, Path::new("x")).unwrap() else {
        panic!()
    };
    assert_eq!(again, c);
    let Output::Crops(other) = pipeline.finish(&prepared, 1, 5, Path::new("x")).unwrap() else {
        panic!()
    };
    assert_ne!(other.global[0], c.global[0]);
}

/// Views cut from a volume fed plane by plane are the views `finish` cuts
/// from the whole volume, bit for bit, for several items and epochs; recipes
/// whose views cannot be cut that way get no cutter.
#[test]
fn plane_fed_views_equal_finished_views() {
    let text = small_recipe(Path::new("m.json"), false);
    let pipeline = Pipeline::new(&plan(&text));
    // Tall in y, so that the crops downsize there and skip rows.
    let [nx, ny, nz] = [40, 96, 30];
    let mut affine = IDENTITY;
    affine[0][3] = -7.5;
    affine[1][1] = 0.8;
    let vol = Image {
        data: (0..nx * ny * nz)
            .map(|v| (((v * 7919) % 197) as f32 / 98.0) - 1.0)
            .collect(),
        shape: [1, nx, ny, nz],
        spacing: [1.0, 0.8, 2.0],
        affine,
    };
    let prepared = Sample::single(vol.clone());
    for (epoch, index) in [(0, 0), (0, 5), (3, 11)] {
        let want = pipeline
            .finish(&prepared, epoch, index, Path::new("x"))
            .unwrap();
        let mut cutter = pipeline
            .plane_cutter([nx, ny, nz], vol.spacing, vol.affine, epoch, index)
            .expect("pretrain views start with RandomResizedCrop3d");
        // Feed only what the crops say they need: the rest of each plane
        // (outside the rectangle, and the rows of it no crop's taps name)
        // poisoned, so reading outside it would show.
        let needs = cutter.plane_needs();
        let mut rows_skipped = 0;
        for z in 0..nz {
            let Some(need) = needs.get(z) else {
                continue;
            };
            let (rect, rows) = (need.rect, need.rows.expect("the crops' rows"));
            assert_eq!(rows.len(), ny);
            let mut plane = vec![f32::NAN; nx * ny];
            for y in (rect.start[1]..rect.end[1]).filter(|&y| rows[y]) {
                for x in rect.start[0]..rect.end[0] {
                    plane[y * nx + x] = vol.data[(z * ny + y) * nx + x];
                }
            }
            rows_skipped += (rect.start[1]..rect.end[1]).filter(|&y| !rows[y]).count();
            cutter.feed(z, &plane);
        }
        assert!(
            rows_skipped > 0,
            "item {index}: some rows of the rectangles go unread"
        );
        assert_eq!(cutter.finish(Path::new("x")).unwrap(), want, "item {index}");
    }
    // A tail step, or a view starting with something else: no cutter.
    let with_tail = text.replace(
        "views:\n",
        "  - name: RandFlip\n    spatial_axis: 0\n    prob: 0.5\nviews:\n",
    );
    assert_ne!(with_tail, text);
    let tail = Pipeline::new(&plan(&with_tail));
    assert!(
        tail.plane_cutter([nx, ny, nz], [1.0; 3], IDENTITY, 0, 0)
            .is_none()
    );
    let flip_first = text.replacen(
        "    pipeline:\n      - name: RandomResizedCrop3d",
        "    pipeline:\n      - name: RandFlip\n        spatial_axis: 0\n        prob: 0.5\n      - name: RandomResizedCrop3d",
        1,
    );
    assert_ne!(flip_first, text);
    let flip = Pipeline::new(&plan(&flip_first));
    assert!(
        flip.plane_cutter([nx, ny, nz], [1.0; 3], IDENTITY, 0, 0)
            .is_none()
    );
}

/// Every plan pass applies to the pretraining recipe, and each one, switched
/// off alone or all together, changes no byte: the prepared samples, the
/// views of several items and epochs, and the batches of the loader.
#[test]
fn plan_passes_change_no_byte() {
    let dir = tempfile::tempdir().unwrap();
    let (manifest, entries) = dataset(dir.path(), 3, false);
    // A run of flips in the random tail too (composed there as well).
    let text = small_recipe(&manifest, false).replace(
        "views:\n",
        "  - name: RandFlip\n    spatial_axis: 0\n    prob: 0.5\n  - name: RandRotate90\n    prob: 0.7\nviews:\n",
    );
    let plan = plan(&text);
    let all = Pipeline::new(&plan);
    let names: Vec<&str> = all.passes_applied().iter().map(|a| a.name).collect();
    assert_eq!(
        names,
        [
            "fuse_threedino_prefix",
            "compose_flips",
            "crop_views_from_shared_sample"
        ],
        "a tail step rules out cutting views by plane"
    );
    let off = |f: fn(&mut Passes)| {
        let mut p = Passes::ALL;
        f(&mut p);
        Pipeline::with_passes(&plan, p)
    };
    let variants = [
        ("none", Pipeline::with_passes(&plan, Passes::NONE)),
        (
            "no fuse_threedino_prefix",
            off(|p| p.fuse_threedino_prefix = false),
        ),
        ("no compose_flips", off(|p| p.compose_flips = false)),
        (
            "no crop_views_from_shared_sample",
            off(|p| p.crop_views_from_shared_sample = false),
        ),
    ];
    assert!(variants[0].1.passes_applied().is_empty());
    for (i, e) in entries.iter().enumerate() {
        let want = all.prepare(e, &manifest).unwrap();
        for epoch in 0..2 {
            let views = all.finish(&want, epoch, i as u64, Path::new("x")).unwrap();
            for (name, p) in &variants {
                let prepared = p.prepare(e, &manifest).unwrap();
                assert_eq!(prepared, want, "{name}: item {i}");
                let got = p
                    .finish(&prepared, epoch, i as u64, Path::new("x"))
                    .unwrap();
                // Voxels and geometry, bit for bit.
                assert!(got == views, "{name}: item {i}, epoch {epoch}");
            }
        }
    }
    let loaded = |p: Pipeline| -> Vec<Vec<f32>> {
        let p = Arc::new(p);
        let source: Arc<dyn PreparedSource> = Arc::new(MemorySource::new(DirectSource::new(
            p.clone(),
            entries.clone(),
            &manifest,
        )));
        Loader::start(p, source, LoaderConfig::from_plan(&plan))
            .unwrap()
            .take(3)
            .map(|b| {
                let b = b.unwrap().batch;
                [b.global.data, b.local.data].concat()
            })
            .collect()
    };
    assert_eq!(
        loaded(Pipeline::new(&plan)),
        loaded(Pipeline::with_passes(&plan, Passes::NONE))
    );
    // Without the tail, the views can also be cut by plane (see
    // `plane_fed_views_equal_finished_views` and the cache's own test).
    let plain = Pipeline::new(&self::plan(&small_recipe(&manifest, false)));
    assert!(plain.cuts_views_by_plane());
    assert!(
        plain
            .passes_applied()
            .iter()
            .any(|a| a.name == "cut_views_by_plane")
    );
    let unplaned = Pipeline::with_passes(
        &self::plan(&small_recipe(&manifest, false)),
        Passes {
            cut_views_by_plane: false,
            ..Passes::ALL
        },
    );
    assert!(!unplaned.cuts_views_by_plane());
}

/// `data.max_voxels` reaches every read of the pipeline: a volume above it
/// is skipped with a clear error, not allocated; 0 is refused with its
/// position.
#[test]
fn the_recipe_voxel_budget_refuses_large_volumes() {
    let dir = tempfile::tempdir().unwrap();
    let (manifest, entries) = dataset(dir.path(), 1, false);
    let text = small_recipe(&manifest, false).replacen("data:\n", "data:\n  max_voxels: 1000\n", 1);
    let pipeline = Pipeline::new(&plan(&text));
    let err = pipeline.prepare(&entries[0], &manifest).unwrap_err();
    assert!(
        matches!(err, dino3d_pipeline::Error::TooLarge { budget: 1000, .. }),
        "{err}"
    );
    let zero = small_recipe(&manifest, false).replacen("data:\n", "data:\n  max_voxels: 0\n", 1);
    let errors = compile_str(&zero, Path::new("test.yaml"))
        .unwrap_err()
        .to_string();
    assert!(
        errors.contains("test.yaml:") && errors.contains("max_voxels"),
        "{errors}"
    );
}
