//! 3DINO's linear decoder head for segmentation:
//!
//! 1. the last four ViT levels (final-normed patch tokens, `(B·C, N, E)`);
//! 2. a *shared* channel merge `Conv3d 1³ (C·E → E, bias) + GELU` on each;
//! 3. concatenation to `4E` channels, `BatchNorm3d(4E)`, `Conv3d 1³
//!    (4E → classes, bias)` on the token grid;
//! 4. trilinear upsampling (`align_corners=False`) to the input size.
//!
//! Parameter names under the head's `VarBuilder` (ours; 3DINO's module
//! names are not part of the spec): `merge.weight (E, C·E, 1, 1, 1)`,
//! `merge.bias`, `bn.weight`, `bn.bias`, `bn.running_mean`,
//! `bn.running_var`, `classifier.weight (classes, 4E, 1, 1, 1)`,
//! `classifier.bias`.

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use super::activation::gelu;
use super::batch_norm::BatchNorm3d;
use super::conv3d::{Conv3d, Conv3dConfig};
use super::tokens::{concat_channels, token_grid, tokens_to_volume};
use super::upsample::upsample_trilinear;
use crate::{ModelError, Result};

/// Sizes of a [`LinearDecoderHead`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinearHeadConfig {
    /// Input channels C (each goes through the ViT separately).
    pub in_channels: usize,
    /// The ViT's embedding width E.
    pub embed_dim: usize,
    /// The ViT's patch size (16 for 3DINO).
    pub patch_size: usize,
    /// Output classes.
    pub classes: usize,
}

/// The number of ViT levels the linear head concatenates.
pub const LINEAR_HEAD_LEVELS: usize = 4;

/// The linear decoder (the ViT's levels are passed to
/// [`LinearDecoderHead::forward_t`]).
#[derive(Debug, Clone)]
pub struct LinearDecoderHead {
    cfg: LinearHeadConfig,
    merge: Conv3d,
    bn: BatchNorm3d,
    classifier: Conv3d,
}

impl LinearDecoderHead {
    /// Creates (or loads) the head under `vb`.
    ///
    /// # Errors
    /// Zero sizes; a failed variable lookup.
    pub fn new(cfg: LinearHeadConfig, vb: VarBuilder) -> Result<Self> {
        let LinearHeadConfig {
            in_channels: c,
            embed_dim: e,
            patch_size,
            classes,
        } = cfg;
        if c == 0 || e == 0 || patch_size == 0 || classes == 0 {
            return Err(ModelError::Config(format!(
                "linear head sizes must be positive: {cfg:?}"
            )));
        }
        let one = Conv3dConfig::default();
        Ok(LinearDecoderHead {
            cfg,
            merge: Conv3d::new(vb.pp("merge"), c * e, e, 1, true, one)?,
            bn: BatchNorm3d::new(vb.pp("bn"), LINEAR_HEAD_LEVELS * e)?,
            classifier: Conv3d::new(
                vb.pp("classifier"),
                LINEAR_HEAD_LEVELS * e,
                classes,
                1,
                true,
                one,
            )?,
        })
    }

    /// The configuration.
    pub fn config(&self) -> LinearHeadConfig {
        self.cfg
    }

    /// Logits `(B, classes, X, Y, Z)` from four levels `(B·C, N, E)` of an
    /// input of `batch` samples and `size = [X, Y, Z]` voxels. `train`
    /// selects batch statistics (and updates the running ones) in the
    /// batch norm.
    ///
    /// # Errors
    /// Shapes that do not fit.
    pub fn forward_t(
        &self,
        levels: &[Tensor],
        batch: usize,
        size: [usize; 3],
        train: bool,
    ) -> Result<Tensor> {
        let LinearHeadConfig {
            in_channels: c,
            embed_dim: e,
            patch_size,
            ..
        } = self.cfg;
        if levels.len() != LINEAR_HEAD_LEVELS {
            return Err(ModelError::Input(format!(
                "the linear head takes {LINEAR_HEAD_LEVELS} levels, got {}",
                levels.len()
            )));
        }
        let grid = token_grid(size, patch_size)?;
        let n = grid.iter().product();
        let merged = levels
            .iter()
            .map(|t| {
                let vol = tokens_to_volume(&concat_channels(t, batch, c, n, e)?, grid)?;
                Ok(gelu(&self.merge.forward(&vol)?)?)
            })
            .collect::<Result<Vec<_>>>()?;
        let feats = Tensor::cat(&merged, 1)?;
        let logits = self
            .classifier
            .forward(&self.bn.forward_t(&feats, train)?)?;
        Ok(upsample_trilinear(&logits, size)?)
    }

