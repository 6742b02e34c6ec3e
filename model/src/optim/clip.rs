//! Global-norm gradient clipping (PyTorch `clip_grad_norm_`, L2 norm).

use candle_core::{DType, Tensor, Var, backprop::GradStore};

use crate::Result;

/// Scales the gradients of `vars` so that their joint L2 norm is at most
/// `max_norm`: coefficient `max_norm / (norm + 1e-6)`, applied only when
/// below 1 (PyTorch's rule). Returns the norm before clipping; variables
/// without a gradient are ignored.
pub fn clip_grad_norm(grads: &mut GradStore, vars: &[&Var], max_norm: f64) -> Result<f64> {
    let present: Vec<&Var> = vars
        .iter()
        .copied()
        .filter(|v| grads.get(v.as_tensor()).is_some())
        .collect();
    if present.is_empty() {
        return Ok(0.0);
    }
    // One host sync for the whole module: stack the per-tensor sums.
    let sums = present
        .iter()
        .map(|v| {
            let g = grads.get(v.as_tensor()).expect("filtered above");
            g.to_dtype(DType::F32)?.sqr()?.sum_all()
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    let total = Tensor::stack(&sums, 0)?
        .sum_all()?
        .to_scalar::<f32>()?
        .sqrt();
    let total = f64::from(total);
    let coef = max_norm / (total + 1e-6);
    if coef < 1.0 {
        for v in present {
            let g = grads.remove(v.as_tensor()).expect("filtered above");
            grads.insert(v.as_tensor(), (g * coef)?);
        }
    }
    Ok(total)
}
