//! The summed SSL loss of one batch (spec §2.5).

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor};

use super::model::{Centering, Networks};
use crate::dist::{Collective, GradientSync, distributed};
use crate::loss::{
    SINKHORN_ITERATIONS, STUDENT_TEMP, SoftmaxCentering, dino_loss, ibot_loss, koleo_loss,
    sinkhorn_knopp, sinkhorn_knopp_all, sinkhorn_knopp_all_on,
};
use crate::{Activations, BlockTape, ForwardOptions, ModelError, Result, ViT3d};

/// One multi-crop batch as the model sees it.
#[derive(Debug, Clone, Copy)]
pub struct SslBatch<'a> {
    /// Global crops `(G·B, C, S, S, S)`, crop-major.
    pub globals: &'a Tensor,
    /// Local crops `(L·B, C, s, s, s)`, crop-major; `None` without locals.
    pub locals: Option<&'a Tensor>,
    /// Global crops per sample G (3DINO: 2).
    pub n_global_crops: usize,
    /// iBOT masks of the global crops, `(G·B) × N` row-major flags.
    pub masks: &'a [bool],
}

/// The loss terms as tensors (the total backpropagates to the student).
#[derive(Debug, Clone)]
pub struct SslLosses {
    /// Student local views against the teacher's global views, / pairs.
    pub dino_local: Tensor,
    /// Student global views against the other teacher view, / pairs.
    pub dino_global: Tensor,
    /// KoLeo, already weighted.
    pub koleo: Tensor,
    /// iBOT, already weighted.
    pub ibot: Tensor,
    /// Their sum.
    pub total: Tensor,
    /// Masked tokens in the batch.
    pub n_masked: usize,
    /// The student passes' tapes under activation checkpointing.
    tapes: Vec<BlockTape>,
}

/// The loss terms as numbers, for logs.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LossValues {
    /// See [`SslLosses::dino_local`].
    pub dino_local: f64,
    /// See [`SslLosses::dino_global`].
    pub dino_global: f64,
    /// See [`SslLosses::koleo`].
    pub koleo: f64,
    /// See [`SslLosses::ibot`].
    pub ibot: f64,
    /// Their sum.
    pub total: f64,
}

impl SslLosses {
    /// Reads the values out.
    pub fn values(&self) -> Result<LossValues> {
        let v = |t: &Tensor| -> Result<f64> { Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?) };
        Ok(LossValues {
            dino_local: v(&self.dino_local)?,
            dino_global: v(&self.dino_global)?,
            koleo: v(&self.koleo)?,
            ibot: v(&self.ibot)?,
            total: v(&self.total)?,
        })
    }

    /// The gradients of the total with respect to every student parameter.
    /// Under activation checkpointing the blocks are recomputed from their
    /// tapes once the loss's own graph (heads, logits) is freed.
    pub fn backward(self, backbone: &ViT3d) -> Result<GradStore> {
        self.backward_synced(backbone, None)
    }

    /// [`Self::backward`], telling `sync` each student parameter's gradient
    /// as soon as it is final, so its bucket's all-reduce starts while the
    /// backward goes on: from candle's backward as it reaches each
    /// parameter, and after each recomputed block under checkpointing
    /// (then `sync` must know the backbone's parameters as
    /// [`GradientSync::reached_later`]).
    /// The gradients are those of [`Self::backward`]; `sync` still has to
    /// [`GradientSync::finish`].
    pub fn backward_synced(
        self,
        backbone: &ViT3d,
        mut sync: Option<&mut GradientSync<'_>>,
    ) -> Result<GradStore> {
        let Self {
            dino_local,
            dino_global,
            koleo,
            ibot,
            total,
            tapes,
            ..
        } = self;
        if let Some(sync) = sync.as_deref_mut() {
            // A parameter outside the loss's graph (and not behind the
            // tapes) gets no gradient on this rank: settled now, its bucket
            // need not wait to the end (the walk over the graph's nodes that
            // candle's backward starts with, once more; no tensor work).
            let graph = total
                .sorted_nodes()
                .iter()
                .filter(|n| n.is_variable())
                .map(|n| n.id())
                .collect();
            sync.settle_outside(&graph)?;
        }
        let mut failed = None;
        let seed = total.ones_like()?;
        let grads = total.backward_from_with(seed, &mut |leaf, grads| {
            let Some(sync) = sync.as_deref_mut() else {
                return Ok(());
            };
            sync.on_final(leaf, grads.get(leaf)).map_err(|e| {
                let stop = candle_core::Error::Msg(format!("gradient all-reduce: {e}"));
                failed = Some(e);
                stop
            })
        });
        if let Some(e) = failed {
            return Err(e);
        }
        let mut grads = grads?;
        drop((dino_local, dino_global, koleo, ibot, total));
        if !tapes.is_empty() {
            backbone.backward_tapes(tapes, &mut grads, &mut |grads| match sync.as_deref_mut() {
                Some(sync) => sync.settle_stored(grads),
                None => Ok(()),
            })?;
        }
        Ok(grads)
    }
}

