//! The `segment:` section of a `task: segment` recipe: finetuning a
//! segmentation head on a pretrained backbone (3DINO's `segmentation3d.py`;
//! spec §4.2). Names follow its command-line flags; defaults are its README's
//! values where they fit a CPU, otherwise noted.

use dino3d_model::ViT3dConfig;
use dino3d_pipeline::recipe::{Check, RecipeError, Spanned, TaskContext};
use serde::Deserialize;

/// `segment:` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentDoc {
    /// A finetuning datalist `{training, validation, test}` of `{image, label}`.
    #[serde(default)]
    pub datalist: Option<Spanned<String>>,
    /// A bundled dataset instead of a datalist: `mni152_tissue`.
    #[serde(default)]
    pub builtin: Option<Spanned<String>>,
    /// Pretrained backbone: a weights file (`.safetensors`, `.pth`), or a
    /// pretraining output folder (its newest teacher), or `random` (seeded
    /// initialisation, the baseline).
    #[serde(default)]
    pub pretrained_weights: Option<Spanned<String>>,
    /// Backbone preset.
    #[serde(default)]
    pub arch: Option<Spanned<String>>,
    /// Head: `unetr`, `linear` (3DINO's linear decoder) or `vit_adapter`
    /// (3DINO's ViT-Adapter + UNETR).
    #[serde(default)]
    pub head: Option<Spanned<String>>,
    /// Output classes (background included).
    #[serde(default)]
    pub classes: Option<Spanned<u64>>,
    /// Multi-label targets instead of classes: `brats` (labels 1, 2, 3 to the
    /// TC / WT / ET regions, sigmoid outputs, squared-prediction Dice loss).
    #[serde(default)]
    pub regions: Option<Spanned<String>>,
    /// Decoder feature size F.
    #[serde(default)]
    pub feature_size: Option<Spanned<u64>>,
    /// Training crop and sliding-window ROI edge (a multiple of 16).
    #[serde(default)]
    pub image_size: Option<Spanned<u64>>,
    /// Volumes per iteration.
    #[serde(default)]
    pub batch_size: Option<Spanned<u64>>,
    /// Random crops per volume (half centred on foreground, as
    /// RandCropByPosNegLabel with pos = neg = 1).
    #[serde(default)]
    pub crops_per_volume: Option<Spanned<u64>>,
    /// Training iterations.
    #[serde(default)]
    pub iterations: Option<Spanned<u64>>,
    /// Peak AdamW learning rate.
    #[serde(default)]
    pub learning_rate: Option<Spanned<f64>>,
    /// Linear warm-up iterations before the cosine decay.
    #[serde(default)]
    pub warmup_iters: Option<Spanned<u64>>,
    /// AdamW weight decay.
    #[serde(default)]
    pub weight_decay: Option<Spanned<f64>>,
    /// Validate every this many iterations.
    #[serde(default)]
    pub eval_iters: Option<Spanned<u64>>,
    /// Sliding-window overlap for validation.
    #[serde(default)]
    pub val_overlap: Option<Spanned<f64>>,
    /// Sliding-window overlap for the test set.
    #[serde(default)]
    pub test_overlap: Option<Spanned<f64>>,
    /// Window blending: `constant` or `gaussian`.
    #[serde(default)]
    pub blend: Option<Spanned<String>>,
    /// Train the backbone too (default: frozen).
    #[serde(default)]
    pub train_feature_model: Option<Spanned<bool>>,
    /// Voxel size (mm) of the bundled dataset's grid.
    #[serde(default)]
    pub spacing_mm: Option<Spanned<f64>>,
    /// Training crops: flip probability per axis.
    #[serde(default)]
    pub flip_prob: Option<Spanned<f64>>,
    /// Training crops: probability of a quarter turn (k ∈ 1..=3) in the first two axes.
    #[serde(default)]
    pub rot90_prob: Option<Spanned<f64>>,
    /// Training crops: intensity scale range ±f.
    #[serde(default)]
    pub intensity_scale: Option<Spanned<f64>>,
    /// Training crops: probability of the intensity scale.
    #[serde(default)]
    pub intensity_scale_prob: Option<Spanned<f64>>,
    /// Training crops: intensity shift range ±o.
    #[serde(default)]
    pub intensity_shift: Option<Spanned<f64>>,
    /// Training crops: probability of the intensity shift.
    #[serde(default)]
    pub intensity_shift_prob: Option<Spanned<f64>>,
    /// Where results, the best head and predictions go (relative to the recipe).
    #[serde(default)]
    pub output_dir: Option<Spanned<String>>,
}

