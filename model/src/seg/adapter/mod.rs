//! 3DINO's ViT-Adapter + UNETR segmentation head (`ViTAdapterUNETRHead`,
//! spec §4.2), a 3-D port of ViT-Adapter:
//!
//! - [`deform_attn`]: the trilinear sampling custom op and 3-D multi-scale
//!   deformable attention;
//! - [`spm`]: the convolutional spatial prior module (½ … 1/16 pyramid);
//! - [`injector`]: pyramid → ViT tokens (deformable cross-attention);
//! - [`extractor`]: ViT tokens → pyramid, with the convolutional FFN;
//! - [`head`]: the whole head, which runs the ViT's blocks itself between
//!   injectors and extractors, then a UNETR-style decoder.
//!
//! Initialisation follows ViT-Adapter: linear layers trunc-normal(0.02)
//! with zero bias, adapter convolutions normal(0, √(2/fan_out)) with zero
//! bias, LayerNorm/BatchNorm 1 and 0, deformable attention as Deformable
//! DETR; the decoder's MONAI blocks keep PyTorch's default init.

pub mod deform_attn;
pub mod extractor;
pub mod head;
pub mod injector;
pub mod spm;

pub use deform_attn::{Levels, MsDeformAttn, MsDeformAttnConfig, deform_sample, reference_points};
pub use extractor::{ConvFfn, Extractor};
pub use head::{VitAdapterConfig, VitAdapterHead, frozen_backbone};
pub use injector::Injector;
pub use spm::SpatialPriorModule;

use candle_core::{D, Module, Tensor};
use candle_nn::{Init, VarBuilder};

use super::conv_transpose3d::ConvTranspose3d;
use super::conv3d::{Conv3d, Conv3dConfig};
use crate::linear::LINEAR_INIT;

/// LayerNorm epsilon of every adapter norm (ViT-Adapter's `eps=1e-6`).
pub(crate) const ADAPTER_LN_EPS: f64 = 1e-6;

/// `y = x Wᵀ + b` (PyTorch layout `(out, in)`) with a chosen init.
#[derive(Debug, Clone)]
pub(crate) struct Proj {
    weight: Tensor,
    bias: Tensor,
}

impl Proj {
    /// Trunc-normal(0.02) weight, zero bias.
    pub(crate) fn new_default(
        vb: VarBuilder,
        in_dim: usize,
        out_dim: usize,
    ) -> candle_core::Result<Self> {
        Self::new(vb, in_dim, out_dim, LINEAR_INIT, Init::Const(0.0))
    }

    pub(crate) fn new(
        vb: VarBuilder,
        in_dim: usize,
        out_dim: usize,
        w: Init,
        b: Init,
    ) -> candle_core::Result<Self> {
        Ok(Proj {
            weight: vb.get_with_hints((out_dim, in_dim), "weight", w)?,
            bias: vb.get_with_hints(out_dim, "bias", b)?,
        })
    }

    /// A layer whose bias starts at `bias` (when it is created rather than
    /// loaded).
    pub(crate) fn with_bias_values(
        vb: VarBuilder,
        (in_dim, out_dim): (usize, usize),
        w: Init,
        bias: &[f64],
    ) -> candle_core::Result<Self> {
        let fresh = !vb.contains_tensor("bias");
        let this = Self::new(vb.clone(), in_dim, out_dim, w, Init::Const(0.0))?;
        if fresh {
            // `Init` cannot carry a tensor: write the values into the new
            // variable's storage (shared with the VarMap's `Var`).
            let src = Tensor::from_slice(bias, out_dim, vb.device())?.to_dtype(vb.dtype())?;
            this.bias.slice_set(&src, 0, 0)?;
        }
        Ok(this)
    }
}

impl Module for Proj {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let in_dim = x.dim(D::Minus1)?;
        let rows = x.elem_count() / in_dim;
        let y = x
            .reshape((rows, in_dim))?
            .matmul(&self.weight.t()?)?
            .broadcast_add(&self.bias)?;
        let mut dims = x.dims().to_vec();
        dims.pop();
        dims.push(self.weight.dim(0)?);
        y.reshape(dims)
    }
}

/// ViT-Adapter's convolution init, normal(0, √(2/fan_out)) with
/// `fan_out = k³·out/groups`, zero bias.
fn conv_init(out_ch: usize, kernel: usize, groups: usize) -> Init {
    Init::Randn {
        mean: 0.0,
        stdev: (2.0 / (kernel.pow(3) * out_ch / groups) as f64).sqrt(),
    }
}

/// `Conv3d(in, out, k)` under `vb` with [`conv_init`] (the variables are
/// created first with that init; `Conv3d::new` then finds them).
pub(crate) fn adapter_conv(
    vb: VarBuilder,
    (in_ch, out_ch, kernel): (usize, usize, usize),
    bias: bool,
    cfg: Conv3dConfig,
) -> candle_core::Result<Conv3d> {
    if cfg.groups > 0 && in_ch % cfg.groups == 0 {
        let shape = (out_ch, in_ch / cfg.groups, kernel, kernel, kernel);
        vb.get_with_hints(shape, "weight", conv_init(out_ch, kernel, cfg.groups))?;
        if bias {
            vb.get_with_hints(out_ch, "bias", Init::Const(0.0))?;
        }
    }
    Conv3d::new(vb, in_ch, out_ch, kernel, bias, cfg)
}

/// ViT-Adapter's `up`: `ConvTranspose3d(E, E, 2, stride 2)` with bias,
/// [`conv_init`].
pub(crate) fn adapter_up(vb: VarBuilder, dim: usize) -> candle_core::Result<ConvTranspose3d> {
    vb.get_with_hints((dim, dim, 2, 2, 2), "weight", conv_init(dim, 2, 1))?;
    vb.get_with_hints(dim, "bias", Init::Const(0.0))?;
    ConvTranspose3d::new(vb, dim, dim, 2, true)
}

/// `(B, F, X, Y, Z)` volume to `(B, X·Y·Z, F)` tokens (last axis fastest).
pub(crate) fn volume_to_tokens(v: &Tensor) -> candle_core::Result<Tensor> {
    let (b, f, x, y, z) = v.dims5()?;
    v.reshape((b, f, x * y * z))?.transpose(1, 2)?.contiguous()
}

/// The average over the C channels of `(B·C, N, E)` tokens: `(B, N, E)`.
pub(crate) fn channel_mean(t: &Tensor, c: usize) -> candle_core::Result<Tensor> {
    let (bc, n, e) = t.dims3()?;
    t.reshape((bc / c, c, n, e))?.mean(1)
}
