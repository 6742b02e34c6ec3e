//! Recipe validation: line-numbered errors with suggestions, defaults, the
//! prefix/tail split and the canonical prefix hash.

use std::path::Path;

use dino3d_pipeline::recipe::{RecipeErrors, compile_file, compile_str};

const GOOD: &str = "\
task: prepare
seed: 3
data:
  manifest: volumes.json
  keys: [image, label]
cache:
  dir: cache/
pipeline:
  - name: LoadImage
    keys: [image, label]
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
  - name: RandTimeFrame
  - name: SpatialPad
    spatial_size: [96, 96, 96]
";

fn errors(text: &str) -> RecipeErrors {
    compile_str(text, Path::new("r.yaml")).unwrap_err()
}

#[test]
fn a_valid_recipe_compiles_with_defaults_and_a_split() {
    let plan = compile_str(GOOD, Path::new("r.yaml")).unwrap();
    assert_eq!(plan.task, "prepare");
    assert_eq!(plan.seed, 3);
    assert_eq!(plan.steps.len(), 7);
    // The cached prefix stops at the first random transform.
    assert_eq!(plan.prefix_len, 5);
    let crop = &plan.steps[4];
    assert_eq!(crop.spec.name, "CropForeground");
    assert_eq!(crop.line, 19);
    assert!(
        crop.params.contains_key("margin"),
        "defaults are filled: {:?}",
        crop.params
    );
    let text = plan.to_string();
    assert!(
        text.contains("random tail") && text.contains("RandTimeFrame [random]"),
        "{text}"
    );
}

#[test]
fn the_prefix_hash_ignores_formatting_but_not_parameters() {
    let base = compile_str(GOOD, Path::new("r.yaml")).unwrap().prefix_hash;
    // Comments, flow style, key order, 1 vs 1.0, explicit defaults: same hash.
    let reformatted = GOOD
        .replace("task: prepare", "# a comment\ntask: prepare   # trailing")
        .replace(
            "    b_min: -1\n    b_max: 1\n",
            "    b_max: 1.0\n    b_min: -1.00\n",
        )
        .replace(
            "    threshold: -1\n",
            "    margin: 0\n    threshold: -1.0\n",
        );
    assert_eq!(
        compile_str(&reformatted, Path::new("r.yaml"))
            .unwrap()
            .prefix_hash,
        base
    );
    // Tail changes and the seed do not matter while the prefix is deterministic.
    let tail = GOOD
        .replace("[96, 96, 96]", "[64, 64, 64]")
        .replace("seed: 3", "seed: 4");
    assert_eq!(
        compile_str(&tail, Path::new("r.yaml")).unwrap().prefix_hash,
        base
    );
    // Any prefix parameter does.
    let changed = GOOD.replace("upper: 99.95", "upper: 99.9");
    assert_ne!(
        compile_str(&changed, Path::new("r.yaml"))
            .unwrap()
            .prefix_hash,
        base
    );
    // A random step cached in the prefix makes the seed part of the key.
    let cached_random = GOOD.replace("  dir: cache/\n", "  dir: cache/\n  prefix: 6\n");
    let a = compile_str(&cached_random, Path::new("r.yaml")).unwrap();
    let b = compile_str(
        &cached_random.replace("seed: 3", "seed: 4"),
        Path::new("r.yaml"),
    )
    .unwrap();
    assert_eq!(a.prefix_len, 6);
    assert_ne!(a.prefix_hash, b.prefix_hash);
}

