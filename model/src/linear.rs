//! Fully connected layer with PyTorch's weight layout `(out, in)`.

use candle_core::{D, DType, Module, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::fused::{self, Product};
use crate::precision::{self, Precision};

/// `y = x Wᵀ + b` on the last axis; any number of leading axes.
#[derive(Debug, Clone)]
pub(crate) struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

/// DINOv2 initialises every Linear with trunc-normal(std 0.02, cut at ±2
/// absolute). The cut is at 100σ, so a plain normal is the same distribution.
pub(crate) const LINEAR_INIT: Init = Init::Randn {
    mean: 0.0,
    stdev: 0.02,
};

impl Linear {
    /// Creates (or loads) `weight (out, in)` and, if `bias`, `bias (out)` under `vb`.
    pub(crate) fn new(
        vb: VarBuilder,
        in_dim: usize,
        out_dim: usize,
        bias: bool,
    ) -> candle_core::Result<Self> {
        let weight = vb.get_with_hints((out_dim, in_dim), "weight", LINEAR_INIT)?;
        let bias = if bias {
            Some(vb.get_with_hints(out_dim, "bias", Init::Const(0.0))?)
        } else {
            None
        };
        Ok(Self { weight, bias })
    }
}

impl Linear {
    /// `x Wᵀ + b` with bf16 operands and a bf16 result, for a layer whose
    /// output is stored in bf16 (autocast's `linear`; unlike its fused
    /// epilogue, the product is rounded to bf16 before the bias is added).
    /// The bias gradient is summed in f32 (the vendored candle's row sum).
    pub(crate) fn forward_bf16(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.apply(x, Product::Bf16 { out: DType::BF16 })
    }

    /// [`Self::forward_bf16`] under bf16 autocast, else `forward`: for a
    /// hidden layer that autocast keeps in bf16.
    pub(crate) fn forward_hidden(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if precision::current() == Precision::Bf16 {
            self.forward_bf16(x)
        } else {
            self.forward(x)
        }
    }

    /// `x Wᵀ + b` by one 2-D matmul on the leading axes flattened into rows
    /// (faster than broadcast_matmul). With a bias, the product and the add
    /// are one graph node ([`fused::linear_bias`]: the graph keeps neither
    /// the product nor autocast's copies).
    fn apply(&self, x: &Tensor, product: Product) -> candle_core::Result<Tensor> {
        let in_dim = x.dim(D::Minus1)?;
        let rows = x.reshape((x.elem_count() / in_dim, in_dim))?;
        let y = match &self.bias {
            Some(b) => fused::linear_bias(&rows, &self.weight, b, product)?,
            None => product.matmul(&rows, &self.weight)?,
        };
        let mut out_dims = x.dims().to_vec();
        out_dims.pop();
        out_dims.push(self.weight.dim(0)?);
        y.reshape(out_dims)
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.apply(x, Product::autocast(x.dtype()))
    }
}
