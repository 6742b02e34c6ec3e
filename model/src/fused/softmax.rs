//! Softmax over the last axis with a folded-in scale: `y = softmax(s·x)`.
//!
//! Backward: `dx = s·y ⊙ (g − Σ g ⊙ y)` per row, one pass over `y` and `g`
//! (the input itself is not needed). Folding the scale in lets attention
//! skip a separate multiply of q, forward and backward.

use candle_core::{CpuStorage, CustomOp1, D, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{Float, cpu_rows, cpu_slice, fusable_anywhere, sum_f64, sum3_f64};

/// `softmax(scale·x)` over the last axis; fused on the CPU, candle's composed
/// (differentiable) softmax elsewhere.
pub(crate) fn softmax_last_dim(x: &Tensor, scale: f64) -> candle_core::Result<Tensor> {
    if fusable_anywhere(x) && x.rank() > 0 && x.dim(D::Minus1)? > 0 {
        return x.contiguous()?.apply_op1(SoftmaxOp { scale });
    }
    if scale == 1.0 {
        candle_nn::ops::softmax(x, D::Minus1)
    } else {
        candle_nn::ops::softmax(&(x * scale)?, D::Minus1)
    }
}

fn forward<T: Float>(x: &[T], n: usize, scale: f64) -> Vec<T> {
    let s = T::from_f64(scale);
    let mut y = vec![T::zero(); x.len()];
    y.par_chunks_mut(n)
        .zip(x.par_chunks(n))
        .with_min_len(8)
        .for_each(|(yr, xr)| {
            // The max of s·x (not of x), so a negative scale works too.
            let max = xr
                .iter()
                .fold(s * xr[0], |m, &v| if s * v > m { s * v } else { m });
            for (o, &v) in yr.iter_mut().zip(xr) {
                *o = (s * v - max).exp();
            }
            let inv = T::from_f64(1.0 / sum_f64(yr, |v| v.to_f64()));
            for o in yr.iter_mut() {
                *o *= inv;
            }
        });
    y
}

/// `dx` from the output `y` and the upstream gradient `g`.
fn backward<T: Float>(y: &[T], g: &[T], n: usize, scale: f64) -> Vec<T> {
    let s = T::from_f64(scale);
    let mut dx = vec![T::zero(); y.len()];
    dx.par_chunks_mut(n)
        .zip(y.par_chunks(n).zip(g.par_chunks(n)))
        .with_min_len(8)
        .for_each(|(dr, (yr, gr))| {
            let dot = T::from_f64(sum3_f64(yr, gr, yr, |yv, gv, _| (yv * gv).to_f64()));
            for ((o, &yv), &gv) in dr.iter_mut().zip(yr).zip(gr) {
                *o = s * yv * (gv - dot);
            }
        });
    dx
}

/// The fused softmax (CPU; f32 and f64; contiguous input).
#[derive(Debug, Clone, Copy)]
struct SoftmaxOp {
    scale: f64,
}

impl SoftmaxOp {
    fn grad<T: Float>(&self, y: &Tensor, g: &Tensor) -> candle_core::Result<Tensor> {
        let g = g.contiguous()?;
        let n = y.dim(D::Minus1)?;
        let dx = {
            let (ys, yl) = y.storage_and_layout();
            let (gs, gl) = g.storage_and_layout();
            backward(
                cpu_slice::<T>(&ys, yl)?,
                cpu_slice::<T>(&gs, gl)?,
                n,
                self.scale,
            )
        };
        Tensor::from_vec(dx, y.shape(), y.device())
    }
}

impl CustomOp1 for SoftmaxOp {
    fn name(&self) -> &'static str {
        "fused-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let n = *l.dims().last().unwrap_or(&1);
        let out = match s {
            CpuStorage::F32(_) => CpuStorage::F32(forward::<f32>(cpu_rows(s, l)?, n, self.scale)),
            CpuStorage::F64(_) => CpuStorage::F64(forward::<f64>(cpu_rows(s, l)?, n, self.scale)),
            _ => candle_core::bail!("fused softmax: f32 or f64 input"),
        };
        Ok((out, l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let gpu = super::on_gpu::gpu_of(s)?;
        let out = crate::cuda::fused::softmax_fwd(
            &gpu,
            &super::on_gpu::view(s, l)?,
            *l.dims().last().unwrap_or(&1),
            self.scale,
        );
        Ok((super::on_gpu::wrap(out, s)?, l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        #[cfg(feature = "cuda")]
        if y.device().is_cuda() {
            return Ok(Some(super::on_gpu::softmax_grad(y, g, self.scale)?));
        }
        Ok(Some(match y.dtype() {
            DType::F32 => self.grad::<f32>(y, g)?,
            DType::F64 => self.grad::<f64>(y, g)?,
            dt => candle_core::bail!("fused softmax: unsupported dtype {dt:?}"),
        }))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Tensor, Var};

    use super::*;
    use crate::seg::test_util::{assert_close, check_fd, f64s, tensor};

    /// Independent f64 reference of softmax(s·x) per row.
    fn reference(x: &[f64], n: usize, s: f64) -> Vec<f64> {
        let mut out = Vec::with_capacity(x.len());
        for row in x.chunks(n) {
            let m = row.iter().map(|v| s * v).fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = row.iter().map(|v| (s * v - m).exp()).collect();
            let z: f64 = e.iter().sum();
            out.extend(e.iter().map(|v| v / z));
        }
        out
    }

    #[test]
    fn softmax_forward_matches_an_f64_reference() {
        for (shape, s) in [
            (vec![1, 1], 1.0),
            (vec![3, 5, 7], 0.125),
            (vec![2, 13], -2.0),
            (vec![2, 3, 217], 1.0 / 8.0),
            (vec![9], 4.0),
        ] {
            let n = *shape.last().unwrap();
            let x = (tensor(&shape, 3, DType::F64) * 10.0).unwrap();
            let want = reference(&f64s(&x), n, s);
            assert_close(
                &f64s(&softmax_last_dim(&x, s).unwrap()),
                &want,
                1e-13,
                "f64",
            );
            let x32 = x.to_dtype(DType::F32).unwrap();
            assert_close(
                &f64s(&softmax_last_dim(&x32, s).unwrap()),
                &want,
                1e-6,
                "f32",
            );
        }
        // A transposed (non-contiguous) input.
        let x = tensor(&[6, 5], 4, DType::F64).t().unwrap();
        assert!(!x.is_contiguous());
        let want = reference(&f64s(&x.contiguous().unwrap()), 6, 3.0);
        assert_close(
            &f64s(&softmax_last_dim(&x, 3.0).unwrap()),
            &want,
            1e-13,
            "t",
        );
    }

    #[test]
    fn softmax_gradient_matches_central_differences() {
        let shape = [3, 4, 9];
        let x = Var::from_tensor(&(tensor(&shape, 5, DType::F64) * 3.0).unwrap()).unwrap();
        let r = tensor(&shape, 6, DType::F64);
        for s in [1.0, 0.3] {
            let loss = |t: &Tensor| (softmax_last_dim(t, s)? * &r)?.sum_all();
            let grads = loss(x.as_tensor()).unwrap().backward().unwrap();
            let g = f64s(grads.get(x.as_tensor()).unwrap());
            check_fd(&f64s(x.as_tensor()), &shape, &g, loss, 1e-6);
        }
    }

    #[test]
    fn softmax_f32_gradient_matches_candles_composed_softmax() {
        let shape = [4, 6, 31];
        let x = Var::from_tensor(&(tensor(&shape, 7, DType::F32) * 4.0).unwrap()).unwrap();
        let r = tensor(&shape, 8, DType::F32);
        let s = 0.125;
        let run = |fused: bool| {
            let t = x.as_tensor();
            let y = if fused {
                softmax_last_dim(t, s).unwrap()
            } else {
                candle_nn::ops::softmax(&(t * s).unwrap(), D::Minus1).unwrap()
            };
            let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            (f64s(&y), f64s(g.get(t).unwrap()))
        };
        let ((y, g), (y_ref, g_ref)) = (run(true), run(false));
        assert_close(&y, &y_ref, 1e-6, "y");
        assert_close(&g, &g_ref, 1e-5, "dx");
    }

    #[test]
    fn softmax_does_not_depend_on_the_thread_count() {
        let shape = [203, 33];
        let x = Var::from_tensor(&tensor(&shape, 9, DType::F32)).unwrap();
        let r = tensor(&shape, 10, DType::F32);
        crate::fused::assert_same_bits_on_1_and_4_threads(|| {
            let y = softmax_last_dim(x.as_tensor(), 0.7).unwrap();
            let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            vec![y, g.get(x.as_tensor()).unwrap().clone()]
        });
    }

    #[test]
    fn other_dtypes_take_the_composed_path() {
        let x = tensor(&[3, 6], 1, DType::F64);
        let want = f64s(&softmax_last_dim(&x, 2.0).unwrap());
        let bf = x.to_dtype(DType::BF16).unwrap();
        assert_close(
            &f64s(&softmax_last_dim(&bf, 2.0).unwrap()),
            &want,
            2e-2,
            "bf16",
        );
    }
}
