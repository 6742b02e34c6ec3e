//! Student, EMA teacher, optimiser and one training step.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};

use super::losses::{
    CenteringState, LossSetup, LossValues, MaskGather, SslBatch, SslLosses, student_losses,
    teacher_targets,
};
use crate::dist::{
    BucketPlan, Collective, DEFAULT_BUCKET_BYTES, GradientSync, ReduceOp, SyncReport, distributed,
};
use crate::optim::{AdamW, AdamWConfig, GroupRules, clip_per_module, ema_update};
use crate::schedule::ScheduleValues;
use crate::{Activations, DinoHead, DinoHeadConfig, ModelError, Result, ViT3d, ViT3dConfig};

/// How teacher outputs become targets.
#[derive(Debug, Clone, PartialEq)]
pub enum Centering {
    /// Sinkhorn-Knopp, 3 iterations (3DINO's `sinkhorn_knopp`).
    SinkhornKnopp,
    /// Softmax around an EMA centre (`centering`), with its momentum.
    Softmax {
        /// Centre EMA momentum (DINOv2: 0.9).
        momentum: f64,
    },
}

/// Everything that shapes the networks and the loss.
#[derive(Debug, Clone, PartialEq)]
pub struct SslConfig {
    /// Backbone (its `drop_path_rate` applies to the student only).
    pub backbone: ViT3dConfig,
    /// DINO head on \[CLS\].
    pub dino_head: DinoHeadConfig,
    /// Separate iBOT head on patch tokens.
    pub ibot_head: DinoHeadConfig,
    /// Target centring.
    pub centering: Centering,
    /// `dino.loss_weight`.
    pub dino_weight: f64,
    /// `ibot.loss_weight`.
    pub ibot_weight: f64,
    /// `dino.koleo_loss_weight`.
    pub koleo_weight: f64,
    /// Per-module global-norm clip (`optim.clip_grad`); 0 disables.
    pub clip_grad: f64,
    /// Parameter groups.
    pub rules: GroupRules,
    /// AdamW constants.
    pub adamw: AdamWConfig,
}

impl SslConfig {
    /// 3DINO's settings around a backbone.
    pub fn threedino(backbone: ViT3dConfig) -> Self {
        let e = backbone.embed_dim;
        let depth = backbone.depth;
        Self {
            backbone,
            dino_head: DinoHeadConfig::new(e),
            ibot_head: DinoHeadConfig::new(e),
            centering: Centering::SinkhornKnopp,
            dino_weight: 1.0,
            ibot_weight: 1.0,
            koleo_weight: crate::loss::KOLEO_WEIGHT,
            clip_grad: crate::optim::THREEDINO_CLIP_GRAD,
            rules: GroupRules::threedino(depth),
            adamw: AdamWConfig::default(),
        }
    }
}

/// Backbone and both heads, under `backbone.`, `dino_head.`, `ibot_head.`.
#[derive(Debug, Clone)]
pub struct Networks {
    /// The ViT.
    pub backbone: ViT3d,
    /// DINO head.
    pub dino_head: DinoHead,
    /// iBOT head.
    pub ibot_head: DinoHead,
}

impl Networks {
    /// Builds (or loads) the three modules under `vb`.
    pub fn new(cfg: &SslConfig, vb: &VarBuilder) -> Result<Self> {
        Ok(Self {
            backbone: ViT3d::new(cfg.backbone.clone(), vb.pp("backbone"))?,
            dino_head: DinoHead::new(cfg.dino_head.clone(), vb.pp("dino_head"))?,
            ibot_head: DinoHead::new(cfg.ibot_head.clone(), vb.pp("ibot_head"))?,
        })
    }
}

/// What one step did.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReport {
    /// Loss terms before the update.
    pub losses: LossValues,
    /// Gradient norm of each clipped module before clipping, in
    /// [`crate::optim::THREEDINO_CLIP_MODULES`] order.
    pub grad_norms: Vec<f64>,
    /// Masked tokens in the batch (all ranks' in a data-parallel step).
    pub n_masked: usize,
    /// Seconds per phase of the step, in order, when phase timing is on
    /// ([`SslModel::set_phase_timing`]); empty otherwise.
    pub phases: Vec<(&'static str, f64)>,
}

/// Times the phases of a step, waiting for the device at each boundary
/// (so a GPU's queued work is counted where it was enqueued); does nothing
/// when off.
pub(super) struct PhaseTimer {
    device: Option<Device>,
    last: std::time::Instant,
    phases: Vec<(&'static str, f64)>,
}

impl PhaseTimer {
    pub(super) fn new(device: Option<&Device>) -> Result<Self> {
        if let Some(d) = device {
            d.synchronize()?;
        }
        Ok(Self {
            device: device.cloned(),
            last: std::time::Instant::now(),
            phases: Vec::new(),
        })
    }

