//! Launchers of the ViT-Adapter's deformable sampling on the GPU
//! (`deform.cu`), the twin of the CPU op in `seg/adapter/deform_attn.rs`.

use cudarc::driver::{CudaSlice, CudaView, LaunchConfig, PushKernelArg};

use super::context::{GpuContext, cuda_err};
use super::sources::DEFORM;
use crate::{ModelError, Result};

/// The geometry of one sampling call, as the kernels take it.
#[derive(Debug, Clone)]
pub(crate) struct DeformGeometry {
    /// Per level `(size x, size y, size z, first row)`.
    pub(crate) levels: Vec<[i32; 4]>,
    pub(crate) groups: usize,
    pub(crate) voxels: usize,
    pub(crate) dim: usize,
    /// Samples per group, `Q · L · P`.
    pub(crate) samples: usize,
    pub(crate) points: usize,
}

impl DeformGeometry {
    fn scalars(&self) -> Result<(i32, i32, i64, i64, i32)> {
        let int = |v: usize, what: &str| {
            i32::try_from(v)
                .map_err(|_| ModelError::Input(format!("deform_sample: {what} {v} too large")))
        };
        Ok((
            int(self.levels.len(), "levels")?,
            int(self.points, "points")?,
            self.voxels as i64,
            self.samples as i64,
            int(self.dim, "channels")?,
        ))
    }

    fn upload_levels(&self, gpu: &GpuContext) -> Result<CudaSlice<i32>> {
        let flat: Vec<i32> = self.levels.iter().flatten().copied().collect();
        gpu.stream()
            .clone_htod(&flat)
            .map_err(cuda_err("deform levels"))
    }
}

/// Samples `(G, S, D)` of `values (G, V, D)` at `locations (G, S, 3)`.
pub(crate) fn deform_fwd(
    gpu: &GpuContext,
    geo: &DeformGeometry,
    values: &CudaView<'_, f32>,
    locations: &CudaView<'_, f32>,
) -> Result<CudaSlice<f32>> {
    let total = geo.groups * geo.samples * geo.dim;
    let mut out = gpu
        .stream()
        .alloc_zeros::<f32>(total.max(1))
        .map_err(cuda_err("deform alloc"))?;
    if total == 0 {
        return Ok(out);
    }
    let levels = geo.upload_levels(gpu)?;
    let (n_levels, points, voxels, samples, dim) = geo.scalars()?;
    let total_u64 = total as u64;
    let f = gpu.function(DEFORM, "deform_fwd_f32")?;
    let mut launch = gpu.stream().launch_builder(&f);
    launch
        .arg(values)
        .arg(locations)
        .arg(&levels)
        .arg(&mut out)
        .arg(&n_levels)
        .arg(&points)
        .arg(&voxels)
        .arg(&samples)
        .arg(&dim)
        .arg(&total_u64);
    // SAFETY: matches `deform_fwd_f32(const float*, const float*, const
    // int*, float*, int, int, long long, long long, int, unsigned long
    // long)`; values hold G·V·D f32, locations G·S·3, levels 4·L ints, out
    // G·S·D = total; every corner row is inside its level (checked in the
    // kernel) and so inside V.
    unsafe { launch.launch(gpu.stride_config(total)) }
        .map_err(cuda_err("launch deform_fwd_f32"))?;
    Ok(out)
}

/// The gradients for upstream `grad (G, S, D)`, packed as
/// `[d values (G·V·D) | d locations (G·S·3)]`.
pub(crate) fn deform_bwd(
    gpu: &GpuContext,
    geo: &DeformGeometry,
    values: &CudaView<'_, f32>,
    locations: &CudaView<'_, f32>,
    grad: &CudaView<'_, f32>,
) -> Result<CudaSlice<f32>> {
    let (nv, nl) = (
        geo.groups * geo.voxels * geo.dim,
        geo.groups * geo.samples * 3,
    );
    let mut out = gpu
        .stream()
        .alloc_zeros::<f32>((nv + nl).max(1))
        .map_err(cuda_err("deform alloc"))?;
    let total = geo.groups * geo.samples * geo.dim;
    if total == 0 {
        return Ok(out);
    }
    let levels = geo.upload_levels(gpu)?;
    let (n_levels, points, voxels, samples, dim) = geo.scalars()?;
    {
        let f = gpu.function(DEFORM, "deform_bwd_values_f32")?;
        let mut dv = out.slice_mut(..nv);
        let total_u64 = total as u64;
        let mut launch = gpu.stream().launch_builder(&f);
        launch
            .arg(locations)
            .arg(grad)
            .arg(&levels)
            .arg(&mut dv)
            .arg(&n_levels)
            .arg(&points)
            .arg(&voxels)
            .arg(&samples)
            .arg(&dim)
            .arg(&total_u64);
        // SAFETY: matches `deform_bwd_values_f32(const float*, const float*,
        // const int*, float*, int, int, long long, long long, int, unsigned
        // long long)`; grad holds total f32, dv G·V·D (zeroed), locations
        // G·S·3; corner rows are inside their level.
        unsafe { launch.launch(gpu.stride_config(total)) }
            .map_err(cuda_err("launch deform_bwd_values_f32"))?;
    }
    {
        let f = gpu.function(DEFORM, "deform_bwd_loc_f32")?;
        let mut dl = out.slice_mut(nv..nv + nl);
        let n_samples = (geo.groups * geo.samples) as u64;
        let mut launch = gpu.stream().launch_builder(&f);
        launch
            .arg(values)
            .arg(locations)
            .arg(grad)
            .arg(&levels)
            .arg(&mut dl)
            .arg(&n_levels)
            .arg(&points)
            .arg(&voxels)
            .arg(&samples)
            .arg(&dim)
            .arg(&n_samples);
        // One warp (32 threads) per sample, 8 warps per block.
        let blocks = u32::try_from((geo.groups * geo.samples).div_ceil(8))
            .map_err(|_| ModelError::Input("deform_sample: too many samples".into()))?;
        let cfg = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: matches `deform_bwd_loc_f32(const float*, const float*,
        // const float*, const int*, float*, int, int, long long, long long,
        // int, unsigned long long)`; dl holds G·S·3 f32; warps past the last
        // sample return before reading.
        unsafe { launch.launch(cfg) }.map_err(cuda_err("launch deform_bwd_loc_f32"))?;
    }
    Ok(out)
}