#[test]
fn errors_name_file_line_column_and_the_nearest_name() {
    let bad = GOOD
        .replace("name: NanToMean", "name: NanToMaen")
        .replace("    lower: 0.05\n", "    lowr: 0.05\n")
        .replace("    clip: true\n", "    clip: yes please\n")
        .replace("spatial_size: [96, 96, 96]", "spatial_size: [96, 96]");
    let e = errors(&bad).to_string();
    let lines: Vec<&str> = e.lines().collect();
    assert!(
        lines.iter().any(|l| l.starts_with(
            "r.yaml:11:11: unknown transform `NanToMaen` (did you mean `NanToMean`?)"
        )),
        "{e}"
    );
    assert!(lines.iter().any(|l| l.starts_with("r.yaml:13:5: ScaleIntensityRangePercentiles has no parameter `lowr` (did you mean `lower`?)")), "{e}");
    assert!(
        lines.iter().any(|l| l
            .starts_with("r.yaml:12:11: ScaleIntensityRangePercentiles needs parameter `lower`")),
        "{e}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with(
            "r.yaml:17:11: ScaleIntensityRangePercentiles.clip: expected true or false"
        )),
        "{e}"
    );
    assert!(
        lines.iter().any(|l| l
            .starts_with("r.yaml:23:19: SpatialPad.spatial_size: expected a list of 3 integers")),
        "{e}"
    );
    // Errors come sorted by position.
    let positions: Vec<(u32, u32)> = errors(&bad).0.iter().map(|e| (e.line, e.column)).collect();
    let mut sorted = positions.clone();
    sorted.sort();
    assert_eq!(positions, sorted);
}

#[test]
fn cache_codec_and_chunk_are_read_and_checked() {
    let with = |extra: &str| GOOD.replace("  dir: cache/\n", &format!("  dir: cache/\n{extra}"));
    let plan = compile_str(&with("  codec: zstd\n  chunk: 16\n"), Path::new("r.yaml")).unwrap();
    assert_eq!(plan.cache_codec.as_deref(), Some("zstd"));
    assert_eq!(plan.cache_chunk, Some(16));
    let plan = compile_str(GOOD, Path::new("r.yaml")).unwrap();
    assert_eq!((plan.cache_codec, plan.cache_chunk), (None, None));
    let e = errors(&with("  codec: lz5\n  chunk: 2\n")).to_string();
    assert!(
        e.contains("r.yaml:8:10: unknown cache codec `lz5` (lz4 or zstd) (did you mean `lz4`?)"),
        "{e}"
    );
    assert!(
        e.contains("r.yaml:9:10: cache chunk 2 is outside 4..=256"),
        "{e}"
    );
}

#[test]
fn keys_ranges_and_top_level_fields_are_checked() {
    let e =
        errors(&GOOD.replace("keys: [image, label]\ncache", "keys: [image]\ncache")).to_string();
    assert!(
        e.contains("r.yaml:10:11: LoadImage.keys: key `label` is not provided by the data"),
        "{e}"
    );
    let e = errors(&GOOD.replace("upper: 99.95", "upper: 120")).to_string();
    assert!(
        e.contains("r.yaml:14:12: ScaleIntensityRangePercentiles.upper: 120 is outside [0, 100]"),
        "{e}"
    );
    let e = errors(&GOOD.replace("seed: 3", "sede: 3")).to_string();
    assert!(
        e.starts_with("r.yaml:2:1: unknown field `sede`") && e.contains("did you mean `seed`"),
        "{e}"
    );
    let e =
        errors(&GOOD.replace("  - name: LoadImage\n    keys: [image, label]\n", "")).to_string();
    assert!(e.contains("must start with LoadImage"), "{e}");
    let e = errors(&GOOD.replace(
        "    threshold: -1\n",
        "    threshold: -1\n    allow_smaller: sometimes\n",
    ))
    .to_string();
    assert!(
        e.contains("CropForeground.allow_smaller: expected true or false"),
        "{e}"
    );
}

#[test]
fn random_flips_and_rotations_are_validated() {
    let ok = GOOD.replace(
        "  - name: SpatialPad\n",
        "  - name: RandFlip\n    prob: 0.5\n    spatial_axis: 2\n  - name: RandRotate90\n    spatial_axes: [1, 2]\n  - name: SpatialPad\n",
    );
    let plan = compile_str(&ok, Path::new("r.yaml")).unwrap();
    assert_eq!(plan.steps.len(), 9);
    assert_eq!(plan.prefix_len, 5, "random steps stay in the tail");
    let e = errors(&GOOD.replace(
        "  - name: SpatialPad\n",
        "  - name: RandRotate90\n    spatial_axes: [1]\n  - name: SpatialPad\n",
    ))
    .to_string();
    assert!(
        e.contains("r.yaml:22:11: RandRotate90.spatial_axes must name exactly two axes"),
        "{e}"
    );
    let e = errors(&GOOD.replace(
        "  - name: SpatialPad\n",
        "  - name: RandFlip\n    spatial_axis: [0, 3]\n  - name: SpatialPad\n",
    ))
    .to_string();
    assert!(
        e.contains("r.yaml:23:19: RandFlip.spatial_axis: expected spatial axes 0, 1 or 2"),
        "{e}"
    );
}