    /// Ends phase `name`.
    fn mark(&mut self, name: &'static str) -> Result<()> {
        if let Some(d) = &self.device {
            d.synchronize()?;
            let now = std::time::Instant::now();
            self.phases.push((name, (now - self.last).as_secs_f64()));
            self.last = now;
        }
        Ok(())
    }
}

/// Student, teacher, optimiser and centring state.
pub struct SslModel {
    cfg: SslConfig,
    student_vars: VarMap,
    teacher_vars: VarMap,
    student: Networks,
    teacher: Networks,
    optimizer: AdamW,
    centering: CenteringState,
    /// What the student's passes keep for the backward.
    student_activations: Activations,
    /// The dtype gradients are all-reduced in (f32 or bf16).
    gradient_wire: DType,
    /// Wire bytes per gradient bucket of a data-parallel step.
    gradient_bucket_bytes: usize,
    /// The buckets of data-parallel steps: the optimiser's order (reversed:
    /// the heads first) until a step has seen the order in which the
    /// backward finishes the gradients, then rank 0's observed order.
    gradient_buckets: Option<BucketPlan>,
    /// What the last data-parallel step's gradient all-reduce did.
    last_gradient_sync: Option<SyncReport>,
    /// Whether a world of one runs the data-parallel code paths too.
    collectives_in_a_world_of_one: bool,
    /// Whether steps time their phases.
    phase_timing: bool,
}

impl std::fmt::Debug for SslModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SslModel").field("cfg", &self.cfg).finish()
    }
}

impl SslModel {
    /// A student initialised from `seed` (the same weights on every run)
    /// and a teacher that copies it.
    pub fn new(cfg: SslConfig, device: &Device, seed: u64) -> Result<Self> {
        let student_vars = VarMap::new();
        let vb = crate::init::seeded_var_builder(&student_vars, seed, DType::F32, device);
        let student = Networks::new(&cfg, &vb)?;
        let teacher_vars = VarMap::new();
        let tb = VarBuilder::from_varmap(&teacher_vars, DType::F32, device);
        // The teacher has no drop path; it is never given a seed anyway.
        let teacher = Networks::new(&cfg, &tb)?;
        copy_vars(&student_vars, &teacher_vars)?;
        let optimizer = AdamW::from_varmap(&student_vars, &cfg.rules, cfg.adamw)?;
        let centering = CenteringState::new(
            &cfg.centering,
            cfg.dino_head.n_prototypes,
            cfg.ibot_head.n_prototypes,
            device,
        )?;
        Ok(Self {
            cfg,
            student_vars,
            teacher_vars,
            student,
            teacher,
            optimizer,
            centering,
            student_activations: Activations::Keep,
            gradient_wire: DType::F32,
            gradient_bucket_bytes: DEFAULT_BUCKET_BYTES,
            gradient_buckets: None,
            last_gradient_sync: None,
            collectives_in_a_world_of_one: false,
            phase_timing: false,
        })
    }

    /// Recompute each student block's activations in the backward instead
    /// of keeping them (activation checkpointing): one extra forward of the
    /// blocks for a fraction of the memory, the same step up to float
    /// rounding. How the step is computed, not what: not in [`SslConfig`].
    pub fn set_activation_checkpointing(&mut self, on: bool) {
        self.student_activations = if on {
            Activations::Recompute
        } else {
            Activations::Keep
        };
    }

    /// Reduces the gradients of a data-parallel step in `dtype`: f32 (the
    /// default) or bf16, half the bytes on the wire (DINOv2 reduces its
    /// backbone's gradients in 16 bits); parameters and the update stay f32.
    ///
    /// # Errors
    /// Any other dtype.
    pub fn set_gradient_reduce_dtype(&mut self, dtype: DType) -> Result<()> {
        crate::dist::check_wire(dtype)?;
        self.gradient_wire = dtype;
        self.gradient_buckets = None;
        Ok(())
    }

    /// The wire bytes of each gradient all-reduce of a data-parallel step
    /// after the first, smaller one (default [`DEFAULT_BUCKET_BYTES`], as
    /// PyTorch DDP's): smaller buckets start earlier in the backward, larger
    /// ones pay the per-call latency fewer times. The averages are the same.
    ///
    /// # Errors
    /// Zero bytes.
    pub fn set_gradient_bucket_bytes(&mut self, bytes: usize) -> Result<()> {
        if bytes == 0 {
            return Err(ModelError::Config(
                "a gradient bucket needs a positive size".into(),
            ));
        }
        self.gradient_bucket_bytes = bytes;
        self.gradient_buckets = None;
        Ok(())
    }

