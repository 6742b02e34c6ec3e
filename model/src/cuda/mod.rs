//! GPU kernels (feature `cuda`) for the training step's memory-bound parts:
//! the fused teacher EMA, Sinkhorn-Knopp centring fused with the student
//! cross-entropy, and the KoLeo forward.
//!
//! Kernels are CUDA C (`*.cu` beside this file) compiled at run time by
//! NVRTC for the device's compute capability, through cudarc with the
//! driver and NVRTC loaded dynamically: building needs no CUDA toolkit, and
//! [`GpuContext::new`] returns [`crate::ModelError::NoCudaDevice`] where no
//! GPU or driver is present. Each kernel has a CPU reference in
//! [`crate::kernels_ref`] that defines its result; `tests/cuda_kernels.rs`
//! compares the two and `benches/cuda_kernels.rs` times them.
//!
//! [`NcclCollective`] is the NCCL implementation of
//! [`crate::dist::Collective`] (NCCL loaded at run time too).
//!
//! Buffers are cudarc [`CudaSlice`]s; [`GpuContext::upload`] and
//! [`GpuContext::download`] move `f32` data. Candle's own CUDA backend
//! (which needs nvcc to build) is not used here.

mod context;
mod ema;
mod koleo;
mod nccl;
mod sinkhorn_ce;

pub use context::{GpuContext, compile_all};

/// Every kernel module, for [`compile_all`].
const KERNEL_SOURCES: [context::KernelSource; 3] =
    [ema::SOURCE, koleo::SOURCE, sinkhorn_ce::SOURCE];
pub use cudarc::driver::CudaSlice;
pub use ema::ema_update;
pub use koleo::koleo_loss;
pub use nccl::{NCCL_ID_BYTES, NcclCollective, nccl_unique_id};
pub use sinkhorn_ce::{SinkhornCeGpu, sinkhorn_ce};
