//! LayerScale and the residual add as one graph node: `out = x`, then
//! `out[rows] += scale · (γ ⊙ branch)` (every row with scale 1 when there is
//! no subset drop path).
//!
//! Composed, candle's graph keeps `γ ⊙ branch` (and, under subset drop path,
//! its scaled copy) alive until the backward, which needs neither: one or
//! two tensors of the branch's size per residual, two residuals per block.
//! Here the value is computed by the same ops on detached inputs (so the
//! same bits, on any device) and freed at once, and the graph records one
//! node over `x`, `branch` and `γ` (`attached.rs`) whose backward is
//! written out with tensor ops.

use candle_core::{Result, Tensor};

use super::attached::{Backward, attach};

/// `x` with `scale · (γ ⊙ branch)` added to its rows `rows` (the rows of
/// `branch`, in order), or `x + γ ⊙ branch` when `rows` is `None` (then
/// `scale` must be 1: another is an error). `gamma` is `(E,)`, `branch` `(k, …, E)`.
///
/// Falls back to the composed ops when no operand is tracked (inference) or
/// the dtypes differ.
pub(crate) fn add_scaled_branch(
    x: &Tensor,
    branch: &Tensor,
    gamma: &Tensor,
    rows: Option<&Tensor>,
    scale: f64,
) -> Result<Tensor> {
    if rows.is_none() && scale != 1.0 {
        candle_core::bail!("layerscale-residual: a scale of {scale} needs a row subset")
    }
    let composed = |x: &Tensor, branch: &Tensor, gamma: &Tensor| -> Result<Tensor> {
        let r = branch.broadcast_mul(gamma)?;
        match rows {
            Some(rows) => x.index_add(rows, &(r * scale)?.to_dtype(x.dtype())?, 0),
            None => x + r,
        }
    };
    if branch.dtype() != x.dtype() || gamma.dtype() != x.dtype() {
        return composed(x, branch, gamma);
    }
    let node = ScaledBranch {
        rows: rows.cloned(),
        scale,
    };
    attach([x, branch, gamma], composed, node)
}

/// The backward of [`add_scaled_branch`]'s node.
struct ScaledBranch {
    rows: Option<Tensor>,
    scale: f64,
}

impl Backward for ScaledBranch {
    const NAME: &'static str = "layerscale-residual";

    /// `∂x = g`; with `g_k = scale · g[rows]`: `∂branch = g_k ⊙ γ` and
    /// `∂γ = Σ g_k ⊙ branch` over every axis but the last.
    fn backward(
        &self,
        [_x, branch, gamma]: [&Tensor; 3],
        [want_x, want_branch, want_gamma]: [bool; 3],
        grad: &Tensor,
    ) -> Result<[Option<Tensor>; 3]> {
        let g_rows = match &self.rows {
            Some(rows) => (grad.index_select(rows, 0)? * self.scale)?,
            None => grad.clone(),
        };
        let d_branch = want_branch
            .then(|| g_rows.broadcast_mul(gamma))
            .transpose()?;
        let d_gamma = want_gamma
            .then(|| {
                (&g_rows * branch)?
                    .reshape(((), gamma.elem_count()))?
                    .sum(0)?
                    .reshape(gamma.shape())
            })
            .transpose()?;
        Ok([want_x.then(|| grad.clone()), d_branch, d_gamma])
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor, Var};

    use super::*;
    use crate::seg::test_util::{assert_close, check_fd, f64s, tensor};

    fn composed(x: &Tensor, b: &Tensor, g: &Tensor, rows: Option<&Tensor>, s: f64) -> Tensor {
        let r = b.broadcast_mul(g).unwrap();
        match rows {
            Some(rows) => x.index_add(rows, &(r * s).unwrap(), 0).unwrap(),
            None => (x + r).unwrap(),
        }
    }

    fn rows() -> Tensor {
        Tensor::new(&[3u32, 0, 2], &Device::Cpu).unwrap()
    }