    /// The batch norm (for its running statistics).
    pub fn batch_norm(&self) -> &BatchNorm3d {
        &self.bn
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};
    use candle_nn::{VarBuilder, VarMap};

    use super::*;
    use crate::seg::loss::dice_ce;
    use crate::seg::test_util::{assert_all_learn, assert_close, f64s, tensor};
    use crate::seg::tokens::{last_levels, vit_levels};
    use crate::{ViT3d, ViT3dConfig};

    fn head(vm: &VarMap, dtype: DType) -> LinearDecoderHead {
        LinearDecoderHead::new(
            LinearHeadConfig {
                in_channels: 2,
                embed_dim: 24,
                patch_size: 16,
                classes: 3,
            },
            VarBuilder::from_varmap(vm, dtype, &Device::Cpu),
        )
        .unwrap()
    }

    #[test]
    fn shapes_names_and_every_parameter_learns() {
        let dev = Device::Cpu;
        let cfg = ViT3dConfig {
            embed_dim: 24,
            depth: 5,
            num_heads: 2,
            pos_grid: 2,
            ..ViT3dConfig::tiny()
        };
        let (vit, _) = ViT3d::with_varmap(cfg, &dev).unwrap();
        let vm = VarMap::new();
        let head = head(&vm, DType::F32);
        let x = tensor(&[2, 2, 32, 32, 48], 17, DType::F32);
        let levels = vit_levels(&vit, &x, &last_levels(5)).unwrap();
        let logits = head.forward_t(&levels, 2, [32, 32, 48], true).unwrap();
        assert_eq!(logits.dims(), &[2, 3, 32, 32, 48]);
        let labels = Tensor::from_vec(
            (0..2 * 32 * 32 * 48)
                .map(|i| ((i / 5) % 3) as u32)
                .collect::<Vec<_>>(),
            (2, 32, 32, 48),
            &dev,
        )
        .unwrap();
        let grads = dice_ce(&logits, &labels).unwrap().backward().unwrap();
        {
            let data = vm.data().lock().unwrap();
            assert_eq!(data["merge.weight"].dims(), &[24, 48, 1, 1, 1]);
            assert_eq!(data["bn.running_var"].dims(), &[96]);
            assert_eq!(data["classifier.weight"].dims(), &[3, 96, 1, 1, 1]);
            assert_eq!(data.len(), 8);
        }
        assert_all_learn(&vm, &grads);
        assert!(head.forward_t(&levels, 2, [32, 32, 32], true).is_err());
        assert!(head.forward_t(&levels[1..], 2, [32, 32, 48], true).is_err());
    }

    #[test]
    fn matches_a_reference_on_a_one_token_grid() {
        // One token per sample: merge, BN (eval, fresh stats), classifier are
        // per-location affine maps, and the upsampling of a 1³ grid is a
        // constant volume.
        let vm = VarMap::new();
        let head = head(&vm, DType::F64);
        let levels: Vec<Tensor> = (0..4)
            .map(|i| tensor(&[2, 1, 24], 20 + i, DType::F64))
            .collect();
        let got = head.forward_t(&levels, 1, [16, 16, 16], false).unwrap();
        assert_eq!(got.dims(), &[1, 3, 16, 16, 16]);
        let data = vm.data().lock().unwrap();
        let mw = f64s(data["merge.weight"].as_tensor());
        let mb = f64s(data["merge.bias"].as_tensor());
        let cw = f64s(data["classifier.weight"].as_tensor());
        let cb = f64s(data["classifier.bias"].as_tensor());
        let gelu = |v: f64| {
            let t = Tensor::new(&[v], &Device::Cpu).unwrap();
            f64s(&t.gelu_erf().unwrap())[0]
        };
        let mut feats = Vec::new();
        for l in &levels {
            let lv = f64s(l); // channel-major: c·24 + e
            for o in 0..24 {
                let s: f64 = (0..48).map(|j| mw[o * 48 + j] * lv[j]).sum::<f64>() + mb[o];
                feats.push(gelu(s) / (1.0 + 1e-5f64).sqrt());
            }
        }
        let want: Vec<f64> = (0..3)
            .map(|k| cb[k] + (0..96).map(|j| cw[k * 96 + j] * feats[j]).sum::<f64>())
            .collect();
        let out = f64s(&got);
        for k in 0..3 {
            let plane = &out[k * 4096..(k + 1) * 4096];
            assert_close(plane, &vec![want[k]; 4096], 1e-10, "logit");
        }
    }
}
