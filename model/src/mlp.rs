//! Transformer feed-forward block: Linear, exact GELU, Linear.

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use crate::linear::Linear;

/// `fc2(gelu_erf(fc1(x)))`, hidden width `hidden`.
#[derive(Debug, Clone)]
pub(crate) struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    pub(crate) fn new(vb: VarBuilder, dim: usize, hidden: usize) -> candle_core::Result<Self> {
        Ok(Self {
            fc1: Linear::new(vb.pp("fc1"), dim, hidden, true)?,
            fc2: Linear::new(vb.pp("fc2"), hidden, dim, true)?,
        })
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        // PyTorch's default GELU is the exact erf form, not the tanh approximation.
        self.fc2
            .forward(&crate::fused::gelu_erf(&self.fc1.forward(x)?)?)
    }
}
