//! Whole recipes: the pipeline's sections and the tasks' together, one
//! list of errors sorted by position, the shipped recipes, and each task's
//! defaults (moved here from the pipeline's tests with their assertions).

use std::path::Path;

use dino3d_pipeline::recipe::RecipeErrors;
use dino3d_tasks::{Task, compile_file, compile_str};

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
    let (plan, task) = compile_str(GOOD, Path::new("r.yaml")).unwrap();
    assert_eq!(task.name(), "prepare");
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

/// Pretraining needs a global view whose crops the model takes.
const ONE_GLOBAL_VIEW: &str = "\
views:
  - name: global
    role: global
    pipeline:
      - name: RandSpatialCrop
        roi_size: [16, 16, 16]
";

#[test]
fn training_sections_default_to_3dino_and_are_validated() {
    let (_, task) = compile_str(GOOD, Path::new("r.yaml")).unwrap();
    assert!(
        !matches!(task, Task::Pretrain(_)),
        "no training sections, no plan"
    );

    // The sections are a pretraining task's.
    let pretrain = GOOD.replace("task: prepare", "task: pretrain");
    let text = format!(
        "{pretrain}{ONE_GLOBAL_VIEW}model:\n  arch: tiny\n  head_n_prototypes: 1024\noptim:\n  epochs: 3\n"
    );
    let Task::Pretrain(t) = compile_str(&text, Path::new("r.yaml")).unwrap().1 else {
        panic!("a pretraining task")
    };
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
    assert_eq!(t.drop_path_mode, "subset", "3DINO's drop path by default");
    let text = format!("{pretrain}{ONE_GLOBAL_VIEW}model:\n  drop_path_mode: per_sample\n");
    let Task::Pretrain(t) = compile_str(&text, Path::new("r.yaml")).unwrap().1 else {
        panic!("a pretraining task")
    };
    assert_eq!(t.drop_path_mode, "per_sample");
    let e = errors(&format!("{GOOD}model:\n  drop_path_mode: per_batch\n")).to_string();
    assert!(
        e.contains("r.yaml:25:19: model.drop_path_mode `per_batch`"),
        "{e}"
    );
    // train.precision: f32 by default; auto is bf16 on a GPU, f32 on the CPU.
    use dino3d_model::candle_core::Device;
    use dino3d_model::precision::Precision;
    assert_eq!(t.precision, "f32");
    assert_eq!(t.precision_on(&Device::Cpu), Precision::F32);
    let auto = dino3d_tasks::pretrain::config::PretrainConfig {
        precision: "auto".into(),
        ..t.clone()
    };
    assert_eq!(auto.precision_on(&Device::Cpu), Precision::F32);
    assert!(!t.activation_checkpointing, "kept activations by default");
    assert_eq!(
        t.attention_kernel(),
        dino3d_model::AttentionKernel::Composed
    );
    let text = format!(
        "{pretrain}{ONE_GLOBAL_VIEW}train:\n  precision: bf16\n  activation_checkpointing: true\n  attention: fused\n  gradient_reduce: bf16\n  gradient_bucket_mb: 4\n"
    );
    let Task::Pretrain(t) = compile_str(&text, Path::new("r.yaml")).unwrap().1 else {
        panic!("a pretraining task")
    };
    assert_eq!(t.precision_on(&Device::Cpu), Precision::Bf16);
    assert!(t.activation_checkpointing);
    assert!(t.to_string().contains("activation checkpointing"), "{t}");
    assert_eq!(t.attention_kernel(), dino3d_model::AttentionKernel::Fused);
    assert!(t.to_string().contains("fused attention"), "{t}");
    assert_eq!(
        t.gradient_reduce_dtype(),
        dino3d_model::candle_core::DType::BF16
    );
    assert!(t.to_string().contains("gradients reduced in bf16"), "{t}");
    assert_eq!(t.gradient_bucket_mb, 4);
    assert!(t.to_string().contains(", 4 MiB gradient buckets"), "{t}");
    let e = errors(&format!("{GOOD}train:\n  gradient_bucket_mb: 0\n")).to_string();
    assert!(
        e.contains("r.yaml:25:23: train.gradient_bucket_mb must be at least 1"),
        "{e}"
    );
    let e = errors(&format!("{GOOD}train:\n  gradient_reduce: f16\n")).to_string();
    assert!(
        e.contains("r.yaml:25:20: train.gradient_reduce `f16`"),
        "{e}"
    );
    let e = errors(&format!("{GOOD}train:\n  attention: flash\n")).to_string();
    assert!(e.contains("r.yaml:25:14: train.attention `flash`"), "{e}");
    let e = errors(&format!("{GOOD}train:\n  activation_checkpointing: 1\n")).to_string();
    assert!(e.contains("r.yaml:25:29"), "{e}");
    let e = errors(&format!("{GOOD}train:\n  precision: fp16\n")).to_string();
    assert!(e.contains("r.yaml:25:14: train.precision `fp16`"), "{e}");

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
    let (_, task) = compile_str(
        &seg("  builtin: mni152_tissue\n  pretrained_weights: random\n"),
        Path::new("r.yaml"),
    )
    .unwrap();
    let Task::Segment(s) = task else {
        panic!("a segmentation task")
    };
    assert_eq!(
        s.data,
        dino3d_tasks::segment::config::SegmentData::Builtin("mni152_tissue".into())
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
    let (_, task) = compile_str(
        &seg("  builtin: mni152_tissue\n  pretrained_weights: random\n  regions: brats\n"),
        Path::new("r.yaml"),
    )
    .unwrap();
    let Task::Segment(s) = task else {
        panic!("a segmentation task")
    };
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
