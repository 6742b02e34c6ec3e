//! Sinkhorn-Knopp teacher targets fused with the student cross-entropy on
//! the GPU (see `sinkhorn_ce.cu` for the scaling-vector formulation).

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use super::context::{GpuContext, KernelSource, ROW_BLOCK, STRIDE_BLOCK, cuda_err};
use crate::kernels_ref::SinkhornCeConfig;
use crate::{ModelError, Result};

/// `sk_proto_scale`'s block: `SK_PROTO_COLS` columns × `SK_PROTO_ROWS` row
/// groups (see `sinkhorn_ce.cu`).
const PROTO_BLOCK: (u32, u32) = (32, 8);

pub(crate) const SOURCE: KernelSource = KernelSource {
    name: "sinkhorn_ce",
    src: include_str!("sinkhorn_ce.cu"),
    kernels: &[
        "sk_exp",
        "sk_proto_scale",
        "sk_sample_scale",
        "sk_finish_ce_grad",
        "sk_finish_ce",
    ],
};

/// Device outputs of [`sinkhorn_ce`], row-major `(rows, prototypes)` where
/// 2-D; the same quantities as [`crate::kernels_ref::SinkhornCe`].
#[derive(Debug)]
pub struct SinkhornCeGpu {
    /// Teacher probabilities `t` (each row sums to 1).
    pub teacher_probs: CudaSlice<f32>,
    /// Per-row cross-entropy `−Σ_k t_k log_softmax(s/τ)_k`.
    pub ce: CudaSlice<f32>,
    /// `(softmax(s/τ) − t)/(τ·n)`, the gradient of `mean_i ce_i` w.r.t.
    /// the student logits, when asked for.
    pub grad: Option<CudaSlice<f32>>,
}

