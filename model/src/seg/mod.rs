//! Segmentation heads for finetuning (3DINO §4.2), all composed from
//! differentiable candle ops so heads train with the usual `backward()`:
//!
//! - layers: [`Conv3d`] (stride, padding, groups; from candle's conv2d over
//!   depth slabs), [`ConvTranspose3d`] (kernel = stride, a matmul),
//!   [`instance_norm()`], [`BatchNorm3d`], [`leaky_relu`], [`gelu`],
//!   [`upsample_trilinear`] (`align_corners=False`);
//! - MONAI's UNETR blocks: [`UnetResBlock`], [`UnetrPrUpBlock`],
//!   [`UnetrUpBlock`], [`UnetOutBlock`];
//! - heads: [`UnetrHead`] and [`LinearDecoderHead`], fed by [`vit_levels`],
//!   and [`VitAdapterHead`] (ViT-Adapter + UNETR), which runs the ViT itself;
//! - losses: [`dice_ce`], [`sigmoid_dice`], BraTS regions.
//!
//! Layout `(B, C, D, H, W)` and PyTorch weight layouts throughout, with
//! MONAI's parameter names where MONAI defines the module.

pub mod activation;
pub mod adapter;
pub mod batch_norm;
pub mod conv3d;
mod conv3d_cpu;
pub mod conv_transpose3d;
pub mod instance_norm;
pub mod linear_head;
pub mod loss;
pub mod out_block;
pub mod pr_up_block;
pub mod res_block;
pub mod tokens;
pub mod unetr;
pub mod up_block;
pub mod upsample;

// Also used by the fused ops' tests.
#[cfg(test)]
pub(crate) mod test_util;
#[cfg(test)]
mod timing;

pub use activation::{gelu, leaky_relu};
pub use adapter::{VitAdapterConfig, VitAdapterHead};
pub use batch_norm::{BatchNorm3d, is_buffer};
pub use conv_transpose3d::ConvTranspose3d;
pub use conv3d::{Conv3d, Conv3dConfig, conv3d};
pub use instance_norm::instance_norm;
pub use linear_head::{LinearDecoderHead, LinearHeadConfig};
pub use loss::{brats_regions, brats_regions_tensor, dice_ce, one_hot, sigmoid_dice};
pub use out_block::UnetOutBlock;
pub use pr_up_block::UnetrPrUpBlock;
pub use res_block::UnetResBlock;
pub use tokens::{last_levels, unetr_levels, vit_levels, vit_levels_frozen};
pub use unetr::{UnetrConfig, UnetrHead};
pub use up_block::UnetrUpBlock;
pub use upsample::upsample_trilinear;
