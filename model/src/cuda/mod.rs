//! dino3d's GPU kernels for the training step's memory-bound parts (the
//! fused teacher EMA, Sinkhorn-Knopp alone or fused with the student
//! cross-entropy, the KoLeo forward) and NCCL.
//!
//! One CUDA runtime: candle's. With the `cuda` feature, candle's CUDA backend
//! runs every model op, and our kernels are CUDA C (`*.cu` beside this file)
//! compiled at run time by NVRTC and loaded into candle's device
//! ([`GpuContext`]); they are queued on candle's stream and read and write
//! the buffers of candle's tensors, with no host round trip. The model calls
//! them where it runs on a CUDA device: the teacher EMA
//! ([`crate::optim::ema_update_var`]) and Sinkhorn-Knopp
//! ([`crate::loss::sinkhorn_knopp`], and over all ranks' rows
//! [`crate::loss::sinkhorn_knopp_all`], the prototype sums all-reduced on
//! the device between the launches). cudarc opens the driver, NVRTC and NCCL
//! at run time: a machine without them gets [`crate::ModelError::NoCudaDevice`]
//! from [`GpuContext::new`], never a panic.
//!
//! Each kernel has a CPU reference in [`crate::kernels_ref`] that defines its
//! result; `tests/cuda_kernels.rs` compares the two and
//! `benches/cuda_kernels.rs` times them. With the `nvrtc` feature alone (no
//! toolkit, no GPU) only [`compile_all`] is built: `tests/kernel_sources.rs`
//! compiles every source with it.
//!
//! [`NcclCollective`] is the NCCL implementation of
//! [`crate::dist::Collective`].

mod sources;
pub use sources::compile_all;

#[cfg(feature = "cuda")]
pub(crate) mod adamw;
#[cfg(feature = "cuda")]
mod attention;
#[cfg(feature = "cuda")]
mod context;
#[cfg(feature = "cuda")]
pub(crate) mod deform;
#[cfg(feature = "cuda")]
mod ema;
#[cfg(feature = "cuda")]
pub(crate) mod fused;
#[cfg(feature = "cuda")]
mod koleo;
#[cfg(feature = "cuda")]
mod nccl;
#[cfg(feature = "cuda")]
mod sinkhorn_ce;
#[cfg(feature = "cuda")]
mod sinkhorn_ranks;
#[cfg(feature = "cuda")]
pub(crate) mod storage;
#[cfg(feature = "cuda")]
pub(crate) mod upload;

#[cfg(feature = "cuda")]
pub use attention::{HEAD_DIM, MAX_GROUPS, fits as attention_fits, flash_attention};
#[cfg(feature = "cuda")]
pub use context::GpuContext;
#[cfg(feature = "cuda")]
pub use cudarc::driver::CudaSlice;
#[cfg(feature = "cuda")]
pub use ema::ema_update;
#[cfg(feature = "cuda")]
pub(crate) use ema::ema_update_view;
#[cfg(feature = "cuda")]
pub use koleo::koleo_loss;
#[cfg(feature = "cuda")]
pub use nccl::{NCCL_ID_BYTES, NcclCollective, nccl_unique_id};
#[cfg(feature = "cuda")]
pub(crate) use sinkhorn_ce::sinkhorn_knopp_tensor;
#[cfg(feature = "cuda")]
pub use sinkhorn_ce::{SinkhornCeGpu, sinkhorn_ce};
#[cfg(feature = "cuda")]
pub(crate) use sinkhorn_ranks::sinkhorn_knopp_tensor_all;
