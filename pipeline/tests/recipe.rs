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
        "    threshold: -1\n    allow_smaller: false\n",
    ))
    .to_string();
    assert!(
        e.contains("CropForeground.allow_smaller: `false` is not one of [\"true\"]"),
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