/// Sinkhorn-Knopp targets from `teacher_logits` and the cross-entropy of
/// `student_logits` against them, in f32 and `3 + 2·iterations` launches
/// queued on the context's stream.
///
/// # Shapes
/// `teacher_logits`, `student_logits`: `(rows, prototypes)` row-major.
///
/// # Errors
/// [`ModelError::Input`] on empty or mis-sized buffers, a non-positive
/// temperature or sizes past `i32`; [`ModelError::Cuda`] when compilation,
/// allocation or a launch fails.
pub fn sinkhorn_ce(
    gpu: &GpuContext,
    cfg: &SinkhornCeConfig,
    teacher_logits: &CudaSlice<f32>,
    student_logits: &CudaSlice<f32>,
    with_grad: bool,
) -> Result<SinkhornCeGpu> {
    cfg.check(teacher_logits.len(), student_logits.len())?;
    let (n, k) = match (i32::try_from(cfg.rows), i32::try_from(cfg.prototypes)) {
        (Ok(n), Ok(k)) => (n, k),
        _ => {
            return Err(ModelError::Input(format!(
                "Sinkhorn-Knopp: {}×{} exceeds the kernel's i32 sizes",
                cfg.rows, cfg.prototypes
            )));
        }
    };
    let stream = gpu.stream();
    let len = cfg.len();
    let mut probs = stream
        .alloc_zeros::<f32>(len)
        .map_err(cuda_err("Sinkhorn alloc"))?;
    let mut u = stream
        .alloc_zeros::<f32>(cfg.prototypes)
        .map_err(cuda_err("Sinkhorn alloc"))?;
    let mut v = gpu.upload(&vec![1.0f32; cfg.rows])?;
    let mut ce = stream
        .alloc_zeros::<f32>(cfg.rows)
        .map_err(cuda_err("Sinkhorn alloc"))?;

    let inv_teacher = (1.0 / cfg.teacher_temp) as f32;
    let inv_tau = (1.0 / cfg.student_temp) as f32;
    let n_f = cfg.rows as f32;
    let len_u64 = len as u64;
    let per_row = LaunchConfig {
        grid_dim: (n as u32, 1, 1),
        block_dim: (ROW_BLOCK, 1, 1),
        shared_mem_bytes: 0,
    };

    let f = gpu.function(SOURCE, "sk_exp")?;
    let mut launch = stream.launch_builder(&f);
    launch
        .arg(teacher_logits)
        .arg(&mut probs)
        .arg(&inv_teacher)
        .arg(&len_u64);
    let stride = LaunchConfig {
        grid_dim: (gpu.stride_grid(len), 1, 1),
        block_dim: (STRIDE_BLOCK, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: matches `sk_exp(const float*, float*, float, unsigned long
    // long)`; both buffers hold `len` f32 (checked), grid-stride to `len`.
    unsafe { launch.launch(stride) }.map_err(cuda_err("launch sk_exp"))?;

    let proto = gpu.function(SOURCE, "sk_proto_scale")?;
    let sample = gpu.function(SOURCE, "sk_sample_scale")?;
    let per_proto = LaunchConfig {
        grid_dim: (cfg.prototypes.div_ceil(PROTO_BLOCK.0 as usize) as u32, 1, 1),
        block_dim: (PROTO_BLOCK.0, PROTO_BLOCK.1, 1),
        shared_mem_bytes: 0,
    };
    for _ in 0..cfg.iterations {
        let mut launch = stream.launch_builder(&proto);
        launch.arg(&probs).arg(&v).arg(&mut u).arg(&n).arg(&k);
        // SAFETY: matches `sk_proto_scale(const float*, const float*,
        // float*, int, int)`; probs holds n·k f32, v n, u k; the block is
        // the kernel's (32, 8) and threads past column k read nothing.
        unsafe { launch.launch(per_proto) }.map_err(cuda_err("launch sk_proto_scale"))?;
        let mut launch = stream.launch_builder(&sample);
        launch.arg(&probs).arg(&u).arg(&mut v).arg(&k).arg(&n_f);
        // SAFETY: matches `sk_sample_scale(const float*, const float*,
        // float*, int, float)`; one block per row of probs (n·k f32), u
        // holds k, v n.
        unsafe { launch.launch(per_row) }.map_err(cuda_err("launch sk_sample_scale"))?;
    }

    let grad = if with_grad {
        let mut grad = stream
            .alloc_zeros::<f32>(len)
            .map_err(cuda_err("Sinkhorn alloc"))?;
        let grad_scale = inv_tau / n_f;
        let f = gpu.function(SOURCE, "sk_finish_ce_grad")?;
        let mut launch = stream.launch_builder(&f);
        launch
            .arg(&mut probs)
            .arg(&u)
            .arg(&v)
            .arg(student_logits)
            .arg(&mut ce)
            .arg(&mut grad)
            .arg(&k)
            .arg(&n_f)
            .arg(&inv_tau)
            .arg(&grad_scale);
        // SAFETY: matches `sk_finish_ce_grad(float*, const float*, const
        // float*, const float*, float*, float*, int, float, float, float)`;
        // probs, student and grad hold n·k f32, u k, v and ce n; one block
        // per row.
        unsafe { launch.launch(per_row) }.map_err(cuda_err("launch sk_finish_ce_grad"))?;
        Some(grad)
    } else {
        let f = gpu.function(SOURCE, "sk_finish_ce")?;
        let mut launch = stream.launch_builder(&f);
        launch
            .arg(&mut probs)
            .arg(&u)
            .arg(&v)
            .arg(student_logits)
            .arg(&mut ce)
            .arg(&k)
            .arg(&n_f)
            .arg(&inv_tau);
        // SAFETY: matches `sk_finish_ce(float*, const float*, const float*,
        // const float*, float*, int, float, float)`; sizes as above.
        unsafe { launch.launch(per_row) }.map_err(cuda_err("launch sk_finish_ce"))?;
        None
    };
    Ok(SinkhornCeGpu {
        teacher_probs: probs,
        ce,
        grad,
    })
}
