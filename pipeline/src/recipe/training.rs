//! The training sections of a recipe: `model`, `optim`, `teacher`, `train`.
//!
//! Plain numbers and names, validated here with source positions; the app
//! maps them onto the model crate (the pipeline does not depend on it).
//! Names follow 3DINO's config keys (spec §2.1) and every default is 3DINO's
//! stage-1 value.

use std::path::Path;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::document::RecipeDoc;
use super::error::{RecipeError, nearest};

/// `model:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelDoc {
    /// `tiny`, `small`, `base` or `large` (`student.arch`).
    #[serde(default)]
    pub arch: Option<Spanned<String>>,
    /// `student.patch_size`.
    #[serde(default)]
    pub patch_size: Option<Spanned<u64>>,
    /// `student.drop_path_rate`.
    #[serde(default)]
    pub drop_path_rate: Option<Spanned<f64>>,
    /// `student.layerscale`.
    #[serde(default)]
    pub layerscale: Option<Spanned<f64>>,
    /// Prototypes K of both heads (`*.head_n_prototypes`).
    #[serde(default)]
    pub head_n_prototypes: Option<Spanned<u64>>,
    /// `*.head_hidden_dim`.
    #[serde(default)]
    pub head_hidden_dim: Option<Spanned<u64>>,
    /// `*.head_bottleneck_dim`.
    #[serde(default)]
    pub head_bottleneck_dim: Option<Spanned<u64>>,
    /// `*.head_nlayers`.
    #[serde(default)]
    pub head_nlayers: Option<Spanned<u64>>,
    /// `train.centering`: `sinkhorn_knopp` or `centering`.
    #[serde(default)]
    pub centering: Option<Spanned<String>>,
    /// `dino.loss_weight`.
    #[serde(default)]
    pub dino_loss_weight: Option<Spanned<f64>>,
    /// `ibot.loss_weight`.
    #[serde(default)]
    pub ibot_loss_weight: Option<Spanned<f64>>,
    /// `dino.koleo_loss_weight`.
    #[serde(default)]
    pub koleo_loss_weight: Option<Spanned<f64>>,
    /// `student.full_pretrained_weights`: a teacher checkpoint loaded into
    /// student and teacher before training (high-resolution stage).
    #[serde(default)]
    pub pretrained_weights: Option<Spanned<String>>,
}

/// `optim:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimDoc {
    /// `optim.epochs`.
    #[serde(default)]
    pub epochs: Option<Spanned<u64>>,
    /// `train.OFFICIAL_EPOCH_LENGTH`: iterations per "epoch".
    #[serde(default)]
    pub epoch_length: Option<Spanned<u64>>,
    /// `optim.base_lr` (for a global batch of 1024, sqrt scaling).
    #[serde(default)]
    pub base_lr: Option<Spanned<f64>>,
    /// `optim.min_lr`.
    #[serde(default)]
    pub min_lr: Option<Spanned<f64>>,
    /// `optim.warmup_epochs`.
    #[serde(default)]
    pub warmup_epochs: Option<Spanned<u64>>,
    /// `optim.weight_decay`.
    #[serde(default)]
    pub weight_decay: Option<Spanned<f64>>,
    /// `optim.weight_decay_end`.
    #[serde(default)]
    pub weight_decay_end: Option<Spanned<f64>>,
    /// `optim.clip_grad` (0: off).
    #[serde(default)]
    pub clip_grad: Option<Spanned<f64>>,
    /// `optim.freeze_last_layer_epochs`.
    #[serde(default)]
    pub freeze_last_layer_epochs: Option<Spanned<u64>>,
    /// `optim.layerwise_decay`.
    #[serde(default)]
    pub layerwise_decay: Option<Spanned<f64>>,
    /// `optim.patch_embed_lr_mult`.
    #[serde(default)]
    pub patch_embed_lr_mult: Option<Spanned<f64>>,
    /// `optim.adamw_beta1`.
    #[serde(default)]
    pub adamw_beta1: Option<Spanned<f64>>,
    /// `optim.adamw_beta2`.
    #[serde(default)]
    pub adamw_beta2: Option<Spanned<f64>>,
}

/// `teacher:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeacherDoc {
    /// `teacher.momentum_teacher`.
    #[serde(default)]
    pub momentum_teacher: Option<Spanned<f64>>,
    /// `teacher.final_momentum_teacher`.
    #[serde(default)]
    pub final_momentum_teacher: Option<Spanned<f64>>,
    /// `teacher.warmup_teacher_temp`.
    #[serde(default)]
    pub warmup_teacher_temp: Option<Spanned<f64>>,
    /// `teacher.teacher_temp`.
    #[serde(default)]
    pub teacher_temp: Option<Spanned<f64>>,
    /// `teacher.warmup_teacher_temp_epochs`.
    #[serde(default)]
    pub warmup_teacher_temp_epochs: Option<Spanned<u64>>,
}