/// Teacher targets: centred probabilities of the global \[CLS\] and of the
/// masked patch tokens.
pub(super) struct Targets {
    pub dino: Tensor,
    pub ibot: Option<Tensor>,
}

/// Loss weights.
pub(super) struct LossSetup {
    pub dino_weight: f64,
    pub ibot_weight: f64,
    pub koleo_weight: f64,
    /// What the student's passes keep for the backward.
    pub activations: Activations,
}

/// The masked-token gather: flat indices into `(G·B·N, E)` and weights.
pub(super) struct MaskGather {
    pub indices: Tensor,
    pub weights: Tensor,
    pub mask_tensor: Tensor,
    pub count: usize,
}

impl MaskGather {
    pub(super) fn new(batch: &SslBatch, n_tokens: usize) -> Result<Self> {
        let dev = batch.globals.device();
        let images = batch.globals.dim(0)?;
        if batch.masks.len() != images * n_tokens {
            return Err(ModelError::Input(format!(
                "{} mask flags for {images} global crops of {n_tokens} tokens",
                batch.masks.len()
            )));
        }
        // No masked token: the empty selection stays on the CPU (CUDA takes
        // no zero-size buffer; nothing reads it when the count is 0).
        let on = if batch.masks.contains(&true) {
            dev
        } else {
            &candle_core::Device::Cpu
        };
        let (indices, weights) =
            crate::loss::masked_indices_and_weights(batch.masks, n_tokens, on)?;
        let flags: Vec<u8> = batch.masks.iter().map(|&m| m as u8).collect();
        Ok(Self {
            count: indices.dim(0)?,
            indices,
            weights,
            mask_tensor: Tensor::from_vec(flags, (images, n_tokens), dev)?,
        })
    }
}

/// Teacher forward (no gradients) and centring; with `comm` of several
/// ranks, centred over all ranks' rows (KoLeo and the losses stay per rank).
pub(super) fn teacher_targets(
    teacher: &Networks,
    batch: &SslBatch,
    gather: &MaskGather,
    temp: f64,
    centering: &mut CenteringState,
    comm: Option<&dyn Collective>,
) -> Result<Targets> {
    if let Some(comm) = distributed(comm) {
        return teacher_targets_all(teacher, batch, gather, temp, centering, comm);
    }
    // No gradient: each block's graph is dropped at once (`infer`).
    let out = teacher.backbone.infer(batch.globals)?;
    let cls = out.cls_norm.detach();
    let dino_logits = teacher.dino_head.forward(&cls)?.detach();
    let ibot_logits = if gather.count > 0 {
        let e = out.patch_norm.dim(2)?;
        let tokens = out
            .patch_norm
            .detach()
            .reshape(((), e))?
            .index_select(&gather.indices, 0)?;
        Some(teacher.ibot_head.forward(&tokens)?.detach())
    } else {
        None
    };
    let dino = centering.dino_probs(&dino_logits, temp)?;
    let ibot = match &ibot_logits {
        Some(l) => Some(centering.ibot_probs(l, temp)?),
        None => None,
    };
    centering.update(&dino_logits, ibot_logits.as_ref())?;
    Ok(Targets { dino, ibot })
}

