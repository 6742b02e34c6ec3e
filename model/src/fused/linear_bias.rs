//! A linear layer's product and bias add as one graph node: `y = x·Wᵀ + b`,
//! with autocast's bf16 casts inside the node.
//!
//! Composed, candle's graph keeps the product `x·Wᵀ` alive until the
//! backward, which needs only `x`, `W` and the output's gradient; under bf16
//! it also keeps `x`'s bf16 copy and, for a layer handing f32 on, the bf16
//! product besides its f32 cast. Per block that is the size of the qkv,
//! projection, fc1 and fc2 outputs once more. Here the value is computed by
//! the same ops on detached inputs (the same bits, on any device) and freed
//! at once; the graph records one node over `x`, `W` and `b`
//! (`attached.rs`) whose backward
//! recasts `x` and `W` (cheap next to the products) and is written out with
//! the products candle's own backward runs.

use candle_core::{DType, Result, Tensor};

use super::attached::{Backward, attach};

/// How the product is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Product {
    /// In the operands' dtype (f32, TF32 on CUDA, f64).
    Plain,
    /// bf16 operands with f32 accumulation (autocast), the product cast to
    /// `out` (bf16 for a hidden layer kept in bf16) and the bias cast to
    /// `out` before it is added.
    Bf16 { out: DType },
}

impl Product {
    /// What `precision::matmul` does for a left operand of dtype `x` under
    /// the autocast in force: bf16 under bf16 autocast (a bf16 `x`, an
    /// activation kept in bf16, gives an f32 product), else plain.
    pub(crate) fn autocast(x: DType) -> Product {
        crate::precision::bf16_product_dtype(x).map_or(Product::Plain, |out| Product::Bf16 { out })
    }

    /// `x·Wᵀ` with ordinary (differentiable) ops, for a layer without a
    /// bias too. Under bf16 the weight is cast after its transpose, as
    /// `precision::matmul` casts its right operand (the same bits).
    pub(crate) fn matmul(self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        match self {
            Product::Plain => x.matmul(&w.t()?),
            Product::Bf16 { out } => crate::precision::matmul_bf16(x, &w.t()?)?.to_dtype(out),
        }
    }

    /// The product and bias add with ordinary (differentiable) ops.
    fn composed(self, x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
        let y = self.matmul(x, w)?;
        match self {
            Product::Plain => y.broadcast_add(b),
            Product::Bf16 { out } => y.broadcast_add(&b.to_dtype(out)?),
        }
    }

    /// The dtype the products run in.
    fn compute(self, x: &Tensor) -> DType {
        match self {
            Product::Plain => x.dtype(),
            Product::Bf16 { .. } => DType::BF16,
        }
    }
}

/// `x·Wᵀ + b` for rows `x (n, in)`, `W (out, in)`, `b (out,)`, computed as
/// `product` says, as one graph node when an operand is tracked (else the
/// composed ops, which then keep nothing).
pub(crate) fn linear_bias(x: &Tensor, w: &Tensor, b: &Tensor, product: Product) -> Result<Tensor> {
    attach(
        [x, w, b],
        |x, w, b| product.composed(x, w, b),
        LinearBias { product },
    )
}

/// The backward of [`linear_bias`]'s node.
struct LinearBias {
    product: Product,
}

impl Backward for LinearBias {
    const NAME: &'static str = "linear-bias";

    /// With `G` the output's gradient cast to the product's dtype and
    /// `x`, `W` recast likewise: `∂x = G·W`, `∂W = Gᵀ·x`, `∂b = Σ_rows`
    /// of the gradient in the bias's added dtype; each cast back to its
    /// operand's dtype (the casts' own backward), and only for operands
    /// in the graph (the patch embedding's input is not: its product
    /// would be thrown away).
    fn backward(
        &self,
        [x, w, b]: [&Tensor; 3],
        [want_x, want_w, want_b]: [bool; 3],
        grad: &Tensor,
    ) -> Result<[Option<Tensor>; 3]> {
        let dtype = self.product.compute(x);
        let g = grad.to_dtype(dtype)?;
        let d_x = want_x
            .then(|| g.matmul(&w.to_dtype(dtype)?)?.to_dtype(x.dtype()))
            .transpose()?;
        // (out, n)·(n, in): W's gradient contiguous in W's layout.
        let d_w = want_w
            .then(|| g.t()?.matmul(&x.to_dtype(dtype)?)?.to_dtype(w.dtype()))
            .transpose()?;
        let d_b = want_b
            .then(|| grad.sum(0)?.to_dtype(b.dtype()))
            .transpose()?;
        Ok([d_x, d_w, d_b])
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Tensor, Var};

    use super::*;
    use crate::seg::test_util::{assert_close, check_fd, f64s, tensor};

    fn bits(t: &Tensor) -> Vec<u64> {
        f64s(t).iter().map(|v| v.to_bits()).collect()
    }

