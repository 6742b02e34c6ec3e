//! CPU references for the GPU kernels of the `cuda` module, compiled in every
//! build (the GPU tests and the kernel benchmark compare against them).
//!
//! Each reference states the exact contract of its kernel on flat `f32`
//! buffers and, where the crate already computes the same thing, is built on
//! that code, so the GPU path is held to what training uses on the CPU:
//!
//! | kernel | reference | built on |
//! |---|---|---|
//! | fused EMA over all parameters | [`ema_update_flat`] | the formula of [`crate::optim::ema_update_var`] |
//! | Sinkhorn-Knopp + cross-entropy | [`sinkhorn_ce`] | [`crate::loss::sinkhorn_knopp`] and the DINO cross-entropy |
//! | KoLeo forward | [`koleo`] | [`crate::loss::koleo_loss`] |
//! | attention without a score matrix | [`attention_fwd`], [`attention_bwd`] | the online softmax, held to candle's composed attention in f64 |
//!
//! [`testing`] holds the seeded inputs and the error measure the GPU tests
//! and benchmarks share.

mod attention;
mod ema;
mod koleo;
mod sinkhorn_ce;
pub mod testing;

pub use attention::{AttentionShape, attention_bwd, attention_fwd};
#[cfg(feature = "cuda")]
pub(crate) use ema::ema_factors;
pub use ema::ema_update_flat;
#[cfg(feature = "cuda")]
pub(crate) use koleo::check_koleo;
pub use koleo::koleo;
pub use sinkhorn_ce::{SinkhornCe, SinkhornCeConfig, sinkhorn_ce};
