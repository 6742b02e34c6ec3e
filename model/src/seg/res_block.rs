//! MONAI's `UnetResBlock` (reimplemented from its documented structure):
//! conv k³ (no bias) → InstanceNorm → LeakyReLU(0.01) → conv k³ (stride 1)
//! → InstanceNorm, plus a residual that is projected (1³ conv, no bias →
//! InstanceNorm) when the channel count or the stride changes, then
//! LeakyReLU. Parameter names as MONAI's: `conv1.conv.weight`,
//! `conv2.conv.weight`, `conv3.conv.weight` (the norms have none).

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use super::activation::leaky_relu;
use super::conv3d::{Conv3d, Conv3dConfig};
use super::instance_norm::instance_norm;

/// `UnetResBlock(in, out, kernel 3, stride s, norm instance)`.
#[derive(Debug, Clone)]
pub struct UnetResBlock {
    conv1: Conv3d,
    conv2: Conv3d,
    conv3: Option<Conv3d>,
}

impl UnetResBlock {
    /// Kernel 3, stride 1 (as every block of UNETR).
    ///
    /// # Errors
    /// A failed variable lookup.
    pub fn new(vb: VarBuilder, in_ch: usize, out_ch: usize) -> candle_core::Result<Self> {
        Self::with_stride(vb, in_ch, out_ch, 1)
    }

    /// Kernel 3 with padding 1 and stride `stride` on the first conv and
    /// the residual projection.
    ///
    /// # Errors
    /// A zero stride; a failed variable lookup.
    pub fn with_stride(
        vb: VarBuilder,
        in_ch: usize,
        out_ch: usize,
        stride: usize,
    ) -> candle_core::Result<Self> {
        let strided = Conv3dConfig {
            stride,
            padding: 1,
            groups: 1,
        };
        Ok(UnetResBlock {
            conv1: Conv3d::new(vb.pp("conv1").pp("conv"), in_ch, out_ch, 3, false, strided)?,
            conv2: Conv3d::new(
                vb.pp("conv2").pp("conv"),
                out_ch,
                out_ch,
                3,
                false,
                Conv3dConfig::same(3),
            )?,
            conv3: if in_ch != out_ch || stride != 1 {
                Some(Conv3d::new(
                    vb.pp("conv3").pp("conv"),
                    in_ch,
                    out_ch,
                    1,
                    false,
                    Conv3dConfig {
                        stride,
                        ..Default::default()
                    },
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

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Module};
    use candle_nn::{VarBuilder, VarMap};

    use super::*;
    use crate::seg::conv3d::conv3d;
    use crate::seg::test_util::{assert_close, f64s, tensor};

    fn names(vm: &VarMap) -> Vec<String> {
        let mut n: Vec<String> = vm.data().lock().unwrap().keys().cloned().collect();
        n.sort();
        n
    }

    #[test]
    fn identity_residual_when_shapes_match() {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F64, &Device::Cpu);
        let block = UnetResBlock::new(vb, 3, 3).unwrap();
        assert_eq!(names(&vm), ["conv1.conv.weight", "conv2.conv.weight"]);
        let x = tensor(&[2, 3, 4, 5, 3], 11, DType::F64);
        let got = block.forward(&x).unwrap();
        // The composition written out with the primitives.
        let w = |n: &str| vm.data().lock().unwrap()[n].as_tensor().clone();
        let same = Conv3dConfig::same(3);
        let y = leaky_relu(
            &instance_norm(&conv3d(&x, &w("conv1.conv.weight"), same).unwrap()).unwrap(),
        )
        .unwrap();
        let y = instance_norm(&conv3d(&y, &w("conv2.conv.weight"), same).unwrap()).unwrap();
        let want = leaky_relu(&(y + &x).unwrap()).unwrap();
        assert_close(&f64s(&got), &f64s(&want), 1e-12, "res block");
    }

    #[test]
    fn projected_residual_when_channels_or_stride_change() {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let block = UnetResBlock::new(vb.pp("a"), 2, 4).unwrap();
        let x = tensor(&[1, 2, 4, 6, 5], 12, DType::F32);
        assert_eq!(block.forward(&x).unwrap().dims(), &[1, 4, 4, 6, 5]);
        let down = UnetResBlock::with_stride(vb.pp("b"), 2, 2, 2).unwrap();
        assert_eq!(down.forward(&x).unwrap().dims(), &[1, 2, 2, 3, 3]);
        assert_eq!(
            names(&vm),
            [
                "a.conv1.conv.weight",
                "a.conv2.conv.weight",
                "a.conv3.conv.weight",
                "b.conv1.conv.weight",
                "b.conv2.conv.weight",
                "b.conv3.conv.weight"
            ]
        );
    }
}