/// Where the volumes come from.
#[derive(Debug, Clone, PartialEq)]
pub enum SegmentData {
    /// A datalist file (relative to the recipe).
    Datalist(String),
    /// A bundled dataset by name.
    Builtin(String),
}

/// The checked `segment:` section, defaults filled.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentConfig {
    /// The volumes.
    pub data: SegmentData,
    /// Weights file or folder, or `random`.
    pub pretrained_weights: String,
    /// Backbone preset.
    pub arch: String,
    /// Head name.
    pub head: String,
    /// Classes (None: the bundled dataset's).
    pub classes: Option<usize>,
    /// Multi-label region targets (`brats`), or None for class labels.
    pub regions: Option<String>,
    /// Decoder feature size.
    pub feature_size: usize,
    /// Crop / ROI edge.
    pub image_size: usize,
    /// Volumes per iteration.
    pub batch_size: usize,
    /// Crops per volume.
    pub crops_per_volume: usize,
    /// Iterations.
    pub iterations: usize,
    /// Peak learning rate.
    pub learning_rate: f64,
    /// Warm-up iterations.
    pub warmup_iters: usize,
    /// Weight decay.
    pub weight_decay: f64,
    /// Validation period.
    pub eval_iters: usize,
    /// Validation overlap.
    pub val_overlap: f64,
    /// Test overlap.
    pub test_overlap: f64,
    /// `constant` or `gaussian`.
    pub blend: String,
    /// Backbone trained too.
    pub train_feature_model: bool,
    /// Bundled grid voxel size.
    pub spacing_mm: f64,
    /// Flip probability per axis.
    pub flip_prob: f64,
    /// Quarter-turn probability.
    pub rot90_prob: f64,
    /// Intensity scale range and probability.
    pub intensity_scale: (f64, f64),
    /// Intensity shift range and probability.
    pub intensity_shift: (f64, f64),
    /// Output folder.
    pub output_dir: String,
}

impl SegmentConfig {
    /// 3DINO's settings (its README's, where they fit a CPU) for `data`,
    /// with no backbone named yet.
    pub fn threedino(data: SegmentData) -> Self {
        Self {
            data,
            pretrained_weights: String::new(),
            arch: ViT3dConfig::THREEDINO_PRESET.into(),
            head: "unetr".into(),
            classes: None,
            regions: None,
            feature_size: 32,
            image_size: 112,
            batch_size: 2,
            crops_per_volume: 4,
            iterations: 30_000,
            learning_rate: 1e-4,
            warmup_iters: 3000,
            weight_decay: 0.01,
            eval_iters: 600,
            val_overlap: 0.0,
            test_overlap: 0.75,
            blend: "constant".into(),
            train_feature_model: false,
            spacing_mm: 2.4,
            flip_prob: 0.0,
            rot90_prob: 0.0,
            intensity_scale: (0.1, 0.0),
            intensity_shift: (0.1, 0.0),
            output_dir: "segment-output".into(),
        }
    }
}

const HEADS: [&str; 3] = ["unetr", "linear", "vit_adapter"];
const REGIONS: [&str; 1] = ["brats"];
const BUILTINS: [&str; 1] = ["mni152_tissue"];
const BLENDS: [&str; 2] = ["constant", "gaussian"];

