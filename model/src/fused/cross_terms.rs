//! The DINO / iBOT cross term per row: `c = Σ_k t_k · log_softmax(s/τ)_k`.
//!
//! With `p = softmax(s/τ)` and `T = Σ_k t_k`: `c = Σ t·s/τ − T·lse(s/τ)` and
//! `∂c/∂s_k = (t_k − T·p_k)/τ`. The teacher side `t` is a constant (detached),
//! so it gets no gradient. Composed, this is about eight passes over the
//! (rows × 65,536) student logits forward and a dozen backward; fused, one
//! forward and two backward, each row by one thread in a fixed order.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{Float, cpu_rows, cpu_slice, fusable, sum_f64, sum3_f64};

/// Row-wise `Σ_k t_k · log_softmax(s / temp)_k` of `s, t (rows, K)`, shape
/// `(rows,)`; fused on the CPU, candle's composed ops elsewhere.
pub(crate) fn cross_terms(s: &Tensor, t: &Tensor, temp: f64) -> candle_core::Result<Tensor> {
    let t = t.detach();
    let (_, k) = s.dims2()?;
    if fusable(s) && fusable(&t) && t.dtype() == s.dtype() && t.dims() == s.dims() && k > 0 {
        return s
            .contiguous()?
            .apply_op2(&t.contiguous()?, CrossTermsOp { temp });
    }
    let ls = candle_nn::ops::log_softmax(&(s / temp)?, candle_core::D::Minus1)?;
    (t * ls)?.sum(candle_core::D::Minus1)
}

/// `(max of s/τ, Σ exp(s/τ − max))` of a row: the exponentials in the
/// row's own precision (as the backward's), summed in f64.
#[inline]
fn row_lse_parts<T: Float>(row: &[T], inv_temp: f64) -> (f64, f64) {
    let inv_t = T::from_f64(inv_temp);
    let max = row
        .iter()
        .fold(f64::NEG_INFINITY, |m, &v| m.max((v * inv_t).to_f64()));
    let max_t = T::from_f64(max);
    (max, sum_f64(row, |v| (v * inv_t - max_t).exp().to_f64()))
}

fn forward<T: Float>(s: &[T], t: &[T], k: usize, temp: f64) -> Vec<T> {
    let inv = 1.0 / temp;
    s.par_chunks(k)
        .zip(t.par_chunks(k))
        .with_min_len(4)
        .map(|(sr, tr)| {
            let (max, z) = row_lse_parts(sr, inv);
            let ts = sum3_f64(tr, sr, tr, |tv, sv, _| tv.to_f64() * sv.to_f64()) * inv;
            let total = sum_f64(tr, |v| v.to_f64());
            T::from_f64(ts - total * (max + z.ln()))
        })
        .collect()
}

/// `∂/∂s` for the upstream gradient `g (rows,)`.
fn backward<T: Float>(s: &[T], t: &[T], g: &[T], k: usize, temp: f64) -> Vec<T> {
    let inv = 1.0 / temp;
    let mut ds = vec![T::zero(); s.len()];
    ds.par_chunks_mut(k)
        .zip(s.par_chunks(k).zip(t.par_chunks(k)).zip(g.par_iter()))
        .with_min_len(4)
        .for_each(|(dr, ((sr, tr), &gr))| {
            let (max, z) = row_lse_parts(sr, inv);
            let total = sum_f64(tr, |v| v.to_f64());
            let gs = gr.to_f64() * inv;
            let (a, b) = (T::from_f64(gs), T::from_f64(gs * total / z));
            let (inv_t, max_t) = (T::from_f64(inv), T::from_f64(max));
            for ((o, &sv), &tv) in dr.iter_mut().zip(sr).zip(tr) {
                *o = a * tv - b * (sv * inv_t - max_t).exp();
            }
        });
    ds
}

/// The fused cross term (CPU; f32 and f64; contiguous inputs).
#[derive(Debug, Clone, Copy)]
struct CrossTermsOp {
    temp: f64,
}

impl CrossTermsOp {
    fn grad<T: Float>(&self, s: &Tensor, t: &Tensor, g: &Tensor) -> candle_core::Result<Tensor> {
        let g = g.contiguous()?;
        let k = s.dim(1)?;
        let ds = {
            let (ss, sl) = s.storage_and_layout();
            let (ts, tl) = t.storage_and_layout();
            let (gs, gl) = g.storage_and_layout();
            backward(
                cpu_slice::<T>(&ss, sl)?,
                cpu_slice::<T>(&ts, tl)?,
                cpu_slice::<T>(&gs, gl)?,
                k,
                self.temp,
            )
        };
        Tensor::from_vec(ds, s.shape(), s.device())
    }
}

