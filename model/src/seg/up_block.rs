//! MONAI's `UnetrUpBlock` (residual variant): ×2 transposed conv (no bias),
//! concatenate the skip on channels (upsampled first), then
//! [`UnetResBlock`]`(2·out → out)`. Names: `transp_conv.conv.weight`,
//! `conv_block.conv1.conv.weight`, ...

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use super::conv_transpose3d::ConvTranspose3d;
use super::res_block::UnetResBlock;

/// `UnetrUpBlock(in, out, kernel 3, upsample 2, res_block)`.
#[derive(Debug, Clone)]
pub struct UnetrUpBlock {
    up: ConvTranspose3d,
    block: UnetResBlock,
}

impl UnetrUpBlock {
    /// Creates (or loads) the block under `vb`.
    ///
    /// # Errors
    /// A failed variable lookup.
    pub fn new(vb: VarBuilder, in_ch: usize, out_ch: usize) -> candle_core::Result<Self> {
        Ok(UnetrUpBlock {
            up: ConvTranspose3d::x2(vb.pp("transp_conv").pp("conv"), in_ch, out_ch)?,
            block: UnetResBlock::new(vb.pp("conv_block"), 2 * out_ch, out_ch)?,
        })
    }

    /// `x (B, in, D, H, W)` and `skip (B, out, 2D, 2H, 2W)` to
    /// `(B, out, 2D, 2H, 2W)`.
    ///
    /// # Errors
    /// Shape mismatches.
    pub fn forward(&self, x: &Tensor, skip: &Tensor) -> candle_core::Result<Tensor> {
        let up = self.up.forward(x)?;
        self.block.forward(&Tensor::cat(&[&up, skip], 1)?)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};
    use candle_nn::{VarBuilder, VarMap};

    use super::*;
    use crate::seg::test_util::tensor;

    #[test]
    fn doubles_and_merges_the_skip() {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let block = UnetrUpBlock::new(vb, 8, 4).unwrap();
        let x = tensor(&[2, 8, 2, 3, 2], 14, DType::F32);
        let skip = tensor(&[2, 4, 4, 6, 4], 15, DType::F32);
        assert_eq!(block.forward(&x, &skip).unwrap().dims(), &[2, 4, 4, 6, 4]);
        let bad = tensor(&[2, 4, 4, 6, 6], 15, DType::F32);
        assert!(block.forward(&x, &bad).is_err());
        let data = vm.data().lock().unwrap();
        for n in [
            "transp_conv.conv.weight",
            "conv_block.conv1.conv.weight",
            "conv_block.conv2.conv.weight",
            "conv_block.conv3.conv.weight",
        ] {
            assert!(data.contains_key(n), "{n}");
        }
        assert_eq!(
            data["conv_block.conv1.conv.weight"].dims(),
            &[4, 8, 3, 3, 3]
        );
    }
}
