//! `InstanceNorm3d(affine=False)` as MONAI's UNet blocks use it.
//!
//! On the CPU (f32/f64) it is a custom op with the analytic backward pass
//! `dx = (g − mean(g) − x̂·mean(g·x̂)) / σ` per (sample, channel), with f64
//! accumulators; on CUDA f32 tensors (feature `cuda`) the same op runs its
//! twin kernels (`cuda/fused.cu`: one block per row, f32 reductions), held
//! to the CPU op by `tests/cuda_kernels.rs`; the composed candle version (a
//! dozen full-size passes backward) serves other dtypes.

use candle_core::{CpuStorage, CustomOp1, D, DType, Layout, Shape, Tensor, WithDType};
use rayon::prelude::*;

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
    if x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64) {
        return x.contiguous()?.apply_op1(InstanceNormOp { eps });
    }
    #[cfg(feature = "cuda")]
    if x.device().is_cuda() && x.dtype() == DType::F32 {
        return x.contiguous()?.apply_op1(InstanceNormOp { eps });
    }
    instance_norm_composed(x, eps)
}

/// The composed (device-generic) instance norm.
pub(crate) fn instance_norm_composed(x: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let dims = x.dims().to_vec();
    let flat = x.reshape((dims[0], dims[1], ()))?;
    let mean = flat.mean_keepdim(D::Minus1)?;
    let centred = flat.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    centred.broadcast_div(&(var + eps)?.sqrt()?)?.reshape(dims)
}

/// Row length (voxels per sample and channel) of a `(B, C, ...)` shape.
fn row_len(dims: &[usize]) -> usize {
    dims[2..].iter().product::<usize>().max(1)
}

/// `(mean, 1/σ)` of a row, accumulated in f64.
fn row_stats<T: WithDType>(row: &[T], eps: f64) -> (f64, f64) {
    let n = row.len() as f64;
    let mean = row.iter().map(|v| v.to_f64()).sum::<f64>() / n;
    let var = row.iter().map(|v| (v.to_f64() - mean).powi(2)).sum::<f64>() / n;
    (mean, 1.0 / (var + eps).sqrt())
}

fn normalise<T: WithDType>(x: &[T], n: usize, eps: f64) -> Vec<T> {
    let mut y = vec![T::zero(); x.len()];
    y.par_chunks_mut(n)
        .zip(x.par_chunks(n))
        .for_each(|(dst, src)| {
            let (mean, inv) = row_stats(src, eps);
            for (d, s) in dst.iter_mut().zip(src) {
                *d = T::from_f64((s.to_f64() - mean) * inv);
            }
        });
    y
}

fn grad<T: WithDType>(x: &[T], g: &[T], n: usize, eps: f64) -> Vec<T> {
    let mut dx = vec![T::zero(); x.len()];
    dx.par_chunks_mut(n)
        .zip(x.par_chunks(n).zip(g.par_chunks(n)))
        .for_each(|(dst, (xs, gs))| {
            let (mean, inv) = row_stats(xs, eps);
            let len = xs.len() as f64;
            let (mut sg, mut sgx) = (0.0, 0.0);
            for (xv, gv) in xs.iter().zip(gs) {
                let (xh, gv) = ((xv.to_f64() - mean) * inv, gv.to_f64());
                sg += gv;
                sgx += gv * xh;
            }
            let (mg, mgx) = (sg / len, sgx / len);
            for ((d, xv), gv) in dst.iter_mut().zip(xs).zip(gs) {
                let xh = (xv.to_f64() - mean) * inv;
                *d = T::from_f64((gv.to_f64() - mg - xh * mgx) * inv);
            }
        });
    dx
}

/// Instance norm as a custom op (CPU; f32 and f64).
#[derive(Debug, Clone, Copy)]
struct InstanceNormOp {
    eps: f64,
}