/// [`teacher_targets`] over several ranks. A rank without masked tokens
/// still takes part in the iBOT centring's collectives, with no rows.
fn teacher_targets_all(
    teacher: &Networks,
    batch: &SslBatch,
    gather: &MaskGather,
    temp: f64,
    centering: &mut CenteringState,
    comm: &dyn Collective,
) -> Result<Targets> {
    // No gradient: each block's graph is dropped at once (`infer`).
    let out = teacher.backbone.infer(batch.globals)?;
    let dino_logits = teacher.dino_head.forward(&out.cls_norm.detach())?.detach();
    let ibot_logits = if gather.count > 0 {
        let e = out.patch_norm.dim(2)?;
        let tokens = out
            .patch_norm
            .detach()
            .reshape(((), e))?
            .index_select(&gather.indices, 0)?;
        teacher.ibot_head.forward(&tokens)?.detach()
    } else {
        // On the CPU: a GPU takes no zero-size buffer. The centring still
        // takes part in the model device's collectives.
        let k = teacher.ibot_head.config().n_prototypes;
        Tensor::zeros((0, k), dino_logits.dtype(), &candle_core::Device::Cpu)?
    };
    let dino = centering.dino_probs_all(&dino_logits, temp, comm)?;
    let ibot = centering.ibot_probs_all(&ibot_logits, dino_logits.device(), temp, comm)?;
    centering.update_all(&dino_logits, &ibot_logits, comm)?;
    Ok(Targets {
        dino,
        ibot: (gather.count > 0).then_some(ibot),
    })
}

/// Student forward and the loss terms against `targets`.
pub(super) fn student_losses(
    student: &Networks,
    batch: &SslBatch,
    gather: &MaskGather,
    targets: &Targets,
    setup: &LossSetup,
    drop_path_seed: Option<u64>,
) -> Result<SslLosses> {
    let mut g = student.backbone.forward_with(
        batch.globals,
        &ForwardOptions {
            masks: Some(&gather.mask_tensor),
            drop_path_seed,
            activations: setup.activations,
            ..Default::default()
        },
    )?;
    let mut tapes: Vec<BlockTape> = g.tape.take().into_iter().collect();
    let s_global = student.dino_head.forward(&g.cls_norm)?;
    let s_local = match batch.locals {
        Some(l) => {
            let mut out = student.backbone.forward_with(
                l,
                &ForwardOptions {
                    // A different stream for the locals' drop path.
                    drop_path_seed: drop_path_seed.map(|s| s ^ 0x5EED_10CA_1000_0001),
                    activations: setup.activations,
                    ..Default::default()
                },
            )?;
            tapes.extend(out.tape.take());
            Some(student.dino_head.forward(&out.cls_norm)?)
        }
        None => None,
    };
    let dino = dino_loss(
        &s_global,
        s_local.as_ref(),
        &targets.dino,
        batch.n_global_crops,
        STUDENT_TEMP,
    )?;
    let images = batch.globals.dim(0)?;
    let b = images / batch.n_global_crops;
    // KoLeo per global-crop chunk of B vectors (needs two per chunk).
    let koleo = if b >= 2 {
        let mut sum = koleo_loss(&g.cls_norm.narrow(0, 0, b)?)?;
        for c in 1..batch.n_global_crops {
            sum = (sum + koleo_loss(&g.cls_norm.narrow(0, c * b, b)?)?)?;
        }
        (sum * setup.koleo_weight)?
    } else {
        g.cls_norm.zeros_like()?.sum_all()?
    };
    let ibot = match &targets.ibot {
        Some(t) => {
            let e = g.patch_norm.dim(2)?;
            let tokens = g
                .patch_norm
                .reshape(((), e))?
                .index_select(&gather.indices, 0)?;
            let s = student.ibot_head.forward(&tokens)?;
            (ibot_loss(&s, t, &gather.weights, images, STUDENT_TEMP)? * setup.ibot_weight)?
        }
        None => g.cls_norm.zeros_like()?.sum_all()?,
    };
    let dino_local = (dino.local * setup.dino_weight)?;
    let dino_global = (dino.global * setup.dino_weight)?;
    let total = (((&dino_local + &dino_global)? + &koleo)? + &ibot)?;
    Ok(SslLosses {
        dino_local,
        dino_global,
        koleo,
        ibot,
        total,
        n_masked: gather.count,
        tapes,
    })
}

