//! LayerNorm that keeps the autograd graph (candle's fused kernel does not).

use candle_core::{Module, Tensor};
use candle_nn::{Init, VarBuilder};

/// Affine LayerNorm over the last axis, `weight`/`bias` named like PyTorch.
#[derive(Debug, Clone)]
pub(crate) struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    pub(crate) fn new(vb: VarBuilder, dim: usize, eps: f64) -> candle_core::Result<Self> {
        let weight = vb.get_with_hints(dim, "weight", Init::Const(1.0))?;
        let bias = vb.get_with_hints(dim, "bias", Init::Const(0.0))?;
        Ok(Self { weight, bias, eps })
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        crate::fused::layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}
