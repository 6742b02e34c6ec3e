//! Sinkhorn-Knopp teacher targets fused with the student cross-entropy:
//! the reference for the fused GPU kernel.

use candle_core::{Device, Tensor};

use crate::loss::{SINKHORN_ITERATIONS, STUDENT_TEMP, row_cross_terms, sinkhorn_knopp};
use crate::{ModelError, Result};

/// Sizes and temperatures of one Sinkhorn-Knopp + cross-entropy call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SinkhornCeConfig {
    /// Samples n (rows): 2B for DINO, the masked-token count for iBOT.
    pub rows: usize,
    /// Prototypes K (columns).
    pub prototypes: usize,
    /// Teacher temperature T (0.04 → 0.07 in 3DINO).
    pub teacher_temp: f64,
    /// Student temperature τ.
    pub student_temp: f64,
    /// Sinkhorn iterations.
    pub iterations: usize,
}

impl SinkhornCeConfig {
    /// 3DINO's setting: K = 65,536 prototypes, τ = 0.1, 3 iterations.
    pub fn threedino(rows: usize, teacher_temp: f64) -> Self {
        Self {
            rows,
            prototypes: 65_536,
            teacher_temp,
            student_temp: STUDENT_TEMP,
            iterations: SINKHORN_ITERATIONS,
        }
    }

    /// `rows × prototypes`.
    pub fn len(&self) -> usize {
        self.rows * self.prototypes
    }

    /// Whether the logits are empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks the sizes against two logit buffers of `teacher` and
    /// `student` values.
    pub(crate) fn check(&self, teacher: usize, student: usize) -> Result<()> {
        if self.is_empty() {
            return Err(ModelError::Input("Sinkhorn-Knopp on empty logits".into()));
        }
        if !(self.teacher_temp > 0.0 && self.student_temp > 0.0) {
            return Err(ModelError::Input(format!(
                "Sinkhorn-Knopp temperatures must be positive (teacher {}, student {})",
                self.teacher_temp, self.student_temp
            )));
        }
        if teacher != self.len() || student != self.len() {
            return Err(ModelError::Input(format!(
                "Sinkhorn-Knopp: {}×{} logits expected, got {teacher} teacher and {student} student values",
                self.rows, self.prototypes
            )));
        }
        Ok(())
    }
}

/// Outputs of [`sinkhorn_ce`], row-major `(rows, prototypes)` where 2-D.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkhornCe {
    /// Teacher probabilities `t` (each row sums to 1).
    pub teacher_probs: Vec<f32>,
    /// Per-row cross-entropy `−Σ_k t_k log_softmax(s/τ)_k`.
    pub ce: Vec<f32>,
    /// Gradient of `mean_i ce_i` w.r.t. the student logits, when asked
    /// for: `(softmax(s/τ) − t)/(τ·n)` (rows of `t` sum to 1).
    pub grad: Option<Vec<f32>>,
}

impl SinkhornCe {
    /// `mean_i ce_i`, the cross-entropy term of the DINO loss (in f64).
    pub fn mean_ce(&self) -> f64 {
        self.ce.iter().map(|&c| f64::from(c)).sum::<f64>() / self.ce.len() as f64
    }
}

/// Teacher probabilities by [`sinkhorn_knopp`] and the per-row
/// cross-entropy of the student against them, as the DINO and iBOT losses
/// compute them on the CPU; with `with_grad`, also the gradient of the mean
/// cross-entropy w.r.t. the student logits in closed form,
/// `(softmax(s/τ) − t)/(τ·n)`, evaluated in f64 from these targets (the
/// tests check it against candle's autograd, which is less precise in f32
/// at K = 65,536).
///
/// # Shapes
/// `teacher_logits`, `student_logits`: `(rows, prototypes)` row-major.
///
/// # Errors
/// [`ModelError::Input`] on empty or mis-sized buffers or a non-positive
/// temperature; candle errors otherwise.
pub fn sinkhorn_ce(
    cfg: &SinkhornCeConfig,
    teacher_logits: &[f32],
    student_logits: &[f32],
    with_grad: bool,
) -> Result<SinkhornCe> {
    cfg.check(teacher_logits.len(), student_logits.len())?;
    let shape = (cfg.rows, cfg.prototypes);
    let dev = Device::Cpu;
    let teacher = Tensor::from_slice(teacher_logits, shape, &dev)?;
    let probs = sinkhorn_knopp(&teacher, cfg.teacher_temp, cfg.iterations)?;
    let student = Tensor::from_slice(student_logits, shape, &dev)?;
    let ce = row_cross_terms(&student, &probs, cfg.student_temp)?.neg()?;
    let teacher_probs: Vec<f32> = probs.flatten_all()?.to_vec1()?;
    let grad = with_grad.then(|| ce_grad(cfg, &teacher_probs, student_logits));
    Ok(SinkhornCe {
        teacher_probs,
        ce: ce.to_vec1()?,
        grad,
    })
}