#[test]
fn the_shipped_recipes_compile() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../recipes");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            compile_file(&path).unwrap_or_else(|e| panic!("{e}"));
            n += 1;
        }
    }
    assert!(n >= 1, "no recipes in {}", dir.display());
}

const VIEWS: &str = "\
task: pretrain
data:
  manifest: m.json
pipeline:
  - name: LoadImage
  - name: NanToMean
views:
  - name: global
    role: global
    count: 2
    pipeline:
      - name: RandomResizedCrop3d
        size: 96
        in_slice_scale: [0.48, 1.0]
        cross_slice_scale: [0.5, 1.0]
      - name: OneOf
        transforms:
          - name: RandAdjustContrast
            gamma: [0.5, 2.0]
            prob: 0.8
          - name: RandomApply
            prob: 0.5
            transforms:
              - name: RandGaussianNoise
                std: 0.002
  - name: local
    role: local
    count: 8
    pipeline:
      - name: RandomResizedCrop3d
        size: 48
        in_slice_scale: [0.16, 0.48]
        cross_slice_scale: [0.2, 0.5]
batch:
  size: 4
";

#[test]
fn views_and_nested_steps_compile_with_unique_draw_ids() {
    let plan = compile_str(VIEWS, Path::new("v.yaml")).unwrap();
    assert_eq!(plan.views.len(), 2);
    assert_eq!((plan.views[0].count, plan.views[1].count), (2, 8));
    let one_of = &plan.views[0].steps[1];
    assert_eq!(one_of.children.len(), 2);
    assert_eq!(
        one_of.children[1].children[0].spec.name,
        "RandGaussianNoise"
    );
    let mut ids = Vec::new();
    fn collect(s: &dino3d_pipeline::recipe::Step, ids: &mut Vec<u32>) {
        ids.push(s.id);
        s.children.iter().for_each(|c| collect(c, ids));
    }
    plan.steps
        .iter()
        .chain(plan.views.iter().flat_map(|v| &v.steps))
        .for_each(|s| collect(s, &mut ids));
    let n = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), n, "draw ids are unique");
    assert_eq!(plan.batch.size, 4);
    assert_eq!(plan.batch.mask_ratio, (0.2, 0.75));
    // Views are not part of the cached prefix.
    let other = compile_str(&VIEWS.replace("size: 96", "size: 112"), Path::new("v.yaml")).unwrap();
    assert_eq!(plan.prefix_hash, other.prefix_hash);
}

#[test]
fn view_and_nesting_errors_point_at_their_lines() {
    let e = errors(&VIEWS.replace("role: local", "role: locla")).to_string();
    assert!(e.contains("r.yaml:27:11: view role must be `global` or `local`, not `locla` (did you mean `local`?)"), "{e}");
    let e = errors(&VIEWS.replace("std: 0.002", "sdt: 0.002")).to_string();
    assert!(
        e.contains("r.yaml:25:17: RandGaussianNoise has no parameter `sdt` (did you mean `std`?)"),
        "{e}"
    );
    let e = errors(&VIEWS.replace("gamma: [0.5, 2.0]", "gamma: [2.0, 0.5]")).to_string();
    assert!(
        e.contains("r.yaml:19:20: RandAdjustContrast.gamma: [2, 0.5] must satisfy"),
        "{e}"
    );
    let e = errors(&VIEWS.replace(
        "      - name: OneOf\n        transforms:\n",
        "      - name: RandFlip\n        transforms:\n",
    ))
    .to_string();
    assert!(
        e.contains("r.yaml:17:9: RandFlip does not take nested `transforms`"),
        "{e}"
    );
    let e = errors(&VIEWS.replace(
        "      - name: RandomResizedCrop3d\n        size: 48\n",
        "      - name: LoadImage\n      - name: RandomResizedCrop3d\n        size: 48\n",
    ))
    .to_string();
    assert!(e.contains("LoadImage belongs in `pipeline`"), "{e}");
    let e = errors(&VIEWS.replace("role: global", "role: local")).to_string();
    assert!(e.contains("views need at least one `global` view"), "{e}");
}

