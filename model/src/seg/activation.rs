//! Activations of the segmentation heads, from differentiable candle ops.

use candle_core::Tensor;

/// MONAI's LeakyReLU slope in its UNet blocks.
pub const LEAKY_SLOPE: f64 = 0.01;

/// LeakyReLU(0.01) as `x · m` with the constant slope mask
/// `m = 1 where x > 0, else 0.01` (one multiply backward; the gradient at 0
/// is the slope, as PyTorch's).
///
/// # Errors
/// Never for valid tensors.
pub fn leaky_relu(x: &Tensor) -> candle_core::Result<Tensor> {
    let mask = x
        .gt(0.0)?
        .to_dtype(x.dtype())?
        .affine(1.0 - LEAKY_SLOPE, LEAKY_SLOPE)?;
    x * mask
}

/// PyTorch's default `nn.GELU()` (the exact, erf form), differentiable: a
/// fused op on the CPU, candle's `gelu_erf` elsewhere.
///
/// # Errors
/// Never for valid tensors.
pub fn gelu(x: &Tensor) -> candle_core::Result<Tensor> {
    crate::fused::gelu_erf(x)
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor, Var};

    use super::*;
    use crate::seg::test_util::{check_fd, f64s, tensor};

    #[test]
    fn leaky_relu_has_both_slopes() {
        let x =
            Var::from_tensor(&Tensor::new(&[-2.0f64, -0.5, 0.0, 0.5, 3.0], &Device::Cpu).unwrap())
                .unwrap();
        let y = leaky_relu(x.as_tensor()).unwrap();
        assert_eq!(f64s(&y), vec![-0.02, -0.005, 0.0, 0.5, 3.0]);
        let g = y.sum_all().unwrap().backward().unwrap();
        assert_eq!(
            f64s(g.get(x.as_tensor()).unwrap()),
            vec![0.01, 0.01, 0.01, 1.0, 1.0]
        );
    }

    #[test]
    fn gelu_is_the_erf_form_and_has_gradients() {
        let shape = [2, 3, 4];
        let x = Var::from_tensor(&(tensor(&shape, 21, DType::F64) * 3.0).unwrap()).unwrap();
        // x·Φ(x) at a few points (Python's math.erf).
        let known = Tensor::new(&[-1.0f64, 0.0, 0.5, 2.0], &Device::Cpu).unwrap();
        let want = [
            -0.158_655_253_931_457_07,
            0.0,
            0.345_731_230_637_006_56,
            1.954_499_736_103_641_6,
        ];
        for (g, w) in f64s(&gelu(&known).unwrap()).iter().zip(want) {
            assert!((g - w).abs() < 1e-9, "{g} vs {w}");
        }
        let r = tensor(&shape, 22, DType::F64);
        let loss = |t: &Tensor| (gelu(t)? * &r)?.sum_all();
        let grads = loss(x.as_tensor()).unwrap().backward().unwrap();
        let g = f64s(grads.get(x.as_tensor()).unwrap());
        // candle's derivative rounds 1/√(2π) to 6 digits.
        check_fd(&f64s(x.as_tensor()), &shape, &g, loss, 1e-5);
    }
}