/// `train:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainDoc {
    /// Output folder (relative to the recipe's folder).
    #[serde(default)]
    pub output_dir: Option<Spanned<String>>,
    /// Teacher checkpoint period (`evaluation.eval_period_iterations`).
    #[serde(default)]
    pub eval_period_iterations: Option<Spanned<u64>>,
    /// Full resumable checkpoint period (3DINO: 3750).
    #[serde(default)]
    pub checkpoint_period: Option<Spanned<u64>>,
    /// Resumable checkpoints kept (3DINO: 3).
    #[serde(default)]
    pub keep_checkpoints: Option<Spanned<u64>>,
    /// Devices the global batch is spread over (sqrt lr scaling rule).
    #[serde(default)]
    pub world_size: Option<Spanned<u64>>,
    /// Stop after this many iterations in this run (the schedules still run
    /// to `epochs · epoch_length`); for demos and tests.
    #[serde(default)]
    pub max_iterations: Option<Spanned<u64>>,
}

/// Training settings with defaults filled.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingPlan {
    /// ViT preset.
    pub arch: String,
    /// Patch side.
    pub patch_size: usize,
    /// Student drop-path rate.
    pub drop_path_rate: f64,
    /// LayerScale init.
    pub layerscale: f64,
    /// Prototypes K.
    pub head_n_prototypes: usize,
    /// Head MLP width.
    pub head_hidden_dim: usize,
    /// Head bottleneck.
    pub head_bottleneck_dim: usize,
    /// Head MLP layers.
    pub head_nlayers: usize,
    /// `sinkhorn_knopp` or `centering`.
    pub centering: String,
    /// DINO weight.
    pub dino_loss_weight: f64,
    /// iBOT weight.
    pub ibot_loss_weight: f64,
    /// KoLeo weight.
    pub koleo_loss_weight: f64,
    /// Pretrained weights to start from (as written).
    pub pretrained_weights: Option<String>,
    /// Epochs.
    pub epochs: usize,
    /// Iterations per epoch.
    pub epoch_length: usize,
    /// Base lr for batch 1024.
    pub base_lr: f64,
    /// Final lr.
    pub min_lr: f64,
    /// Warmup epochs.
    pub warmup_epochs: usize,
    /// Initial weight decay.
    pub weight_decay: f64,
    /// Final weight decay.
    pub weight_decay_end: f64,
    /// Clip norm per module.
    pub clip_grad: f64,
    /// Epochs with frozen prototypes.
    pub freeze_last_layer_epochs: usize,
    /// Layer-wise lr decay.
    pub layerwise_decay: f64,
    /// Patch-embedding lr factor.
    pub patch_embed_lr_mult: f64,
    /// AdamW β₁.
    pub adamw_beta1: f64,
    /// AdamW β₂.
    pub adamw_beta2: f64,
    /// Initial teacher momentum.
    pub momentum_teacher: f64,
    /// Final teacher momentum.
    pub final_momentum_teacher: f64,
    /// Teacher temperature at the start of warmup.
    pub warmup_teacher_temp: f64,
    /// Teacher temperature after warmup.
    pub teacher_temp: f64,
    /// Teacher temperature warmup epochs.
    pub warmup_teacher_temp_epochs: usize,
    /// Output folder as written.
    pub output_dir: String,
    /// Teacher checkpoint period.
    pub eval_period_iterations: usize,
    /// Resumable checkpoint period.
    pub checkpoint_period: usize,
    /// Resumable checkpoints kept.
    pub keep_checkpoints: usize,
    /// Devices sharing the global batch.
    pub world_size: usize,
    /// Iterations this run stops after (None: to the end).
    pub max_iterations: Option<usize>,
}

impl Default for TrainingPlan {
    fn default() -> Self {
        Self {
            arch: "large".into(),
            patch_size: 16,
            drop_path_rate: 0.3,
            layerscale: 1e-5,
            head_n_prototypes: 65_536,
            head_hidden_dim: 2048,
            head_bottleneck_dim: 256,
            head_nlayers: 3,
            centering: "sinkhorn_knopp".into(),
            dino_loss_weight: 1.0,
            ibot_loss_weight: 1.0,
            koleo_loss_weight: 0.1,
            pretrained_weights: None,
            epochs: 100,
            epoch_length: 1250,
            base_lr: 0.002,
            min_lr: 1e-6,
            warmup_epochs: 10,
            weight_decay: 0.04,
            weight_decay_end: 0.4,
            clip_grad: 3.0,
            freeze_last_layer_epochs: 1,
            layerwise_decay: 0.9,
            patch_embed_lr_mult: 0.2,
            adamw_beta1: 0.9,
            adamw_beta2: 0.999,
            momentum_teacher: 0.992,
            final_momentum_teacher: 1.0,
            warmup_teacher_temp: 0.04,
            teacher_temp: 0.07,
            warmup_teacher_temp_epochs: 30,
            output_dir: "output".into(),
            eval_period_iterations: 12_500,
            checkpoint_period: 3750,
            keep_checkpoints: 3,
            world_size: 1,
            max_iterations: None,
        }
    }
}

