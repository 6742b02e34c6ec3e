//! Leading eigenpairs of a symmetric positive semi-definite matrix, for PCA.
//!
//! * [`jacobi`]: every eigenpair of a small dense matrix by cyclic Jacobi
//!   rotations (exact to rounding; O(n³) per sweep, so for n up to ~100).
//! * [`top_eigen`]: the `k` largest of an `m × m` matrix (m up to a few
//!   thousand) by subspace iteration with a Rayleigh–Ritz step each round.
//!   The products `A·Q` go through candle's f64 matmul (optimised even in dev
//!   builds), and so do the other `m × p` products; only `p × p` problems
//!   are solved here.
//!
//! Eigenvalues come out in decreasing order; vectors have unit length and an
//! arbitrary sign.

use dino3d_model::candle_core::{DType, Device, Tensor};

use crate::error::{Result, bail};

/// Below this size [`top_eigen`] solves the whole matrix with [`jacobi`].
const DENSE_MAX: usize = 64;
/// Relative residual `‖A v − λ v‖ / λ₀` at which subspace iteration stops.
const TOLERANCE: f64 = 1e-7;
/// Rounds of subspace iteration before giving up on the tolerance.
const MAX_ROUNDS: usize = 1000;

/// All eigenpairs of the symmetric `n × n` row-major matrix `a`: values in
/// decreasing order and the matching vectors as the columns of a row-major
/// `n × n` matrix.
pub fn jacobi(a: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    assert_eq!(a.len(), n * n, "jacobi: matrix is not n × n");
    let mut m = a.to_vec();
    let mut v = vec![0.0; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    let scale: f64 = m.iter().map(|x| x * x).sum::<f64>().sqrt();
    for _sweep in 0..100 {
        let mut off = 0.0f64;
        for i in 0..n {
            for j in i + 1..n {
                off += 2.0 * m[i * n + j] * m[i * n + j];
            }
        }
        let off = off.sqrt();
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
pub fn top_eigen(a: &Tensor, k: usize) -> Result<(Vec<f64>, Tensor)> {
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
    let dev = a.device().clone();
    let mut rng = Noise(0x2545_F491_4F6C_DD1D);
    let mut q = orthonormalise(&rng.matrix(m, p, &dev)?, &mut rng)?;
    let mut best = None;
    for round in 0..MAX_ROUNDS {
        let z = a.matmul(&q)?;
        // Rayleigh–Ritz: the p × p projection, its eigenpairs, rotated bases.
        let (theta, w) = jacobi(&symmetric(&q.t()?.matmul(&z)?)?, p);
        let w = Tensor::from_vec(w, (p, p), &dev)?;
        let ritz = q.matmul(&w)?;
        let a_ritz = z.matmul(&w)?;
        let theta_row = Tensor::from_slice(&theta, (1, p), &dev)?;
        let residuals: Vec<f64> = (&a_ritz - ritz.broadcast_mul(&theta_row)?)?
            .sqr()?
            .sum(0)?
            .sqrt()?
            .to_vec1()?;
        let scale = theta[0].abs().max(f64::MIN_POSITIVE);
        let worst = residuals[..k].iter().fold(0.0f64, |w, r| w.max(r / scale));
        best = Some((theta[..k].to_vec(), ritz.narrow(1, 0, k)?.contiguous()?));
        if worst <= TOLERANCE {
            break;
        }
        if round + 1 == MAX_ROUNDS {
            tracing::warn!(
                "PCA: eigenvectors converged to a relative residual of {worst:.1e} only"
            );
        }
        q = orthonormalise(&a_ritz, &mut rng)?;
    }
    Ok(best.expect("at least one round"))
}

/// `(t + tᵀ) / 2` of a square tensor, as a row-major vector.
fn symmetric(t: &Tensor) -> Result<Vec<f64>> {
    let p = t.dim(0)?;
    let v: Vec<f64> = t.flatten_all()?.to_vec1()?;
    Ok((0..p * p)
        .map(|i| 0.5 * (v[i] + v[(i % p) * p + i / p]))
        .collect())
}

/// A deterministic source of uniform noise in [-0.5, 0.5) (xorshift).
struct Noise(u64);

impl Noise {
    fn matrix(&mut self, m: usize, p: usize, dev: &Device) -> Result<Tensor> {
        let v: Vec<f64> = (0..m * p)
            .map(|_| {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                (self.0 >> 11) as f64 / (1u64 << 53) as f64 - 0.5
            })
            .collect();
        Ok(Tensor::from_vec(v, (m, p), dev)?)
    }
}

/// An orthonormal basis (`m × p`) of the columns of `z`, in column order
/// (column `j` spans what columns `0..=j` add): unit columns, then Cholesky QR
/// (`Z R⁻¹` with `RᵀR = ZᵀZ`), twice for accuracy. A column that adds
/// nothing (rank deficiency) is replaced by noise.
fn orthonormalise(z: &Tensor, rng: &mut Noise) -> Result<Tensor> {
    let (m, p) = z.dims2()?;
    let dev = z.device().clone();
    let mut basis = z.clone();
    'attempt: for _attempt in 0..p + 4 {
        for _pass in 0..2 {
            let norms = basis.sqr()?.sum_keepdim(0)?.sqrt()?;
            basis = basis.broadcast_div(&(norms + 1e-300)?)?;
            match cholesky_upper(&symmetric(&basis.t()?.matmul(&basis)?)?, p) {
                Ok(r) => {
                    let r_inv = Tensor::from_vec(inverse_upper(&r, p), (p, p), &dev)?;
                    basis = basis.matmul(&r_inv)?;
                }
                Err(j) => {
                    let fresh = rng.matrix(m, 1, &dev)?;
                    let mut cols: Vec<Tensor> = Vec::with_capacity(3);
                    if j > 0 {
                        cols.push(basis.narrow(1, 0, j)?);
                    }
                    cols.push(fresh);
                    if j + 1 < p {
                        cols.push(basis.narrow(1, j + 1, p - j - 1)?);
                    }
                    basis = Tensor::cat(&cols, 1)?;
                    continue 'attempt;
                }
            }
        }
        return Ok(basis);
    }
    bail!("could not find {p} independent directions in {m} dimensions")
}

/// Upper-triangular `R` with `RᵀR = g` (row-major `p × p`), or the first
/// column whose pivot vanishes (relative to the diagonal, which is 1 for unit
/// columns).
fn cholesky_upper(g: &[f64], p: usize) -> Result<Vec<f64>, usize> {
    let mut r = vec![0.0; p * p];
    for j in 0..p {
        let mut d = g[j * p + j];
        for i in 0..j {
            d -= r[i * p + j] * r[i * p + j];
        }
        if d <= 1e-10 * g[j * p + j].max(f64::MIN_POSITIVE) {
            return Err(j);
        }
        let rjj = d.sqrt();
        r[j * p + j] = rjj;
        for c in j + 1..p {
            let mut v = g[j * p + c];
            for i in 0..j {
                v -= r[i * p + j] * r[i * p + c];
            }
            r[j * p + c] = v / rjj;
        }
    }
    Ok(r)
}

/// The inverse of an upper-triangular `p × p` matrix (back substitution).
fn inverse_upper(r: &[f64], p: usize) -> Vec<f64> {
    let mut inv = vec![0.0; p * p];
    for c in 0..p {
        // Solve R x = e_c for x (column c of the inverse), bottom up.
        for row in (0..=c).rev() {
            let mut v = if row == c { 1.0 } else { 0.0 };
            for k in row + 1..=c {
                v -= r[row * p + k] * inv[k * p + c];
            }
            inv[row * p + c] = v / r[row * p + row];
        }
    }
    inv
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

    #[test]
    fn a_low_rank_matrix_refills_the_missing_directions() {
        // Rank 3 in 100 dimensions: the 16-column subspace must be refilled.
        let m = 100;
        let dirs: Vec<Vec<f64>> = (0..3)
            .map(|h| {
                let u: Vec<f64> = (0..m)
                    .map(|i| ((i * (2 * h + 1)) as f64 * 0.1).cos())
                    .collect();
                let n = u.iter().map(|x| x * x).sum::<f64>().sqrt();
                u.iter().map(|x| x / n).collect()
            })
            .collect();
        let mut a = vec![0.0; m * m];
        for (u, lambda) in dirs.iter().zip([9.0, 4.0, 1.0]) {
            for r in 0..m {
                for c in 0..m {
                    a[r * m + c] += lambda * u[r] * u[c];
                }
            }
        }
        let t = Tensor::from_vec(a, (m, m), &Device::Cpu).unwrap();
        let (values, _) = top_eigen(&t, 4).unwrap();
        // The three directions are not orthogonal, so compare the spectrum's
        // sum (the trace) and the rank.
        assert!(
            (values.iter().sum::<f64>() - 14.0).abs() < 1e-6,
            "{values:?}"
        );
        assert!(values[3].abs() < 1e-6 && values[2] > 1e-3, "{values:?}");
    }
}
