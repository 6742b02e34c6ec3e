//! Checks of the patched candle-core (vendor/candle-core, see its
//! PATCHED.md): `Tensor::backward` and sums over leading axes. The first gradient of a node is stored as it arrives, views
//! included. Ops that are not views get contiguous gradients, and so do the
//! variables. A transposed right matmul operand gets a contiguous gradient.
//! Each graph is checked against f64 central differences or a hand-written
//! gradient.

use candle_core::{D, DType, Tensor, Var};

use crate::seg::test_util::{assert_close, check_fd, f64s, tensor};

/// Reshape, transpose, permute, narrow, `contiguous`, broadcast and a
/// tensor used twice: the ops whose backward now stores views.
fn view_graph(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    let (a, b, c) = x.dims3()?;
    let y = x
        .reshape((a * b, c))?
        .t()?
        .contiguous()?
        .reshape((c, a, b))?
        .permute((1, 2, 0))?;
    // Two narrows of the same permuted view, one scaled by a broadcast row.
    let left = y
        .narrow(2, 0, c / 2)?
        .broadcast_mul(&w.narrow(0, 0, c / 2)?)?;
    let right = y.narrow(2, c / 2, c - c / 2)?;
    let z = Tensor::cat(&[&left, &right], 2)?;
    // z is used twice: the second gradient is added to the first.
    (z.sqr()?.sum_all()? + (z.sum(D::Minus1)?.sqr()?.sum_all()? * 0.5)?)? + x.sum_all()?
}

#[test]
fn view_heavy_graph_matches_central_differences() {
    let x0 = tensor(&[3, 4, 5], 1, DType::F64);
    let w = tensor(&[5], 2, DType::F64);
    let x = Var::from_tensor(&x0).unwrap();
    let grads = view_graph(x.as_tensor(), &w).unwrap().backward().unwrap();
    let g = grads.get(x.as_tensor()).expect("x has a gradient");
    assert!(g.is_contiguous(), "a variable's gradient is contiguous");
    check_fd(
        &f64s(&x0),
        &[3, 4, 5],
        &f64s(g),
        |t| view_graph(t, &w),
        1e-6,
    );
}

/// `x · Wᵀ` with W (out, in): dW = gᵀ·x, by loops, and contiguous.
#[test]
fn transposed_weight_gets_a_contiguous_gradient() {
    let (rows, din, dout) = (7, 5, 3);
    let x = tensor(&[rows, din], 3, DType::F64);
    let w = Var::from_tensor(&tensor(&[dout, din], 4, DType::F64)).unwrap();
    let c = tensor(&[rows, dout], 5, DType::F64);
    let y = x.matmul(&w.as_tensor().t().unwrap()).unwrap();
    let grads = (y * &c).unwrap().sum_all().unwrap().backward().unwrap();
    let gw = grads.get(w.as_tensor()).expect("W has a gradient");
    assert!(gw.is_contiguous());
    assert_eq!(gw.dims(), &[dout, din]);
    let (xv, cv) = (f64s(&x), f64s(&c));
    let mut want = vec![0.0; dout * din];
    for o in 0..dout {
        for i in 0..din {
            want[o * din + i] = (0..rows).map(|r| cv[r * dout + o] * xv[r * din + i]).sum();
        }
    }
    assert_close(&f64s(gw), &want, 1e-12, "dW");
}

/// Attention's layout: the output is transposed back before the
/// projection, so the batched matmul's backward receives a transposed
/// gradient (which candle's batched matmul cannot take as it is).
fn attention_like(q: &Tensor, k: &Tensor, v: &Tensor) -> candle_core::Result<Tensor> {
    let (b, h, t, d) = q.dims4()?;
    let a = candle_nn::ops::softmax(&q.matmul(&k.t()?)?, D::Minus1)?;
    let out = a
        .matmul(v)?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((b, t, h * d))?;
    let weights = tensor(&[b, t, h * d], 9, q.dtype());
    (out * weights)?.sum_all()
}

