//! Recipe validation: line-numbered errors with suggestions, defaults, the
//! prefix/tail split and the canonical prefix hash. Whole recipes with their
//! task sections are the tasks crate's (`tasks/tests/recipe.rs`).

use std::path::Path;

use dino3d_pipeline::recipe::{RecipeErrors, compile_str};

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

/// Parser errors are said for the recipe's author: the key of a bad value,
/// a repeated key, a document nested beyond reason.
#[test]
fn parser_errors_name_the_key_and_speak_plainly() {
    let e = errors(&GOOD.replace("seed: 3", "seed: -3")).to_string();
    assert!(e.starts_with("r.yaml:2:7: `seed`: invalid"), "{e}");
    let e = errors(&GOOD.replace("seed: 3", "seed: 3\nseed: 4")).to_string();
    assert!(e.contains("`seed` appears twice here"), "{e}");
    assert!(!e.contains("DuplicateKeyPolicy"), "{e}");
    let e = errors(&GOOD.replace("data:\n  manifest: volumes.json", "data:\n  manifest: [1]"))
        .to_string();
    assert!(e.starts_with("r.yaml:4:13: `manifest`: expected"), "{e}");
    // Nesting: the scanner's limit inside a flow list, the parser's budget
    // in block style.
    let deep = GOOD.replace(
        "    keys: [image, label]",
        &format!("    keys: {}{}", "[".repeat(5000), "]".repeat(5000)),
    );
    let e = errors(&deep).to_string();
    assert!(e.contains("too deeply nested for a recipe"), "{e}");
    let mut block = String::from("    keys:\n");
    for depth in 0..100 {
        block.push_str(&format!("{}- \n", "  ".repeat(depth + 3)));
    }
    let e = errors(&GOOD.replace("    keys: [image, label]\n", &block)).to_string();
    assert!(e.contains("too large or too deeply nested"), "{e}");
    assert!(!e.contains("budget breached"), "{e}");
}

#[test]
fn cache_codec_and_chunk_are_read_and_checked() {
    let with = |extra: &str| GOOD.replace("  dir: cache/\n", &format!("  dir: cache/\n{extra}"));
    let plan = compile_str(&with("  codec: zstd\n  chunk: 16\n"), Path::new("r.yaml")).unwrap();
    assert_eq!(plan.cache_codec.as_deref(), Some("zstd"));
    assert_eq!(plan.cache_chunk, Some([16; 3]));
    let plan = compile_str(&with("  chunk: [64, 64, 8]\n"), Path::new("r.yaml")).unwrap();
    assert_eq!(plan.cache_chunk, Some([64, 64, 8]));
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
    let e = errors(&with("  chunk: [64, 512, 8]\n")).to_string();
    assert!(
        e.contains("r.yaml:8:10: cache chunk 512 is outside 4..=256"),
        "{e}"
    );
    for bad in [
        "[64, 64]",
        "[64, 64, 8, 8]",
        "[64, x, 8]",
        "big",
        "8.5",
        "[64, 64, 8.5]",
        "-8",
    ] {
        let e = errors(&with(&format!("  chunk: {bad}\n"))).to_string();
        let expected = if bad == "-8" {
            "r.yaml:8:10: cache chunk -8 is outside 4..=256"
        } else {
            "r.yaml:8:10: cache chunk must be one integer edge or a list of three integers [x, y, z]"
        };
        assert!(e.contains(expected), "{bad}: {e}");
    }
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

/// What the batch would reject is caught when the recipe compiles: crop
/// sides that are not multiples of the patch size, and views of one role
/// with different crop sizes (they are stacked into one tensor).
#[test]
fn view_crop_sizes_are_checked_against_the_patch_and_each_other() {
    let plan = compile_str(VIEWS, Path::new("v.yaml")).unwrap();
    assert_eq!(plan.views[0].crop_size, Some([96; 3]));
    assert_eq!(plan.views[1].crop_size, Some([48; 3]));
    let e = errors(&VIEWS.replace("size: 48", "size: 50")).to_string();
    assert!(
        e.contains("r.yaml:31:15: view `local` makes 50x50x50 crops: each side must be a multiple of the patch size 16"),
        "{e}"
    );
    // On a 10-voxel patch grid, 96 is not a multiple either.
    let e = errors(&VIEWS.replace("size: 4\n", "size: 4\n  patch_size: 10\n")).to_string();
    assert!(e.contains("view `global` makes 96x96x96 crops"), "{e}");
    // A second global view of another size.
    let two = VIEWS.replace(
        "  - name: local\n",
        "  - name: other\n    role: global\n    pipeline:\n      - name: RandomResizedCrop3d\n        size: 112\n        in_slice_scale: [0.48, 1.0]\n        cross_slice_scale: [0.5, 1.0]\n  - name: local\n",
    );
    let e = errors(&two).to_string();
    assert!(
        e.contains(
            "r.yaml:30:15: view `other` makes 112x112x112 crops but view `global` makes 96x96x96"
        ),
        "{e}"
    );
    // A size set later by a Resize counts; a choice between sizes is
    // unknown and left to the run.
    let resized = VIEWS.replace(
        "        cross_slice_scale: [0.2, 0.5]\n",
        "        cross_slice_scale: [0.2, 0.5]\n      - name: Resize\n        spatial_size: [40, 40, 40]\n",
    );
    let e = errors(&resized).to_string();
    assert!(
        e.contains("r.yaml:35:23: view `local` makes 40x40x40 crops"),
        "{e}"
    );
    let chosen = VIEWS.replace(
        "        cross_slice_scale: [0.2, 0.5]\n",
        "        cross_slice_scale: [0.2, 0.5]\n      - name: OneOf\n        transforms:\n          - name: Resize\n            spatial_size: [40, 40, 40]\n          - name: RandFlip\n",
    );
    let plan = compile_str(&chosen, Path::new("v.yaml")).unwrap();
    assert_eq!(plan.views[1].crop_size, None);
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
