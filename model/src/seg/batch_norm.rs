//! `BatchNorm3d` with PyTorch's semantics, composed from differentiable
//! candle ops (candle_nn's fused batch norm is not used on the training
//! path).
//!
//! - training: per-channel statistics over the batch and all voxels, biased
//!   variance for the normalisation; the running statistics move by
//!   `momentum` (0.1) towards the batch mean and the *unbiased* batch
//!   variance, as PyTorch does;
//! - evaluation: the running statistics.
//!
//! Parameters `weight` (init 1) and `bias` (init 0); buffers `running_mean`
//! (0) and `running_var` (1), as in PyTorch's state dict (`num_batches_tracked`
//! is not kept: with a fixed momentum it has no effect). The buffers live in
//! the same `VarMap` as the parameters, so they are saved with them; they
//! never receive gradients, so optimisers that skip gradient-less variables
//! (this crate's AdamW does) leave them alone. [`is_buffer`] names them.

use candle_core::{D, Tensor, Var};
use candle_nn::{Init, VarBuilder};

/// PyTorch's default batch-norm epsilon.
pub const BATCH_NORM_EPS: f64 = 1e-5;
/// PyTorch's default running-statistics momentum.
pub const BATCH_NORM_MOMENTUM: f64 = 0.1;

/// Whether a state-dict name is a batch-norm buffer (not a trainable
/// parameter).
pub fn is_buffer(name: &str) -> bool {
    name.ends_with("running_mean")
        || name.ends_with("running_var")
        || name.ends_with("num_batches_tracked")
}

/// `BatchNorm3d(C, eps 1e-5, momentum 0.1, affine)`.
#[derive(Debug, Clone)]
pub struct BatchNorm3d {
    weight: Tensor,
    bias: Tensor,
    running_mean: Var,
    running_var: Var,
    eps: f64,
    momentum: f64,
}

impl BatchNorm3d {
    /// Creates (or loads) `weight`, `bias`, `running_mean` and
    /// `running_var` (all `(C)`) under `vb`.
    ///
    /// # Errors
    /// Zero channels; a failed variable lookup.
    pub fn new(vb: VarBuilder, channels: usize) -> candle_core::Result<Self> {
        if channels == 0 {
            candle_core::bail!("BatchNorm3d: zero channels");
        }
        let weight = vb.get_with_hints(channels, "weight", Init::Const(1.0))?;
        let bias = vb.get_with_hints(channels, "bias", Init::Const(0.0))?;
        let running_mean = vb.get_with_hints(channels, "running_mean", Init::Const(0.0))?;
        let running_var = vb.get_with_hints(channels, "running_var", Init::Const(1.0))?;
        Ok(BatchNorm3d {
            weight,
            bias,
            running_mean: Var::from_tensor(&running_mean)?,
            running_var: Var::from_tensor(&running_var)?,
            eps: BATCH_NORM_EPS,
            momentum: BATCH_NORM_MOMENTUM,
        })
    }

    /// The running mean `(C)`.
    pub fn running_mean(&self) -> &Tensor {
        self.running_mean.as_tensor()
    }

    /// The running (unbiased) variance `(C)`.
    pub fn running_var(&self) -> &Tensor {
        self.running_var.as_tensor()
    }

