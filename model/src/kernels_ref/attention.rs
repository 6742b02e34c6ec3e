//! Attention without a stored score matrix (flash-style): the reference of
//! the GPU kernels in `cuda/attention.cu`, on flat row-major f32 buffers of
//! `groups` (batch × heads) independent `(tokens, dim)` matrices.
//!
//! Forward, per query row: one pass over the keys with a running maximum
//! `m`, a running sum `l` of `exp(s − m)` and a running output, rescaled
//! whenever the maximum grows (the online softmax), so only `O(dim)` state is
//! kept per row; the row's log-sum-exp `m + ln l` is kept for the backward.
//! Backward, recomputing the probabilities from it:
//! `p = exp(scale·q·k − lse)`, `D = dO·O` per query row,
//! `dV = Σᵢ p dOᵢ`, `dS = p (dO·v − D)`, `dQ = scale Σⱼ dS kⱼ`,
//! `dK = scale Σᵢ dS qᵢ`.
//!
//! The kernels visit keys in this order, so the online softmax makes the
//! same rescalings; their dot products sum in another order (a warp
//! reduction), so results agree to f32 rounding, not bit for bit.

use crate::{ModelError, Result};

/// Shape of one call: `groups` matrices of `tokens × dim`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionShape {
    /// Batch × heads.
    pub groups: usize,
    /// Tokens (queries = keys).
    pub tokens: usize,
    /// Head dimension.
    pub dim: usize,
}

impl AttentionShape {
    /// Values in one of q, k, v, o.
    pub fn len(&self) -> usize {
        self.groups * self.tokens * self.dim
    }

    /// Whether there is nothing to compute.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn check(&self, lens: &[usize]) -> Result<()> {
        if lens.iter().any(|&l| l != self.len()) {
            return Err(ModelError::Input(format!(
                "attention: {self:?} needs {} values per operand, got {lens:?}",
                self.len()
            )));
        }
        Ok(())
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `(out, lse)`: `softmax(scale·q kᵀ) v` per group, and each query row's
/// log-sum-exp of `scale·q kᵀ`.
///
/// # Errors
/// [`ModelError::Input`] when an operand is not `shape.len()` long.
pub fn attention_fwd(
    shape: AttentionShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    scale: f32,
) -> Result<(Vec<f32>, Vec<f32>)> {
    shape.check(&[q.len(), k.len(), v.len()])?;
    let AttentionShape {
        groups,
        tokens: t,
        dim: d,
    } = shape;
    let mut out = vec![0f32; shape.len()];
    let mut lse = vec![0f32; groups * t];
    for g in 0..groups {
        let base = g * t * d;
        for i in 0..t {
            let qi = &q[base + i * d..base + (i + 1) * d];
            let (mut m, mut l) = (f32::NEG_INFINITY, 0f32);
            let acc = &mut out[base + i * d..base + (i + 1) * d];
            for j in 0..t {
                let s = scale * dot(qi, &k[base + j * d..base + (j + 1) * d]);
                let m_new = m.max(s);
                let corr = (m - m_new).exp();
                let p = (s - m_new).exp();
                l = l * corr + p;
                for (a, &vv) in acc.iter_mut().zip(&v[base + j * d..base + (j + 1) * d]) {
                    *a = *a * corr + p * vv;
                }
                m = m_new;
            }
            acc.iter_mut().for_each(|a| *a /= l);
            lse[g * t + i] = m + l.ln();
        }
    }
    Ok((out, lse))
}

/// `(dq, dk, dv)` for upstream `d_out`, from the forward's `out` and `lse`.
///
/// # Errors
/// [`ModelError::Input`] on mis-sized operands.
#[allow(clippy::too_many_arguments)]
pub fn attention_bwd(
    shape: AttentionShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &[f32],
    lse: &[f32],
    d_out: &[f32],
    scale: f32,
) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    shape.check(&[q.len(), k.len(), v.len(), out.len(), d_out.len()])?;
    let AttentionShape {
        groups,
        tokens: t,
        dim: d,
    } = shape;
    if lse.len() != groups * t {
        return Err(ModelError::Input(format!(
            "attention: {} log-sum-exps for {} rows",
            lse.len(),
            groups * t
        )));
    }
    let (mut dq, mut dk, mut dv) = (
        vec![0f32; q.len()],
        vec![0f32; k.len()],
        vec![0f32; v.len()],
    );
    let row = |x: &[f32], g: usize, i: usize| x[(g * t + i) * d..(g * t + i + 1) * d].to_vec();
    for g in 0..groups {
        for i in 0..t {
            let (qi, doi) = (row(q, g, i), row(d_out, g, i));
            let di = dot(&doi, &row(out, g, i));
            for j in 0..t {
                let (kj, vj) = (row(k, g, j), row(v, g, j));
                let p = (scale * dot(&qi, &kj) - lse[g * t + i]).exp();
                let ds = p * (dot(&doi, &vj) - di);
                let at = (g * t + j) * d;
                for c in 0..d {
                    dv[at + c] += p * doi[c];
                    dk[at + c] += scale * ds * qi[c];
                    dq[(g * t + i) * d + c] += scale * ds * kj[c];
                }
            }
        }
    }
    Ok((dq, dk, dv))
}

