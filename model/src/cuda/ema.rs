//! Fused teacher EMA on the GPU: one launch over a flat buffer (or one
//! parameter tensor, in place, from [`crate::optim::ema_update_var`]).

use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, PushKernelArg};

use super::context::{GpuContext, cuda_err};
use super::sources::EMA;
use crate::kernels_ref::ema_factors;
use crate::{ModelError, Result};

/// `teacher ← m·teacher + (1 − m)·student` elementwise, queued on the
/// context's stream; bit-identical to [`crate::kernels_ref::ema_update_flat`].
///
/// # Errors
/// [`ModelError::Input`] when the buffers differ in length;
/// [`ModelError::Cuda`] when compilation or the launch fails.
pub fn ema_update(
    gpu: &GpuContext,
    teacher: &mut CudaSlice<f32>,
    student: &CudaSlice<f32>,
    momentum: f64,
) -> Result<()> {
    ema_update_view(
        gpu,
        &mut teacher.as_view_mut(),
        &student.as_view(),
        momentum,
    )
}

/// [`ema_update`] on views (a tensor's elements inside its storage).
pub(crate) fn ema_update_view(
    gpu: &GpuContext,
    teacher: &mut CudaViewMut<'_, f32>,
    student: &CudaView<'_, f32>,
    momentum: f64,
) -> Result<()> {
    let len = teacher.len();
    if student.len() != len {
        return Err(ModelError::Input(format!(
            "EMA: teacher buffer has {len} values, student {}",
            student.len()
        )));
    }
    if len == 0 {
        return Ok(());
    }
    let f = gpu.function(EMA, "ema_update_f32")?;
    let (m, one_minus) = ema_factors(momentum);
    let len_u64 = len as u64;
    let cfg = gpu.stride_config(len);
    let mut launch = gpu.stream().launch_builder(&f);
    launch
        .arg(teacher)
        .arg(student)
        .arg(&m)
        .arg(&one_minus)
        .arg(&len_u64);
    // SAFETY: the arguments match `ema_update_f32(float*, const float*,
    // float, float, unsigned long long)` in type and order; both views
    // hold `len` f32 and the kernel's grid-stride loop stops at `len`.
    unsafe { launch.launch(cfg) }.map_err(cuda_err("launch ema_update_f32"))?;
    Ok(())
}
