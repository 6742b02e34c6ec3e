//! Launchers of the fused ops' CUDA twins (`fused.cu`): GELU, softmax,
//! LayerNorm and the segmentation's instance norm, forward and backward, on
//! views of candle's buffers. The ops in [`crate::fused`] and
//! `seg/instance_norm.rs` call them from their `cuda_fwd`; the CPU kernels there
//! are the references (`fused_gpu_tests` below, run on a GPU).

use cudarc::driver::{CudaSlice, CudaView, LaunchConfig, PushKernelArg};
use half::bf16;

use super::context::{GpuContext, ROW_BLOCK, STRIDE_BLOCK, cuda_err};
use super::sources::FUSED;
use crate::{ModelError, Result};

/// Rows per partial sum of LayerNorm's weight and bias gradients.
const WB_CHUNK_ROWS: usize = 64;

/// Threads per block for rows of `n`: a power of two from 32 to
/// [`ROW_BLOCK`], about one element per thread.
fn row_block(n: usize) -> u32 {
    (n.next_power_of_two() as u32).clamp(32, ROW_BLOCK)
}

fn as_i32(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| ModelError::Input(format!("{what} {v} exceeds the kernel's i32")))
}

fn alloc<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(
    gpu: &GpuContext,
    len: usize,
) -> Result<CudaSlice<T>> {
    // SAFETY: every caller's kernel writes all `len` values before anything
    // reads them (elementwise and row kernels cover the whole buffer). At
    // least one value: the driver refuses an empty allocation, and an empty
    // tensor never reads it.
    unsafe { gpu.stream().alloc::<T>(len.max(1)) }.map_err(cuda_err("fused alloc"))
}

fn rows_cfg(rows: usize, n: usize) -> Result<LaunchConfig> {
    let rows = u32::try_from(rows)
        .map_err(|_| ModelError::Input(format!("{rows} rows exceed one grid")))?;
    Ok(LaunchConfig {
        grid_dim: (rows, 1, 1),
        block_dim: (row_block(n), 1, 1),
        shared_mem_bytes: 0,
    })
}

/// The element types of the GELU kernels: each has its own entry points.
pub(crate) trait GeluElement:
    cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits
{
    /// `gelu_fwd_*(const T*, T*, unsigned long long)`.
    const FORWARD: &'static str;
    /// `gelu_bwd_*(const T*, const T*, T*, unsigned long long)`.
    const BACKWARD: &'static str;
}

impl GeluElement for f32 {
    const FORWARD: &'static str = "gelu_fwd_f32";
    const BACKWARD: &'static str = "gelu_bwd_f32";
}

/// bf16 values, computed in f32 and rounded once (the kernels take them as
/// `unsigned short`, the same 16 bits).
impl GeluElement for bf16 {
    const FORWARD: &'static str = "gelu_fwd_bf16";
    const BACKWARD: &'static str = "gelu_bwd_bf16";
}

/// Exact GELU of every element.
pub(crate) fn gelu_fwd<T: GeluElement>(
    gpu: &GpuContext,
    x: &CudaView<'_, T>,
) -> Result<CudaSlice<T>> {
    let len = x.len();
    let mut y = alloc(gpu, len)?;
    if len > 0 {
        let f = gpu.function(FUSED, T::FORWARD)?;
        let len_u64 = len as u64;
        let mut launch = gpu.stream().launch_builder(&f);
        launch.arg(x).arg(&mut y).arg(&len_u64);
        // SAFETY: matches `T::FORWARD(const T*, T*, unsigned long long)`
        // (bf16 as its 16 bits); x and y hold `len` values, grid-stride to
        // `len`.
        unsafe { launch.launch(gpu.stride_config(len)) }.map_err(cuda_err(T::FORWARD))?;
    }
    Ok(y)
}