#[test]
fn transposed_gradient_into_batched_matmul() {
    let shape = [2, 3, 4, 2];
    let q0 = tensor(&shape, 6, DType::F64);
    let (k, v) = (tensor(&shape, 7, DType::F64), tensor(&shape, 8, DType::F64));
    let q = Var::from_tensor(&q0).unwrap();
    let grads = attention_like(q.as_tensor(), &k, &v)
        .unwrap()
        .backward()
        .unwrap();
    let g = grads.get(q.as_tensor()).expect("q has a gradient");
    check_fd(
        &f64s(&q0),
        &shape,
        &f64s(g),
        |t| attention_like(t, &k, &v),
        1e-6,
    );
}

/// A variable reached only through a permute keeps a contiguous gradient
/// whose entries are the permuted upstream gradient.
#[test]
fn permuted_variable_gradient_is_contiguous() {
    let x = Var::from_tensor(&tensor(&[2, 3, 4], 10, DType::F32)).unwrap();
    let c = tensor(&[4, 2, 3], 11, DType::F32);
    let loss = (x.as_tensor().permute((2, 0, 1)).unwrap() * &c)
        .unwrap()
        .sum_all()
        .unwrap();
    let grads = loss.backward().unwrap();
    let g = grads.get(x.as_tensor()).expect("x has a gradient");
    assert!(g.is_contiguous());
    let want = c.permute((1, 2, 0)).unwrap();
    assert_eq!(f64s(g), f64s(&want));
}

/// Sums over the leading axes (bias gradients) take the patched row-wise
/// path; a strided view of the same values takes candle's generic loop.
/// Both add in the same order, so they agree bit for bit, and match an f64
/// sum.
#[test]
fn leading_axis_sums_match_the_generic_path_bit_for_bit() {
    let x = tensor(&[6, 5, 7], 12, DType::F32);
    let view = Tensor::cat(&[&x, &x], 2).unwrap().narrow(2, 0, 7).unwrap();
    assert!(!view.is_contiguous());
    for dims in [vec![0usize], vec![0, 1]] {
        let fast = f64s(&x.sum_keepdim(dims.as_slice()).unwrap());
        let generic = f64s(&view.sum_keepdim(dims.as_slice()).unwrap());
        assert_eq!(fast, generic, "sum over {dims:?}");
        let xv = f64s(&x);
        let rows = if dims.len() == 1 { 6 } else { 30 };
        let cols = 210 / rows;
        let want: Vec<f64> = (0..cols)
            .map(|c| (0..rows).map(|r| xv[r * cols + c]).sum())
            .collect();
        assert_close(&fast, &want, 1e-6, "f64 sum");
    }
}

/// bf16 rows (a bf16 layer's bias gradient) are summed in f32 and rounded
/// once: within one bf16 rounding of the f64 sum over 4096 rows, where
/// adding in bf16 would drift by far more (and lose the small terms).
#[test]
fn leading_axis_bf16_sums_are_accumulated_in_f32() {
    let (rows, cols) = (4096, 5);
    let v: Vec<f32> = (0..rows * cols)
        .map(|i| 1.0 + ((i * 7919) % 101) as f32 / 1000.0)
        .collect();
    let x = Tensor::from_vec(v, (rows, cols), &candle_core::Device::Cpu)
        .unwrap()
        .to_dtype(DType::BF16)
        .unwrap();
    let xv = f64s(&x);
    let got = f64s(&x.sum_keepdim(0).unwrap());
    for (c, g) in got.iter().enumerate() {
        let want: f64 = (0..rows).map(|r| xv[r * cols + c]).sum();
        assert!(
            (g - want).abs() <= want * 2f64.powi(-8),
            "column {c}: {g} vs {want}"
        );
    }
}

/// `backward_from(seed)` gives the gradients of `sum(out · seed)` (here
/// against central differences of that sum), stores none for the seed, and
/// refuses a seed of another shape.
#[test]
fn seeded_backward_is_the_gradient_of_the_seeded_sum() {
    let x0 = tensor(&[3, 4, 5], 3, DType::F64);
    let w = tensor(&[5], 4, DType::F64);
    let seed = tensor(&[3, 4, 5], 5, DType::F64);
    let x = Var::from_tensor(&x0).unwrap();
    let out = |x: &Tensor| x.sqr()?.broadcast_mul(&w)?.tanh();
    let grads = out(x.as_tensor())
        .unwrap()
        .backward_from(seed.clone())
        .unwrap();
    assert!(grads.get(&seed).is_none(), "the seed gets no gradient");
    let g = grads.get(x.as_tensor()).expect("x has a gradient");
    check_fd(
        &f64s(&x0),
        &[3, 4, 5],
        &f64s(g),
        |x: &Tensor| (out(x)? * &seed)?.sum_all(),
        1e-6,
    );
    let wrong = tensor(&[3, 4, 4], 6, DType::F64);
    assert!(out(x.as_tensor()).unwrap().backward_from(wrong).is_err());
}