    /// Runs [`Self::step_with`]'s data-parallel code paths (the loss values'
    /// mean, the gradient buckets) in a world of one too, where by default
    /// they are skipped: to test or time them on one GPU with NCCL. The
    /// step is the same (a mean over one rank is the value; in a bf16 wire
    /// the gradients are rounded to bf16).
    pub fn set_collectives_in_a_world_of_one(&mut self, on: bool) {
        self.collectives_in_a_world_of_one = on;
    }

    /// What the last data-parallel step's gradient all-reduce did: its
    /// buckets and how many started while the backward ran.
    pub fn last_gradient_sync(&self) -> Option<&SyncReport> {
        self.last_gradient_sync.as_ref()
    }

    /// Times each step's phases (teacher, student, backward, all_reduce,
    /// clip, adamw, ema) into [`StepReport::phases`], waiting for the device
    /// at every boundary: for profiles, not for training (the waits cost).
    pub fn set_phase_timing(&mut self, on: bool) {
        self.phase_timing = on;
    }

    /// The configuration.
    pub fn config(&self) -> &SslConfig {
        &self.cfg
    }

    /// Student variables (`backbone.*`, `dino_head.*`, `ibot_head.*`).
    pub fn student_vars(&self) -> &VarMap {
        &self.student_vars
    }

    /// Teacher variables, same names.
    pub fn teacher_vars(&self) -> &VarMap {
        &self.teacher_vars
    }

    /// The teacher networks (evaluation, feature export).
    pub fn teacher(&self) -> &Networks {
        &self.teacher
    }

    /// The student networks.
    pub fn student(&self) -> &Networks {
        &self.student
    }

    /// Optimiser steps taken.
    pub fn steps(&self) -> u64 {
        self.optimizer.step_count()
    }

    /// Loads student weights by name (e.g. a stage-1 teacher for the
    /// high-resolution stage) and copies them to the teacher, as 3DINO's
    /// `full_pretrained_weights` does; names missing from `weights` keep
    /// their initial values. Returns the names that were loaded.
    pub fn load_pretrained(&mut self, weights: &HashMap<String, Tensor>) -> Result<Vec<String>> {
        let mut loaded = Vec::new();
        {
            let data = self.student_vars.data().lock().expect("VarMap lock");
            for (name, var) in data.iter() {
                if let Some(t) = weights.get(name) {
                    if t.dims() != var.dims() {
                        return Err(ModelError::Input(format!(
                            "pretrained {name} has shape {:?}, model {:?}",
                            t.dims(),
                            var.dims()
                        )));
                    }
                    var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
                    loaded.push(name.clone());
                }
            }
        }
        copy_vars(&self.student_vars, &self.teacher_vars)?;
        loaded.sort();
        Ok(loaded)
    }

    /// The loss of `batch` without updating anything except the softmax
    /// centre (evaluation of the loss, gradient checks).
    pub fn losses(
        &mut self,
        batch: &SslBatch,
        teacher_temp: f64,
        drop_path_seed: Option<u64>,
    ) -> Result<SslLosses> {
        self.losses_with(batch, teacher_temp, drop_path_seed, None)
    }

    /// [`Self::losses`] of this rank's share of a data-parallel batch: the
    /// teacher targets are centred over all ranks of `comm`.
    pub fn losses_with(
        &mut self,
        batch: &SslBatch,
        teacher_temp: f64,
        drop_path_seed: Option<u64>,
        comm: Option<&dyn Collective>,
    ) -> Result<SslLosses> {
        // Evaluation keeps the activations: a caller's `total.backward()`
        // then reaches every parameter, with no tape to replay.
        let mut timer = PhaseTimer::new(None)?;
        self.losses_timed(
            batch,
            teacher_temp,
            drop_path_seed,
            comm,
            Activations::Keep,
            &mut timer,
        )
    }

