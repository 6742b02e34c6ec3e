//! Leading eigenpairs of a symmetric positive semi-definite matrix, for PCA.
//!
//! * [`jacobi`]: every eigenpair of a small dense matrix by cyclic Jacobi
//!   rotations (exact to rounding; O(n³) per sweep, so for n up to ~100).
//! * [`top_eigen`]: the `k` largest of an `m × m` matrix (m up to a few
//!   thousand) by subspace iteration with a Rayleigh–Ritz step each round.
//!   The products `A·Q` go through candle's f64 matmul (optimised even in dev
//!   builds); only the thin `m × p` work runs here.
//!
//! Eigenvalues come out in decreasing order; vectors have unit length and an
//! arbitrary sign.

use anyhow::bail;
use dino3d_model::candle_core::{DType, Tensor};

/// Below this size [`top_eigen`] solves the whole matrix with [`jacobi`].
const DENSE_MAX: usize = 64;
/// Relative residual `‖A v − λ v‖ / λ₀` at which subspace iteration stops.
const TOLERANCE: f64 = 1e-7;
/// Rounds of subspace iteration before giving up on the tolerance.
const MAX_ROUNDS: usize = 3000;

/// All eigenpairs of the symmetric `n × n` row-major matrix `a`: values in
/// decreasing order and the matching vectors as the columns of a row-major
/// `n × n` matrix.
pub(crate) fn jacobi(a: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    assert_eq!(a.len(), n * n, "jacobi: matrix is not n × n");
    let mut m = a.to_vec();
    let mut v = vec![0.0; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    let scale: f64 = m.iter().map(|x| x * x).sum::<f64>().sqrt();
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| m[i * n + j] * m[i * n + j])
            .sum::<f64>()
            .sqrt();
        if off <= 1e-14 * scale || off == 0.0 {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = m[p * n + q];
                if apq == 0.0 {
                    continue;
                }
                // The rotation that zeroes (p, q): tan θ = t, the smaller root.
                let theta = (m[q * n + q] - m[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for r in 0..n {
                    // Columns p and q of M, then rows p and q.
                    let (mp, mq) = (m[r * n + p], m[r * n + q]);
                    m[r * n + p] = c * mp - s * mq;
                    m[r * n + q] = s * mp + c * mq;
                }
                for r in 0..n {
                    let (mp, mq) = (m[p * n + r], m[q * n + r]);
                    m[p * n + r] = c * mp - s * mq;
                    m[q * n + r] = s * mp + c * mq;
                }
                for r in 0..n {
                    let (vp, vq) = (v[r * n + p], v[r * n + q]);
                    v[r * n + p] = c * vp - s * vq;
                    v[r * n + q] = s * vp + c * vq;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| m[j * n + j].total_cmp(&m[i * n + i]));
    let values = order.iter().map(|&i| m[i * n + i]).collect();
    let mut vectors = vec![0.0; n * n];
    for (col, &src) in order.iter().enumerate() {
        for r in 0..n {
            vectors[r * n + col] = v[r * n + src];
        }
    }
    (values, vectors)
}

/// The `k` largest eigenpairs of the symmetric PSD matrix `a` (`m × m`, any
/// float dtype; computed in f64): values, and vectors as the `k` columns of
/// an `m × k` f64 tensor.
///
/// # Errors
/// A non-square matrix, `k > m`, or a candle failure.
pub(crate) fn top_eigen(a: &Tensor, k: usize) -> anyhow::Result<(Vec<f64>, Tensor)> {
    let (m, m2) = a.dims2()?;
    if m != m2 || k > m {
        bail!("top_eigen: need a square matrix and k <= m, got {m} x {m2}, k = {k}");
    }
    let a = a.to_dtype(DType::F64)?;
    if m <= DENSE_MAX {
        let flat: Vec<f64> = a.flatten_all()?.to_vec1()?;
        let (values, vectors) = jacobi(&flat, m);
        let v = Tensor::from_vec(vectors, (m, m), a.device())?.narrow(1, 0, k)?;
        return Ok((values[..k].to_vec(), v.contiguous()?));
    }
    let p = (2 * k + 8).min(m);
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let start: Vec<f64> = (0..m * p)
        .map(|_| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        })
        .collect();
    let mut q = orthonormal_columns(start, m, p, &mut rng);
    let mut best = None;
    for _round in 0..MAX_ROUNDS {
        let qt = Tensor::from_slice(&q, (m, p), a.device())?;
        let z = a.matmul(&qt)?;
        // Rayleigh–Ritz: the p × p projection, its eigenpairs, rotated bases.
        let t: Vec<f64> = qt.t()?.matmul(&z)?.flatten_all()?.to_vec1()?;
        let sym: Vec<f64> = (0..p * p)
            .map(|i| 0.5 * (t[i] + t[(i % p) * p + i / p]))
            .collect();
        let (theta, w) = jacobi(&sym, p);
        let w = Tensor::from_vec(w, (p, p), a.device())?;
        let ritz = qt.matmul(&w)?;
        let a_ritz: Vec<f64> = z.matmul(&w)?.flatten_all()?.to_vec1()?;
        let ritz_v: Vec<f64> = ritz.flatten_all()?.to_vec1()?;
        let scale = theta[0].abs().max(f64::MIN_POSITIVE);
        let residual = (0..k)
            .map(|c| {
                (0..m)
                    .map(|r| (a_ritz[r * p + c] - theta[c] * ritz_v[r * p + c]).powi(2))
                    .sum::<f64>()
                    .sqrt()
                    / scale
            })
            .fold(0.0, f64::max);
        best = Some((theta[..k].to_vec(), ritz.narrow(1, 0, k)?.contiguous()?));
        if residual <= TOLERANCE {
            break;
        }
        q = orthonormal_columns(a_ritz, m, p, &mut rng);
    }
    Ok(best.expect("at least one round"))
}

/// Orthonormalises the columns of the row-major `m × p` matrix `x` (modified
/// Gram–Schmidt, twice for stability). A column that vanishes (rank
/// deficiency) is replaced by a fresh pseudo-random one.
fn orthonormal_columns(mut x: Vec<f64>, m: usize, p: usize, rng: &mut u64) -> Vec<f64> {
    for c in 0..p {
        let mut tries = 0;
        loop {
            let before: f64 = (0..m).map(|r| x[r * p + c].powi(2)).sum::<f64>().sqrt();
            for _pass in 0..2 {
                for prev in 0..c {
                    let dot: f64 = (0..m).map(|r| x[r * p + c] * x[r * p + prev]).sum();
                    for r in 0..m {
                        x[r * p + c] -= dot * x[r * p + prev];
                    }
                }
            }
            let norm: f64 = (0..m).map(|r| x[r * p + c].powi(2)).sum::<f64>().sqrt();
            if norm > 1e-10 * before.max(1e-300) || tries > 8 {
                let inv = if norm > 0.0 { 1.0 / norm } else { 0.0 };
                for r in 0..m {
                    x[r * p + c] *= inv;
                }
                break;
            }
            tries += 1;
            for r in 0..m {
                *rng ^= *rng << 13;
                *rng ^= *rng >> 7;
                *rng ^= *rng << 17;
                x[r * p + c] = (*rng >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
            }
        }
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use dino3d_model::candle_core::Device;

    #[test]
    fn jacobi_solves_hand_computed_cases() {
        // [[2, 1], [1, 2]]: eigenvalues 3 and 1, vectors (1, 1)/√2 and (1, -1)/√2.
        let (values, vectors) = jacobi(&[2.0, 1.0, 1.0, 2.0], 2);
        assert!((values[0] - 3.0).abs() < 1e-12 && (values[1] - 1.0).abs() < 1e-12);
        let h = std::f64::consts::FRAC_1_SQRT_2;
        assert!((vectors[0].abs() - h).abs() < 1e-12 && (vectors[2].abs() - h).abs() < 1e-12);
        assert!(
            vectors[0] * vectors[2] > 0.0,
            "first vector is (1, 1)/√2 up to sign"
        );
        assert!(
            vectors[1] * vectors[3] < 0.0,
            "second vector is (1, -1)/√2 up to sign"
        );
        // [[4, 1, 0], [1, 4, 0], [0, 0, 7]]: 7 (e3), 5 ((1,1,0)/√2), 3 ((1,-1,0)/√2).
        let a = [4.0, 1.0, 0.0, 1.0, 4.0, 0.0, 0.0, 0.0, 7.0];
        let (values, vectors) = jacobi(&a, 3);
        for (got, want) in values.iter().zip([7.0, 5.0, 3.0]) {
            assert!((got - want).abs() < 1e-12, "{values:?}");
        }
        assert!((vectors[2 * 3].abs() - 1.0).abs() < 1e-12, "e3 first");
        assert!((vectors[1].abs() - h).abs() < 1e-12 && (vectors[3 + 1].abs() - h).abs() < 1e-12);
    }

    /// `Q diag(λ) Qᵀ` for a known orthonormal Q (a product of Householder
    /// reflections) and spectrum, checked through `top_eigen`'s iterative path.
    #[test]
    fn subspace_iteration_finds_the_leading_pairs_of_a_known_spectrum() {
        let m = 150;
        let spectrum: Vec<f64> = (0..m).map(|i| 100.0 * 0.85f64.powi(i as i32)).collect();
        let mut q = vec![0.0; m * m];
        for i in 0..m {
            q[i * m + i] = 1.0;
        }
        for h in 0..3 {
            let u: Vec<f64> = (0..m).map(|i| ((i * (h + 3)) as f64).sin() + 0.1).collect();
            let uu: f64 = u.iter().map(|x| x * x).sum();
            // Q ← Q (I − 2 u uᵀ / uᵀu)
            for r in 0..m {
                let dot: f64 = (0..m).map(|c| q[r * m + c] * u[c]).sum();
                for c in 0..m {
                    q[r * m + c] -= 2.0 * dot * u[c] / uu;
                }
            }
        }
        let mut a = vec![0.0; m * m];
        for r in 0..m {
            for c in 0..m {
                a[r * m + c] = (0..m)
                    .map(|i| q[r * m + i] * spectrum[i] * q[c * m + i])
                    .sum();
            }
        }
        let t = Tensor::from_vec(a, (m, m), &Device::Cpu).unwrap();
        let (values, vectors) = top_eigen(&t, 4).unwrap();
        let vectors: Vec<f64> = vectors.flatten_all().unwrap().to_vec1().unwrap();
        for i in 0..4 {
            assert!((values[i] - spectrum[i]).abs() < 1e-6, "{i}: {values:?}");
            let dot: f64 = (0..m).map(|r| vectors[r * 4 + i] * q[r * m + i]).sum();
            assert!(
                (dot.abs() - 1.0).abs() < 1e-6,
                "vector {i}: |cos| = {}",
                dot.abs()
            );
        }
    }
}
