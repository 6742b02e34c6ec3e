//! PyTorch's `weight_norm(dim=0)` weight: row `k` of `w` is `g_k · v_k/‖v_k‖`.
//!
//! Backward, per row with `s = ‖v‖` and `u = v/s`: `dg = u·dw` and
//! `dv = (g/s)·(dw − u (u·dw))`. Composed, this is about five full passes over
//! the (65,536 × 256) prototype matrix forward and a dozen backward, on every
//! head call; fused, one each. Rows are independent (no cross-row sums), so
//! the result does not depend on the thread count.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{Float, cpu_rows, cpu_slice, fusable, sum_f64, sum3_f64};

/// `g · v / ‖v‖` row-wise, for `v (K, n)` and `g (K, 1)`; fused on the CPU,
/// composed (differentiable) candle ops elsewhere. A zero row gives NaN, as
/// PyTorch's does.
pub(crate) fn weight_norm(v: &Tensor, g: &Tensor) -> candle_core::Result<Tensor> {
    let (k, n) = v.dims2()?;
    if fusable(v) && fusable(g) && g.dtype() == v.dtype() && g.dims() == [k, 1] && n > 0 {
        return v.contiguous()?.apply_op2(&g.contiguous()?, WeightNormOp);
    }
    let norm = v.sqr()?.sum_keepdim(1)?.sqrt()?;
    v.broadcast_div(&norm)?.broadcast_mul(g)
}

fn forward<T: Float>(v: &[T], g: &[T], n: usize) -> Vec<T> {
    let mut w = vec![T::zero(); v.len()];
    w.par_chunks_mut(n)
        .zip(v.par_chunks(n).zip(g.par_iter()))
        .with_min_len(64)
        .for_each(|(wr, (vr, &gk))| {
            let s = sum_f64(vr, |x| x.to_f64() * x.to_f64()).sqrt();
            let scale = T::from_f64(gk.to_f64() / s);
            for (o, &x) in wr.iter_mut().zip(vr) {
                *o = x * scale;
            }
        });
    w
}

/// `(dv, dg)` for upstream gradient `dw`.
fn backward<T: Float>(v: &[T], g: &[T], dw: &[T], n: usize) -> (Vec<T>, Vec<T>) {
    let mut dv = vec![T::zero(); v.len()];
    let mut dg = vec![T::zero(); g.len()];
    dv.par_chunks_mut(n)
        .zip(dg.par_iter_mut())
        .zip(v.par_chunks(n).zip(dw.par_chunks(n)).zip(g.par_iter()))
        .with_min_len(64)
        .for_each(|((dvr, dgk), ((vr, dwr), &gk))| {
            let s = sum_f64(vr, |x| x.to_f64() * x.to_f64()).sqrt();
            // u·dw = (v·dw)/s
            let dot = sum3_f64(vr, dwr, vr, |x, d, _| x.to_f64() * d.to_f64()) / s;
            *dgk = T::from_f64(dot);
            let a = T::from_f64(gk.to_f64() / s);
            let b = T::from_f64(gk.to_f64() * dot / (s * s));
            for ((o, &x), &d) in dvr.iter_mut().zip(vr).zip(dwr) {
                *o = a * d - b * x;
            }
        });
    (dv, dg)
}

/// The fused weight norm (CPU; f32 and f64; contiguous inputs).
#[derive(Debug, Clone, Copy)]
struct WeightNormOp;

impl WeightNormOp {
    fn grads<T: Float>(
        v: &Tensor,
        g: &Tensor,
        dw: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let dw = dw.contiguous()?;
        let n = v.dim(1)?;
        let (dv, dg) = {
            let (vs, vl) = v.storage_and_layout();
            let (gs, gl) = g.storage_and_layout();
            let (ds, dl) = dw.storage_and_layout();
            backward(
                cpu_slice::<T>(&vs, vl)?,
                cpu_slice::<T>(&gs, gl)?,
                cpu_slice::<T>(&ds, dl)?,
                n,
            )
        };
        Ok((
            Tensor::from_vec(dv, v.shape(), v.device())?,
            Tensor::from_vec(dg, g.shape(), g.device())?,
        ))
    }
}