    /// Normalises `x (B, C, ...)`: with batch statistics (and a running-stat
    /// update) when `train`, with the running statistics otherwise.
    ///
    /// # Errors
    /// A channel count that differs from the layer's; a single value per
    /// channel in training (as PyTorch refuses).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let dims = x.dims().to_vec();
        let c = self.weight.dim(0)?;
        if dims.len() < 2 || dims[1] != c {
            candle_core::bail!("BatchNorm3d({c}): input {dims:?}");
        }
        let b = dims[0];
        let flat = x.reshape((b, c, ()))?;
        let n = b * flat.dim(2)?;
        let (mean, var) = if train {
            if n < 2 {
                candle_core::bail!("BatchNorm3d: one value per channel in training");
            }
            let mean = (flat.sum_keepdim(D::Minus1)?.sum_keepdim(0)? / n as f64)?;
            let centred = flat.broadcast_sub(&mean)?;
            let var = (centred.sqr()?.sum_keepdim(D::Minus1)?.sum_keepdim(0)? / n as f64)?;
            let m = self.momentum;
            let new_mean = ((self.running_mean.as_tensor() * (1.0 - m))?
                + (mean.detach().flatten_all()? * m)?)?;
            let unbiased = (var.detach().flatten_all()? * (n as f64 / (n - 1) as f64))?;
            let new_var = ((self.running_var.as_tensor() * (1.0 - m))? + (unbiased * m)?)?;
            self.running_mean.set(&new_mean)?;
            self.running_var.set(&new_var)?;
            (mean, var)
        } else {
            (
                self.running_mean.as_tensor().reshape((1, c, 1))?,
                self.running_var.as_tensor().reshape((1, c, 1))?,
            )
        };
        let scale = self
            .weight
            .reshape((1, c, 1))?
            .broadcast_div(&(var + self.eps)?.sqrt()?)?;
        flat.broadcast_sub(&mean)?
            .broadcast_mul(&scale)?
            .broadcast_add(&self.bias.reshape((1, c, 1))?)?
            .reshape(dims)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};
    use candle_nn::{VarBuilder, VarMap};

    use super::*;
    use crate::seg::test_util::{assert_close, check_fd, f64s, tensor};

    /// Per-channel (mean, biased var) of (B, C, N) data in f64.
    fn stats(x: &[f64], b: usize, c: usize, n: usize) -> Vec<(f64, f64)> {
        (0..c)
            .map(|ci| {
                let vals: Vec<f64> = (0..b)
                    .flat_map(|bi| x[(bi * c + ci) * n..(bi * c + ci + 1) * n].iter().copied())
                    .collect();
                let m = vals.iter().sum::<f64>() / vals.len() as f64;
                let v = vals.iter().map(|x| (x - m).powi(2)).sum::<f64>() / vals.len() as f64;
                (m, v)
            })
            .collect()
    }

    fn layer(c: usize, dtype: DType) -> (BatchNorm3d, VarMap) {
        let vm = VarMap::new();
        let bn = BatchNorm3d::new(VarBuilder::from_varmap(&vm, dtype, &Device::Cpu), c).unwrap();
        (bn, vm)
    }

    #[test]
    fn training_uses_batch_statistics_and_updates_running_ones() {
        let (b, c, n) = (2, 3, 5 * 6 * 7);
        let (bn, vm) = layer(c, DType::F64);
        // Non-trivial affine parameters.
        for (name, var) in vm.data().lock().unwrap().iter() {
            if name == "weight" {
                var.set(&Tensor::new(&[0.5f64, 2.0, -1.0], &Device::Cpu).unwrap())
                    .unwrap();
            } else if name == "bias" {
                var.set(&Tensor::new(&[0.1f64, 0.0, 3.0], &Device::Cpu).unwrap())
                    .unwrap();
            }
        }
        let (w, bias) = ([0.5, 2.0, -1.0], [0.1, 0.0, 3.0]);
        let x = tensor(&[b, c, 5, 6, 7], 31, DType::F64)
            .affine(2.0, 0.7)
            .unwrap();
        let xv = f64s(&x);
        let st = stats(&xv, b, c, n);
        let got = f64s(&bn.forward_t(&x, true).unwrap());
        let want: Vec<f64> = (0..b * c * n)
            .map(|i| {
                let ci = (i / n) % c;
                let (m, v) = st[ci];
                (xv[i] - m) / (v + 1e-5).sqrt() * w[ci] + bias[ci]
            })
            .collect();
        assert_close(&got, &want, 1e-12, "train forward");
        let cnt = (b * n) as f64;
        let rm: Vec<f64> = st.iter().map(|(m, _)| 0.1 * m).collect();
        let rv: Vec<f64> = st
            .iter()
            .map(|(_, v)| 0.9 + 0.1 * v * cnt / (cnt - 1.0))
            .collect();
        assert_close(&f64s(bn.running_mean()), &rm, 1e-12, "running mean");
        assert_close(&f64s(bn.running_var()), &rv, 1e-12, "running var");
        // The update went into the VarMap, so checkpoints carry it.
        let saved = vm.data().lock().unwrap()["running_var"].as_tensor().clone();
        assert_close(&f64s(&saved), &rv, 1e-12, "saved running var");

        // Evaluation: the running statistics, no update.
        let got = f64s(&bn.forward_t(&x, false).unwrap());
        let want: Vec<f64> = (0..b * c * n)
            .map(|i| {
                let ci = (i / n) % c;
                (xv[i] - rm[ci]) / (rv[ci] + 1e-5).sqrt() * w[ci] + bias[ci]
            })
            .collect();
        assert_close(&got, &want, 1e-12, "eval forward");
        assert_close(&f64s(bn.running_var()), &rv, 1e-12, "eval leaves stats");
    }

    #[test]
    fn training_gradients_match_central_differences() {
        let shape = [2, 3, 2, 3, 2];
        let (bn, vm) = layer(3, DType::F64);
        let x = candle_core::Var::from_tensor(&tensor(&shape, 32, DType::F64)).unwrap();
        let r = tensor(&shape, 33, DType::F64);
        let loss = |t: &Tensor| (bn.forward_t(t, true)? * &r)?.sum_all();
        let grads = loss(x.as_tensor()).unwrap().backward().unwrap();
        let g = f64s(grads.get(x.as_tensor()).unwrap());
        check_fd(&f64s(x.as_tensor()), &shape, &g, loss, 1e-6);
        let data = vm.data().lock().unwrap();
        for name in ["weight", "bias"] {
            assert!(grads.get(data[name].as_tensor()).is_some(), "{name}");
        }
        for name in ["running_mean", "running_var"] {
            assert!(is_buffer(name));
            assert!(grads.get(data[name].as_tensor()).is_none(), "{name}");
        }
    }

    #[test]
    fn refuses_wrong_channels_and_single_values() {
        let (bn, _vm) = layer(3, DType::F32);
        assert!(
            bn.forward_t(&tensor(&[1, 2, 2, 2, 2], 1, DType::F32), true)
                .is_err()
        );
        assert!(
            bn.forward_t(&tensor(&[1, 3, 1, 1, 1], 1, DType::F32), true)
                .is_err()
        );
        assert!(
            bn.forward_t(&tensor(&[1, 3, 1, 1, 1], 1, DType::F32), false)
                .is_ok()
        );
    }
}
