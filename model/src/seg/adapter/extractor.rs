//! ViT-Adapter's extractor: the pyramid tokens attend to the
//! (channel-averaged) ViT tokens with 1-level deformable attention, then a
//! convolutional FFN with drop path:
//!
//! ```text
//! c += attn(LN(c), LN(x))
//! c += DropPath(ConvFFN(LN(c)))
//! ConvFFN = fc1 (E → h) → depthwise 3³ conv per pyramid level → GELU → fc2 (h → E)
//! ```
//!
//! Names: `query_norm.*`, `feat_norm.*`, `attn.*`, `ffn_norm.*`,
//! `ffn.fc1.*`, `ffn.dwconv.dwconv.{weight,bias}`, `ffn.fc2.*`.

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use super::deform_attn::{Levels, MsDeformAttn, MsDeformAttnConfig};
use super::{ADAPTER_LN_EPS, Proj, adapter_conv, volume_to_tokens};
use crate::norm::LayerNorm;
use crate::seg::activation::gelu;
use crate::seg::conv3d::{Conv3d, Conv3dConfig};
use crate::seg::tokens::tokens_to_volume;
use crate::{ModelError, Result};

/// ViT-Adapter's convolutional FFN over pyramid tokens.
#[derive(Debug, Clone)]
pub struct ConvFfn {
    fc1: Proj,
    dwconv: Conv3d,
    fc2: Proj,
}

impl ConvFfn {
    /// Creates (or loads) the FFN `dim → hidden → dim` under `vb`.
    ///
    /// # Errors
    /// Zero sizes; a failed variable lookup.
    pub fn new(vb: VarBuilder, dim: usize, hidden: usize) -> Result<Self> {
        if dim == 0 || hidden == 0 {
            return Err(ModelError::Config(format!(
                "ConvFFN sizes must be positive: {dim} → {hidden}"
            )));
        }
        let dw = Conv3dConfig {
            stride: 1,
            padding: 1,
            groups: hidden,
        };
        Ok(ConvFfn {
            fc1: Proj::new_default(vb.pp("fc1"), dim, hidden)?,
            dwconv: adapter_conv(vb.pp("dwconv").pp("dwconv"), (hidden, hidden, 3), true, dw)?,
            fc2: Proj::new_default(vb.pp("fc2"), hidden, dim)?,
        })
    }

    /// `x (B, ΣN_l, E)` laid out as `levels` to `(B, ΣN_l, E)`; the
    /// depthwise convolution sees each level as its own volume.
    ///
    /// # Errors
    /// Shapes that do not fit.
    pub fn forward(&self, x: &Tensor, levels: &Levels) -> Result<Tensor> {
        let (_, n, _) = x.dims3()?;
        if n != levels.tokens() {
            return Err(ModelError::Input(format!(
                "ConvFFN: {n} tokens for levels {:?}",
                levels.shapes
            )));
        }
        let h = self.fc1.forward(x)?;
        let mut start = 0;
        let mut parts = Vec::with_capacity(levels.shapes.len());
        for (shape, count) in levels.shapes.iter().zip(levels.counts()) {
            let vol = tokens_to_volume(&h.narrow(1, start, count)?, *shape)?;
            parts.push(volume_to_tokens(&self.dwconv.forward(&vol)?)?);
            start += count;
        }
        let h = gelu(&Tensor::cat(&parts, 1)?)?;
        Ok(self.fc2.forward(&h)?)
    }
}

/// ViT → pyramid cross-attention plus the convolutional FFN.
#[derive(Debug, Clone)]
pub struct Extractor {
    query_norm: LayerNorm,
    feat_norm: LayerNorm,
    attn: MsDeformAttn,
    ffn_norm: LayerNorm,
    ffn: ConvFfn,
}

impl Extractor {
    /// Creates (or loads) the extractor under `vb` (`attn.levels` = 1 in
    /// ViT-Adapter) with an FFN of width `ffn_hidden`.
    ///
    /// # Errors
    /// Bad sizes; a failed variable lookup.
    pub fn new(vb: VarBuilder, attn: MsDeformAttnConfig, ffn_hidden: usize) -> Result<Self> {
        let e = attn.dim;
        Ok(Extractor {
            query_norm: LayerNorm::new(vb.pp("query_norm"), e, ADAPTER_LN_EPS)?,
            feat_norm: LayerNorm::new(vb.pp("feat_norm"), e, ADAPTER_LN_EPS)?,
            attn: MsDeformAttn::new(attn, vb.pp("attn"))?,
            ffn_norm: LayerNorm::new(vb.pp("ffn_norm"), e, ADAPTER_LN_EPS)?,
            ffn: ConvFfn::new(vb.pp("ffn"), e, ffn_hidden)?,
        })
    }

    /// Updated pyramid tokens `c (B, ΣN_l, E)` (layout `c_levels`, whose
    /// reference points are the queries') from the ViT tokens
    /// `feat (B, N, E)` (layout `feat_levels`). `drop`: per-sample branch
    /// scales `(B, 1, 1)` for the FFN (drop path), `None` keeps it whole.
    ///
    /// # Errors
    /// Shapes that do not fit.
    pub fn forward(
        &self,
        c: &Tensor,
        c_levels: &Levels,
        feat: &Tensor,
        feat_levels: &Levels,
        drop: Option<&Tensor>,
    ) -> Result<Tensor> {
        let a = self.attn.forward(
            &self.query_norm.forward(c)?,
            &c_levels.reference,
            &self.feat_norm.forward(feat)?,
            &feat_levels.shapes,
        )?;
        let c = (c + a)?;
        let f = self.ffn.forward(&self.ffn_norm.forward(&c)?, c_levels)?;
        let f = match drop {
            Some(s) => f.broadcast_mul(s)?,
            None => f,
        };
        Ok((c + f)?)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};
    use candle_nn::{VarBuilder, VarMap};

    use super::*;
    use crate::seg::test_util::{assert_close, f64s, tensor};

    #[test]
    fn conv_ffn_shapes_and_levels_stay_separate() {
        let vm = VarMap::new();
        let ffn =
            ConvFfn::new(VarBuilder::from_varmap(&vm, DType::F64, &Device::Cpu), 6, 3).unwrap();
        let levels = Levels::new(&[[4, 2, 2], [2, 1, 1]], DType::F64, &Device::Cpu).unwrap();
        let x = tensor(&[2, 18, 6], 1, DType::F64);
        let y = ffn.forward(&x, &levels).unwrap();
        assert_eq!(y.dims(), &[2, 18, 6]);
        {
            let data = vm.data().lock().unwrap();
            assert_eq!(data["dwconv.dwconv.weight"].dims(), &[3, 1, 3, 3, 3]);
            assert_eq!(data["fc1.weight"].dims(), &[3, 6]);
            assert_eq!(data["fc2.weight"].dims(), &[6, 3]);
        }
        // Changing a token of the second level leaves the first level's
        // outputs alone (the convolution does not cross levels).
        let mut v = f64s(&x);
        v[16 * 6] += 1.0;
        let x2 = Tensor::from_vec(v, (2, 18, 6), &Device::Cpu).unwrap();
        let y2 = ffn.forward(&x2, &levels).unwrap();
        let first = |t: &Tensor| f64s(&t.narrow(1, 0, 16).unwrap());
        assert_close(&first(&y2), &first(&y), 0.0, "first level");
        assert!(f64s(&y2) != f64s(&y));
        assert!(ffn.forward(&x.narrow(1, 0, 17).unwrap(), &levels).is_err());
    }
}