/// GELU's input gradient for upstream gradient `g`.
pub(crate) fn gelu_bwd<T: GeluElement>(
    gpu: &GpuContext,
    x: &CudaView<'_, T>,
    g: &CudaView<'_, T>,
) -> Result<CudaSlice<T>> {
    let len = x.len();
    if g.len() != len {
        return Err(ModelError::Input(format!(
            "GELU backward: {len} vs {} values",
            g.len()
        )));
    }
    let mut dx = alloc(gpu, len)?;
    if len > 0 {
        let f = gpu.function(FUSED, T::BACKWARD)?;
        let len_u64 = len as u64;
        let mut launch = gpu.stream().launch_builder(&f);
        launch.arg(x).arg(g).arg(&mut dx).arg(&len_u64);
        // SAFETY: matches `T::BACKWARD(const T*, const T*, T*, unsigned long
        // long)`; all three hold `len` values.
        unsafe { launch.launch(gpu.stride_config(len)) }.map_err(cuda_err(T::BACKWARD))?;
    }
    Ok(dx)
}

/// `softmax(scale·x)` over rows of `n`.
pub(crate) fn softmax_fwd(
    gpu: &GpuContext,
    x: &CudaView<'_, f32>,
    n: usize,
    scale: f64,
) -> Result<CudaSlice<f32>> {
    let rows = rows_of(x.len(), n, "softmax")?;
    let mut y = alloc(gpu, x.len())?;
    if rows > 0 {
        let f = gpu.function(FUSED, "softmax_fwd_f32")?;
        let (n_i, s) = (as_i32(n, "softmax row")?, scale as f32);
        let mut launch = gpu.stream().launch_builder(&f);
        launch.arg(x).arg(&mut y).arg(&n_i).arg(&s);
        // SAFETY: matches `softmax_fwd_f32(const float*, float*, int,
        // float)`; x and y hold rows·n f32, one block per row.
        unsafe { launch.launch(rows_cfg(rows, n)?) }.map_err(cuda_err("launch softmax_fwd_f32"))?;
    }
    Ok(y)
}

/// Softmax's input gradient from its output `y` and upstream gradient `g`.
pub(crate) fn softmax_bwd(
    gpu: &GpuContext,
    y: &CudaView<'_, f32>,
    g: &CudaView<'_, f32>,
    n: usize,
    scale: f64,
) -> Result<CudaSlice<f32>> {
    let rows = rows_of(y.len(), n, "softmax")?;
    if g.len() != y.len() {
        return Err(ModelError::Input(format!(
            "softmax backward: {} vs {} values",
            y.len(),
            g.len()
        )));
    }
    let mut dx = alloc(gpu, y.len())?;
    if rows > 0 {
        let f = gpu.function(FUSED, "softmax_bwd_f32")?;
        let (n_i, s) = (as_i32(n, "softmax row")?, scale as f32);
        let mut launch = gpu.stream().launch_builder(&f);
        launch.arg(y).arg(g).arg(&mut dx).arg(&n_i).arg(&s);
        // SAFETY: matches `softmax_bwd_f32(const float*, const float*,
        // float*, int, float)`; all hold rows·n f32, one block per row.
        unsafe { launch.launch(rows_cfg(rows, n)?) }.map_err(cuda_err("launch softmax_bwd_f32"))?;
    }
    Ok(dx)
}

