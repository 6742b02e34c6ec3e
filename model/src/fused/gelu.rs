//! Exact (erf) GELU: `y = x·Φ(x)`, `Φ(x) = (1 + erf(x/√2))/2`.
//!
//! Backward: `dx = g·(Φ(x) + x·φ(x))` with `φ(x) = e^(−x²/2)/√(2π)`, one pass
//! over `x` and `g` where candle's backward for `gelu_erf` is a dozen.

use std::f64::consts::{FRAC_1_SQRT_2, PI};

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};
use half::bf16;
use rayon::prelude::*;

use super::{Float, cpu_rows, cpu_slice, fusable_anywhere};

/// Elements per parallel task: an elementwise op needs no row structure.
const CHUNK: usize = 1 << 14;

/// `gelu_erf(x)`; fused on the CPU (f32, f64, and bf16 computed in f32)
/// and on CUDA (f32, bf16), candle's `gelu_erf` elsewhere.
pub(crate) fn gelu_erf(x: &Tensor) -> candle_core::Result<Tensor> {
    if fusable_anywhere(x) || (x.device().is_cpu() && x.dtype() == DType::BF16) {
        return x.contiguous()?.apply_op1(GeluOp);
    }
    #[cfg(feature = "cuda")]
    if super::on_gpu::gelu_fusable_on_gpu(x) {
        return x.contiguous()?.apply_op1(GeluOp);
    }
    x.gelu_erf()
}

/// `x·Φ(x)`, in the same order of operations as candle's `gelu_erf`.
/// Always inlined: called from the bf16 loops too, it stopped being
/// inlined into the f32 ones, which then ran scalar (a quarter of a CPU
/// step).
#[inline(always)]
fn gelu<T: Float>(v: T) -> T {
    let half = T::from_f64(0.5);
    ((v * T::from_f64(FRAC_1_SQRT_2)).erf() + T::one()) * half * v
}

#[inline(always)]
fn gelu_grad<T: Float>(v: T) -> T {
    let half = T::from_f64(0.5);
    let cdf = ((v * T::from_f64(FRAC_1_SQRT_2)).erf() + T::one()) * half;
    let pdf = (v * v * T::from_f64(-0.5)).exp_inline() * T::from_f64(1.0 / (2.0 * PI).sqrt());
    cdf + v * pdf
}

fn forward<T: Float>(x: &[T]) -> Vec<T> {
    let mut y = vec![T::zero(); x.len()];
    y.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(o, i)| o.iter_mut().zip(i).for_each(|(o, &v)| *o = gelu(v)));
    y
}

fn backward<T: Float>(x: &[T], g: &[T]) -> Vec<T> {
    let mut dx = vec![T::zero(); x.len()];
    dx.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK).zip(g.par_chunks(CHUNK)))
        .for_each(|(o, (xs, gs))| {
            for ((o, &v), &gv) in o.iter_mut().zip(xs).zip(gs) {
                *o = gv * gelu_grad(v);
            }
        });
    dx
}

/// [`forward`] on bf16 values, computed in f32 and rounded once, as
/// PyTorch's GELU on a bf16 tensor.
fn forward_bf16(x: &[bf16]) -> Vec<bf16> {
    let mut y = vec![bf16::ZERO; x.len()];
    y.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(o, i)| {
            o.iter_mut()
                .zip(i)
                .for_each(|(o, &v)| *o = bf16::from_f32(gelu(v.to_f32())))
        });
    y
}

/// [`backward`] on bf16 values, computed in f32 and rounded once.
fn backward_bf16(x: &[bf16], g: &[bf16]) -> Vec<bf16> {
    let mut dx = vec![bf16::ZERO; x.len()];
    dx.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK).zip(g.par_chunks(CHUNK)))
        .for_each(|(o, (xs, gs))| {
            for ((o, &v), &gv) in o.iter_mut().zip(xs).zip(gs) {
                *o = bf16::from_f32(gv.to_f32() * gelu_grad(v.to_f32()));
            }
        });
    dx
}

/// The fused GELU (CPU: f32, f64 and bf16; contiguous input).
#[derive(Debug, Clone, Copy)]
struct GeluOp;

impl GeluOp {
    fn grad<T: Float>(x: &Tensor, g: &Tensor) -> candle_core::Result<Tensor> {
        let g = g.contiguous()?;
        let dx = {
            let (xs, xl) = x.storage_and_layout();
            let (gs, gl) = g.storage_and_layout();
            backward(cpu_slice::<T>(&xs, xl)?, cpu_slice::<T>(&gs, gl)?)
        };
        Tensor::from_vec(dx, x.shape(), x.device())
    }
}

