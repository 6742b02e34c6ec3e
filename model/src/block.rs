//! Pre-norm transformer block with LayerScale and drop path.

use candle_core::{Module, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::attention::Attention;
use crate::drop_path::Subset;
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

    /// `x + γ ⊙ branch`, as one graph node (`fused::add_scaled_branch`).
    fn add_to(&self, x: &Tensor, branch: &Tensor) -> candle_core::Result<Tensor> {
        crate::fused::add_scaled_branch(x, branch, &self.gamma, None, 1.0)
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

/// Drop path for the two residual branches of a block (attention, MLP).
#[derive(Debug, Clone, Default)]
pub(crate) enum BranchDrop {
    /// Both branches on every sample.
    #[default]
    None,
    /// Per-sample scales `(B, 1, 1)`.
    PerSample(Tensor, Tensor),
    /// A subset per branch (3DINO); the attention maps returned then cover
    /// the attention branch's subset only.
    Subset(Subset, Subset),
}

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

    /// Returns the block output and, if `probs`, the attention probabilities
    /// `(B, H, T, T)` (`(k, H, T, T)` for the subset's rows under subset drop
    /// path).
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        drop: &BranchDrop,
        probs: bool,
    ) -> candle_core::Result<(Tensor, Option<Tensor>)> {
        // The branches before LayerScale, which the residual adds apply.
        let attn_branch = |x: &Tensor| -> candle_core::Result<(Tensor, Option<Tensor>)> {
            self.attn.forward(&self.norm1.forward(x)?, probs)
        };
        let mlp_branch = |x: &Tensor| -> candle_core::Result<(Tensor, ())> {
            Ok((self.mlp.forward(&self.norm2.forward(x)?)?, ()))
        };
        match drop {
            BranchDrop::Subset(s1, s2) => {
                let (x, attn) = s1.add_residual(x, &self.ls1.gamma, attn_branch)?;
                let (x, ()) = s2.add_residual(&x, &self.ls2.gamma, mlp_branch)?;
                Ok((x, attn))
            }
            BranchDrop::PerSample(s1, s2) => {
                let (a, attn) = attn_branch(x)?;
                let x = (x + self.ls1.forward(&a)?.broadcast_mul(s1)?)?;
                let m = mlp_branch(&x)?.0;
                Ok(((&x + self.ls2.forward(&m)?.broadcast_mul(s2)?)?, attn))
            }
            BranchDrop::None => {
                let (a, attn) = attn_branch(x)?;
                let x = self.ls1.add_to(x, &a)?;
                let m = mlp_branch(&x)?.0;
                Ok((self.ls2.add_to(&x, &m)?, attn))
            }
        }
    }
}