impl CustomOp2 for CrossTermsOp {
    fn name(&self) -> &'static str {
        "fused-cross-terms"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, k) = l1.shape().dims2()?;
        let out = match s1 {
            CpuStorage::F32(_) => CpuStorage::F32(forward::<f32>(
                cpu_rows(s1, l1)?,
                cpu_rows(s2, l2)?,
                k,
                self.temp,
            )),
            CpuStorage::F64(_) => CpuStorage::F64(forward::<f64>(
                cpu_rows(s1, l1)?,
                cpu_rows(s2, l2)?,
                k,
                self.temp,
            )),
            _ => candle_core::bail!("fused cross terms: f32 or f64 input"),
        };
        Ok((out, Shape::from(rows)))
    }

    fn bwd(
        &self,
        s: &Tensor,
        t: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let ds = match s.dtype() {
            DType::F32 => self.grad::<f32>(s, t, g)?,
            DType::F64 => self.grad::<f64>(s, t, g)?,
            dt => candle_core::bail!("fused cross terms: unsupported dtype {dt:?}"),
        };
        // The teacher side is a constant.
        Ok((Some(ds), None))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{D, DType, Tensor, Var};

    use super::*;
    use crate::seg::test_util::{assert_close, check_fd, f64s, tensor};

    /// Independent f64 reference, straight from the definition.
    fn reference(s: &[f64], t: &[f64], k: usize, temp: f64) -> Vec<f64> {
        s.chunks(k)
            .zip(t.chunks(k))
            .map(|(sr, tr)| {
                let m = sr
                    .iter()
                    .map(|v| v / temp)
                    .fold(f64::NEG_INFINITY, f64::max);
                let lse = m + sr.iter().map(|v| (v / temp - m).exp()).sum::<f64>().ln();
                sr.iter()
                    .zip(tr)
                    .map(|(sv, tv)| tv * (sv / temp - lse))
                    .sum()
            })
            .collect()
    }

    /// Teacher rows that do not sum to one (as DINO's "other views" sums do).
    fn teacher(rows: usize, k: usize, seed: u64, dtype: DType) -> Tensor {
        (tensor(&[rows, k], seed, DType::F64).abs().unwrap() * 0.7)
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
    }

    #[test]
    fn cross_terms_match_an_f64_reference() {
        for (rows, k, temp) in [(1, 1, 0.1), (3, 7, 0.1), (5, 130, 0.04), (9, 33, 1.0)] {
            let s = (tensor(&[rows, k], 1, DType::F64) * 2.0).unwrap();
            let t = teacher(rows, k, 2, DType::F64);
            let want = reference(&f64s(&s), &f64s(&t), k, temp);
            assert_close(
                &f64s(&cross_terms(&s, &t, temp).unwrap()),
                &want,
                1e-12,
                "f64",
            );
            let (s32, t32) = (
                s.to_dtype(DType::F32).unwrap(),
                t.to_dtype(DType::F32).unwrap(),
            );
            assert_close(
                &f64s(&cross_terms(&s32, &t32, temp).unwrap()),
                &want,
                1e-4,
                "f32",
            );
        }
    }

    #[test]
    fn cross_terms_gradient_matches_central_differences() {
        let (rows, k) = (4, 11);
        let s = Var::from_tensor(&tensor(&[rows, k], 3, DType::F64)).unwrap();
        let t = teacher(rows, k, 4, DType::F64);
        let r = tensor(&[rows], 5, DType::F64);
        let loss = |x: &Tensor| (cross_terms(x, &t, 0.1)? * &r)?.sum_all();
        let grads = loss(s.as_tensor()).unwrap().backward().unwrap();
        let g = f64s(grads.get(s.as_tensor()).unwrap());
        check_fd(&f64s(s.as_tensor()), &[rows, k], &g, loss, 1e-6);
    }

    #[test]
    fn cross_terms_f32_gradient_matches_candles_composed_ops() {
        let (rows, k, temp) = (12, 257, 0.1);
        let s = Var::from_tensor(&tensor(&[rows, k], 6, DType::F32)).unwrap();
        let t = teacher(rows, k, 7, DType::F32);
        let r = tensor(&[rows], 8, DType::F32);
        let run = |fused: bool| {
            let x = s.as_tensor();
            let c = if fused {
                cross_terms(x, &t, temp).unwrap()
            } else {
                let ls = candle_nn::ops::log_softmax(&(x / temp).unwrap(), D::Minus1).unwrap();
                (&t * ls).unwrap().sum(D::Minus1).unwrap()
            };
            let g = (&c * &r).unwrap().sum_all().unwrap().backward().unwrap();
            (f64s(&c), f64s(g.get(x).unwrap()))
        };
        let ((c, g), (c_ref, g_ref)) = (run(true), run(false));
        assert_close(&c, &c_ref, 1e-5, "c");
        assert_close(&g, &g_ref, 1e-5, "ds");
    }

    #[test]
    fn cross_terms_do_not_depend_on_the_thread_count() {
        let (rows, k) = (37, 65);
        let s = Var::from_tensor(&tensor(&[rows, k], 9, DType::F32)).unwrap();
        let t = teacher(rows, k, 10, DType::F32);
        crate::fused::assert_same_bits_on_1_and_4_threads(|| {
            let c = cross_terms(s.as_tensor(), &t, 0.1).unwrap();
            let g = c.sum_all().unwrap().backward().unwrap();
            vec![c, g.get(s.as_tensor()).unwrap().clone()]
        });
    }

    #[test]
    fn other_dtypes_take_the_composed_path() {
        let s = tensor(&[3, 8], 11, DType::F64);
        let t = teacher(3, 8, 12, DType::F64);
        let want = f64s(&cross_terms(&s, &t, 0.5).unwrap());
        let (sb, tb) = (
            s.to_dtype(DType::BF16).unwrap(),
            t.to_dtype(DType::BF16).unwrap(),
        );
        assert_close(
            &f64s(&cross_terms(&sb, &tb, 0.5).unwrap()),
            &want,
            5e-2,
            "bf16",
        );
    }
}
