//! MONAI's `UnetOutBlock`: a 1³ convolution with bias to the class logits.
//! Names: `conv.conv.weight`, `conv.conv.bias`.

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use super::conv3d::{Conv3d, Conv3dConfig};

/// `UnetOutBlock(in, classes)`.
#[derive(Debug, Clone)]
pub struct UnetOutBlock {
    conv: Conv3d,
}

impl UnetOutBlock {
    /// Creates (or loads) the block under `vb`.
    ///
    /// # Errors
    /// A failed variable lookup.
    pub fn new(vb: VarBuilder, in_ch: usize, classes: usize) -> candle_core::Result<Self> {
        Ok(UnetOutBlock {
            conv: Conv3d::new(
                vb.pp("conv").pp("conv"),
                in_ch,
                classes,
                1,
                true,
                Conv3dConfig::default(),
            )?,
        })
    }
}

impl Module for UnetOutBlock {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.conv.forward(x)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Module};
    use candle_nn::{VarBuilder, VarMap};

    use super::*;
    use crate::seg::test_util::{assert_close, f64s, tensor};

    #[test]
    fn is_a_per_voxel_affine_map() {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F64, &Device::Cpu);
        let out = UnetOutBlock::new(vb, 3, 2).unwrap();
        let x = tensor(&[1, 3, 2, 3, 4], 16, DType::F64);
        let got = f64s(&out.forward(&x).unwrap());
        let data = vm.data().lock().unwrap();
        let w = f64s(data["conv.conv.weight"].as_tensor());
        let b = f64s(data["conv.conv.bias"].as_tensor());
        let xv = f64s(&x);
        let want: Vec<f64> = (0..2 * 24)
            .map(|i| {
                let (o, v) = (i / 24, i % 24);
                b[o] + (0..3).map(|c| w[o * 3 + c] * xv[c * 24 + v]).sum::<f64>()
            })
            .collect();
        assert_close(&got, &want, 1e-12, "out block");
    }
}