    pub(super) fn losses_timed(
        &mut self,
        batch: &SslBatch,
        teacher_temp: f64,
        drop_path_seed: Option<u64>,
        comm: Option<&dyn Collective>,
        activations: Activations,
        timer: &mut PhaseTimer,
    ) -> Result<SslLosses> {
        let n_tokens = self.tokens_per_global(batch)?;
        let gather = MaskGather::new(batch, n_tokens)?;
        let targets = teacher_targets(
            &self.teacher,
            batch,
            &gather,
            teacher_temp,
            &mut self.centering,
            comm,
        )?;
        timer.mark("teacher")?;
        let setup = LossSetup {
            dino_weight: self.cfg.dino_weight,
            ibot_weight: self.cfg.ibot_weight,
            koleo_weight: self.cfg.koleo_weight,
            activations,
        };
        student_losses(
            &self.student,
            batch,
            &gather,
            &targets,
            &setup,
            drop_path_seed,
        )
    }

    /// One iteration: losses, backward, per-module clipping, AdamW with the
    /// scheduled values, EMA teacher update with the scheduled momentum.
    pub fn step(
        &mut self,
        batch: &SslBatch,
        values: ScheduleValues,
        drop_path_seed: Option<u64>,
    ) -> Result<StepReport> {
        self.step_with(batch, values, drop_path_seed, None)
    }

    /// [`Self::step`] as one rank of a data-parallel job over `comm` (3DINO's
    /// semantics): the targets are centred over all ranks, each rank's loss
    /// is its own share's (KoLeo per rank), and the gradients are averaged
    /// before clipping, so every rank applies the same update and the
    /// replicas stay equal. The reported losses are the ranks' mean. With
    /// `None` or a world of one this is [`Self::step`] exactly (a world of
    /// one skips the collectives unless
    /// [`Self::set_collectives_in_a_world_of_one`]).
    pub fn step_with(
        &mut self,
        batch: &SslBatch,
        values: ScheduleValues,
        drop_path_seed: Option<u64>,
        comm: Option<&dyn Collective>,
    ) -> Result<StepReport> {
        let comm = if self.collectives_in_a_world_of_one {
            comm
        } else {
            distributed(comm)
        };
        let device = self
            .phase_timing
            .then(|| self.student.backbone.device().clone());
        let mut timer = PhaseTimer::new(device.as_ref())?;
        let losses = self.losses_timed(
            batch,
            values.teacher_temp,
            drop_path_seed,
            comm,
            self.student_activations,
            &mut timer,
        )?;
        let mut n_masked = losses.n_masked;
        let mut report_losses = losses.values()?;
        if let Some(comm) = comm {
            // Every rank sees the same (mean) losses, so a non-finite loss
            // anywhere stops all ranks at the same point instead of leaving
            // the others waiting in the gradient all-reduce.
            let l = &mut report_losses;
            let mut v = [
                l.dino_local,
                l.dino_global,
                l.koleo,
                l.ibot,
                l.total,
                n_masked as f64,
            ];
            comm.all_reduce_f64(&mut v, ReduceOp::Mean)?;
            [l.dino_local, l.dino_global, l.koleo, l.ibot, l.total] =
                [v[0], v[1], v[2], v[3], v[4]];
            n_masked = (v[5] * comm.world_size() as f64).round() as usize;
        }
        timer.mark("student")?;
        if !report_losses.total.is_finite() {
            return Err(ModelError::Input(format!(
                "the loss is not finite ({report_losses:?}); stopping before the update"
            )));
        }
        let mut grads = match comm {
            None => {
                let grads = losses.backward(&self.student.backbone)?;
                timer.mark("backward")?;
                grads
            }
            Some(comm) => self.averaged_backward(losses, comm, &mut timer)?,
        };
        // Norms are reported even when clipping is off (an infinite bound).
        let bound = if self.cfg.clip_grad > 0.0 {
            self.cfg.clip_grad
        } else {
            f64::INFINITY
        };
        let grad_norms = clip_per_module(
            &self.optimizer,
            &mut grads,
            &crate::optim::THREEDINO_CLIP_MODULES,
            bound,
        )?;
        if let Some(n) = grad_norms.iter().find(|n| !n.is_finite()) {
            return Err(ModelError::Input(format!(
                "a gradient norm is not finite ({n}); stopping before the update"
            )));
        }
        timer.mark("clip")?;
        self.optimizer.step(&grads, values.into())?;
        drop(grads);
        timer.mark("adamw")?;
        ema_update(&self.teacher_vars, &self.student_vars, values.momentum)?;
        timer.mark("ema")?;
        Ok(StepReport {
            losses: report_losses,
            grad_norms,
            n_masked,
            phases: timer.phases,
        })
    }

