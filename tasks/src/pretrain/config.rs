//! The training sections of a `task: pretrain` recipe: `model`, `optim`,
//! `teacher`, `train`, validated with source positions.
//!
//! Names follow 3DINO's config keys (spec §2.1). Every default is 3DINO's
//! stage-1 value, taken from the model crate's configurations
//! ([`ViT3dConfig::threedino`], [`SslConfig::threedino`],
//! [`ScheduleConfig::default`]) so they are written once; the run settings
//! (output, checkpoint periods) are this task's own.
//!
//! Past the house's 600 lines on purpose: four sections and about forty keys,
//! each declared, defaulted, checked with its own bounds and printed once.

use dino3d_model::AttentionKernel;
use dino3d_model::candle_core::DType;
use dino3d_model::dist::DEFAULT_BUCKET_BYTES;
use dino3d_model::precision::Precision;
use dino3d_model::schedule::ScheduleConfig;
use dino3d_model::ssl::{Centering, SslConfig};
use dino3d_model::{DropPathMode, ViT3dConfig};
use dino3d_pipeline::recipe::{Check, RecipeError, Spanned, TaskContext};
use serde::Deserialize;

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
    /// `subset` (3DINO's: each residual branch on a random part of the
    /// batch) or `per_sample` (timm's keep mask).
    #[serde(default)]
    pub drop_path_mode: Option<Spanned<String>>,
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
    /// Compute precision: `f32` (the default), `tf32`, `bf16` (matmuls in
    /// bf16, the rest f32, as 3DINO's mixed precision) or `auto` (bf16 on a
    /// GPU, f32 on the CPU).
    #[serde(default)]
    pub precision: Option<Spanned<String>>,
    /// Recompute each student block's activations in the backward instead
    /// of keeping them: about a third more compute for a fraction of the
    /// activation memory (larger batches on one GPU).
    #[serde(default)]
    pub activation_checkpointing: Option<Spanned<bool>>,
    /// Attention kernel: `composed` (the default) or `fused` (on CUDA, no
    /// stored `T × T` probabilities; the composed path elsewhere).
    #[serde(default)]
    pub attention: Option<Spanned<String>>,
    /// The dtype data-parallel gradients are all-reduced in: `f32` (the
    /// default) or `bf16` (half the bytes; DINOv2 reduces in 16 bits).
    #[serde(default)]
    pub gradient_reduce: Option<Spanned<String>>,
    /// MiB per gradient all-reduce bucket (PyTorch DDP's `bucket_cap_mb`,
    /// default 25): the buckets start while the backward still runs.
    #[serde(default)]
    pub gradient_bucket_mb: Option<Spanned<u64>>,
}

/// The checked training sections, defaults filled (3DINO stage 1).
#[derive(Debug, Clone, PartialEq)]
pub struct PretrainConfig {
    /// ViT preset.
    pub arch: String,
    /// Patch side.
    pub patch_size: usize,
    /// Student drop-path rate.
    pub drop_path_rate: f64,
    /// Drop-path form (`subset` or `per_sample`).
    pub drop_path_mode: String,
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
    /// Compute precision's recipe name (`auto` or a [`Precision`] name).
    pub precision: String,
    /// Recompute block activations in the backward.
    pub activation_checkpointing: bool,
    /// Attention kernel's recipe name ([`AttentionKernel::NAMES`]).
    pub attention: String,
    /// Gradient all-reduce dtype's recipe name ([`GRADIENT_REDUCE`]).
    pub gradient_reduce: String,
    /// MiB per gradient all-reduce bucket.
    pub gradient_bucket_mb: usize,
}

