//! 3-D patch embedding: a Conv3d with kernel = stride = p, written as a matmul
//! (candle has no conv3d).

use candle_core::Tensor;
use candle_nn::{Init, VarBuilder};

use crate::{ModelError, Result};

/// Conv3d(in_chans → dim, kernel p³, stride p³, bias) with PyTorch's weight
/// shape `(dim, in_chans, p, p, p)` under `proj.weight` / `proj.bias`.
#[derive(Debug, Clone)]
pub(crate) struct PatchEmbed3d {
    weight: Tensor,
    bias: Tensor,
    in_chans: usize,
    patch: usize,
    dim: usize,
}

impl PatchEmbed3d {
    pub(crate) fn new(
        vb: VarBuilder,
        in_chans: usize,
        dim: usize,
        patch: usize,
    ) -> candle_core::Result<Self> {
        let vb = vb.pp("proj");
        // PyTorch's default Conv3d init: U(±1/√fan_in) for weight and bias
        // (3DINO does not override it).
        let bound = 1.0 / ((in_chans * patch * patch * patch) as f64).sqrt();
        let init = Init::Uniform {
            lo: -bound,
            up: bound,
        };
        let weight = vb.get_with_hints((dim, in_chans, patch, patch, patch), "weight", init)?;
        let bias = vb.get_with_hints(dim, "bias", init)?;
        Ok(Self {
            weight,
            bias,
            in_chans,
            patch,
            dim,
        })
    }

    /// Token grid `(X/p, Y/p, Z/p)` for an input `(N, C, X, Y, Z)`, checking the layout.
    pub(crate) fn grid(&self, x: &Tensor) -> Result<[usize; 3]> {
        let dims = x.dims();
        if dims.len() != 5 || dims[1] != self.in_chans {
            return Err(ModelError::Input(format!(
                "expected (N, {}, X, Y, Z), got {:?}",
                self.in_chans, dims
            )));
        }
        let p = self.patch;
        if dims[2..].iter().any(|&s| s == 0 || s % p != 0) {
            return Err(ModelError::Input(format!(
                "spatial sizes {:?} must be positive multiples of the patch size {p}",
                &dims[2..]
            )));
        }
        Ok([dims[2] / p, dims[3] / p, dims[4] / p])
    }

    /// `(N, C, X, Y, Z)` → `(N, gx·gy·gz, dim)`, tokens in PyTorch's
    /// `flatten(2)` order (last grid axis fastest).
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let [gx, gy, gz] = self.grid(x)?;
        let (n, c, p) = (x.dim(0)?, self.in_chans, self.patch);
        let cols = c * p * p * p;
        // Split each axis into (grid, within-patch), bring the grid axes
        // forward; each row is then one patch flattened as (c, px, py, pz),
        // matching the weight's (dim, c, p, p, p) flattening.
        let patches = x
            .reshape(vec![n, c, gx, p, gy, p, gz, p])?
            .permute(vec![0, 2, 4, 6, 1, 3, 5, 7])?
            .contiguous()?
            .reshape((n * gx * gy * gz, cols))?;
        let w = self.weight.reshape((self.dim, cols))?;
        // As a Linear: one graph node, so the graph keeps no product.
        let product = crate::fused::Product::autocast(patches.dtype());
        let tokens = crate::fused::linear_bias(&patches, &w, &self.bias, product)?;
        Ok(tokens.reshape((n, gx * gy * gz, self.dim))?)
    }
}
