//! Pre-norm transformer block with LayerScale and drop path.

use candle_core::{Module, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::attention::Attention;
use crate::mlp::Mlp;
use crate::norm::LayerNorm;

/// Per-channel residual-branch scale `gamma` (DINOv2's `ls1`/`ls2`).
#[derive(Debug, Clone)]
struct LayerScale {
    gamma: Tensor,
}

impl LayerScale {
    fn new(vb: VarBuilder, dim: usize, init: f64) -> candle_core::Result<Self> {
        Ok(Self {
            gamma: vb.get_with_hints(dim, "gamma", Init::Const(init))?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.broadcast_mul(&self.gamma)
    }
}

/// Shape of one block as built by the ViT.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BlockDims {
    pub(crate) dim: usize,
    pub(crate) num_heads: usize,
    pub(crate) mlp_hidden: usize,
    pub(crate) qkv_bias: bool,
    pub(crate) layerscale_init: f64,
    pub(crate) ln_eps: f64,
}

/// `x += ls1(attn(norm1(x)))`, then `x += ls2(mlp(norm2(x)))`.
#[derive(Debug, Clone)]
pub(crate) struct Block {
    norm1: LayerNorm,
    attn: Attention,
    ls1: LayerScale,
    norm2: LayerNorm,
    mlp: Mlp,
    ls2: LayerScale,
}

/// Per-sample branch scales `(B, 1, 1)` for the two residual branches of a
/// block (drop path); `None` runs both branches on every sample.
pub(crate) type BranchScales = Option<(Tensor, Tensor)>;

impl Block {
    pub(crate) fn new(vb: VarBuilder, d: BlockDims) -> candle_core::Result<Self> {
        Ok(Self {
            norm1: LayerNorm::new(vb.pp("norm1"), d.dim, d.ln_eps)?,
            attn: Attention::new(vb.pp("attn"), d.dim, d.num_heads, d.qkv_bias)?,
            ls1: LayerScale::new(vb.pp("ls1"), d.dim, d.layerscale_init)?,
            norm2: LayerNorm::new(vb.pp("norm2"), d.dim, d.ln_eps)?,
            mlp: Mlp::new(vb.pp("mlp"), d.dim, d.mlp_hidden)?,
            ls2: LayerScale::new(vb.pp("ls2"), d.dim, d.layerscale_init)?,
        })
    }

    /// Returns the block output and the attention probabilities `(B, H, T, T)`.
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        drop: &BranchScales,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let (a, attn) = self.attn.forward(&self.norm1.forward(x)?)?;
        let a = self.ls1.forward(&a)?;
        let a = match drop {
            Some((s1, _)) => a.broadcast_mul(s1)?,
            None => a,
        };
        let x = (x + a)?;
        let m = self
            .ls2
            .forward(&self.mlp.forward(&self.norm2.forward(&x)?)?)?;
        let m = match drop {
            Some((_, s2)) => m.broadcast_mul(s2)?,
            None => m,
        };
        Ok(((x + m)?, attn))
    }
}