/// `(softmax(s/τ) − t)/(τ·n)` row by row, in f64.
fn ce_grad(cfg: &SinkhornCeConfig, probs: &[f32], student: &[f32]) -> Vec<f32> {
    let k = cfg.prototypes;
    let scale = 1.0 / (cfg.student_temp * cfg.rows as f64);
    let mut grad = Vec::with_capacity(probs.len());
    for (t, s) in probs.chunks(k).zip(student.chunks(k)) {
        let z: Vec<f64> = s.iter().map(|&v| f64::from(v) / cfg.student_temp).collect();
        let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + z.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        grad.extend(
            z.iter()
                .zip(t)
                .map(|(zc, &tc)| (((zc - lse).exp() - f64::from(tc)) * scale) as f32),
        );
    }
    grad
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels_ref::testing::{max_rel_err, uniform};

    /// Sinkhorn, cross-entropy and gradient written out in f64 from the spec.
    fn direct(cfg: &SinkhornCeConfig, t: &[f32], s: &[f32]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let (n, k) = (cfg.rows, cfg.prototypes);
        let mut q: Vec<f64> = t
            .iter()
            .map(|&v| (f64::from(v) / cfg.teacher_temp).exp())
            .collect();
        let total: f64 = q.iter().sum();
        q.iter_mut().for_each(|v| *v /= total);
        for _ in 0..cfg.iterations {
            for c in 0..k {
                let r: f64 = (0..n).map(|i| q[i * k + c]).sum();
                (0..n).for_each(|i| q[i * k + c] /= r * k as f64);
            }
            for i in 0..n {
                let r: f64 = q[i * k..(i + 1) * k].iter().sum();
                q[i * k..(i + 1) * k]
                    .iter_mut()
                    .for_each(|v| *v /= r * n as f64);
            }
        }
        q.iter_mut().for_each(|v| *v *= n as f64);
        let mut ce = vec![0.0; n];
        let mut grad = vec![0.0; n * k];
        for i in 0..n {
            let z: Vec<f64> = s[i * k..(i + 1) * k]
                .iter()
                .map(|&v| f64::from(v) / cfg.student_temp)
                .collect();
            let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + z.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
            for c in 0..k {
                let ls = z[c] - lse;
                ce[i] -= q[i * k + c] * ls;
                grad[i * k + c] = (ls.exp() - q[i * k + c]) / (cfg.student_temp * n as f64);
            }
        }
        (q, ce, grad)
    }

    fn as_f32(v: &[f64]) -> Vec<f32> {
        v.iter().map(|&x| x as f32).collect()
    }

    #[test]
    fn matches_the_spec_written_out_in_f64() {
        let cfg = SinkhornCeConfig {
            rows: 6,
            prototypes: 50,
            teacher_temp: 0.07,
            student_temp: 0.1,
            iterations: 3,
        };
        let t = uniform(cfg.len(), 11, 1.0);
        let s = uniform(cfg.len(), 12, 1.0);
        let got = sinkhorn_ce(&cfg, &t, &s, true).unwrap();
        let (q, ce, grad) = direct(&cfg, &t, &s);
        let e = max_rel_err(&got.teacher_probs, &as_f32(&q));
        assert!(e < 1e-5, "probs rel err {e} (bound 1e-5)");
        let e = max_rel_err(&got.ce, &as_f32(&ce));
        assert!(e < 1e-5, "ce rel err {e} (bound 1e-5)");
        let e = max_rel_err(got.grad.as_ref().unwrap(), &as_f32(&grad));
        assert!(e < 1e-5, "grad rel err {e} (bound 1e-5)");
        for row in got.teacher_probs.chunks(cfg.prototypes) {
            let sum: f32 = row.iter().sum();
            assert!((sum - 1.0).abs() < 1e-5, "row sum {sum}");
        }
        let mean = ce.iter().sum::<f64>() / cfg.rows as f64;
        assert!((got.mean_ce() - mean).abs() < 1e-5 * mean.abs());
    }

    #[test]
    fn closed_form_gradient_matches_candle_autograd() {
        let cfg = SinkhornCeConfig {
            rows: 5,
            prototypes: 300,
            teacher_temp: 0.04,
            student_temp: 0.1,
            iterations: 3,
        };
        let t = uniform(cfg.len(), 13, 1.0);
        let s = uniform(cfg.len(), 14, 1.0);
        let got = sinkhorn_ce(&cfg, &t, &s, true).unwrap().grad.unwrap();
        let dev = Device::Cpu;
        let probs =
            sinkhorn_knopp(&Tensor::from_slice(&t, (5, 300), &dev).unwrap(), 0.04, 3).unwrap();
        let student = candle_core::Var::from_slice(&s, (5, 300), &dev).unwrap();
        let loss = row_cross_terms(student.as_tensor(), &probs, 0.1)
            .unwrap()
            .neg()
            .unwrap()
            .mean_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        let want: Vec<f32> = grads
            .get(student.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let e = max_rel_err(&got, &want);
        assert!(
            e < 1e-4,
            "closed form vs autograd: rel err {e} (bound 1e-4)"
        );
    }

    #[test]
    fn threedino_sizes_and_no_gradient_by_default() {
        let cfg = SinkhornCeConfig::threedino(2, 0.04);
        assert_eq!((cfg.prototypes, cfg.iterations), (65_536, 3));
        assert_eq!(cfg.student_temp, 0.1);
        let t = uniform(cfg.len(), 1, 1.0);
        let out = sinkhorn_ce(&cfg, &t, &t, false).unwrap();
        assert!(out.grad.is_none());
        assert_eq!(out.teacher_probs.len(), cfg.len());
        assert!(out.ce.iter().all(|c| c.is_finite() && *c > 0.0));
    }

    #[test]
    fn bad_sizes_and_temperatures_are_refused() {
        let mut cfg = SinkhornCeConfig::threedino(2, 0.04);
        cfg.prototypes = 3;
        assert!(sinkhorn_ce(&cfg, &[0.0; 6], &[0.0; 5], false).is_err());
        cfg.teacher_temp = 0.0;
        assert!(sinkhorn_ce(&cfg, &[0.0; 6], &[0.0; 6], false).is_err());
        cfg.rows = 0;
        assert!(sinkhorn_ce(&cfg, &[], &[], false).is_err());
    }
}
