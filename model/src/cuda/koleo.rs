//! KoLeo forward on the GPU (three small launches, no host round trip).

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use super::context::{GpuContext, ROW_BLOCK, cuda_err};
use super::sources::KOLEO;
use crate::kernels_ref::check_koleo;
use crate::{ModelError, Result};

/// `eps` of the L2 normalisation, of `PairwiseDistance` and of the log.
const EPS: f32 = 1e-8;

/// KoLeo loss of `rows` vectors of length `dim` (row-major), as a
/// one-element device buffer; the same value as
/// [`crate::kernels_ref::koleo`] up to f32 rounding.
///
/// # Errors
/// [`ModelError::Input`] on an empty or mis-sized buffer or sizes past
/// `i32`; [`ModelError::Cuda`] when compilation, allocation or a launch
/// fails.
pub fn koleo_loss(
    gpu: &GpuContext,
    x: &CudaSlice<f32>,
    rows: usize,
    dim: usize,
) -> Result<CudaSlice<f32>> {
    check_koleo(x.len(), rows, dim)?;
    let (n, d) = match (i32::try_from(rows), i32::try_from(dim)) {
        (Ok(n), Ok(d)) => (n, d),
        _ => {
            return Err(ModelError::Input(format!(
                "KoLeo: {rows}×{dim} exceeds the kernel's i32 sizes"
            )));
        }
    };
    let stream = gpu.stream();
    let mut xn = stream
        .alloc_zeros::<f32>(x.len())
        .map_err(cuda_err("KoLeo alloc"))?;
    let mut logd = stream
        .alloc_zeros::<f32>(rows)
        .map_err(cuda_err("KoLeo alloc"))?;
    let mut out = stream
        .alloc_zeros::<f32>(1)
        .map_err(cuda_err("KoLeo alloc"))?;
    let per_row = LaunchConfig {
        grid_dim: (n as u32, 1, 1),
        block_dim: (ROW_BLOCK, 1, 1),
        shared_mem_bytes: 0,
    };

    let f = gpu.function(KOLEO, "koleo_normalize")?;
    let mut launch = stream.launch_builder(&f);
    launch.arg(x).arg(&mut xn).arg(&d).arg(&EPS);
    // SAFETY: matches `koleo_normalize(const float*, float*, int, float)`;
    // x and xn hold rows·dim f32 and the grid has one block per row.
    unsafe { launch.launch(per_row) }.map_err(cuda_err("launch koleo_normalize"))?;

    let f = gpu.function(KOLEO, "koleo_nn_logdist")?;
    let mut launch = stream.launch_builder(&f);
    launch.arg(&xn).arg(&mut logd).arg(&n).arg(&d).arg(&EPS);
    // SAFETY: matches `koleo_nn_logdist(const float*, float*, int, int,
    // float)`; xn holds rows·dim f32, logd `rows`, one block per row.
    unsafe { launch.launch(per_row) }.map_err(cuda_err("launch koleo_nn_logdist"))?;

    let f = gpu.function(KOLEO, "koleo_mean")?;
    let mut launch = stream.launch_builder(&f);
    launch.arg(&logd).arg(&mut out).arg(&n);
    let one_block = LaunchConfig {
        grid_dim: (1, 1, 1),
        ..per_row
    };
    // SAFETY: matches `koleo_mean(const float*, float*, int)`; logd holds
    // `rows` f32 and out one.
    unsafe { launch.launch(one_block) }.map_err(cuda_err("launch koleo_mean"))?;
    Ok(out)
}
