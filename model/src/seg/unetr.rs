//! The UNETR segmentation head of 3DINO (MONAI's UNETR with a configurable
//! feature size, fed by a frozen or trainable 3D ViT).
//!
//! Four ViT levels (evenly spaced blocks: 5, 11, 17, 23 for ViT-L's 24; for
//! depth L, `(i + 1)·L/4 − 1`), final-normed, [CLS] dropped. Each level has
//! its own channel merge `Linear(C·E → E) + GELU`: with C input channels,
//! every channel goes through the ViT on its own and the features are
//! concatenated per location, as 3DINO does. Then:
//!
//! ```text
//! enc1 = UnetResBlock(C → F)(input)                       S
//! enc2 = PrUp(E → 2F, n=2)(level 0)                       g·8
//! enc3 = PrUp(E → 4F, n=1)(level 1)                       g·4
//! enc4 = PrUp(E → 8F, n=0)(level 2)                       g·2
//! dec3 = Up(E → 8F)(level 3, enc4) ; dec2 = Up(8F → 4F)(dec3, enc3)
//! dec1 = Up(4F → 2F)(dec2, enc2)   ; out  = Up(2F → F)(dec1, enc1)
//! logits = Conv3d 1³ (F → classes, bias)(out)
//! ```
//!
//! The four ×2 stages need the patch size to be 16 (g·16 = S).

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use super::blocks::{UnetResBlock, UnetrPrUpBlock, UnetrUpBlock};
use super::conv3d::Conv3d;
use crate::linear::Linear;
use crate::{ModelError, Result, ViT3d};

/// Sizes of a [`UnetrHead`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnetrConfig {
    /// Input channels C (each goes through the ViT separately).
    pub in_channels: usize,
    /// The ViT's embedding width E.
    pub embed_dim: usize,
    /// Decoder feature size F (3DINO: 32, MONAI's UNETR: 16).
    pub feature_size: usize,
    /// Output classes.
    pub classes: usize,
}

/// The UNETR decoder (the ViT is passed to [`UnetrHead::forward`]).
#[derive(Debug, Clone)]
pub struct UnetrHead {
    cfg: UnetrConfig,
    merges: Vec<Linear>,
    enc1: UnetResBlock,
    enc2: UnetrPrUpBlock,
    enc3: UnetrPrUpBlock,
    enc4: UnetrPrUpBlock,
    dec3: UnetrUpBlock,
    dec2: UnetrUpBlock,
    dec1: UnetrUpBlock,
    dec0: UnetrUpBlock,
    out: Conv3d,
}

/// The four evenly spaced 0-based block indices of a ViT of `depth` blocks.
pub fn unetr_levels(depth: usize) -> [usize; 4] {
    std::array::from_fn(|i| ((i + 1) * depth / 4).max(1) - 1)
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
            enc1: UnetResBlock::new(vb.pp("encoder1"), c, f)?,
            enc2: UnetrPrUpBlock::new(vb.pp("encoder2"), e, 2 * f, 2)?,
            enc3: UnetrPrUpBlock::new(vb.pp("encoder3"), e, 4 * f, 1)?,
            enc4: UnetrPrUpBlock::new(vb.pp("encoder4"), e, 8 * f, 0)?,
            dec3: UnetrUpBlock::new(vb.pp("decoder5"), e, 8 * f)?,
            dec2: UnetrUpBlock::new(vb.pp("decoder4"), 8 * f, 4 * f)?,
            dec1: UnetrUpBlock::new(vb.pp("decoder3"), 4 * f, 2 * f)?,
            dec0: UnetrUpBlock::new(vb.pp("decoder2"), 2 * f, f)?,
            out: Conv3d::new(vb.pp("out").pp("conv"), f, classes, 1, true)?,
        })
    }

    /// The configuration.
    pub fn config(&self) -> UnetrConfig {
        self.cfg
    }

    /// Logits `(B, classes, X, Y, Z)` for `x (B, C, X, Y, Z)` and the ViT's
    /// four levels from [`vit_levels`] (each `(B·C, N, E)`).
    ///
    /// # Errors
    /// Shapes that do not fit (sizes not 16 × the token grid).
    pub fn forward(&self, x: &Tensor, levels: &[Tensor]) -> Result<Tensor> {
        let (b, c, sx, sy, sz) = x.dims5()?;
        if c != self.cfg.in_channels || levels.len() != 4 {
            return Err(ModelError::Input(format!(
                "UNETR expects {} channels and 4 levels, got {c} and {}",
                self.cfg.in_channels,
                levels.len()
            )));
        }
        let grid = [sx / 16, sy / 16, sz / 16];
        if grid.iter().zip([sx, sy, sz]).any(|(g, s)| g * 16 != s) {
            return Err(ModelError::Input(format!(
                "UNETR needs sizes that are multiples of 16, got {:?}",
                [sx, sy, sz]
            )));
        }
        let e = self.cfg.embed_dim;
        let vols = levels
            .iter()
            .zip(&self.merges)
            .map(|(t, merge)| {
                // (B·C, N, E) -> (B, N, C·E) -> merge -> (B, E, gx, gy, gz)
                let n = t.dim(1)?;
                let t = t
                    .reshape((b, c, n, e))?
                    .transpose(1, 2)?
                    .reshape((b, n, c * e))?;
                merge
                    .forward(&t)?
                    .gelu_erf()?
                    .reshape((b, grid[0], grid[1], grid[2], e))?
                    .permute((0, 4, 1, 2, 3))?
                    .contiguous()
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let enc1 = self.enc1.forward(x)?;
        let enc2 = self.enc2.forward(&vols[0])?;
        let enc3 = self.enc3.forward(&vols[1])?;
        let enc4 = self.enc4.forward(&vols[2])?;
        let d = self.dec3.forward(&vols[3], &enc4)?;
        let d = self.dec2.forward(&d, &enc3)?;
        let d = self.dec1.forward(&d, &enc2)?;
        let d = self.dec0.forward(&d, &enc1)?;
        Ok(self.out.forward(&d)?)
    }
}

/// The ViT's four UNETR levels for `x (B, C, X, Y, Z)`: every channel through
/// `vit` as its own 1-channel volume, final-normed patch tokens
/// `(B·C, N, E)` of the blocks [`unetr_levels`] names.
///
/// # Errors
/// Inputs the ViT refuses.
pub fn vit_levels(vit: &ViT3d, x: &Tensor) -> Result<Vec<Tensor>> {
    let (b, c, sx, sy, sz) = x.dims5()?;
    let per_channel = x.reshape((b * c, 1, sx, sy, sz))?;
    let levels = unetr_levels(vit.depth());
    Ok(vit
        .intermediate_layers(&per_channel, &levels, true)?
        .into_iter()
        .map(|(patch, _cls)| patch)
        .collect())
}