impl Default for PretrainConfig {
    fn default() -> Self {
        let backbone = ViT3dConfig::threedino();
        let ssl = SslConfig::threedino(backbone.clone());
        let s = ScheduleConfig::default();
        Self {
            arch: ViT3dConfig::THREEDINO_PRESET.into(),
            patch_size: backbone.patch_size,
            drop_path_rate: backbone.drop_path_rate,
            drop_path_mode: backbone.drop_path_mode.name().into(),
            layerscale: backbone.layerscale_init,
            head_n_prototypes: ssl.dino_head.n_prototypes,
            head_hidden_dim: ssl.dino_head.hidden_dim,
            head_bottleneck_dim: ssl.dino_head.bottleneck_dim,
            head_nlayers: ssl.dino_head.n_layers,
            centering: centering_name(&ssl.centering).into(),
            dino_loss_weight: ssl.dino_weight,
            ibot_loss_weight: ssl.ibot_weight,
            koleo_loss_weight: ssl.koleo_weight,
            pretrained_weights: None,
            epochs: s.epochs,
            epoch_length: s.epoch_len,
            base_lr: s.base_lr,
            min_lr: s.min_lr,
            warmup_epochs: s.warmup_epochs,
            weight_decay: s.weight_decay,
            weight_decay_end: s.weight_decay_end,
            clip_grad: ssl.clip_grad,
            freeze_last_layer_epochs: s.freeze_last_layer_epochs,
            layerwise_decay: ssl.rules.layerwise_decay,
            patch_embed_lr_mult: ssl.rules.patch_embed_lr_mult,
            adamw_beta1: ssl.adamw.beta1,
            adamw_beta2: ssl.adamw.beta2,
            momentum_teacher: s.momentum_teacher,
            final_momentum_teacher: s.final_momentum_teacher,
            warmup_teacher_temp: s.warmup_teacher_temp,
            teacher_temp: s.teacher_temp,
            warmup_teacher_temp_epochs: s.warmup_teacher_temp_epochs,
            output_dir: "output".into(),
            eval_period_iterations: 12_500,
            checkpoint_period: 3750,
            keep_checkpoints: 3,
            world_size: 1,
            max_iterations: None,
            // f32 until bf16 is measured on a GPU: in candle the bf16 copies
            // are kept beside the f32 activations for the backward, so bf16
            // may need more memory than f32 (README, "The GPU").
            precision: PRECISIONS[1].into(),
            activation_checkpointing: false,
            // Composed until the fused kernel is measured on a GPU.
            attention: AttentionKernel::default().name().into(),
            gradient_reduce: GRADIENT_REDUCE[0].into(),
            gradient_bucket_mb: DEFAULT_BUCKET_BYTES >> 20,
        }
    }
}

impl PretrainConfig {
    /// Total iterations `epochs · epoch_length`.
    pub fn total_iterations(&self) -> usize {
        self.epochs * self.epoch_length
    }

    /// The precision the step runs in on `device`: `auto` is bf16 on a GPU
    /// (3DINO trains in bf16 mixed precision) and f32 on the CPU (where bf16
    /// matmuls are no faster).
    pub fn precision_on(&self, device: &dino3d_model::candle_core::Device) -> Precision {
        match Precision::from_name(&self.precision) {
            Some(p) => p,
            None if device.is_cpu() => Precision::F32,
            None => Precision::Bf16,
        }
    }
}

impl PretrainConfig {
    /// The attention kernel the recipe names.
    pub fn attention_kernel(&self) -> AttentionKernel {
        AttentionKernel::from_name(&self.attention).unwrap_or_default()
    }

    /// The dtype data-parallel gradients are all-reduced in.
    pub fn gradient_reduce_dtype(&self) -> DType {
        match self.gradient_reduce.as_str() {
            "bf16" => DType::BF16,
            _ => DType::F32,
        }
    }
}

/// `train.gradient_reduce` names, the default first.
pub const GRADIENT_REDUCE: [&str; 2] = ["f32", "bf16"];

/// `train.precision` names: `auto`, then [`Precision::NAMES`].
pub const PRECISIONS: [&str; 4] = ["auto", "f32", "tf32", "bf16"];

/// The recipe's names of the centring methods.
const CENTERINGS: [&str; 2] = ["sinkhorn_knopp", "centering"];

/// A centring method's recipe name.
pub fn centering_name(c: &Centering) -> &'static str {
    match c {
        Centering::SinkhornKnopp => CENTERINGS[0],
        Centering::Softmax { .. } => CENTERINGS[1],
    }
}

/// The training sections as written (each absent when the recipe has none).
#[derive(Debug, Clone, Copy, Default)]
pub struct PretrainSections<'a> {
    /// `model:`.
    pub model: Option<&'a ModelDoc>,
    /// `optim:`.
    pub optim: Option<&'a OptimDoc>,
    /// `teacher:`.
    pub teacher: Option<&'a TeacherDoc>,
    /// `train:`.
    pub train: Option<&'a TrainDoc>,
}

