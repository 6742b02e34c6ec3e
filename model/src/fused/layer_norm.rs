//! Affine LayerNorm over the last axis: `y = (x − μ)/√(σ² + ε)·w + b`.
//!
//! Backward, per row with `x̂ = (x − μ)·r`, `r = 1/√(σ² + ε)` and `h = g·w`:
//! `dx = r·(h − mean(h) − x̂·mean(h·x̂))`; over all rows `dw = Σ g·x̂` and
//! `db = Σ g`. Row statistics and the row sums are accumulated in f64; the
//! row mean and variance are recomputed backward rather than stored (one
//! cheap pass over a row already in cache).

use candle_core::{CpuStorage, CustomOp3, D, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{Float, cpu_rows, cpu_slice, fusable_anywhere, sum_f64, sum3_f64};

/// Rows per partial sum of the weight and bias gradients: a constant, so the
/// partial sums, and the order they are added in, do not depend on how many
/// threads ran them.
const GRAD_BLOCK_ROWS: usize = 32;

/// LayerNorm of `x` over its last axis with `weight` and `bias` of that
/// length; fused on the CPU, candle's composed `layer_norm_slow` elsewhere.
pub(crate) fn layer_norm(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> candle_core::Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    let same = |t: &Tensor| {
        fusable_anywhere(t)
            && t.device().same_device(x.device())
            && t.dtype() == x.dtype()
            && t.dims() == [d]
    };
    if fusable_anywhere(x) && d > 0 && same(weight) && same(bias) {
        return x.contiguous()?.apply_op3(
            &weight.contiguous()?,
            &bias.contiguous()?,
            LayerNormOp { eps },
        );
    }
    candle_nn::ops::layer_norm_slow(x, weight, bias, eps as f32)
}

/// `(μ, 1/√(σ² + ε))` of a row (biased variance, two passes, f64).
#[inline]
fn row_stats<T: Float>(row: &[T], eps: f64) -> (f64, f64) {
    let n = row.len() as f64;
    let mean = sum_f64(row, |v| v.to_f64()) / n;
    let var = sum_f64(row, |v| (v.to_f64() - mean).powi(2)) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

fn forward<T: Float>(x: &[T], w: &[T], b: &[T], eps: f64) -> Vec<T> {
    let d = w.len();
    let mut y = vec![T::zero(); x.len()];
    y.par_chunks_mut(d)
        .zip(x.par_chunks(d))
        .with_min_len(8)
        .for_each(|(yr, xr)| {
            let (mean, rstd) = row_stats(xr, eps);
            let (mean, rstd) = (T::from_f64(mean), T::from_f64(rstd));
            for (((o, &v), &wv), &bv) in yr.iter_mut().zip(xr).zip(w).zip(b) {
                *o = (v - mean) * rstd * wv + bv;
            }
        });
    y
}

/// `(dx, dw, db)` for upstream gradient `g`.
fn backward<T: Float>(x: &[T], w: &[T], g: &[T], eps: f64) -> (Vec<T>, Vec<T>, Vec<T>) {
    let d = w.len();
    let block = GRAD_BLOCK_ROWS * d;
    let mut dx = vec![T::zero(); x.len()];
    // One `[dw | db]` partial sum per block of rows, in block order.
    let partials: Vec<Vec<f64>> = dx
        .par_chunks_mut(block)
        .zip(x.par_chunks(block).zip(g.par_chunks(block)))
        .map(|(dxb, (xb, gb))| {
            let mut acc = vec![0.0f64; 2 * d];
            let (dw, db) = acc.split_at_mut(d);
            for ((dxr, xr), gr) in dxb.chunks_mut(d).zip(xb.chunks(d)).zip(gb.chunks(d)) {
                let (mean, rstd) = row_stats(xr, eps);
                let n = d as f64;
                let mh = sum3_f64(gr, w, gr, |gv, wv, _| (gv * wv).to_f64()) / n;
                let mhx = sum3_f64(gr, w, xr, |gv, wv, xv| {
                    (gv * wv).to_f64() * (xv.to_f64() - mean) * rstd
                }) / n;
                let (mean, rstd) = (T::from_f64(mean), T::from_f64(rstd));
                let (mh, mhx) = (T::from_f64(mh), T::from_f64(mhx));
                for (((((o, &xv), &gv), &wv), dwj), dbj) in dxr
                    .iter_mut()
                    .zip(xr)
                    .zip(gr)
                    .zip(w)
                    .zip(dw.iter_mut())
                    .zip(db.iter_mut())
                {
                    let xh = (xv - mean) * rstd;
                    *o = rstd * (gv * wv - mh - xh * mhx);
                    *dwj += (gv * xh).to_f64();
                    *dbj += gv.to_f64();
                }
            }
            acc
        })
        .collect();
    let mut total = vec![0.0f64; 2 * d];
    for p in &partials {
        for (t, v) in total.iter_mut().zip(p) {
            *t += v;
        }
    }
    let (dw, db) = total.split_at(d);
    let cast = |v: &[f64]| v.iter().map(|&s| T::from_f64(s)).collect();
    (dx, cast(dw), cast(db))
}

/// The fused LayerNorm (CPU; f32 and f64; contiguous inputs).
#[derive(Debug, Clone, Copy)]
struct LayerNormOp {
    eps: f64,
}

impl LayerNormOp {
    fn grads<T: Float>(
        &self,
        x: &Tensor,
        w: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let g = g.contiguous()?;
        let (dx, dw, db) = {
            let (xs, xl) = x.storage_and_layout();
            let (ws, wl) = w.storage_and_layout();
            let (gs, gl) = g.storage_and_layout();
            backward(
                cpu_slice::<T>(&xs, xl)?,
                cpu_slice::<T>(&ws, wl)?,
                cpu_slice::<T>(&gs, gl)?,
                self.eps,
            )
        };
        Ok((
            Tensor::from_vec(dx, x.shape(), x.device())?,
            Tensor::from_vec(dw, w.shape(), w.device())?,
            Tensor::from_vec(db, w.shape(), w.device())?,
        ))
    }
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "fused-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let out = match s1 {
            CpuStorage::F32(_) => CpuStorage::F32(forward::<f32>(
                cpu_rows(s1, l1)?,
                cpu_rows(s2, l2)?,
                cpu_rows(s3, l3)?,
                self.eps,
            )),
            CpuStorage::F64(_) => CpuStorage::F64(forward::<f64>(
                cpu_rows(s1, l1)?,
                cpu_rows(s2, l2)?,
                cpu_rows(s3, l3)?,
                self.eps,
            )),
            _ => candle_core::bail!("fused layer_norm: f32 or f64 input"),
        };
        Ok((out, l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use super::on_gpu::view;
        let gpu = super::on_gpu::gpu_of(s1)?;
        let out = crate::cuda::fused::layer_norm_fwd(
            &gpu,
            &view(s1, l1)?,
            &view(s2, l2)?,
            &view(s3, l3)?,
            self.eps,
        );
        Ok((super::on_gpu::wrap(out, s1)?, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        #[cfg(feature = "cuda")]
        if x.device().is_cuda() {
            let (dx, dw, db) = super::on_gpu::layer_norm_grads(x, w, g, self.eps)?;
            return Ok((Some(dx), Some(dw), Some(db)));
        }
        let (dx, dw, db) = match x.dtype() {
            DType::F32 => self.grads::<f32>(x, w, g)?,
            DType::F64 => self.grads::<f64>(x, w, g)?,
            dt => candle_core::bail!("fused layer_norm: unsupported dtype {dt:?}"),
        };
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Tensor, Var};

    use super::*;
    use crate::seg::test_util::{assert_close, check_fd, f64s, tensor};

    const EPS: f64 = 1e-6;

    /// Independent f64 reference: row by row, straight from the definition.
    fn reference(x: &[f64], w: &[f64], b: &[f64]) -> Vec<f64> {
        let d = w.len();
        let mut out = Vec::with_capacity(x.len());
        for row in x.chunks(d) {
            let mean = row.iter().sum::<f64>() / d as f64;
            let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / d as f64;
            for (j, v) in row.iter().enumerate() {
                out.push((v - mean) / (var + EPS).sqrt() * w[j] + b[j]);
            }
        }
        out
    }

    fn params(d: usize, dtype: DType) -> (Tensor, Tensor) {
        // Weights around 1 and biases around 0, as trained ones are.
        let w = tensor(&[d], 11, DType::F64).affine(0.5, 1.0).unwrap();
        let b = tensor(&[d], 12, DType::F64);
        (w.to_dtype(dtype).unwrap(), b.to_dtype(dtype).unwrap())
    }

    #[test]
    fn layer_norm_forward_matches_an_f64_reference() {
        for shape in [
            vec![1, 1],
            vec![3, 5, 7],
            vec![2, 13],
            vec![17, 384],
            vec![4, 9],
        ] {
            let d = *shape.last().unwrap();
            let (w, b) = params(d, DType::F64);
            let x = tensor(&shape, 3, DType::F64).affine(3.0, 0.5).unwrap();
            let want = reference(&f64s(&x), &f64s(&w), &f64s(&b));
            let got = f64s(&layer_norm(&x, &w, &b, EPS).unwrap());
            assert_close(&got, &want, 1e-12, "f64");
            let (w32, b32) = params(d, DType::F32);
            let x32 = x.to_dtype(DType::F32).unwrap();
            let got = f64s(&layer_norm(&x32, &w32, &b32, EPS).unwrap());
            assert_close(&got, &want, 1e-5, "f32");
        }
        // A transposed (non-contiguous) input is normalised along its own last axis.
        let x = tensor(&[7, 5], 4, DType::F64).t().unwrap();
        assert!(!x.is_contiguous());
        let (w, b) = params(7, DType::F64);
        let want = reference(&f64s(&x.contiguous().unwrap()), &f64s(&w), &f64s(&b));
        assert_close(
            &f64s(&layer_norm(&x, &w, &b, EPS).unwrap()),
            &want,
            1e-12,
            "t",
        );
    }

    #[test]
    fn layer_norm_gradients_match_central_differences() {
        let shape = [3, 4, 11];
        let x = Var::from_tensor(&tensor(&shape, 5, DType::F64)).unwrap();
        let (w, b) = params(11, DType::F64);
        let (w, b) = (Var::from_tensor(&w).unwrap(), Var::from_tensor(&b).unwrap());
        let r = tensor(&shape, 6, DType::F64);
        let loss = |x: &Tensor, w: &Tensor, b: &Tensor| (layer_norm(x, w, b, EPS)? * &r)?.sum_all();
        let grads = loss(&x, &w, &b).unwrap().backward().unwrap();
        let grad = |v: &Var| f64s(grads.get(v.as_tensor()).unwrap());
        let (xt, wt, bt) = (x.as_tensor(), w.as_tensor(), b.as_tensor());
        check_fd(&f64s(xt), &shape, &grad(&x), |t| loss(t, wt, bt), 1e-6);
        check_fd(&f64s(wt), &[11], &grad(&w), |t| loss(xt, t, bt), 1e-6);
        check_fd(&f64s(bt), &[11], &grad(&b), |t| loss(xt, wt, t), 1e-6);
    }

    #[test]
    fn layer_norm_f32_gradients_match_candles_composed_layer_norm() {
        let shape = [5, 9, 24];
        let x = Var::from_tensor(&(tensor(&shape, 7, DType::F32) * 2.0).unwrap()).unwrap();
        let (w, b) = params(24, DType::F32);
        let (w, b) = (Var::from_tensor(&w).unwrap(), Var::from_tensor(&b).unwrap());
        let r = tensor(&shape, 8, DType::F32);
        let vars = [&x, &w, &b];
        let run = |fused: bool| {
            let (xt, wt, bt) = (x.as_tensor(), w.as_tensor(), b.as_tensor());
            let y = if fused {
                layer_norm(xt, wt, bt, EPS).unwrap()
            } else {
                candle_nn::ops::layer_norm_slow(xt, wt, bt, EPS as f32).unwrap()
            };
            let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let gs: Vec<Vec<f64>> = vars
                .iter()
                .map(|v| f64s(g.get(v.as_tensor()).unwrap()))
                .collect();
            (f64s(&y), gs)
        };
        let (y, g) = run(true);
        let (y_ref, g_ref) = run(false);
        assert_close(&y, &y_ref, 1e-5, "y");
        for (name, (a, b)) in ["dx", "dw", "db"].iter().zip(g.iter().zip(&g_ref)) {
            assert_close(a, b, 1e-4, name);
        }
    }

    #[test]
    fn layer_norm_gradients_do_not_depend_on_the_thread_count() {
        // 301 rows: nine blocks of GRAD_BLOCK_ROWS and a partial one. f64
        // shows any regrouping of the row sums in its last bits; in f32 the
        // rounding of f64 partial sums hides most of it, but it must hold too.
        for dtype in [DType::F64, DType::F32] {
            let shape = [301, 40];
            let x = Var::from_tensor(&tensor(&shape, 9, dtype)).unwrap();
            let (w, b) = params(40, dtype);
            let (w, b) = (Var::from_tensor(&w).unwrap(), Var::from_tensor(&b).unwrap());
            let r = tensor(&shape, 10, dtype);
            let run = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                pool.install(|| {
                    let y = layer_norm(x.as_tensor(), w.as_tensor(), b.as_tensor(), EPS).unwrap();
                    let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
                    // f32 → f64 is exact, so comparing f64 bits compares both.
                    [x.as_tensor(), w.as_tensor(), b.as_tensor()].map(|v| f64s(g.get(v).unwrap()))
                })
            };
            let (one, four) = (run(1), run(4));
            for (name, (a, b)) in ["dx", "dw", "db"].iter().zip(one.iter().zip(&four)) {
                assert!(
                    a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits()),
                    "{name} ({dtype:?}) depends on the thread count"
                );
            }
        }
    }

    #[test]
    fn other_dtypes_take_the_composed_path() {
        let x = tensor(&[3, 6], 1, DType::F64);
        let (w, b) = params(6, DType::F64);
        let want = f64s(&layer_norm(&x, &w, &b, EPS).unwrap());
        let bf = |t: &Tensor| t.to_dtype(DType::BF16).unwrap();
        let got = f64s(&layer_norm(&bf(&x), &bf(&w), &bf(&b), EPS).unwrap());
        assert_close(&got, &want, 3e-2, "bf16");
        // Mixed devices or dtypes are not fused either, and candle reports them.
        let w32 = w.to_dtype(DType::F32).unwrap();
        assert!(layer_norm(&x, &w32, &b, EPS).is_err());
    }
}