impl CustomOp2 for WeightNormOp {
    fn name(&self) -> &'static str {
        "fused-weight-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let n = *l1.dims().last().unwrap_or(&1);
        let out = match s1 {
            CpuStorage::F32(_) => {
                CpuStorage::F32(forward::<f32>(cpu_rows(s1, l1)?, cpu_rows(s2, l2)?, n))
            }
            CpuStorage::F64(_) => {
                CpuStorage::F64(forward::<f64>(cpu_rows(s1, l1)?, cpu_rows(s2, l2)?, n))
            }
            _ => candle_core::bail!("fused weight_norm: f32 or f64 input"),
        };
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        v: &Tensor,
        g: &Tensor,
        _res: &Tensor,
        dw: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (dv, dg) = match v.dtype() {
            DType::F32 => Self::grads::<f32>(v, g, dw)?,
            DType::F64 => Self::grads::<f64>(v, g, dw)?,
            dt => candle_core::bail!("fused weight_norm: unsupported dtype {dt:?}"),
        };
        Ok((Some(dv), Some(dg)))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Tensor, Var};

    use super::*;
    use crate::seg::test_util::{assert_close, check_fd, f64s, tensor};

    /// Independent f64 reference: each row scaled to length g.
    fn reference(v: &[f64], g: &[f64], n: usize) -> Vec<f64> {
        v.chunks(n)
            .zip(g)
            .flat_map(|(row, &gk)| {
                let s = row.iter().map(|x| x * x).sum::<f64>().sqrt();
                row.iter().map(move |x| gk * x / s)
            })
            .collect()
    }

    #[test]
    fn weight_norm_forward_matches_an_f64_reference() {
        for (k, n) in [(1, 1), (3, 7), (70, 5), (129, 33)] {
            let v = tensor(&[k, n], 1, DType::F64);
            let g = (tensor(&[k, 1], 2, DType::F64) * 3.0).unwrap();
            let want = reference(&f64s(&v), &f64s(&g), n);
            assert_close(&f64s(&weight_norm(&v, &g).unwrap()), &want, 1e-13, "f64");
            let (v32, g32) = (
                v.to_dtype(DType::F32).unwrap(),
                g.to_dtype(DType::F32).unwrap(),
            );
            assert_close(&f64s(&weight_norm(&v32, &g32).unwrap()), &want, 1e-5, "f32");
        }
        // A transposed (non-contiguous) v.
        let v = tensor(&[6, 4], 3, DType::F64).t().unwrap();
        assert!(!v.is_contiguous());
        let g = tensor(&[4, 1], 4, DType::F64);
        let want = reference(&f64s(&v.contiguous().unwrap()), &f64s(&g), 6);
        assert_close(&f64s(&weight_norm(&v, &g).unwrap()), &want, 1e-13, "t");
    }

    #[test]
    fn weight_norm_gradients_match_central_differences() {
        let (k, n) = (5, 7);
        let v = Var::from_tensor(&tensor(&[k, n], 5, DType::F64)).unwrap();
        let g = Var::from_tensor(&(tensor(&[k, 1], 6, DType::F64) * 2.0).unwrap()).unwrap();
        let r = tensor(&[k, n], 7, DType::F64);
        let grads = (weight_norm(v.as_tensor(), g.as_tensor()).unwrap() * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gv = f64s(grads.get(v.as_tensor()).unwrap());
        let gg = f64s(grads.get(g.as_tensor()).unwrap());
        let g_now = g.as_tensor().clone();
        check_fd(
            &f64s(v.as_tensor()),
            &[k, n],
            &gv,
            |t: &Tensor| (weight_norm(t, &g_now)? * &r)?.sum_all(),
            1e-6,
        );
        let v_now = v.as_tensor().clone();
        check_fd(
            &f64s(g.as_tensor()),
            &[k, 1],
            &gg,
            |t: &Tensor| (weight_norm(&v_now, t)? * &r)?.sum_all(),
            1e-6,
        );
    }

    #[test]
    fn weight_norm_f32_gradients_match_candles_composed_ops() {
        let (k, n) = (40, 24);
        let v = Var::from_tensor(&tensor(&[k, n], 8, DType::F32)).unwrap();
        let g = Var::from_tensor(&tensor(&[k, 1], 9, DType::F32)).unwrap();
        let r = tensor(&[k, n], 10, DType::F32);
        let run = |fused: bool| {
            let (vt, gt) = (v.as_tensor(), g.as_tensor());
            let w = if fused {
                weight_norm(vt, gt).unwrap()
            } else {
                let norm = vt.sqr().unwrap().sum_keepdim(1).unwrap().sqrt().unwrap();
                vt.broadcast_div(&norm).unwrap().broadcast_mul(gt).unwrap()
            };
            let grads = (&w * &r).unwrap().sum_all().unwrap().backward().unwrap();
            [
                f64s(&w),
                f64s(grads.get(vt).unwrap()),
                f64s(grads.get(gt).unwrap()),
            ]
        };
        let (got, want) = (run(true), run(false));
        for (name, (a, b)) in ["w", "dv", "dg"].iter().zip(got.iter().zip(&want)) {
            assert_close(a, b, 1e-5, name);
        }
    }

    #[test]
    fn weight_norm_does_not_depend_on_the_thread_count() {
        let (k, n) = (300, 19);
        let v = Var::from_tensor(&tensor(&[k, n], 11, DType::F32)).unwrap();
        let g = Var::from_tensor(&tensor(&[k, 1], 12, DType::F32)).unwrap();
        let r = tensor(&[k, n], 13, DType::F32);
        crate::fused::assert_same_bits_on_1_and_4_threads(|| {
            let w = weight_norm(v.as_tensor(), g.as_tensor()).unwrap();
            let grads = (&w * &r).unwrap().sum_all().unwrap().backward().unwrap();
            vec![
                w,
                grads.get(v.as_tensor()).unwrap().clone(),
                grads.get(g.as_tensor()).unwrap().clone(),
            ]
        });
    }

    #[test]
    fn other_dtypes_take_the_composed_path() {
        let v = tensor(&[4, 6], 14, DType::F64);
        let g = tensor(&[4, 1], 15, DType::F64);
        let want = f64s(&weight_norm(&v, &g).unwrap());
        let (vb, gb) = (
            v.to_dtype(DType::BF16).unwrap(),
            g.to_dtype(DType::BF16).unwrap(),
        );
        assert_close(&f64s(&weight_norm(&vb, &gb).unwrap()), &want, 3e-2, "bf16");
    }
}