/// Reads `segment:`; `None` without one. `task: segment` without it is an error.
pub fn compile(
    doc: Option<&SegmentDoc>,
    ctx: &TaskContext<'_>,
    errors: &mut Vec<RecipeError>,
) -> Option<SegmentConfig> {
    let Some(s) = doc else {
        if ctx.task.value == "segment" {
            errors.push(RecipeError::at(
                ctx.file,
                &ctx.task.referenced,
                "task `segment` needs a `segment:` section",
            ));
        }
        return None;
    };
    let mut c = Check {
        file: ctx.file,
        errors,
    };
    let data = match (&s.datalist, &s.builtin) {
        (Some(d), None) => SegmentData::Datalist(d.value.clone()),
        (None, Some(_)) => {
            let mut name = String::new();
            c.choice(&s.builtin, &BUILTINS, "segment.builtin", &mut name);
            SegmentData::Builtin(name)
        }
        (Some(d), Some(_)) => {
            c.errors.push(RecipeError::at(
                ctx.file,
                &d.referenced,
                "give `segment.datalist` or `segment.builtin`, not both",
            ));
            SegmentData::Datalist(d.value.clone())
        }
        (None, None) => {
            c.errors.push(RecipeError::at(
                ctx.file,
                &ctx.task.referenced,
                "`segment:` needs `datalist` (a {training, validation, test} file) or `builtin`",
            ));
            SegmentData::Builtin(String::new())
        }
    };
    let mut p = SegmentConfig::threedino(data);
    match &s.pretrained_weights {
        Some(w) => p.pretrained_weights.clone_from(&w.value),
        None => c.errors.push(RecipeError::at(
            ctx.file,
            &ctx.task.referenced,
            "`segment.pretrained_weights` is required (a file, a pretraining output folder, or `random`)",
        )),
    }
    c.choice(&s.arch, &ViT3dConfig::PRESETS, "segment.arch", &mut p.arch);
    c.choice(&s.head, &HEADS, "segment.head", &mut p.head);
    if s.classes.is_some() {
        let mut n = 0;
        c.count(&s.classes, 2, "segment.classes", &mut n);
        p.classes = Some(n);
    }
    if s.regions.is_some() {
        let mut name = String::new();
        c.choice(&s.regions, &REGIONS, "segment.regions", &mut name);
        if let (Some(k), Some(v)) = (&s.classes, p.classes)
            && v != 3
        {
            c.errors.push(RecipeError::at(
                ctx.file,
                &k.referenced,
                "segment.regions: brats predicts 3 regions (TC, WT, ET): classes must be 3 or left out",
            ));
        }
        p.classes = Some(3);
        p.regions = Some(name);
    }
    c.count(
        &s.feature_size,
        1,
        "segment.feature_size",
        &mut p.feature_size,
    );
    c.count(&s.image_size, 16, "segment.image_size", &mut p.image_size);
    if let Some(v) = &s.image_size
        && v.value % 16 != 0
    {
        c.errors.push(RecipeError::at(
            ctx.file,
            &v.referenced,
            "segment.image_size must be a multiple of 16 (the patch size)",
        ));
    }
    c.count(&s.batch_size, 1, "segment.batch_size", &mut p.batch_size);
    c.count(
        &s.crops_per_volume,
        1,
        "segment.crops_per_volume",
        &mut p.crops_per_volume,
    );
    c.count(&s.iterations, 1, "segment.iterations", &mut p.iterations);
    c.real(
        &s.learning_rate,
        (0.0, 1.0),
        "segment.learning_rate",
        &mut p.learning_rate,
    );
    c.count(
        &s.warmup_iters,
        0,
        "segment.warmup_iters",
        &mut p.warmup_iters,
    );
    c.real(
        &s.weight_decay,
        (0.0, 1.0),
        "segment.weight_decay",
        &mut p.weight_decay,
    );
    c.count(&s.eval_iters, 1, "segment.eval_iters", &mut p.eval_iters);
    c.real(
        &s.val_overlap,
        (0.0, 0.95),
        "segment.val_overlap",
        &mut p.val_overlap,
    );
    c.real(
        &s.test_overlap,
        (0.0, 0.95),
        "segment.test_overlap",
        &mut p.test_overlap,
    );
    c.choice(&s.blend, &BLENDS, "segment.blend", &mut p.blend);
    if let Some(t) = &s.train_feature_model {
        p.train_feature_model = t.value;
    }
    c.real(
        &s.spacing_mm,
        (0.1, 20.0),
        "segment.spacing_mm",
        &mut p.spacing_mm,
    );
    c.real(
        &s.flip_prob,
        (0.0, 1.0),
        "segment.flip_prob",
        &mut p.flip_prob,
    );
    c.real(
        &s.rot90_prob,
        (0.0, 1.0),
        "segment.rot90_prob",
        &mut p.rot90_prob,
    );
    c.real(
        &s.intensity_scale,
        (0.0, 1.0),
        "segment.intensity_scale",
        &mut p.intensity_scale.0,
    );
    c.real(
        &s.intensity_scale_prob,
        (0.0, 1.0),
        "segment.intensity_scale_prob",
        &mut p.intensity_scale.1,
    );
    c.real(
        &s.intensity_shift,
        (0.0, 10.0),
        "segment.intensity_shift",
        &mut p.intensity_shift.0,
    );
    c.real(
        &s.intensity_shift_prob,
        (0.0, 1.0),
        "segment.intensity_shift_prob",
        &mut p.intensity_shift.1,
    );
    if let Some(o) = &s.output_dir {
        p.output_dir.clone_from(&o.value);
    }
    Some(p)
}
