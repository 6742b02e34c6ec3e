//! MONAI's UNETR building blocks (reimplemented from their documented
//! structure; parameter names follow MONAI's modules so state dicts map).

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use super::conv3d::{Conv3d, ConvTranspose3dX2};
use super::norm_act::{instance_norm, leaky_relu};

/// `UnetResBlock`: conv3³ → IN → LeakyReLU → conv3³ → IN, plus a residual
/// (1³ conv + IN when the channel count changes), then LeakyReLU.
#[derive(Debug, Clone)]
pub struct UnetResBlock {
    conv1: Conv3d,
    conv2: Conv3d,
    conv3: Option<Conv3d>,
}

impl UnetResBlock {
    /// Under `vb`: `conv1.conv.weight`, `conv2.conv.weight` and, when
    /// `in_ch != out_ch`, `conv3.conv.weight`.
    ///
    /// # Errors
    /// A failed variable lookup.
    pub fn new(vb: VarBuilder, in_ch: usize, out_ch: usize) -> candle_core::Result<Self> {
        Ok(UnetResBlock {
            conv1: Conv3d::new(vb.pp("conv1").pp("conv"), in_ch, out_ch, 3, false)?,
            conv2: Conv3d::new(vb.pp("conv2").pp("conv"), out_ch, out_ch, 3, false)?,
            conv3: if in_ch != out_ch {
                Some(Conv3d::new(
                    vb.pp("conv3").pp("conv"),
                    in_ch,
                    out_ch,
                    1,
                    false,
                )?)
            } else {
                None
            },
        })
    }
}

impl Module for UnetResBlock {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = leaky_relu(&instance_norm(&self.conv1.forward(x)?)?)?;
        let y = instance_norm(&self.conv2.forward(&y)?)?;
        let residual = match &self.conv3 {
            Some(c) => instance_norm(&c.forward(x)?)?,
            None => x.clone(),
        };
        leaky_relu(&(y + residual)?)
    }
}

/// `UnetrPrUpBlock`: a ×2 transposed conv, then `n` × (×2 transposed conv →
/// UnetResBlock): tokens at grid g become a volume at g·2^(n+1).
#[derive(Debug, Clone)]
pub struct UnetrPrUpBlock {
    init: ConvTranspose3dX2,
    blocks: Vec<(ConvTranspose3dX2, UnetResBlock)>,
}

impl UnetrPrUpBlock {
    /// Under `vb`: `transp_conv_init.conv.weight`, `blocks.{i}.0.conv.weight`,
    /// `blocks.{i}.1.*`.
    ///
    /// # Errors
    /// A failed variable lookup.
    pub fn new(vb: VarBuilder, in_ch: usize, out_ch: usize, n: usize) -> candle_core::Result<Self> {
        let init = ConvTranspose3dX2::new(vb.pp("transp_conv_init").pp("conv"), in_ch, out_ch)?;
        let blocks = (0..n)
            .map(|i| {
                let vb = vb.pp("blocks").pp(i);
                Ok((
                    ConvTranspose3dX2::new(vb.pp("0").pp("conv"), out_ch, out_ch)?,
                    UnetResBlock::new(vb.pp("1"), out_ch, out_ch)?,
                ))
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(UnetrPrUpBlock { init, blocks })
    }
}

impl Module for UnetrPrUpBlock {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut y = self.init.forward(x)?;
        for (up, res) in &self.blocks {
            y = res.forward(&up.forward(&y)?)?;
        }
        Ok(y)
    }
}

/// `UnetrUpBlock`: ×2 transposed conv, concatenate the skip, UnetResBlock.
#[derive(Debug, Clone)]
pub struct UnetrUpBlock {
    up: ConvTranspose3dX2,
    block: UnetResBlock,
}

impl UnetrUpBlock {
    /// Under `vb`: `transp_conv.conv.weight`, `conv_block.*`.
    ///
    /// # Errors
    /// A failed variable lookup.
    pub fn new(vb: VarBuilder, in_ch: usize, out_ch: usize) -> candle_core::Result<Self> {
        Ok(UnetrUpBlock {
            up: ConvTranspose3dX2::new(vb.pp("transp_conv").pp("conv"), in_ch, out_ch)?,
            block: UnetResBlock::new(vb.pp("conv_block"), 2 * out_ch, out_ch)?,
        })
    }

    /// `x` at half the skip's size.
    ///
    /// # Errors
    /// Shape mismatches.
    pub fn forward(&self, x: &Tensor, skip: &Tensor) -> candle_core::Result<Tensor> {
        let up = self.up.forward(x)?;
        self.block.forward(&Tensor::cat(&[&up, skip], 1)?)
    }
}
