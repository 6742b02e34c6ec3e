//! Normalisations and activations of MONAI's UNet blocks, composed from
//! differentiable candle ops.

use candle_core::{D, Tensor};

/// MONAI's default epsilon for instance norm.
pub const INSTANCE_NORM_EPS: f64 = 1e-5;

/// `InstanceNorm3d(affine=False)`: each (sample, channel) of `(B, C, ...)`
/// normalised over its voxels with the biased variance.
///
/// # Errors
/// Tensors of rank < 3.
pub fn instance_norm(x: &Tensor) -> candle_core::Result<Tensor> {
    let dims = x.dims().to_vec();
    if dims.len() < 3 {
        candle_core::bail!("instance_norm: expected (B, C, ...), got {dims:?}");
    }
    let flat = x.reshape((dims[0], dims[1], ()))?;
    let mean = flat.mean_keepdim(D::Minus1)?;
    let centred = flat.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    centred
        .broadcast_div(&(var + INSTANCE_NORM_EPS)?.sqrt()?)?
        .reshape(dims)
}

/// LeakyReLU with MONAI's slope 0.01, as `relu(x) - 0.01 relu(-x)` so both
/// halves backpropagate.
///
/// # Errors
/// Never for valid tensors.
pub fn leaky_relu(x: &Tensor) -> candle_core::Result<Tensor> {
    x.relu()? - (x.neg()?.relu()? * 0.01)?
}
