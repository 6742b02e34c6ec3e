//! Segmentation heads for finetuning (3DINO §4.2): MONAI-style 3-D blocks
//! (convolutions from candle's conv2d, ×2 transposed convolutions as a
//! matmul, instance norm, LeakyReLU), the UNETR head and the losses.
//! Everything is composed from differentiable candle ops, so heads train
//! with the usual `backward()`.

pub mod blocks;
pub mod conv3d;
mod im2col;
pub mod loss;
pub mod norm_act;
pub mod unetr;

#[cfg(test)]
mod tests;

pub use blocks::{UnetResBlock, UnetrPrUpBlock, UnetrUpBlock};
pub use conv3d::{Conv3d, ConvTranspose3dX2, conv3d_same};
pub use loss::{brats_regions, dice_ce, one_hot, sigmoid_dice};
pub use norm_act::{instance_norm, leaky_relu};
pub use unetr::{UnetrConfig, UnetrHead, unetr_levels, vit_levels};