impl TrainingPlan {
    /// Total iterations `epochs · epoch_length`.
    pub fn total_iterations(&self) -> usize {
        self.epochs * self.epoch_length
    }
}

pub(crate) const ARCHS: [&str; 4] = ["tiny", "small", "base", "large"];
const CENTERINGS: [&str; 2] = ["sinkhorn_knopp", "centering"];

/// Collects errors while reading the sections.
pub(crate) struct Check<'a> {
    pub(crate) file: &'a Path,
    pub(crate) errors: &'a mut Vec<RecipeError>,
}

impl Check<'_> {
    pub(crate) fn count(
        &mut self,
        v: &Option<Spanned<u64>>,
        min: u64,
        what: &str,
        out: &mut usize,
    ) {
        if let Some(v) = v {
            if v.value < min {
                self.errors.push(RecipeError::at(
                    self.file,
                    &v.referenced,
                    format!("{what} must be at least {min}"),
                ));
            }
            *out = v.value as usize;
        }
    }

    pub(crate) fn real(
        &mut self,
        v: &Option<Spanned<f64>>,
        range: (f64, f64),
        what: &str,
        out: &mut f64,
    ) {
        if let Some(v) = v {
            if !(range.0..=range.1).contains(&v.value) {
                self.errors.push(RecipeError::at(
                    self.file,
                    &v.referenced,
                    format!("{what} must be in [{}, {}]", range.0, range.1),
                ));
            }
            *out = v.value;
        }
    }

    pub(crate) fn choice(
        &mut self,
        v: &Option<Spanned<String>>,
        options: &[&str],
        what: &str,
        out: &mut String,
    ) {
        if let Some(v) = v {
            if !options.contains(&v.value.as_str()) {
                let hint = nearest(&v.value, options.iter().copied())
                    .map(|n| format!(" (did you mean `{n}`?)"))
                    .unwrap_or_default();
                self.errors.push(RecipeError::at(
                    self.file,
                    &v.referenced,
                    format!("{what} `{}` is not one of {options:?}{hint}", v.value),
                ));
            }
            out.clone_from(&v.value);
        }
    }
}

