//! dino3d's learning half: 3D ViT, DINO/iBOT heads and 3DINO's losses in candle.
//!
//! Everything is device-generic (`&candle_core::Device`) and runs in f32 by
//! default; the dtype comes from the `VarBuilder`. Parameter names follow the
//! PyTorch state dicts of DINOv2/3DINO (`blocks.{i}.attn.qkv.weight`,
//! `last_layer.weight_g`, ...) so checkpoints can be mapped by name.
//!
//! candle caveat: `candle_nn::LayerNorm` and `ops::softmax_last_dim` cut the
//! autograd graph, so this crate uses its own fused CPU LayerNorm, softmax and
//! GELU with hand-written backward passes (`fused`), and candle's composed,
//! differentiable `ops::layer_norm_slow` and `ops::softmax`/`log_softmax` on
//! other devices and in the losses.
//!
//! With the `cuda` feature, the `cuda` module adds fused GPU kernels (teacher EMA,
//! Sinkhorn-Knopp + cross-entropy, KoLeo) built with cudarc and NVRTC, which
//! need no CUDA toolkit to build; [`kernels_ref`] holds their CPU references
//! in every build.
//!
//! For data-parallel training, [`dist`] has the [`dist::Collective`] trait
//! the losses and [`ssl::SslModel::step_with`] reduce through (Sinkhorn-Knopp
//! sums, the centre, the gradients), with in-process ranks for tests; the
//! NCCL implementation is `cuda::NcclCollective`.
//!
//! For finetuning, [`seg`] has the 3-D segmentation layers (convolutions as CPU
//! custom ops with their own backward, norms, upsampling), MONAI's UNETR
//! blocks, the UNETR and linear decoder heads and the Dice losses, and
//! [`infer`] the sliding-window inference, Dice and HD95.

mod attention;
#[cfg(test)]
mod backprop_tests;
mod block;
pub mod checkpoint;
#[cfg(any(feature = "cuda", feature = "nvrtc"))]
pub mod cuda;
pub mod dist;
mod drop_path;
mod error;
mod fused;
mod head;
pub mod infer;
pub mod init;
pub mod kernels_ref;
mod linear;
pub mod loss;
mod mlp;
mod norm;
pub mod optim;
mod patch_embed;
pub mod pos_embed;
pub mod precision;
mod recompute;
pub mod schedule;
pub mod seg;
pub mod ssl;
pub mod upload;
mod vit3d;

pub use attention::{AttentionKernel, AttentionKernelGuard, use_attention_kernel};
/// The candle version this crate is built on, for callers that build inputs.
pub use candle_core;
/// The candle-nn version this crate is built on (`VarMap`, `VarBuilder`).
pub use candle_nn;
pub use error::{ModelError, Result};
pub use head::{DinoHead, DinoHeadConfig};
pub use vit3d::{
    Activations, AttentionCapture, BlockTape, DropPathMode, ForwardOptions, ViT3d, ViT3dConfig,
    ViT3dOutput,
};
