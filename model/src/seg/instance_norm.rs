//! `InstanceNorm3d(affine=False)` as MONAI's UNet blocks use it, composed
//! from differentiable candle ops.

use candle_core::{D, Tensor};

/// PyTorch's (and MONAI's) default epsilon for instance norm.
pub const INSTANCE_NORM_EPS: f64 = 1e-5;

/// `InstanceNorm3d(affine=False, eps=1e-5)`: each (sample, channel) of
/// `(B, C, ...)` normalised over its voxels with the biased variance.
///
/// # Errors
/// Tensors of rank < 3.
pub fn instance_norm(x: &Tensor) -> candle_core::Result<Tensor> {
    instance_norm_eps(x, INSTANCE_NORM_EPS)
}

/// [`instance_norm`] with an explicit epsilon.
///
/// # Errors
/// Tensors of rank < 3.
pub fn instance_norm_eps(x: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let dims = x.dims().to_vec();
    if dims.len() < 3 {
        candle_core::bail!("instance_norm: expected (B, C, ...), got {dims:?}");
    }
    let flat = x.reshape((dims[0], dims[1], ()))?;
    let mean = flat.mean_keepdim(D::Minus1)?;
    let centred = flat.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    centred.broadcast_div(&(var + eps)?.sqrt()?)?.reshape(dims)
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Tensor, Var};

    use super::*;
    use crate::seg::test_util::{check_fd, f64s, tensor};

    #[test]
    fn instance_norm_matches_the_reference_and_backpropagates() {
        let shape = [2, 3, 4, 3, 2];
        let x = Var::from_tensor(&tensor(&shape, 7, DType::F64)).unwrap();
        let y = instance_norm(x.as_tensor()).unwrap();
        let xv = f64s(x.as_tensor());
        let yv = f64s(&y);
        for (i, chunk) in xv.chunks(24).enumerate() {
            let mean = chunk.iter().sum::<f64>() / 24.0;
            let var = chunk.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 24.0;
            for (j, v) in chunk.iter().enumerate() {
                let want = (v - mean) / (var + 1e-5).sqrt();
                assert!((yv[i * 24 + j] - want).abs() < 1e-12);
            }
        }
        // Gradient of Σ IN(x)·r against central differences.
        let r = tensor(&shape, 8, DType::F64);
        let loss = |t: &Tensor| (instance_norm(t)? * &r)?.sum_all();
        let grads = loss(x.as_tensor()).unwrap().backward().unwrap();
        let g = f64s(grads.get(x.as_tensor()).unwrap());
        check_fd(&xv, &shape, &g, loss, 1e-6);
    }

    #[test]
    fn instance_norm_refuses_vectors() {
        assert!(instance_norm(&tensor(&[4, 5], 1, DType::F32)).is_err());
    }
}
