//! 3DINO's self-supervised meta-architecture (spec §2): a student and an EMA
//! teacher, each a backbone with a DINO head and a separate iBOT head, the
//! summed DINO + iBOT + KoLeo loss and one optimisation step.
//!
//! Parameter names are `backbone.*`, `dino_head.*` and `ibot_head.*` in both
//! networks, the layout 3DINO's checkpoints use, so the optimiser's groups
//! and the per-module clipping find them by prefix.

#[cfg(test)]
mod dist_tests;
mod losses;
mod model;
#[cfg(test)]
mod tests;

pub use losses::{LossValues, SslBatch, SslLosses};
pub use model::{Centering, Networks, SslConfig, SslModel, StepReport};
