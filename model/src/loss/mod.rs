//! 3DINO's training losses and teacher-target centring (spec §2.5).
//!
//! All losses take logits or features as candle tensors and return a scalar
//! tensor that backpropagates to the student; teacher targets are detached.
//! They work in whatever float dtype they are given (tests use f64), except
//! Sinkhorn-Knopp, which runs in f32 like 3DINO.

mod centering;
mod dino;
mod distributed;
mod ibot;
mod koleo;

pub use centering::{SoftmaxCentering, sinkhorn_knopp};
pub use dino::{DinoLoss, dino_loss};
pub use distributed::{sinkhorn_knopp_all, sinkhorn_knopp_all_on};
pub use ibot::{ibot_loss, masked_indices_and_weights};
pub use koleo::koleo_loss;

use candle_core::Tensor;

/// Student softmax temperature for both DINO and iBOT.
pub const STUDENT_TEMP: f64 = 0.1;

/// Sinkhorn-Knopp iterations 3DINO uses.
pub const SINKHORN_ITERATIONS: usize = 3;

/// KoLeo weight in the total loss.
pub const KOLEO_WEIGHT: f64 = 0.1;

/// Row-wise `Σ_k t_k · log_softmax(s / temp)_k`, shape `(rows,)`.
pub(crate) fn row_cross_terms(
    student_logits: &Tensor,
    teacher_probs: &Tensor,
    temp: f64,
) -> candle_core::Result<Tensor> {
    crate::fused::cross_terms(student_logits, teacher_probs, temp)
}

#[cfg(test)]
mod tests;
