//! MONAI's `UnetrPrUpBlock` (conv block with residual units, as UNETR
//! builds it): a ×2 transposed conv, then `n` × (×2 transposed conv →
//! [`UnetResBlock`]); tokens on grid g become a volume at g·2^(n+1).
//! Names: `transp_conv_init.conv.weight`, `blocks.{i}.0.conv.weight`,
//! `blocks.{i}.1.conv1.conv.weight`, ...

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use super::conv_transpose3d::ConvTranspose3d;
use super::res_block::UnetResBlock;

/// `UnetrPrUpBlock(in, out, num_layer n, upsample 2, res_block)`.
#[derive(Debug, Clone)]
pub struct UnetrPrUpBlock {
    init: ConvTranspose3d,
    blocks: Vec<(ConvTranspose3d, UnetResBlock)>,
}

impl UnetrPrUpBlock {
    /// Creates (or loads) the block under `vb`.
    ///
    /// # Errors
    /// A failed variable lookup.
    pub fn new(vb: VarBuilder, in_ch: usize, out_ch: usize, n: usize) -> candle_core::Result<Self> {
        let init = ConvTranspose3d::x2(vb.pp("transp_conv_init").pp("conv"), in_ch, out_ch)?;
        let blocks = (0..n)
            .map(|i| {
                let vb = vb.pp("blocks").pp(i);
                Ok((
                    ConvTranspose3d::x2(vb.pp("0").pp("conv"), out_ch, out_ch)?,
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

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Module};
    use candle_nn::{VarBuilder, VarMap};

    use super::*;
    use crate::seg::test_util::tensor;

    #[test]
    fn upsamples_by_two_to_the_n_plus_one() {
        let x = tensor(&[2, 6, 2, 2, 3], 13, DType::F32);
        for n in 0..3 {
            let vm = VarMap::new();
            let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
            let block = UnetrPrUpBlock::new(vb, 6, 4, n).unwrap();
            let f = 1 << (n + 1);
            assert_eq!(
                block.forward(&x).unwrap().dims(),
                &[2, 4, 2 * f, 2 * f, 3 * f]
            );
            let data = vm.data().lock().unwrap();
            assert!(data.contains_key("transp_conv_init.conv.weight"));
            assert_eq!(data.len(), 1 + 3 * n, "{n}");
            if n > 0 {
                assert!(data.contains_key("blocks.0.0.conv.weight"));
                assert!(data.contains_key("blocks.0.1.conv2.conv.weight"));
            }
        }
    }
}