impl CustomOp1 for GeluOp {
    fn name(&self) -> &'static str {
        "fused-gelu-erf"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let out = match s {
            CpuStorage::F32(_) => CpuStorage::F32(forward::<f32>(cpu_rows(s, l)?)),
            CpuStorage::F64(_) => CpuStorage::F64(forward::<f64>(cpu_rows(s, l)?)),
            CpuStorage::BF16(_) => CpuStorage::BF16(forward_bf16(cpu_rows(s, l)?)),
            _ => candle_core::bail!("fused gelu: f32, f64 or bf16 input"),
        };
        Ok((out, l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use super::on_gpu::{gpu_of, view, view_bf16, wrap};
        use candle_core::backend::BackendStorage;
        let gpu = gpu_of(s)?;
        let out = if s.dtype() == DType::BF16 {
            wrap(crate::cuda::fused::gelu_fwd(&gpu, &view_bf16(s, l)?), s)?
        } else {
            wrap(crate::cuda::fused::gelu_fwd(&gpu, &view(s, l)?), s)?
        };
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        #[cfg(feature = "cuda")]
        if x.device().is_cuda() {
            return Ok(Some(super::on_gpu::gelu_grad(x, g)?));
        }
        Ok(Some(match x.dtype() {
            DType::F32 => Self::grad::<f32>(x, g)?,
            DType::F64 => Self::grad::<f64>(x, g)?,
            DType::BF16 => {
                let g = g.contiguous()?;
                let dx = {
                    let (xs, xl) = x.storage_and_layout();
                    let (gs, gl) = g.storage_and_layout();
                    backward_bf16(cpu_slice(&xs, xl)?, cpu_slice(&gs, gl)?)
                };
                Tensor::from_vec(dx, x.shape(), x.device())?
            }
            dt => candle_core::bail!("fused gelu: unsupported dtype {dt:?}"),
        }))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Tensor, Var};

    use super::*;
    use crate::seg::test_util::{assert_close, check_fd, f64s, tensor};

    /// Φ(x) by its series `1/2 + φ(x)·Σ x^(2k+1)/(1·3·…·(2k+1))`, independent
    /// of any erf implementation (converges fast for |x| ≤ 6).
    fn phi_cdf(x: f64) -> f64 {
        let (mut term, mut sum, mut k) = (x, x, 0.0);
        while term.abs() > 1e-18 * sum.abs().max(1e-300) {
            k += 1.0;
            term *= x * x / (2.0 * k + 1.0);
            sum += term;
        }
        0.5 + (-x * x / 2.0).exp() / (2.0 * PI).sqrt() * sum
    }

    #[test]
    fn gelu_forward_matches_an_f64_reference_and_candle() {
        let x = (tensor(&[3, 7, 5], 3, DType::F64) * 5.0).unwrap();
        let want: Vec<f64> = f64s(&x).iter().map(|&v| v * phi_cdf(v)).collect();
        assert_close(&f64s(&gelu_erf(&x).unwrap()), &want, 1e-13, "f64");
        let x32 = x.to_dtype(DType::F32).unwrap();
        assert_close(&f64s(&gelu_erf(&x32).unwrap()), &want, 1e-6, "f32");
        // candle's own forward (libm's erf) to f32 rounding, and a
        // non-contiguous input.
        let t = x32.transpose(1, 2).unwrap();
        assert!(!t.is_contiguous());
        let (ours, theirs) = (gelu_erf(&t).unwrap(), t.gelu_erf().unwrap());
        assert_close(&f64s(&ours), &f64s(&theirs), 4e-7, "candle");
    }

    #[test]
    fn gelu_gradient_matches_central_differences_and_candle() {
        let shape = [4, 5, 7];
        let x = Var::from_tensor(&(tensor(&shape, 5, DType::F64) * 4.0).unwrap()).unwrap();
        let r = tensor(&shape, 6, DType::F64);
        let loss = |t: &Tensor| (gelu_erf(t)? * &r)?.sum_all();
        let grads = loss(x.as_tensor()).unwrap().backward().unwrap();
        let g = f64s(grads.get(x.as_tensor()).unwrap());
        check_fd(&f64s(x.as_tensor()), &shape, &g, loss, 1e-6);
        // candle's backward (its φ constant is rounded to 0.398942) in f32.
        let x32 = Var::from_tensor(&x.as_tensor().to_dtype(DType::F32).unwrap()).unwrap();
        let r32 = r.to_dtype(DType::F32).unwrap();
        let grad = |y: Tensor| {
            let g = (y * &r32).unwrap().sum_all().unwrap().backward().unwrap();
            f64s(g.get(x32.as_tensor()).unwrap())
        };
        let ours = grad(gelu_erf(x32.as_tensor()).unwrap());
        let theirs = grad(x32.as_tensor().gelu_erf().unwrap());
        assert_close(&ours, &theirs, 1e-5, "dx");
    }

    /// bf16 on the CPU: the f32 GELU and its gradient rounded once to bf16
    /// (within one bf16 rounding, 2⁻⁸ relative, of the f64 reference), with
    /// a bf16 gradient; candle's bf16 GELU agrees to bf16 rounding.
    #[test]
    fn bf16_is_computed_in_f32_and_rounded_once() {
        let shape = [6, 50];
        let x64 = (tensor(&shape, 7, DType::F64) * 4.0).unwrap();
        let x = Var::from_tensor(&x64.to_dtype(DType::BF16).unwrap()).unwrap();
        let xs = f64s(x.as_tensor());
        let y = gelu_erf(x.as_tensor()).unwrap();
        assert_eq!(y.dtype(), DType::BF16);
        let want: Vec<f64> = xs.iter().map(|&v| v * phi_cdf(v)).collect();
        for (got, want) in f64s(&y).iter().zip(&want) {
            assert!(
                (got - want).abs() <= want.abs() * 2f64.powi(-8) + 1e-30,
                "{got} {want}"
            );
        }
        let theirs = f64s(&x.as_tensor().gelu_erf().unwrap());
        for (a, b) in f64s(&y).iter().zip(&theirs) {
            assert!((a - b).abs() <= b.abs() * 2f64.powi(-7) + 1e-30, "{a} {b}");
        }
        let r = tensor(&shape, 8, DType::F64).to_dtype(DType::BF16).unwrap();
        let rs = f64s(&r);
        let g = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let dx = g.get(x.as_tensor()).unwrap();
        assert_eq!(dx.dtype(), DType::BF16);
        for ((got, &v), &rv) in f64s(dx).iter().zip(&xs).zip(&rs) {
            let pdf = (-v * v / 2.0).exp() / (2.0 * PI).sqrt();
            let want = rv * (phi_cdf(v) + v * pdf);
            assert!(
                (got - want).abs() <= want.abs() * 2f64.powi(-8) + 1e-6,
                "{got} {want}"
            );
        }
    }
}
