//! The AdamW update on the GPU: one launch per parameter, in place on the
//! parameter and its two moments (from [`crate::optim`]'s fused pass).

use cudarc::driver::{CudaView, CudaViewMut, PushKernelArg};

use super::context::{GpuContext, cuda_err};
use super::sources::ADAMW;
use crate::{ModelError, Result};

/// The f32 factors of one update, as the CPU pass computes them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AdamWFactors {
    pub(crate) b1: f32,
    pub(crate) one_b1: f32,
    pub(crate) b2: f32,
    pub(crate) one_b2: f32,
    pub(crate) bc2_sqrt: f32,
    pub(crate) eps: f32,
    pub(crate) step: f32,
    pub(crate) decay: f32,
}

/// `p`, `m`, `v` updated in place from `g` (all of one length), queued on
/// the context's stream; bit-identical to the CPU pass.
pub(crate) fn adamw_update_view(
    gpu: &GpuContext,
    p: &mut CudaViewMut<'_, f32>,
    m: &mut CudaViewMut<'_, f32>,
    v: &mut CudaViewMut<'_, f32>,
    g: &CudaView<'_, f32>,
    k: AdamWFactors,
) -> Result<()> {
    let len = p.len();
    if [m.len(), v.len(), g.len()].iter().any(|&l| l != len) {
        return Err(ModelError::Input(format!(
            "AdamW: parameter {len}, moments {} and {}, gradient {} values",
            m.len(),
            v.len(),
            g.len()
        )));
    }
    if len == 0 {
        return Ok(());
    }
    let f = gpu.function(ADAMW, "adamw_f32")?;
    let len_u64 = len as u64;
    let cfg = gpu.stride_config(len);
    let mut launch = gpu.stream().launch_builder(&f);
    launch
        .arg(p)
        .arg(m)
        .arg(v)
        .arg(g)
        .arg(&k.b1)
        .arg(&k.one_b1)
        .arg(&k.b2)
        .arg(&k.one_b2)
        .arg(&k.bc2_sqrt)
        .arg(&k.eps)
        .arg(&k.step)
        .arg(&k.decay)
        .arg(&len_u64);
    // SAFETY: matches `adamw_f32(float*, float*, float*, const float*, 8 x
    // float, unsigned long long)` in type and order; the four views hold
    // `len` f32 (checked) and the grid-stride loop stops at `len`.
    unsafe { launch.launch(cfg) }.map_err(cuda_err("launch adamw_f32"))?;
    Ok(())
}