    /// Each product kind, with the input in f32 and (for bf16) in bf16: the
    /// same forward bits as the composed ops; gradients of every operand as
    /// theirs (bit for bit in the operands' dtype, within bf16's rounding of
    /// the products otherwise); one node over the three operands, so the
    /// graph keeps no product.
    #[test]
    fn fused_equals_composed_values_and_gradients() {
        let cases = [
            (Product::Plain, DType::F32),
            (Product::Bf16 { out: DType::BF16 }, DType::F32),
            (Product::Bf16 { out: DType::F32 }, DType::F32),
            (Product::Bf16 { out: DType::F32 }, DType::BF16),
        ];
        for (product, x_dtype) in cases {
            let what = format!("{product:?}, x {x_dtype:?}");
            let x = Var::from_tensor(&tensor(&[7, 12], 1, x_dtype)).unwrap();
            let w = Var::from_tensor(&tensor(&[5, 12], 2, DType::F32)).unwrap();
            let b = Var::from_tensor(&tensor(&[5], 3, DType::F32)).unwrap();
            let (xt, wt, bt) = (x.as_tensor(), w.as_tensor(), b.as_tensor());
            let fused = linear_bias(xt, wt, bt, product).unwrap();
            let plain = product.composed(xt, wt, bt).unwrap();
            assert_eq!(fused.dtype(), plain.dtype(), "{what}");
            assert_eq!(bits(&fused), bits(&plain), "{what}");
            assert_eq!(fused.sorted_nodes().len(), 4, "{what}");
            let seed = tensor(&[7, 5], 4, DType::F32)
                .to_dtype(fused.dtype())
                .unwrap();
            let gf = fused.backward_from(seed.clone()).unwrap();
            let gp = plain.backward_from(seed).unwrap();
            for (name, v) in [("x", xt), ("W", wt), ("b", bt)] {
                let (f, p) = (gf.get(v).expect(name), gp.get(v).expect(name));
                assert_eq!(f.dtype(), v.dtype(), "{what}: {name}");
                // No graph rides on a gradient (it would keep temporaries alive).
                assert!(!f.track_op(), "{name}: its gradient carries a graph");
                assert_eq!(f.dims(), v.dims(), "{what}: {name}");
                if product == Product::Plain {
                    assert_eq!(bits(f), bits(p), "{what}: {name}");
                } else {
                    // The same products; only W's memory order differs.
                    assert_close(&f64s(f), &f64s(p), 1e-2, &format!("{what}: {name}"));
                }
            }
        }
    }

    /// The gradients of the plain product against f64 central differences.
    #[test]
    fn gradients_match_central_differences() {
        let x0 = tensor(&[6, 4], 5, DType::F64);
        let w0 = tensor(&[3, 4], 6, DType::F64);
        let b0 = tensor(&[3], 7, DType::F64);
        let s = tensor(&[6, 3], 8, DType::F64);
        let loss = |x: &Tensor, w: &Tensor, b: &Tensor| {
            (linear_bias(x, w, b, Product::Plain)? * &s)?.sum_all()
        };
        let (x, w, b) = (
            Var::from_tensor(&x0).unwrap(),
            Var::from_tensor(&w0).unwrap(),
            Var::from_tensor(&b0).unwrap(),
        );
        let grads = loss(x.as_tensor(), w.as_tensor(), b.as_tensor())
            .unwrap()
            .backward()
            .unwrap();
        let grad = |v: &Var| f64s(grads.get(v.as_tensor()).unwrap());
        check_fd(&f64s(&x0), &[6, 4], &grad(&x), |t| loss(t, &w0, &b0), 1e-6);
        check_fd(&f64s(&w0), &[3, 4], &grad(&w), |t| loss(&x0, t, &b0), 1e-6);
        check_fd(&f64s(&b0), &[3], &grad(&b), |t| loss(&x0, &w0, t), 1e-6);
    }

    /// A constant input (the patch embedding's) gets no gradient; the
    /// parameters get theirs, as composed.
    #[test]
    fn a_constant_input_gets_no_gradient() {
        let x = tensor(&[4, 3], 12, DType::F32);
        let w = Var::from_tensor(&tensor(&[2, 3], 13, DType::F32)).unwrap();
        let b = Var::from_tensor(&tensor(&[2], 14, DType::F32)).unwrap();
        let fused = linear_bias(&x, w.as_tensor(), b.as_tensor(), Product::Plain).unwrap();
        let plain = Product::Plain
            .composed(&x, w.as_tensor(), b.as_tensor())
            .unwrap();
        let (gf, gp) = (fused.backward().unwrap(), plain.backward().unwrap());
        assert!(gf.get(&x).is_none());
        for v in [&w, &b] {
            assert_eq!(bits(gf.get(v).unwrap()), bits(gp.get(v).unwrap()));
        }
    }

    /// Without a tracked operand the composed ops run (no node at all).
    #[test]
    fn untracked_operands_give_a_plain_tensor() {
        let x = tensor(&[4, 3], 9, DType::F32);
        let w = tensor(&[2, 3], 10, DType::F32);
        let b = tensor(&[2], 11, DType::F32);
        let out = linear_bias(&x, &w, &b, Product::Plain).unwrap();
        assert!(!out.track_op());
        assert_eq!(
            bits(&out),
            bits(&Product::Plain.composed(&x, &w, &b).unwrap())
        );
    }
}
