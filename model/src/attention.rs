//! Multi-head self-attention with a fused qkv projection.

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use crate::linear::Linear;

/// `proj(softmax(q kᵀ / √d_head) v)`; names `qkv` and `proj` as in DINOv2.
#[derive(Debug, Clone)]
pub(crate) struct Attention {
    qkv: Linear,
    proj: Linear,
    num_heads: usize,
}

impl Attention {
    pub(crate) fn new(
        vb: VarBuilder,
        dim: usize,
        num_heads: usize,
        qkv_bias: bool,
    ) -> candle_core::Result<Self> {
        Ok(Self {
            qkv: Linear::new(vb.pp("qkv"), dim, 3 * dim, qkv_bias)?,
            proj: Linear::new(vb.pp("proj"), dim, dim, true)?,
            num_heads,
        })
    }

    /// `x (B, T, E)` → output `(B, T, E)` and the attention probabilities
    /// `(B, heads, T, T)`.
    pub(crate) fn forward(&self, x: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let (b, t, e) = x.dims3()?;
        let h = self.num_heads;
        let hd = e / h;
        // (B, T, 3, H, hd) → (3, B, H, T, hd)
        let qkv = self
            .qkv
            .forward(x)?
            .reshape((b, t, 3, h, hd))?
            .permute((2, 0, 3, 1, 4))?;
        let q = qkv.get(0)?.contiguous()?;
        let k = qkv.get(1)?.contiguous()?;
        let v = qkv.get(2)?.contiguous()?;
        let logits = crate::precision::matmul(&q, &k.t()?)?;
        // The 1/√d scale is folded into the fused softmax (no pass over q).
        let attn = crate::fused::softmax_last_dim(&logits, (hd as f64).powf(-0.5))?;
        let out = crate::precision::matmul(&attn, &v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, t, e))?;
        Ok((self.proj.forward(&out)?, attn))
    }
}