    /// Forward bits as composed; gradients of every operand as composed's,
    /// with and without a row subset; and the node keeps only its operands.
    #[test]
    fn fused_equals_composed_values_and_gradients() {
        for (rows, scale) in [(Some(rows()), 1.0 / 0.6), (None, 1.0)] {
            let k = if rows.is_some() { 3 } else { 4 };
            let x = Var::from_tensor(&tensor(&[4, 5, 6], 1, DType::F32)).unwrap();
            let b = Var::from_tensor(&tensor(&[k, 5, 6], 2, DType::F32)).unwrap();
            let g = Var::from_tensor(&tensor(&[6], 3, DType::F32)).unwrap();
            let w = tensor(&[4, 5, 6], 4, DType::F32);
            let (xt, bt, gt) = (x.as_tensor(), b.as_tensor(), g.as_tensor());
            let fused = add_scaled_branch(xt, bt, gt, rows.as_ref(), scale).unwrap();
            let plain = composed(xt, bt, gt, rows.as_ref(), scale);
            let bits = |t: &Tensor| -> Vec<u32> {
                let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
                v.iter().map(|v| v.to_bits()).collect()
            };
            assert_eq!(bits(&fused), bits(&plain), "rows {:?}", rows.is_some());
            // One node over the three leaves.
            assert_eq!(fused.sorted_nodes().len(), 4);
            let gf = (&fused * &w)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let gp = (&plain * &w)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            for (name, v) in [("x", xt), ("branch", bt), ("gamma", gt)] {
                let (a, b) = (gf.get(v).expect(name), gp.get(v).expect(name));
                // No graph rides on a gradient (it would keep temporaries alive).
                assert!(!a.track_op(), "{name}: its gradient carries a graph");
                assert_close(&f64s(a), &f64s(b), 1e-6, name);
            }
        }
    }

    /// The gradients against f64 central differences (subset rows).
    #[test]
    fn gradients_match_central_differences() {
        let x0 = tensor(&[4, 3, 5], 5, DType::F64);
        let b0 = tensor(&[3, 3, 5], 6, DType::F64);
        let g0 = tensor(&[5], 7, DType::F64);
        let w = tensor(&[4, 3, 5], 8, DType::F64);
        let rows = rows();
        let scale = 1.25;
        let loss = |x: &Tensor, b: &Tensor, g: &Tensor| {
            (add_scaled_branch(x, b, g, Some(&rows), scale)? * &w)?.sum_all()
        };
        let (x, b, g) = (
            Var::from_tensor(&x0).unwrap(),
            Var::from_tensor(&b0).unwrap(),
            Var::from_tensor(&g0).unwrap(),
        );
        let grads = loss(x.as_tensor(), b.as_tensor(), g.as_tensor())
            .unwrap()
            .backward()
            .unwrap();
        let grad = |v: &Var| f64s(grads.get(v.as_tensor()).unwrap());
        // Each operand in turn, the other two held as constants.
        check_fd(
            &f64s(&x0),
            &[4, 3, 5],
            &grad(&x),
            |t| loss(t, &b0, &g0),
            1e-6,
        );
        check_fd(
            &f64s(&b0),
            &[3, 3, 5],
            &grad(&b),
            |t| loss(&x0, t, &g0),
            1e-6,
        );
        check_fd(&f64s(&g0), &[5], &grad(&g), |t| loss(&x0, &b0, t), 1e-6);
    }

    /// Without a tracked operand the composed ops run (no node at all).
    #[test]
    fn untracked_operands_give_a_plain_tensor() {
        let x = tensor(&[4, 2, 3], 9, DType::F32);
        let b = tensor(&[4, 2, 3], 10, DType::F32);
        let g = tensor(&[3], 11, DType::F32);
        let out = add_scaled_branch(&x, &b, &g, None, 1.0).unwrap();
        assert!(!out.track_op());
        assert_eq!(f64s(&out), f64s(&composed(&x, &b, &g, None, 1.0)));
        assert!(add_scaled_branch(&x, &b, &g, None, 2.0).is_err());
    }
}
