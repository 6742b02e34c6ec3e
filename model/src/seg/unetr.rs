//! The UNETR segmentation head of 3DINO (MONAI's UNETR with a configurable
//! feature size F, fed by a frozen or trainable 3D ViT with 16³ patches).
//!
//! Inputs: the raw volume `(B, C, X, Y, Z)` and four ViT levels
//! `(B·C, N, E)` (final-normed patch tokens, e.g. from
//! [`vit_levels`](super::tokens::vit_levels) at
//! [`unetr_levels`](super::tokens::unetr_levels)). Each level has its own
//! channel merge `Linear(C·E → E) + GELU` over the per-location
//! concatenation of the channels' features. Then, with g = X/16:
//!
//! ```text
//! enc1 = UnetResBlock(C → F)(input)                       S
//! enc2 = PrUp(E → 2F, n=2)(level 0)                       g·8
//! enc3 = PrUp(E → 4F, n=1)(level 1)                       g·4
//! enc4 = PrUp(E → 8F, n=0)(level 2)                       g·2
//! dec3 = Up(E → 8F)(level 3, enc4) ; dec2 = Up(8F → 4F)(dec3, enc3)
//! dec1 = Up(4F → 2F)(dec2, enc2)   ; out  = Up(2F → F)(dec1, enc1)
//! logits = UnetOutBlock(F → classes)(out)
//! ```
//!
//! The four ×2 stages need g·16 = S on every axis.
//!
//! Parameter names under the head's `VarBuilder` (MONAI's UNETR names;
//! prefix with e.g. `decoder` at the call site): `merges.{0..3}.weight/bias`
//! (our name for 3DINO's per-level merges, `(E, C·E)`),
//! `encoder1.layer.conv1.conv.weight` (MONAI's `UnetrBasicBlock` wraps the
//! res block as `layer`), `encoder2.transp_conv_init.conv.weight`,
//! `encoder2.blocks.0.0.conv.weight`, `encoder2.blocks.0.1.conv1.conv.weight`,
//! `decoder5.transp_conv.conv.weight`, `decoder5.conv_block.conv1.conv.weight`
//! (decoder5 … decoder2 from the deepest), `out.conv.conv.weight/bias`.

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use super::activation::gelu;
use super::out_block::UnetOutBlock;
use super::pr_up_block::UnetrPrUpBlock;
use super::res_block::UnetResBlock;
use super::tokens::{concat_channels, token_grid, tokens_to_volume};
use super::up_block::UnetrUpBlock;
use crate::linear::Linear;
use crate::{ModelError, Result};

/// The patch size the UNETR decoder's four ×2 stages assume.
pub const UNETR_PATCH: usize = 16;

/// Sizes of a [`UnetrHead`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnetrConfig {
    /// Input channels C (each goes through the ViT separately).
    pub in_channels: usize,
    /// The ViT's embedding width E.
    pub embed_dim: usize,
    /// Decoder feature size F (3DINO: 32, MONAI's UNETR default: 16).
    pub feature_size: usize,
    /// Output classes.
    pub classes: usize,
}

/// The UNETR decoder (the ViT's levels are passed to [`UnetrHead::forward`]).
#[derive(Debug, Clone)]
pub struct UnetrHead {
    cfg: UnetrConfig,
    merges: Vec<Linear>,
    enc1: UnetResBlock,
    enc2: UnetrPrUpBlock,
    enc3: UnetrPrUpBlock,
    enc4: UnetrPrUpBlock,
    dec5: UnetrUpBlock,
    dec4: UnetrUpBlock,
    dec3: UnetrUpBlock,
    dec2: UnetrUpBlock,
    out: UnetOutBlock,
}

impl UnetrHead {
    /// Creates (or loads) the decoder under `vb`.
    ///
    /// # Errors
    /// Zero sizes; a failed variable lookup.
    pub fn new(cfg: UnetrConfig, vb: VarBuilder) -> Result<UnetrHead> {
        let UnetrConfig {
            in_channels: c,
            embed_dim: e,
            feature_size: f,
            classes,
        } = cfg;
        if c == 0 || e == 0 || f == 0 || classes == 0 {
            return Err(ModelError::Config(format!(
                "UNETR sizes must be positive: {cfg:?}"
            )));
        }
        let merges = (0..4)
            .map(|i| Linear::new(vb.pp("merges").pp(i), c * e, e, true))
            .collect::<candle_core::Result<_>>()?;
        Ok(UnetrHead {
            cfg,
            merges,
            enc1: UnetResBlock::new(vb.pp("encoder1").pp("layer"), c, f)?,
            enc2: UnetrPrUpBlock::new(vb.pp("encoder2"), e, 2 * f, 2)?,
            enc3: UnetrPrUpBlock::new(vb.pp("encoder3"), e, 4 * f, 1)?,
            enc4: UnetrPrUpBlock::new(vb.pp("encoder4"), e, 8 * f, 0)?,
            dec5: UnetrUpBlock::new(vb.pp("decoder5"), e, 8 * f)?,
            dec4: UnetrUpBlock::new(vb.pp("decoder4"), 8 * f, 4 * f)?,
            dec3: UnetrUpBlock::new(vb.pp("decoder3"), 4 * f, 2 * f)?,
            dec2: UnetrUpBlock::new(vb.pp("decoder2"), 2 * f, f)?,
            out: UnetOutBlock::new(vb.pp("out"), f, classes)?,
        })
    }

