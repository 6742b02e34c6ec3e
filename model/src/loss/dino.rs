//! DINO \[CLS\] cross-entropy between student views and the other teacher views.

use candle_core::Tensor;

use super::row_cross_terms;
use crate::{ModelError, Result};

/// The two DINO terms, each already divided by the number of pairs, so
/// `global + local` is the mean over all (student view, other teacher view)
/// pairs (18 for 2 global + 8 local crops).
#[derive(Debug, Clone)]
pub struct DinoLoss {
    /// Student global views against the *other* global teacher views.
    pub global: Tensor,
    /// Student local views against every global teacher view (0 without locals).
    pub local: Tensor,
    /// Number of pairs the terms were divided by.
    pub n_pairs: usize,
}

impl DinoLoss {
    /// `global + local`.
    pub fn total(&self) -> Result<Tensor> {
        Ok((&self.global + &self.local)?)
    }
}

/// DINO loss. Rows are crop-major: `student_global` and `teacher_probs` are
/// `(G·B, K)` (all images' crop 0, then crop 1, ...), `student_local` is
/// `(L·B, K)`. `teacher_probs` are centred teacher probabilities in the
/// *original* crop order; pairing each student view with the other teacher
/// views here replaces 3DINO's explicit chunk swap.
///
/// `CE(s, t) = −mean_rows Σ_k t_k log_softmax(s/τ)_k`; the result is the sum of
/// CE over all pairs `(v, g)` with `v ≠ g`, divided by `G(G−1) + L·G`.
pub fn dino_loss(
    student_global: &Tensor,
    student_local: Option<&Tensor>,
    teacher_probs: &Tensor,
    n_global: usize,
    student_temp: f64,
) -> Result<DinoLoss> {
    let (rows, k) = teacher_probs.dims2()?;
    if n_global == 0 || rows % n_global != 0 || student_global.dims() != [rows, k] {
        return Err(ModelError::Input(format!(
            "student globals {:?} and teacher {:?} must both be ({n_global}·B, K)",
            student_global.dims(),
            teacher_probs.dims()
        )));
    }
    let b = rows / n_global;
    let n_local = match student_local {
        Some(s) => {
            let (r, kl) = s.dims2()?;
            if kl != k || r % b != 0 {
                return Err(ModelError::Input(format!(
                    "student locals {:?} must be (L·{b}, {k})",
                    s.dims()
                )));
            }
            r / b
        }
        None => 0,
    };
    let n_pairs = n_global * (n_global - 1) + n_local * n_global;
    if n_pairs == 0 {
        return Err(ModelError::Input(
            "DINO loss needs at least one view pair".into(),
        ));
    }
    let t = teacher_probs.detach().reshape((n_global, b, k))?;
    // Σ_g T_g: a local view is paired with every teacher view.
    let t_sum = t.sum_keepdim(0)?;
    let scale = -1.0 / (b * n_pairs) as f64;
    // A global view v is paired with Σ_{g≠v} T_g = Σ_g T_g − T_v.
    let t_other = t.broadcast_sub(&t_sum)?.neg()?.reshape((rows, k))?;
    let global = (row_cross_terms(student_global, &t_other, student_temp)?.sum_all()? * scale)?;
    let local = match student_local {
        Some(s) => {
            let t_rep = t_sum
                .broadcast_as((n_local, b, k))?
                .reshape((n_local * b, k))?;
            (row_cross_terms(s, &t_rep, student_temp)?.sum_all()? * scale)?
        }
        None => global.zeros_like()?,
    };
    Ok(DinoLoss {
        global,
        local,
        n_pairs,
    })
}