/// The centring state of both heads.
#[derive(Debug, Clone)]
pub(super) enum CenteringState {
    Sinkhorn,
    Softmax {
        dino: SoftmaxCentering,
        ibot: SoftmaxCentering,
    },
}

impl CenteringState {
    pub(super) fn new(
        mode: &Centering,
        k_dino: usize,
        k_ibot: usize,
        dev: &candle_core::Device,
    ) -> Result<Self> {
        Ok(match mode {
            Centering::SinkhornKnopp => Self::Sinkhorn,
            Centering::Softmax { momentum } => Self::Softmax {
                dino: SoftmaxCentering::new(k_dino, *momentum, dev)?,
                ibot: SoftmaxCentering::new(k_ibot, *momentum, dev)?,
            },
        })
    }

    fn dino_probs(&self, logits: &Tensor, temp: f64) -> Result<Tensor> {
        match self {
            Self::Sinkhorn => sinkhorn_knopp(logits, temp, SINKHORN_ITERATIONS),
            Self::Softmax { dino, .. } => dino.probs(logits, temp),
        }
    }

    fn ibot_probs(&self, logits: &Tensor, temp: f64) -> Result<Tensor> {
        match self {
            Self::Sinkhorn => sinkhorn_knopp(logits, temp, SINKHORN_ITERATIONS),
            Self::Softmax { ibot, .. } => ibot.probs(logits, temp),
        }
    }

    fn dino_probs_all(&self, logits: &Tensor, temp: f64, comm: &dyn Collective) -> Result<Tensor> {
        match self {
            Self::Sinkhorn => sinkhorn_knopp_all(logits, temp, SINKHORN_ITERATIONS, comm),
            Self::Softmax { dino, .. } => dino.probs(logits, temp),
        }
    }

    /// `compute`: the model's device (`logits` may be an empty placeholder
    /// elsewhere).
    fn ibot_probs_all(
        &self,
        logits: &Tensor,
        compute: &candle_core::Device,
        temp: f64,
        comm: &dyn Collective,
    ) -> Result<Tensor> {
        match self {
            Self::Sinkhorn => {
                sinkhorn_knopp_all_on(logits, compute, temp, SINKHORN_ITERATIONS, comm)
            }
            // No rows here (candle cannot reduce over none); nothing to share.
            Self::Softmax { .. } if logits.dim(0)? == 0 => Ok(logits.clone()),
            Self::Softmax { ibot, .. } => ibot.probs(logits, temp),
        }
    }

    /// The centres' update from all ranks' rows (`ibot_logits` may be empty).
    fn update_all(
        &mut self,
        dino_logits: &Tensor,
        ibot_logits: &Tensor,
        comm: &dyn Collective,
    ) -> Result<()> {
        if let Self::Softmax { dino, ibot } = self {
            dino.update_all(dino_logits, comm)?;
            ibot.update_all(ibot_logits, comm)?;
        }
        Ok(())
    }

    fn update(&mut self, dino_logits: &Tensor, ibot_logits: Option<&Tensor>) -> Result<()> {
        if let Self::Softmax { dino, ibot } = self {
            dino.update(dino_logits)?;
            if let Some(l) = ibot_logits {
                ibot.update(l)?;
            }
        }
        Ok(())
    }

    /// Centres as named tensors (none for Sinkhorn-Knopp).
    pub(super) fn tensors(&self) -> Vec<(String, Tensor)> {
        match self {
            Self::Sinkhorn => Vec::new(),
            Self::Softmax { dino, ibot } => vec![
                ("dino_center".into(), dino.center().clone()),
                ("ibot_center".into(), ibot.center().clone()),
            ],
        }
    }

    /// Restores the centres written by [`Self::tensors`].
    pub(super) fn load(&mut self, get: &mut dyn FnMut(&str) -> Result<Tensor>) -> Result<()> {
        if let Self::Softmax { dino, ibot } = self {
            dino.set_center(get("dino_center")?)?;
            ibot.set_center(get("ibot_center")?)?;
        }
        Ok(())
    }
}