#[test]
fn set_overrides_change_values_and_keep_positions() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("v.yaml");
    std::fs::write(&file, VIEWS).unwrap();
    let sets = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let plan = dino3d_pipeline::recipe::compile_file_with(
        &file,
        &sets(&[
            "batch.size=8",
            "views.1.count=4",
            "batch.threads=1",
            "seed=9",
        ]),
    )
    .unwrap();
    assert_eq!(
        (
            plan.batch.size,
            plan.views[1].count,
            plan.batch.threads,
            plan.seed
        ),
        (8, 4, 1, 9)
    );
    // An error after an inserted line still names the line as written.
    let e = dino3d_pipeline::recipe::compile_file_with(
        &file,
        &sets(&["seed=9", "views.1.pipeline.0.size=0"]),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("v.yaml:31:15: RandomResizedCrop3d.size: 0 is outside"),
        "{e}"
    );
    let e = dino3d_pipeline::recipe::compile_file_with(&file, &sets(&["batch.workers=2"]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("unknown field `workers`") && e.contains("(from --set batch.workers=2)"),
        "{e}"
    );
}

#[test]
fn training_sections_default_to_3dino_and_are_validated() {
    let plan = compile_str(GOOD, Path::new("r.yaml")).unwrap();
    assert!(plan.training.is_none(), "no training sections, no plan");

    let text =
        format!("{GOOD}model:\n  arch: tiny\n  head_n_prototypes: 1024\noptim:\n  epochs: 3\n");
    let t = compile_str(&text, Path::new("r.yaml"))
        .unwrap()
        .training
        .unwrap();
    assert_eq!(
        (t.arch.as_str(), t.head_n_prototypes, t.epochs),
        ("tiny", 1024, 3)
    );
    // Everything else is 3DINO's stage 1 (spec §2.1).
    assert_eq!(
        (t.epoch_length, t.base_lr, t.warmup_epochs),
        (1250, 0.002, 10)
    );
    assert_eq!((t.momentum_teacher, t.teacher_temp), (0.992, 0.07));
    assert_eq!(
        (t.clip_grad, t.layerwise_decay, t.patch_embed_lr_mult),
        (3.0, 0.9, 0.2)
    );
    assert_eq!(t.total_iterations(), 3750);

    // GOOD has 23 lines: the sections start on line 24.
    let bad = format!(
        "{GOOD}model:\n  arch: larg\n  patch_size: 8\noptim:\n  base_lr: -1\n  lerning_rate: 3\nteacher:\n  momentum_teacher: 1.5\n"
    );
    let e = errors(&bad).to_string();
    // An unknown key stops parsing: it is reported on its own, with the
    // valid names.
    assert!(
        e.contains("r.yaml:29:3: unknown field `lerning_rate`"),
        "{e}"
    );
    assert!(e.contains("base_lr"), "{e}");

    let bad = format!(
        "{GOOD}model:\n  arch: larg\n  patch_size: 8\noptim:\n  base_lr: -1\nteacher:\n  momentum_teacher: 1.5\n"
    );
    let e = errors(&bad).to_string();
    assert!(e.contains("r.yaml:25:9: model.arch `larg`"), "{e}");
    assert!(e.contains("did you mean `large`"), "{e}");
    assert!(
        e.contains("r.yaml:26:15: model.patch_size 8 differs from batch.patch_size 16"),
        "{e}"
    );
    assert!(
        e.contains("r.yaml:28:12: optim.base_lr must be in [0, 10]"),
        "{e}"
    );
    assert!(
        e.contains("r.yaml:30:21: teacher.momentum_teacher must be in [0, 1]"),
        "{e}"
    );

    // Run lengths that overflow, and a mask grid that differs from the
    // default model patch without any `model:` section.
    let e = errors(&format!(
        "{GOOD}optim:\n  epochs: 4294967296\n  epoch_length: 4294967296\n"
    ))
    .to_string();
    assert!(
        e.contains("r.yaml:25:11: optim.epochs x optim.epoch_length must be at most"),
        "{e}"
    );
    let e = errors(&format!(
        "{GOOD}batch:\n  size: 2\n  patch_size: 8\ntrain:\n  world_size: 1\n"
    ))
    .to_string();
    assert!(
        e.contains("model.patch_size 16 differs from batch.patch_size 8"),
        "{e}"
    );
}