impl CustomOp1 for InstanceNormOp {
    fn name(&self) -> &'static str {
        "instance-norm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let Some((a, b)) = l.contiguous_offsets() else {
            candle_core::bail!("instance_norm: non-contiguous input");
        };
        let n = row_len(l.dims());
        let out = match s {
            CpuStorage::F32(x) => CpuStorage::F32(normalise(&x[a..b], n, self.eps)),
            CpuStorage::F64(x) => CpuStorage::F64(normalise(&x[a..b], n, self.eps)),
            _ => candle_core::bail!("instance_norm: f32 or f64 input"),
        };
        Ok((out, l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use crate::cuda::storage::{gpu_of, view, wrap};
        let gpu = gpu_of(s)?;
        let y =
            crate::cuda::fused::instance_norm_fwd(&gpu, &view(s, l)?, row_len(l.dims()), self.eps);
        Ok((wrap(y, s)?, l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let n = row_len(x.dims());
        #[cfg(feature = "cuda")]
        if x.device().is_cuda() {
            let op = on_gpu::InstanceNormGrad {
                eps: self.eps,
                row: n,
            };
            return Ok(Some(x.apply_op2_no_bwd(&g.contiguous()?, &op)?));
        }
        fn run<T: WithDType>(
            x: &Tensor,
            g: &Tensor,
            n: usize,
            eps: f64,
        ) -> candle_core::Result<Tensor> {
            let xs = x.flatten_all()?.to_vec1::<T>()?;
            let gs = g.flatten_all()?.to_vec1::<T>()?;
            Tensor::from_vec(grad(&xs, &gs, n, eps), x.shape(), x.device())
        }
        Ok(Some(match x.dtype() {
            DType::F32 => run::<f32>(x, g, n, self.eps)?,
            DType::F64 => run::<f64>(x, g, n, self.eps)?,
            dt => candle_core::bail!("instance_norm: unsupported dtype {dt:?}"),
        }))
    }
}

/// The backward on CUDA tensors (feature `cuda`) as a candle op.
#[cfg(feature = "cuda")]
mod on_gpu {
    use candle_core::{CpuStorage, CudaStorage, CustomOp2, Layout, Shape};

    use crate::cuda::storage::{gpu_of, view, wrap};

    /// `(x, upstream gradient)` → the input gradient.
    pub(super) struct InstanceNormGrad {
        pub(super) eps: f64,
        /// Voxels per (sample, channel).
        pub(super) row: usize,
    }

    impl CustomOp2 for InstanceNormGrad {
        fn name(&self) -> &'static str {
            "instance-norm-grad"
        }

        fn cpu_fwd(
            &self,
            _: &CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
        ) -> candle_core::Result<(CpuStorage, Shape)> {
            candle_core::bail!("instance-norm-grad: CUDA tensors only")
        }

        fn cuda_fwd(
            &self,
            xs: &CudaStorage,
            xl: &Layout,
            gs: &CudaStorage,
            gl: &Layout,
        ) -> candle_core::Result<(CudaStorage, Shape)> {
            let gpu = gpu_of(xs)?;
            let dx = crate::cuda::fused::instance_norm_bwd(
                &gpu,
                &view(xs, xl)?,
                &view(gs, gl)?,
                self.row,
                self.eps,
            );
            Ok((wrap(dx, xs)?, xl.shape().clone()))
        }
    }
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
        // The composed version agrees, forward and backward.
        let composed = |t: &Tensor| (instance_norm_composed(t, 1e-5)? * &r)?.sum_all();
        assert!(
            (f64s(&instance_norm_composed(x.as_tensor(), 1e-5).unwrap())
                .iter()
                .zip(&yv)
                .all(|(a, b)| (a - b).abs() < 1e-12))
        );
        let gc = composed(x.as_tensor()).unwrap().backward().unwrap();
        let gc = f64s(gc.get(x.as_tensor()).unwrap());
        assert!(g.iter().zip(&gc).all(|(a, b)| (a - b).abs() < 1e-10));
        // f32 goes through the same op with f64 accumulators.
        let x32 = x.as_tensor().to_dtype(DType::F32).unwrap();
        let y32 = f64s(&instance_norm(&x32).unwrap());
        assert!(y32.iter().zip(&yv).all(|(a, b)| (a - b).abs() < 1e-5));
    }

    #[test]
    fn instance_norm_refuses_vectors() {
        assert!(instance_norm(&tensor(&[4, 5], 1, DType::F32)).is_err());
    }
}
