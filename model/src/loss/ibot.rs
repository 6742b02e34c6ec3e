//! iBOT masked-token loss.

use candle_core::{Device, Tensor};

use super::row_cross_terms;
use crate::{ModelError, Result};

/// iBOT loss over the `M` masked tokens: with `ℓ_j = Σ_k t_jk ·
/// log_softmax(s_j/τ)_k` and `w_j = 1/(masked tokens in j's image)`, returns
/// `−Σ_j w_j ℓ_j / n_images`. `n_images` counts every global crop (2B),
/// including crops without masks.
pub fn ibot_loss(
    student_logits: &Tensor,
    teacher_probs: &Tensor,
    weights: &Tensor,
    n_images: usize,
    student_temp: f64,
) -> Result<Tensor> {
    let (m, _) = student_logits.dims2()?;
    if teacher_probs.dims() != student_logits.dims() || weights.dims() != [m] || n_images == 0 {
        return Err(ModelError::Input(format!(
            "iBOT: student {:?}, teacher {:?}, weights {:?} (want (M, K), (M, K), (M)), n_images {n_images}",
            student_logits.dims(),
            teacher_probs.dims(),
            weights.dims()
        )));
    }
    let l = row_cross_terms(student_logits, teacher_probs, student_temp)?;
    let w = weights.detach().to_dtype(l.dtype())?;
    Ok(((l * w)?.sum_all()? * (-1.0 / n_images as f64))?)
}

/// From flat masks `(n_images · n_tokens)` (row-major, image-major), the flat
/// indices of masked tokens (into the `(n_images · n_tokens, E)` token array,
/// as `u32`) and their weights `1 / max(1, masked count of the image)`.
pub fn masked_indices_and_weights(
    masks: &[bool],
    n_tokens: usize,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    if n_tokens == 0 || !masks.len().is_multiple_of(n_tokens) {
        return Err(ModelError::Input(format!(
            "{} mask entries are not a multiple of {n_tokens} tokens",
            masks.len()
        )));
    }
    let mut idx = Vec::new();
    let mut w = Vec::new();
    for (i, image) in masks.chunks(n_tokens).enumerate() {
        let count = image.iter().filter(|&&m| m).count();
        let wi = 1.0 / count.max(1) as f32;
        for (j, _) in image.iter().enumerate().filter(|(_, m)| **m) {
            idx.push((i * n_tokens + j) as u32);
            w.push(wi);
        }
    }
    let n = idx.len();
    Ok((
        Tensor::from_vec(idx, n, device)?,
        Tensor::from_vec(w, n, device)?,
    ))
}