impl PretrainSections<'_> {
    /// True when the recipe has at least one of the sections.
    pub fn any(&self) -> bool {
        self.model.is_some()
            || self.optim.is_some()
            || self.teacher.is_some()
            || self.train.is_some()
    }
}

/// Reads the training sections; `None` when the recipe has none of them.
/// They are checked whatever the task, as they always were.
pub fn compile(
    s: &PretrainSections<'_>,
    ctx: &TaskContext<'_>,
    errors: &mut Vec<RecipeError>,
) -> Option<PretrainConfig> {
    if !s.any() {
        return None;
    }
    let mut p = PretrainConfig::default();
    let mut c = Check {
        file: ctx.file,
        errors,
    };
    let inf = f64::INFINITY;
    if let Some(m) = s.model {
        c.choice(&m.arch, &ViT3dConfig::PRESETS, "model.arch", &mut p.arch);
        c.count(&m.patch_size, 1, "model.patch_size", &mut p.patch_size);
        c.real(
            &m.drop_path_rate,
            (0.0, 0.99),
            "model.drop_path_rate",
            &mut p.drop_path_rate,
        );
        c.choice(
            &m.drop_path_mode,
            &DropPathMode::NAMES,
            "model.drop_path_mode",
            &mut p.drop_path_mode,
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
    if let Some(o) = s.optim {
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
    if let Some(t) = s.teacher {
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
    if let Some(t) = s.train {
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
        c.choice(
            &t.precision,
            &PRECISIONS,
            "train.precision",
            &mut p.precision,
        );
        if let Some(a) = &t.activation_checkpointing {
            p.activation_checkpointing = a.value;
        }
        c.choice(
            &t.attention,
            &AttentionKernel::NAMES,
            "train.attention",
            &mut p.attention,
        );
        c.choice(
            &t.gradient_reduce,
            &GRADIENT_REDUCE,
            "train.gradient_reduce",
            &mut p.gradient_reduce,
        );
        c.count(
            &t.gradient_bucket_mb,
            1,
            "train.gradient_bucket_mb",
            &mut p.gradient_bucket_mb,
        );
    }
    // Schedules hold one value per iteration: refuse absurd run lengths.
    const MAX_ITERATIONS: usize = 1 << 32;
    if p.epochs
        .checked_mul(p.epoch_length)
        .is_none_or(|n| n > MAX_ITERATIONS)
    {
        let loc = s
            .optim
            .and_then(|o| o.epochs.as_ref().or(o.epoch_length.as_ref()))
            .map_or(&ctx.task.referenced, |v| &v.referenced);
        c.errors.push(RecipeError::at(
            ctx.file,
            loc,
            format!("optim.epochs x optim.epoch_length must be at most {MAX_ITERATIONS}"),
        ));
    }
    Some(p)
}

/// The model's patch must be the iBOT mask grid's (`batch.patch_size`);
/// checked after every section is read.
pub fn check_patch_size(
    s: &PretrainSections<'_>,
    config: &PretrainConfig,
    ctx: &TaskContext<'_>,
    errors: &mut Vec<RecipeError>,
) {
    if config.patch_size != ctx.batch.patch_size {
        let loc = s
            .model
            .and_then(|m| m.patch_size.as_ref())
            .map_or(&ctx.task.referenced, |p| &p.referenced);
        errors.push(RecipeError::at(
            ctx.file,
            loc,
            format!(
                "model.patch_size {} differs from batch.patch_size {} (the iBOT mask grid)",
                config.patch_size, ctx.batch.patch_size
            ),
        ));
    }
}

/// The global crops set the model's position grid: the run needs their
/// size from the recipe, one cube for every global view (the pipeline's
/// checks hold the one size).
pub fn check_global_crops(ctx: &TaskContext<'_>, errors: &mut Vec<RecipeError>) {
    if let Err(e) = super::setup::global_crop_size_of(ctx.views) {
        errors.push(RecipeError::at(
            ctx.file,
            &ctx.task.referenced,
            e.to_string(),
        ));
    }
}

impl std::fmt::Display for PretrainConfig {
    /// The lines `recipe check` prints.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = self;
        writeln!(
            f,
            "model ViT-{} (patch {}, drop path {} {}), heads {}x{}->{}->{} prototypes, {} centring",
            t.arch,
            t.patch_size,
            t.drop_path_rate,
            t.drop_path_mode,
            t.head_nlayers,
            t.head_hidden_dim,
            t.head_bottleneck_dim,
            t.head_n_prototypes,
            t.centering
        )?;
        writeln!(
            f,
            "optim: {} epochs x {} iterations, base lr {} (batch 1024, sqrt rule), warmup {} epochs, wd {}->{}, clip {}",
            t.epochs,
            t.epoch_length,
            t.base_lr,
            t.warmup_epochs,
            t.weight_decay,
            t.weight_decay_end,
            t.clip_grad
        )?;
        writeln!(
            f,
            "teacher: momentum {}->{}, temperature {}->{} over {} epochs",
            t.momentum_teacher,
            t.final_momentum_teacher,
            t.warmup_teacher_temp,
            t.teacher_temp,
            t.warmup_teacher_temp_epochs
        )?;
        write!(
            f,
            "train: output {}, teacher every {} it, checkpoint every {} it (keep {}), world size {}, precision {}",
            t.output_dir,
            t.eval_period_iterations,
            t.checkpoint_period,
            t.keep_checkpoints,
            t.world_size,
            t.precision
        )?;
        if t.activation_checkpointing {
            write!(f, ", activation checkpointing")?;
        }
        if t.attention_kernel() != AttentionKernel::default() {
            write!(f, ", {} attention", t.attention)?;
        }
        if t.gradient_reduce != GRADIENT_REDUCE[0] {
            write!(f, ", gradients reduced in {}", t.gradient_reduce)?;
        }
        if t.gradient_bucket_mb != DEFAULT_BUCKET_BYTES >> 20 {
            write!(f, ", {} MiB gradient buckets", t.gradient_bucket_mb)?;
        }
        if let Some(m) = t.max_iterations {
            write!(f, ", stop after {m} it")?;
        }
        writeln!(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_3dino_stage_1_as_written_before() {
        // The values the recipe section used to spell out itself, now read
        // from the model crate's configurations.
        let p = PretrainConfig::default();
        assert_eq!((p.arch.as_str(), p.patch_size), ("large", 16));
        assert_eq!((p.drop_path_rate, p.layerscale), (0.3, 1e-5));
        assert_eq!(p.drop_path_mode, "subset");
        assert_eq!(
            (
                p.head_n_prototypes,
                p.head_hidden_dim,
                p.head_bottleneck_dim,
                p.head_nlayers
            ),
            (65_536, 2048, 256, 3)
        );
        assert_eq!(p.centering, "sinkhorn_knopp");
        assert_eq!(
            (p.dino_loss_weight, p.ibot_loss_weight, p.koleo_loss_weight),
            (1.0, 1.0, 0.1)
        );
        assert_eq!(p.pretrained_weights, None);
        assert_eq!(
            (p.epochs, p.epoch_length, p.base_lr, p.min_lr),
            (100, 1250, 0.002, 1e-6)
        );
        assert_eq!(
            (p.warmup_epochs, p.weight_decay, p.weight_decay_end),
            (10, 0.04, 0.4)
        );
        assert_eq!((p.clip_grad, p.freeze_last_layer_epochs), (3.0, 1));
        assert_eq!((p.layerwise_decay, p.patch_embed_lr_mult), (0.9, 0.2));
        assert_eq!((p.adamw_beta1, p.adamw_beta2), (0.9, 0.999));
        assert_eq!((p.momentum_teacher, p.final_momentum_teacher), (0.992, 1.0));
        assert_eq!(
            (
                p.warmup_teacher_temp,
                p.teacher_temp,
                p.warmup_teacher_temp_epochs
            ),
            (0.04, 0.07, 30)
        );
        assert_eq!(
            (
                p.output_dir.as_str(),
                p.eval_period_iterations,
                p.checkpoint_period
            ),
            ("output", 12_500, 3750)
        );
        assert_eq!(
            (p.keep_checkpoints, p.world_size, p.max_iterations),
            (3, 1, None)
        );
    }
}
