//! Helpers shared by the segmentation tests: seeded tensors, f64 read-back
//! and central-difference gradient checks.

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;

use crate::kernels_ref::testing::uniform;

/// The entries of `t` as f64, flattened.
pub(crate) fn f64s(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// A seeded tensor, uniform in [−1, 1), on the CPU.
pub(crate) fn tensor(shape: &[usize], seed: u64, dtype: DType) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(uniform(n, seed, 1.0), shape, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

/// `|got − want| ≤ tol·(1 + |want|)` entry by entry.
pub(crate) fn assert_close(got: &[f64], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}[{i}]: {g} vs {w}"
        );
    }
}

/// Central differences (h = 1e-6, f64) of the scalar `loss` at every 3rd
/// entry of `xv` (shaped `shape`) against the analytic gradient `g`.
pub(crate) fn check_fd(
    xv: &[f64],
    shape: &[usize],
    g: &[f64],
    loss: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
    tol: f64,
) {
    assert_eq!(xv.len(), g.len(), "gradient length");
    let eval = |v: Vec<f64>| {
        let t = Tensor::from_vec(v, shape, &Device::Cpu).unwrap();
        loss(&t).unwrap().to_scalar::<f64>().unwrap()
    };
    let h = 1e-6;
    for i in (0..xv.len()).step_by(3) {
        let (mut p, mut m) = (xv.to_vec(), xv.to_vec());
        p[i] += h;
        m[i] -= h;
        let fd = (eval(p) - eval(m)) / (2.0 * h);
        assert!(
            (g[i] - fd).abs() < tol * (1.0 + fd.abs()),
            "d/dx[{i}]: {} vs {fd}",
            g[i]
        );
    }
}

/// Asserts that every variable of `vm` but the batch-norm buffers got a
/// finite, non-zero gradient.
pub(crate) fn assert_all_learn(vm: &VarMap, grads: &GradStore) {
    let data = vm.data().lock().unwrap();
    for (name, var) in data.iter() {
        if crate::seg::batch_norm::is_buffer(name) {
            continue;
        }
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name} has no gradient"));
        let norm = g
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!(norm > 0.0 && norm.is_finite(), "{name}: |g|² = {norm}");
    }
}