#[test]
fn the_segment_section_defaults_to_3dino_and_is_validated() {
    let seg = |body: &str| GOOD.replace("task: prepare", "task: segment") + "segment:\n" + body;
    let plan = compile_str(
        &seg("  builtin: mni152_tissue\n  pretrained_weights: random\n"),
        Path::new("r.yaml"),
    )
    .unwrap();
    let s = plan.segment.unwrap();
    assert_eq!(
        s.data,
        dino3d_pipeline::recipe::SegmentData::Builtin("mni152_tissue".into())
    );
    // 3DINO's README values.
    assert_eq!((s.image_size, s.feature_size, s.batch_size), (112, 32, 2));
    assert_eq!(
        (s.iterations, s.warmup_iters, s.eval_iters),
        (30_000, 3000, 600)
    );
    assert_eq!(
        (s.learning_rate, s.val_overlap, s.test_overlap),
        (1e-4, 0.0, 0.75)
    );
    assert!(!s.train_feature_model);

    let e = errors(&seg(
        "  builtin: mni152_tisue\n  pretrained_weights: random\n  head: unter\n  image_size: 40\n  test_overlap: 1.5\n",
    ))
    .to_string();
    // GOOD is 23 lines; `segment:` is line 24 and its fields follow.
    for want in [
        "r.yaml:25:12: segment.builtin `mni152_tisue` is not one of [\"mni152_tissue\"] (did you mean `mni152_tissue`?)",
        "r.yaml:27:9: segment.head `unter` is not one of [\"unetr\", \"linear\", \"vit_adapter\"] (did you mean `unetr`?)",
        "r.yaml:28:15: segment.image_size must be a multiple of 16",
        "r.yaml:29:17: segment.test_overlap must be in [0, 0.95]",
    ] {
        assert!(e.contains(want), "missing {want:?} in\n{e}");
    }
    let e = errors(&seg(
        "  builtin: mni152_tissue\n  pretrained_weights: random\n  flip_prob: 1.5\n",
    ))
    .to_string();
    assert!(
        e.contains("r.yaml:27:14: segment.flip_prob must be in [0, 1]"),
        "{e}"
    );
    // BraTS regions: 3 outputs; a misspelt name or other class count is refused.
    let plan = compile_str(
        &seg("  builtin: mni152_tissue\n  pretrained_weights: random\n  regions: brats\n"),
        Path::new("r.yaml"),
    )
    .unwrap();
    let s = plan.segment.unwrap();
    assert_eq!((s.regions.as_deref(), s.classes), (Some("brats"), Some(3)));
    let e = errors(&seg(
        "  builtin: mni152_tissue\n  pretrained_weights: random\n  regions: bratz\n  classes: 4\n",
    ))
    .to_string();
    for want in [
        "r.yaml:27:12: segment.regions `bratz` is not one of [\"brats\"] (did you mean `brats`?)",
        "r.yaml:28:12: segment.regions: brats predicts 3 regions",
    ] {
        assert!(e.contains(want), "missing {want:?} in\n{e}");
    }
    let e = errors(&seg("  head: unetr\n")).to_string();
    assert!(e.contains("needs `datalist`"), "{e}");
    assert!(
        e.contains("`segment.pretrained_weights` is required"),
        "{e}"
    );
    let e = errors(&GOOD.replace("task: prepare", "task: segment")).to_string();
    assert!(
        e.contains("r.yaml:1:7: task `segment` needs a `segment:` section"),
        "{e}"
    );
}
