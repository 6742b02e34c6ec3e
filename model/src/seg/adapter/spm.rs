//! ViT-Adapter's spatial prior module in 3-D: a small strided CNN on the
//! C-channel input giving a ½, ¼, ⅛, 1/16 pyramid, each level projected to
//! the ViT width E by a 1³ convolution with bias.
//!
//! Every 3³ convolution has padding 1 and no bias and is followed by
//! BatchNorm and ReLU. With `w = conv_inplane` (32 in 3DINO):
//!
//! ```text
//! stem  = conv(C → w, s2), conv(w → w), conv(w → w)     c1: ½
//! conv2 = conv(w → 2w, s2)                              c2: ¼
//! conv3 = conv(2w → 4w, s2)                             c3: ⅛
//! conv4 = conv(4w → 4w, s2)                             c4: 1/16
//! fc1..fc4 = 1³ conv (w, 2w, 4w, 4w → E, bias)
//! ```
//!
//! Names as PyTorch's `nn.Sequential`s: `stem.{0,3,6}.weight` (convs),
//! `stem.{1,4,7}.*` (norms), `conv2.0.weight`, `conv2.1.*`, ...,
//! `fc1.weight`, `fc1.bias`, ...

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use super::adapter_conv;
use crate::Result;
use crate::seg::batch_norm::BatchNorm3d;
use crate::seg::conv3d::{Conv3d, Conv3dConfig};

/// 3³ conv (no bias) → BatchNorm → ReLU, named `{i}` and `{i+1}`.
#[derive(Debug, Clone)]
struct ConvBnRelu {
    conv: Conv3d,
    bn: BatchNorm3d,
}

impl ConvBnRelu {
    fn new(vb: &VarBuilder, at: usize, (i, o): (usize, usize), stride: usize) -> Result<Self> {
        let cfg = Conv3dConfig {
            stride,
            padding: 1,
            groups: 1,
        };
        Ok(ConvBnRelu {
            conv: adapter_conv(vb.pp(at), (i, o, 3), false, cfg)?,
            bn: BatchNorm3d::new(vb.pp(at + 1), o)?,
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        Ok(self.bn.forward_t(&self.conv.forward(x)?, train)?.relu()?)
    }
}

/// The spatial prior module.
#[derive(Debug, Clone)]
pub struct SpatialPriorModule {
    stem: [ConvBnRelu; 3],
    conv2: ConvBnRelu,
    conv3: ConvBnRelu,
    conv4: ConvBnRelu,
    fc: [Conv3d; 4],
}

impl SpatialPriorModule {
    /// Creates (or loads) the module under `vb` for `in_ch` input channels,
    /// base width `inplane` and output width `dim`.
    ///
    /// # Errors
    /// Zero sizes; a failed variable lookup.
    pub fn new(vb: VarBuilder, in_ch: usize, inplane: usize, dim: usize) -> Result<Self> {
        let w = inplane;
        let stem = vb.pp("stem");
        let one = Conv3dConfig::default();
        let fc = |i: usize, from: usize| {
            adapter_conv(vb.pp(format!("fc{i}")), (from, dim, 1), true, one)
        };
        Ok(SpatialPriorModule {
            stem: [
                ConvBnRelu::new(&stem, 0, (in_ch, w), 2)?,
                ConvBnRelu::new(&stem, 3, (w, w), 1)?,
                ConvBnRelu::new(&stem, 6, (w, w), 1)?,
            ],
            conv2: ConvBnRelu::new(&vb.pp("conv2"), 0, (w, 2 * w), 2)?,
            conv3: ConvBnRelu::new(&vb.pp("conv3"), 0, (2 * w, 4 * w), 2)?,
            conv4: ConvBnRelu::new(&vb.pp("conv4"), 0, (4 * w, 4 * w), 2)?,
            fc: [fc(1, w)?, fc(2, 2 * w)?, fc(3, 4 * w)?, fc(4, 4 * w)?],
        })
    }

    /// `x (B, C, X, Y, Z)` (sizes divisible by 16) to the four levels
    /// `(B, E, X/2ᵏ, Y/2ᵏ, Z/2ᵏ)`, k = 1..4. `train` selects batch
    /// statistics in the norms.
    ///
    /// # Errors
    /// Shapes that do not fit.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<[Tensor; 4]> {
        let mut c1 = x.clone();
        for layer in &self.stem {
            c1 = layer.forward_t(&c1, train)?;
        }
        let c2 = self.conv2.forward_t(&c1, train)?;
        let c3 = self.conv3.forward_t(&c2, train)?;
        let c4 = self.conv4.forward_t(&c3, train)?;
        Ok([
            self.fc[0].forward(&c1)?,
            self.fc[1].forward(&c2)?,
            self.fc[2].forward(&c3)?,
            self.fc[3].forward(&c4)?,
        ])
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};
    use candle_nn::{VarBuilder, VarMap};

    use super::*;
    use crate::seg::test_util::tensor;

    #[test]
    fn pyramid_shapes_and_names() {
        let vm = VarMap::new();
        let spm = SpatialPriorModule::new(
            VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu),
            2,
            4,
            12,
        )
        .unwrap();
        let x = tensor(&[2, 2, 32, 16, 48], 3, DType::F32);
        let levels = spm.forward_t(&x, true).unwrap();
        let dims: Vec<_> = levels.iter().map(|t| t.dims().to_vec()).collect();
        assert_eq!(
            dims,
            vec![
                vec![2, 12, 16, 8, 24],
                vec![2, 12, 8, 4, 12],
                vec![2, 12, 4, 2, 6],
                vec![2, 12, 2, 1, 3],
            ]
        );
        let data = vm.data().lock().unwrap();
        assert_eq!(data["stem.0.weight"].dims(), &[4, 2, 3, 3, 3]);
        assert_eq!(data["stem.7.running_var"].dims(), &[4]);
        assert_eq!(data["conv4.0.weight"].dims(), &[16, 16, 3, 3, 3]);
        assert_eq!(data["fc4.weight"].dims(), &[12, 16, 1, 1, 1]);
        assert!(!data.contains_key("stem.0.bias"));
        // 6 convs, 6 norms × 4, 4 × (fc weight, bias).
        assert_eq!(data.len(), 6 + 6 * 4 + 8);
    }
}