    /// The configuration.
    pub fn config(&self) -> UnetrConfig {
        self.cfg
    }

    /// Logits `(B, classes, X, Y, Z)` for `x (B, C, X, Y, Z)` and four ViT
    /// levels, each `(B·C, N, E)` with N = (X/16)(Y/16)(Z/16).
    ///
    /// # Errors
    /// Shapes that do not fit (sizes not 16 × the token grid, wrong channel
    /// or level counts).
    pub fn forward(&self, x: &Tensor, levels: &[Tensor]) -> Result<Tensor> {
        let (b, c, sx, sy, sz) = x.dims5()?;
        if c != self.cfg.in_channels || levels.len() != 4 {
            return Err(ModelError::Input(format!(
                "UNETR expects {} channels and 4 levels, got {c} and {}",
                self.cfg.in_channels,
                levels.len()
            )));
        }
        let grid = token_grid([sx, sy, sz], UNETR_PATCH)?;
        let n = grid.iter().product();
        let e = self.cfg.embed_dim;
        let vols = levels
            .iter()
            .zip(&self.merges)
            .map(|(t, merge)| {
                let t = concat_channels(t, b, c, n, e)?;
                tokens_to_volume(&gelu(&merge.forward(&t)?)?, grid)
            })
            .collect::<Result<Vec<_>>>()?;
        let enc1 = self.enc1.forward(x)?;
        let enc2 = self.enc2.forward(&vols[0])?;
        let enc3 = self.enc3.forward(&vols[1])?;
        let enc4 = self.enc4.forward(&vols[2])?;
        let d = self.dec5.forward(&vols[3], &enc4)?;
        let d = self.dec4.forward(&d, &enc3)?;
        let d = self.dec3.forward(&d, &enc2)?;
        let d = self.dec2.forward(&d, &enc1)?;
        Ok(self.out.forward(&d)?)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};
    use candle_nn::{VarBuilder, VarMap};

    use super::*;
    use crate::seg::loss::dice_ce;
    use crate::seg::test_util::{assert_all_learn, tensor};
    use crate::seg::tokens::{unetr_levels, vit_levels};
    use crate::{ViT3d, ViT3dConfig};

    #[test]
    fn shapes_names_and_every_parameter_learns() {
        let dev = Device::Cpu;
        let cfg = ViT3dConfig {
            embed_dim: 24,
            depth: 4,
            num_heads: 2,
            pos_grid: 2,
            ..ViT3dConfig::tiny()
        };
        let (vit, _) = ViT3d::with_varmap(cfg, &dev).unwrap();
        let vm = VarMap::new();
        let head = UnetrHead::new(
            UnetrConfig {
                in_channels: 2,
                embed_dim: 24,
                feature_size: 4,
                classes: 3,
            },
            VarBuilder::from_varmap(&vm, DType::F32, &dev),
        )
        .unwrap();
        let x = tensor(&[1, 2, 32, 32, 32], 10, DType::F32);
        let levels = vit_levels(&vit, &x, &unetr_levels(4)).unwrap();
        assert_eq!(levels.len(), 4);
        assert_eq!(levels[0].dims(), &[2, 8, 24]);
        let logits = head.forward(&x, &levels).unwrap();
        assert_eq!(logits.dims(), &[1, 3, 32, 32, 32]);
        let labels = Tensor::from_vec(
            (0..32 * 32 * 32)
                .map(|i| ((i / 7) % 3) as u32)
                .collect::<Vec<_>>(),
            (1, 32, 32, 32),
            &dev,
        )
        .unwrap();
        let grads = dice_ce(&logits, &labels).unwrap().backward().unwrap();
        {
            let data = vm.data().lock().unwrap();
            for n in [
                "merges.3.weight",
                "encoder1.layer.conv1.conv.weight",
                "encoder1.layer.conv3.conv.weight",
                "encoder2.transp_conv_init.conv.weight",
                "encoder2.blocks.1.0.conv.weight",
                "encoder2.blocks.1.1.conv2.conv.weight",
                "encoder4.transp_conv_init.conv.weight",
                "decoder5.transp_conv.conv.weight",
                "decoder2.conv_block.conv3.conv.weight",
                "out.conv.conv.weight",
                "out.conv.conv.bias",
            ] {
                assert!(data.contains_key(n), "{n}");
            }
            assert_eq!(data["merges.0.weight"].dims(), &[24, 48]);
            assert_eq!(data.len(), 41);
        }
        assert_all_learn(&vm, &grads);
        assert!(
            head.forward(&tensor(&[1, 2, 24, 32, 32], 11, DType::F32), &levels)
                .is_err(),
            "sizes must be 16 × the grid"
        );
        assert!(head.forward(&x, &levels[..3]).is_err());
    }
}