    /// The backward of `losses` with the gradients averaged over `comm`:
    /// the buckets start while the backward runs, and what is left of the
    /// all-reduce after it is the exposed communication. The first call
    /// records the order the backward finishes the gradients in; later ones
    /// bucket in rank 0's recorded order.
    pub(super) fn averaged_backward(
        &mut self,
        losses: SslLosses,
        comm: &dyn Collective,
        timer: &mut PhaseTimer,
    ) -> Result<GradStore> {
        let vars = self.trained_params();
        let sizes: Vec<usize> = vars.iter().map(|v| v.elem_count()).collect();
        let elem_bytes = self.gradient_wire.size_in_bytes();
        let plan = match &self.gradient_buckets {
            Some(plan) if plan.len() == vars.len() => plan.clone(),
            _ => {
                let reversed: Vec<usize> = (0..vars.len()).rev().collect();
                BucketPlan::new(
                    &reversed,
                    &sizes,
                    elem_bytes,
                    self.gradient_bucket_bytes,
                    false,
                )?
            }
        };
        let mut sync = GradientSync::new(&vars, &plan, comm, self.gradient_wire)?;
        if self.student_activations == Activations::Recompute {
            // The tapes reach the backbone after the loss's graph.
            let backbone = self.optimizer.vars_with_prefix("backbone.");
            sync.reached_later(backbone.iter().map(|v| v.id()));
        }
        let mut grads = losses.backward_synced(&self.student.backbone, Some(&mut sync))?;
        timer.mark("backward")?;
        let report = sync.finish(&mut grads)?;
        timer.mark("all_reduce")?;
        if !plan.is_observed() {
            self.gradient_buckets = Some(BucketPlan::agreed(
                &report.order,
                &sizes,
                elem_bytes,
                self.gradient_bucket_bytes,
                comm,
            )?);
        }
        self.last_gradient_sync = Some(report);
        Ok(grads)
    }

    /// The student's parameters in the optimiser's (sorted, every rank's)
    /// order: those whose gradients a data-parallel step averages.
    pub(super) fn trained_params(&self) -> Vec<&candle_core::Var> {
        self.optimizer.vars_with_prefix("")
    }

    fn tokens_per_global(&self, batch: &SslBatch) -> Result<usize> {
        let grid = self.student.backbone.grid(batch.globals)?;
        Ok(grid.iter().product())
    }

    /// The whole training state as named tensors: `student.*`, `teacher.*`,
    /// `optim.*` and the softmax centres. Restored by [`Self::load_state`].
    pub fn state(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for (prefix, vm) in [
            ("student.", &self.student_vars),
            ("teacher.", &self.teacher_vars),
        ] {
            for (name, var) in vm.data().lock().expect("VarMap lock").iter() {
                // A copy: `Var::set` writes in place, so a plain detach
                // would change with the next step.
                out.insert(format!("{prefix}{name}"), var.as_tensor().detach().copy()?);
            }
        }
        for (name, t) in self.optimizer.state_tensors()? {
            out.insert(format!("optim.{name}"), t);
        }
        for (name, t) in self.centering.tensors() {
            out.insert(format!("center.{name}"), t);
        }
        Ok(out)
    }

    /// Restores [`Self::state`]; every tensor must be present.
    pub fn load_state(&mut self, mut state: HashMap<String, Tensor>) -> Result<()> {
        let mut take = |key: &str| {
            state
                .remove(key)
                .ok_or_else(|| ModelError::Input(format!("training state has no {key}")))
        };
        for (prefix, vm) in [
            ("student.", &self.student_vars),
            ("teacher.", &self.teacher_vars),
        ] {
            for (name, var) in vm.data().lock().expect("VarMap lock").iter() {
                let t = take(&format!("{prefix}{name}"))?;
                if t.dims() != var.dims() {
                    return Err(ModelError::Input(format!(
                        "{prefix}{name} has shape {:?}, model {:?}",
                        t.dims(),
                        var.dims()
                    )));
                }
                var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
            }
        }
        self.centering
            .load(&mut |k: &str| take(&format!("center.{k}")))?;
        let optim: HashMap<String, Tensor> = state
            .into_iter()
            .filter_map(|(k, v)| k.strip_prefix("optim.").map(|n| (n.to_string(), v)))
            .collect();
        self.optimizer.load_state_tensors(optim)
    }
}

/// Copies every variable of `from` into the same-named variable of `to`.
fn copy_vars(from: &VarMap, to: &VarMap) -> Result<()> {
    let src = from.data().lock().expect("VarMap lock");
    for (name, var) in to.data().lock().expect("VarMap lock").iter() {
        let s = src
            .get(name)
            .ok_or_else(|| ModelError::Input(format!("no {name} to copy")))?;
        var.set(&s.as_tensor().detach().copy()?)?;
    }
    Ok(())
}
