//! What every custom op needs between candle's CUDA storages and our
//! kernels: the storage's device as a [`GpuContext`], a contiguous f32 (or
//! bf16) view of it, a kernel's output wrapped back as a storage, and our
//! errors as candle's.

use candle_core::backend::BackendStorage;
use candle_core::{CudaStorage, Layout};
use cudarc::driver::{CudaSlice, CudaView};

use super::GpuContext;

/// Our error as candle's (custom ops return candle's).
pub(crate) fn to_candle(e: crate::ModelError) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

/// The storage's device as our kernels' context.
pub(crate) fn gpu_of(s: &CudaStorage) -> candle_core::Result<GpuContext> {
    GpuContext::from_cuda(s.device()).map_err(to_candle)
}

/// The f32 elements of a contiguous storage under `layout`.
pub(crate) fn view<'a>(s: &'a CudaStorage, l: &Layout) -> candle_core::Result<CudaView<'a, f32>> {
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("dino3d CUDA op: a non-contiguous operand");
    };
    Ok(s.as_cuda_slice::<f32>()?.slice(a..b))
}

/// The bf16 elements of a contiguous storage under `layout`.
pub(crate) fn view_bf16<'a>(
    s: &'a CudaStorage,
    l: &Layout,
) -> candle_core::Result<CudaView<'a, half::bf16>> {
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("dino3d CUDA op: a non-contiguous operand");
    };
    Ok(s.as_cuda_slice::<half::bf16>()?.slice(a..b))
}

/// A kernel's output as a storage on `like`'s device.
pub(crate) fn wrap<T: candle_core::cuda::CudaDType + cudarc::driver::DeviceRepr>(
    out: crate::Result<CudaSlice<T>>,
    like: &CudaStorage,
) -> candle_core::Result<CudaStorage> {
    Ok(CudaStorage::wrap_cuda_slice(
        out.map_err(to_candle)?,
        like.device().clone(),
    ))
}
