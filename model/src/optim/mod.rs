//! Optimisation pieces: AdamW with 3DINO's parameter groups, per-module
//! gradient clipping and the EMA teacher update.

mod adamw;
mod clip;
mod ema;
mod fused;
mod groups;
#[cfg(test)]
mod tests;

pub use adamw::{AdamW, AdamWConfig, StepValues};
pub use clip::clip_grad_norm;
pub use ema::{ema_update, ema_update_var};
pub use groups::{GroupRules, ParamMultipliers};

/// 3DINO clips each student module separately: `backbone.`, `dino_head.`,
/// `ibot_head.` (spec §2.4).
pub const THREEDINO_CLIP_MODULES: [&str; 3] = ["backbone.", "dino_head.", "ibot_head."];

/// 3DINO's clip norm (`optim.clip_grad`).
pub const THREEDINO_CLIP_GRAD: f64 = 3.0;

/// Clips the gradients of `optimizer`'s parameters per module prefix; returns
/// each module's norm before clipping (0 for a module without gradients).
pub fn clip_per_module(
    optimizer: &AdamW,
    grads: &mut candle_core::backprop::GradStore,
    prefixes: &[&str],
    max_norm: f64,
) -> crate::Result<Vec<f64>> {
    prefixes
        .iter()
        .map(|p| clip_grad_norm(grads, &optimizer.vars_with_prefix(p), max_norm))
        .collect()
}