#[cfg(test)]
mod tests {
    use candle_core::{D, DType, Device, Tensor, Var};

    use super::*;
    use crate::kernels_ref::testing::{max_rel_err, normal};

    /// The reference against attention composed from candle's ops in f64
    /// (softmax over the scaled scores, then the values), values and all
    /// three gradients, on scores large enough that the running maximum
    /// moves.
    #[test]
    fn online_attention_matches_the_composed_float64_attention() {
        for (groups, t, d) in [(3, 37, 64), (2, 5, 16), (1, 1, 8)] {
            let shape = AttentionShape {
                groups,
                tokens: t,
                dim: d,
            };
            let q: Vec<f32> = normal(shape.len(), 1).iter().map(|v| 3.0 * v).collect();
            let k = normal(shape.len(), 2);
            let v = normal(shape.len(), 3);
            let d_out = normal(shape.len(), 4);
            let scale = (d as f32).powf(-0.5);
            let (out, lse) = attention_fwd(shape, &q, &k, &v, scale).unwrap();
            let (dq, dk, dv) = attention_bwd(shape, &q, &k, &v, &out, &lse, &d_out, scale).unwrap();

            let var = |x: &[f32]| {
                let t64: Vec<f64> = x.iter().map(|&a| f64::from(a)).collect();
                Var::from_tensor(&Tensor::from_vec(t64, (groups, t, d), &Device::Cpu).unwrap())
                    .unwrap()
            };
            let (qv, kv, vv) = (var(&q), var(&k), var(&v));
            let scores = (qv.as_tensor().matmul(&kv.as_tensor().t().unwrap()).unwrap()
                * f64::from(scale))
            .unwrap();
            let probs = candle_nn::ops::softmax(&scores, D::Minus1).unwrap();
            let o = probs.matmul(vv.as_tensor()).unwrap();
            let w = Tensor::from_vec(
                d_out.iter().map(|&a| f64::from(a)).collect::<Vec<_>>(),
                (groups, t, d),
                &Device::Cpu,
            )
            .unwrap();
            let grads = (&o * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let f32s = |x: &Tensor| {
                x.to_dtype(DType::F32)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
            };
            let lse64 = scores.exp().unwrap().sum(D::Minus1).unwrap().log().unwrap();
            for (name, got, want) in [
                ("out", out, f32s(&o)),
                ("lse", lse, f32s(&lse64)),
                ("dq", dq, f32s(grads.get(qv.as_tensor()).unwrap())),
                ("dk", dk, f32s(grads.get(kv.as_tensor()).unwrap())),
                ("dv", dv, f32s(grads.get(vv.as_tensor()).unwrap())),
            ] {
                let err = max_rel_err(&got, &want);
                assert!(err < 1e-5, "{groups}x{t}x{d} {name}: rel err {err:.3e}");
            }
        }
    }

    #[test]
    fn mis_sized_operands_are_refused() {
        let shape = AttentionShape {
            groups: 1,
            tokens: 2,
            dim: 4,
        };
        assert!(attention_fwd(shape, &[0.0; 8], &[0.0; 8], &[0.0; 7], 1.0).is_err());
        let z = [0.0; 8];
        assert!(attention_bwd(shape, &z, &z, &z, &z, &[0.0; 3], &z, 1.0).is_err());
    }
}