/// `detach_as_leaf` shares the values (no copy), starts a new leaf: a
/// backward stops there and leaves the leaf its gradient, and nothing
/// reaches the variables behind it.
#[test]
fn a_leaf_detached_in_place_stops_the_backward_and_keeps_its_gradient() {
    let x = Var::from_tensor(&tensor(&[4, 6], 7, DType::F64)).unwrap();
    let y = x.as_tensor().sqr().unwrap();
    let leaf = y.detach_as_leaf();
    assert!(leaf.is_variable());
    assert_eq!(f64s(&leaf), f64s(&y));
    let (a, b) = (leaf.storage_and_layout().0, y.storage_and_layout().0);
    assert!(std::ptr::eq(&*a, &*b), "the storage is shared, not copied");
    drop((a, b));
    let grads = (&leaf * 3.0)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert_close(
        &f64s(grads.get(&leaf).expect("the leaf's gradient")),
        &[3.0; 24],
        0.0,
        "the leaf's gradient",
    );
    assert!(
        grads.get(x.as_tensor()).is_none(),
        "the backward stops at the leaf"
    );
}

/// `backward_from_with` reports each variable once, when its gradient is
/// final: at that moment it equals the gradient the whole backward ends
/// with, also for a variable read by several ops far apart in the graph
/// (a weight shared by two "layers", as the global and local passes share
/// the blocks). A variable the walk does not reach is not reported.
#[test]
fn each_variable_is_reported_once_with_its_final_gradient() {
    let x0 = tensor(&[4, 5], 8, DType::F64);
    let w = Var::from_tensor(&tensor(&[5, 5], 9, DType::F64)).unwrap();
    let b = Var::from_tensor(&tensor(&[5], 10, DType::F64)).unwrap();
    let unused = Var::from_tensor(&tensor(&[3], 11, DType::F64)).unwrap();
    let x = Var::from_tensor(&x0).unwrap();
    let layer = |h: &Tensor| -> candle_core::Result<Tensor> {
        h.matmul(w.as_tensor())?
            .broadcast_add(b.as_tensor())?
            .tanh()
    };
    let out = layer(&layer(x.as_tensor()).unwrap())
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap();
    // `unused` enters the loss multiplied by zero: candle's walk stops at
    // an affine by zero, so it is not in the graph at all.
    let out = (out + (unused.as_tensor().sum_all().unwrap() * 0.0).unwrap()).unwrap();
    let mut seen: Vec<(candle_core::TensorId, Option<Vec<f64>>)> = Vec::new();
    let grads = out
        .backward_from_with(out.ones_like().unwrap(), &mut |leaf, grads| {
            seen.push((leaf.id(), grads.get(leaf).map(f64s)));
            Ok(())
        })
        .unwrap();
    let plain = out.backward().unwrap();
    for v in [&w, &b, &x] {
        let reports: Vec<_> = seen.iter().filter(|(id, _)| *id == v.id()).collect();
        assert_eq!(reports.len(), 1, "reported once");
        let final_grad = f64s(grads.get(v.as_tensor()).unwrap());
        assert_eq!(
            reports[0].1.as_ref(),
            Some(&final_grad),
            "final when reported"
        );
        assert_eq!(f64s(plain.get(v.as_tensor()).unwrap()), final_grad);
    }
    // An affine by zero stops the walk: `unused` is not even in the graph.
    assert!(seen.iter().all(|(id, _)| *id != unused.id()));
    // The hook's error stops the backward.
    let err = out
        .backward_from_with(out.ones_like().unwrap(), &mut |_, _| {
            candle_core::bail!("stop here")
        })
        .unwrap_err();
    assert!(err.to_string().contains("stop here"), "{err}");
}