/// Reads the training sections; `None` when the recipe has none of them.
pub(crate) fn compile_training(
    doc: &RecipeDoc,
    file: &Path,
    errors: &mut Vec<RecipeError>,
) -> Option<TrainingPlan> {
    if doc.model.is_none() && doc.optim.is_none() && doc.teacher.is_none() && doc.train.is_none() {
        return None;
    }
    let mut p = TrainingPlan::default();
    let mut c = Check { file, errors };
    let inf = f64::INFINITY;
    if let Some(m) = &doc.model {
        c.choice(&m.arch, &ARCHS, "model.arch", &mut p.arch);
        c.count(&m.patch_size, 1, "model.patch_size", &mut p.patch_size);
        c.real(
            &m.drop_path_rate,
            (0.0, 0.99),
            "model.drop_path_rate",
            &mut p.drop_path_rate,
        );
        c.real(
            &m.layerscale,
            (0.0, inf),
            "model.layerscale",
            &mut p.layerscale,
        );
        c.count(
            &m.head_n_prototypes,
            1,
            "model.head_n_prototypes",
            &mut p.head_n_prototypes,
        );
        c.count(
            &m.head_hidden_dim,
            1,
            "model.head_hidden_dim",
            &mut p.head_hidden_dim,
        );
        c.count(
            &m.head_bottleneck_dim,
            1,
            "model.head_bottleneck_dim",
            &mut p.head_bottleneck_dim,
        );
        c.count(
            &m.head_nlayers,
            1,
            "model.head_nlayers",
            &mut p.head_nlayers,
        );
        c.choice(
            &m.centering,
            &CENTERINGS,
            "model.centering",
            &mut p.centering,
        );
        c.real(
            &m.dino_loss_weight,
            (0.0, inf),
            "model.dino_loss_weight",
            &mut p.dino_loss_weight,
        );
        c.real(
            &m.ibot_loss_weight,
            (0.0, inf),
            "model.ibot_loss_weight",
            &mut p.ibot_loss_weight,
        );
        c.real(
            &m.koleo_loss_weight,
            (0.0, inf),
            "model.koleo_loss_weight",
            &mut p.koleo_loss_weight,
        );
        p.pretrained_weights = m.pretrained_weights.as_ref().map(|w| w.value.clone());
    }
    if let Some(o) = &doc.optim {
        c.count(&o.epochs, 1, "optim.epochs", &mut p.epochs);
        c.count(
            &o.epoch_length,
            1,
            "optim.epoch_length",
            &mut p.epoch_length,
        );
        c.real(&o.base_lr, (0.0, 10.0), "optim.base_lr", &mut p.base_lr);
        c.real(&o.min_lr, (0.0, 10.0), "optim.min_lr", &mut p.min_lr);
        c.count(
            &o.warmup_epochs,
            0,
            "optim.warmup_epochs",
            &mut p.warmup_epochs,
        );
        c.real(
            &o.weight_decay,
            (0.0, 10.0),
            "optim.weight_decay",
            &mut p.weight_decay,
        );
        c.real(
            &o.weight_decay_end,
            (0.0, 10.0),
            "optim.weight_decay_end",
            &mut p.weight_decay_end,
        );
        c.real(
            &o.clip_grad,
            (0.0, inf),
            "optim.clip_grad",
            &mut p.clip_grad,
        );
        c.count(
            &o.freeze_last_layer_epochs,
            0,
            "optim.freeze_last_layer_epochs",
            &mut p.freeze_last_layer_epochs,
        );
        c.real(
            &o.layerwise_decay,
            (0.0, 1.0),
            "optim.layerwise_decay",
            &mut p.layerwise_decay,
        );
        c.real(
            &o.patch_embed_lr_mult,
            (0.0, inf),
            "optim.patch_embed_lr_mult",
            &mut p.patch_embed_lr_mult,
        );
        c.real(
            &o.adamw_beta1,
            (0.0, 0.999_999),
            "optim.adamw_beta1",
            &mut p.adamw_beta1,
        );
        c.real(
            &o.adamw_beta2,
            (0.0, 0.999_999_9),
            "optim.adamw_beta2",
            &mut p.adamw_beta2,
        );
    }
    if let Some(t) = &doc.teacher {
        c.real(
            &t.momentum_teacher,
            (0.0, 1.0),
            "teacher.momentum_teacher",
            &mut p.momentum_teacher,
        );
        c.real(
            &t.final_momentum_teacher,
            (0.0, 1.0),
            "teacher.final_momentum_teacher",
            &mut p.final_momentum_teacher,
        );
        c.real(
            &t.warmup_teacher_temp,
            (1e-4, 10.0),
            "teacher.warmup_teacher_temp",
            &mut p.warmup_teacher_temp,
        );
        c.real(
            &t.teacher_temp,
            (1e-4, 10.0),
            "teacher.teacher_temp",
            &mut p.teacher_temp,
        );
        c.count(
            &t.warmup_teacher_temp_epochs,
            0,
            "teacher.warmup_teacher_temp_epochs",
            &mut p.warmup_teacher_temp_epochs,
        );
    }
    if let Some(t) = &doc.train {
        if let Some(o) = &t.output_dir {
            p.output_dir.clone_from(&o.value);
        }
        c.count(
            &t.eval_period_iterations,
            1,
            "train.eval_period_iterations",
            &mut p.eval_period_iterations,
        );
        c.count(
            &t.checkpoint_period,
            1,
            "train.checkpoint_period",
            &mut p.checkpoint_period,
        );
        c.count(
            &t.keep_checkpoints,
            1,
            "train.keep_checkpoints",
            &mut p.keep_checkpoints,
        );
        c.count(&t.world_size, 1, "train.world_size", &mut p.world_size);
        if t.max_iterations.is_some() {
            let mut n = 0;
            c.count(&t.max_iterations, 1, "train.max_iterations", &mut n);
            p.max_iterations = Some(n);
        }
    }
    // Schedules hold one value per iteration: refuse absurd run lengths.
    const MAX_ITERATIONS: usize = 1 << 32;
    if p.epochs
        .checked_mul(p.epoch_length)
        .is_none_or(|n| n > MAX_ITERATIONS)
    {
        let loc = doc
            .optim
            .as_ref()
            .and_then(|o| o.epochs.as_ref().or(o.epoch_length.as_ref()))
            .map_or(&doc.task.referenced, |v| &v.referenced);
        c.errors.push(RecipeError::at(
            file,
            loc,
            format!("optim.epochs x optim.epoch_length must be at most {MAX_ITERATIONS}"),
        ));
    }
    Some(p)
}