/// LayerNorm over rows of `w.len()` with weight `w` and bias `b`.
pub(crate) fn layer_norm_fwd(
    gpu: &GpuContext,
    x: &CudaView<'_, f32>,
    w: &CudaView<'_, f32>,
    b: &CudaView<'_, f32>,
    eps: f64,
) -> Result<CudaSlice<f32>> {
    let d = w.len();
    let rows = rows_of(x.len(), d, "LayerNorm")?;
    if b.len() != d {
        return Err(ModelError::Input(format!(
            "LayerNorm: weight {d}, bias {}",
            b.len()
        )));
    }
    let mut y = alloc(gpu, x.len())?;
    if rows > 0 {
        let f = gpu.function(FUSED, "ln_fwd_f32")?;
        let (d_i, e) = (as_i32(d, "LayerNorm width")?, eps as f32);
        let mut launch = gpu.stream().launch_builder(&f);
        launch.arg(x).arg(w).arg(b).arg(&mut y).arg(&d_i).arg(&e);
        // SAFETY: matches `ln_fwd_f32(const float*, const float*, const
        // float*, float*, int, float)`; x and y hold rows·d f32, w and b d;
        // one block per row.
        unsafe { launch.launch(rows_cfg(rows, d)?) }.map_err(cuda_err("launch ln_fwd_f32"))?;
    }
    Ok(y)
}

/// LayerNorm's gradients for upstream gradient `g`, packed in one buffer as
/// `[dx (rows·d) | dw (d) | db (d)]`.
pub(crate) fn layer_norm_bwd(
    gpu: &GpuContext,
    x: &CudaView<'_, f32>,
    w: &CudaView<'_, f32>,
    g: &CudaView<'_, f32>,
    eps: f64,
) -> Result<CudaSlice<f32>> {
    let d = w.len();
    let rows = rows_of(x.len(), d, "LayerNorm")?;
    if g.len() != x.len() {
        return Err(ModelError::Input(format!(
            "LayerNorm backward: {} vs {} values",
            x.len(),
            g.len()
        )));
    }
    let stream = gpu.stream();
    let mut out = stream
        .alloc_zeros::<f32>(x.len() + 2 * d)
        .map_err(cuda_err("fused alloc"))?;
    if rows == 0 {
        return Ok(out);
    }
    let (d_i, e) = (as_i32(d, "LayerNorm width")?, eps as f32);
    let rows_i = as_i32(rows, "LayerNorm rows")?;
    let mut stats = alloc::<f32>(gpu, 2 * rows)?;
    {
        let f = gpu.function(FUSED, "ln_bwd_dx_f32")?;
        let mut dx = out.slice_mut(..x.len());
        let mut launch = stream.launch_builder(&f);
        launch
            .arg(x)
            .arg(w)
            .arg(g)
            .arg(&mut dx)
            .arg(&mut stats)
            .arg(&d_i)
            .arg(&e);
        // SAFETY: matches `ln_bwd_dx_f32(const float*, const float*, const
        // float*, float*, float*, int, float)`; x, g and dx hold rows·d f32,
        // w d, stats 2·rows; one block per row.
        unsafe { launch.launch(rows_cfg(rows, d)?) }.map_err(cuda_err("launch ln_bwd_dx_f32"))?;
    }
    let chunks = rows.div_ceil(WB_CHUNK_ROWS);
    let mut partial = alloc::<f32>(gpu, chunks * 2 * d)?;
    {
        let f = gpu.function(FUSED, "ln_bwd_wb_partial_f32")?;
        let chunk_i = WB_CHUNK_ROWS as i32;
        let mut launch = stream.launch_builder(&f);
        launch
            .arg(x)
            .arg(g)
            .arg(&stats)
            .arg(&mut partial)
            .arg(&rows_i)
            .arg(&d_i)
            .arg(&chunk_i);
        let cfg = LaunchConfig {
            grid_dim: (
                d.div_ceil(STRIDE_BLOCK as usize) as u32,
                u32::try_from(chunks)
                    .ok()
                    .filter(|&c| c <= 65_535)
                    .ok_or_else(|| {
                        ModelError::Input(format!(
                            "LayerNorm backward: {rows} rows, at most {} on the GPU",
                            65_535 * WB_CHUNK_ROWS
                        ))
                    })?,
                1,
            ),
            block_dim: (STRIDE_BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: matches `ln_bwd_wb_partial_f32(const float*, const float*,
        // const float*, float*, int, int, int)`; x and g hold rows·d f32,
        // stats 2·rows, partial chunks·2d; threads past column d return.
        unsafe { launch.launch(cfg) }.map_err(cuda_err("launch ln_bwd_wb_partial_f32"))?;
    }
    {
        let f = gpu.function(FUSED, "ln_bwd_wb_sum_f32")?;
        let (chunks_i, width) = (
            as_i32(chunks, "LayerNorm chunks")?,
            as_i32(2 * d, "LayerNorm width")?,
        );
        let mut wb = out.slice_mut(x.len()..);
        let mut launch = stream.launch_builder(&f);
        launch.arg(&partial).arg(&mut wb).arg(&chunks_i).arg(&width);
        let cfg = LaunchConfig {
            grid_dim: ((2 * d).div_ceil(STRIDE_BLOCK as usize) as u32, 1, 1),
            block_dim: (STRIDE_BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: matches `ln_bwd_wb_sum_f32(const float*, float*, int,
        // int)`; partial holds chunks·2d f32 and wb 2d; threads past 2d
        // return.
        unsafe { launch.launch(cfg) }.map_err(cuda_err("launch ln_bwd_wb_sum_f32"))?;
    }
    Ok(out)
}

/// Instance norm without affine over rows of `d` voxels (one row per sample
/// and channel): the twin of the CPU op in `seg/instance_norm.rs`.
pub(crate) fn instance_norm_fwd(
    gpu: &GpuContext,
    x: &CudaView<'_, f32>,
    d: usize,
    eps: f64,
) -> Result<CudaSlice<f32>> {
    let rows = rows_of(x.len(), d, "instance norm")?;
    let mut y = alloc(gpu, x.len())?;
    if rows > 0 {
        let f = gpu.function(FUSED, "in_fwd_f32")?;
        let (d_i, e) = (as_i32(d, "instance norm row")?, eps as f32);
        let mut launch = gpu.stream().launch_builder(&f);
        launch.arg(x).arg(&mut y).arg(&d_i).arg(&e);
        // SAFETY: matches `in_fwd_f32(const float*, float*, int, float)`; x
        // and y hold rows·d f32; one block per row.
        unsafe { launch.launch(rows_cfg(rows, d)?) }.map_err(cuda_err("launch in_fwd_f32"))?;
    }
    Ok(y)
}

/// The instance norm's input gradient for upstream gradient `g`.
pub(crate) fn instance_norm_bwd(
    gpu: &GpuContext,
    x: &CudaView<'_, f32>,
    g: &CudaView<'_, f32>,
    d: usize,
    eps: f64,
) -> Result<CudaSlice<f32>> {
    let rows = rows_of(x.len(), d, "instance norm")?;
    if g.len() != x.len() {
        return Err(ModelError::Input(format!(
            "instance norm backward: {} vs {} values",
            x.len(),
            g.len()
        )));
    }
    let mut dx = alloc(gpu, x.len())?;
    if rows > 0 {
        let f = gpu.function(FUSED, "in_bwd_f32")?;
        let (d_i, e) = (as_i32(d, "instance norm row")?, eps as f32);
        let mut launch = gpu.stream().launch_builder(&f);
        launch.arg(x).arg(g).arg(&mut dx).arg(&d_i).arg(&e);
        // SAFETY: matches `in_bwd_f32(const float*, const float*, float*,
        // int, float)`; x, g and dx hold rows·d f32; one block per row.
        unsafe { launch.launch(rows_cfg(rows, d)?) }.map_err(cuda_err("launch in_bwd_f32"))?;
    }
    Ok(dx)
}

/// Rows of `n` in `len` values.
fn rows_of(len: usize, n: usize, what: &str) -> Result<usize> {
    if n == 0 || !len.is_multiple_of(n) {
        return Err(ModelError::Input(format!(
            "{what}: {len} values are not rows of {n}"
        )));
    }
    Ok(len / n)
}
