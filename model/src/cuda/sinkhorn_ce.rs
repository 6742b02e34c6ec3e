//! Sinkhorn-Knopp teacher targets fused with the student cross-entropy on
//! the GPU (see `sinkhorn_ce.cu` for the scaling-vector formulation).

use candle_core::{CpuStorage, CudaStorage, CustomOp1, Layout, Shape, Tensor};
use cudarc::driver::{CudaSlice, CudaView, LaunchConfig, PushKernelArg};

use super::context::{GpuContext, ROW_BLOCK, cuda_err};
use super::sources::SINKHORN_CE;
use super::storage::{gpu_of, wrap};
use crate::kernels_ref::SinkhornCeConfig;
use crate::{ModelError, Result};

/// `sk_proto_scale`'s block: `SK_PROTO_COLS` columns × `SK_PROTO_ROWS` row
/// groups (see `sinkhorn_ce.cu`).
pub(super) const PROTO_BLOCK: (u32, u32) = (32, 8);

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
/// temperature, zero iterations or sizes past `i32`; [`ModelError::Cuda`] when compilation,
/// allocation or a launch fails.
pub fn sinkhorn_ce(
    gpu: &GpuContext,
    cfg: &SinkhornCeConfig,
    teacher_logits: &CudaSlice<f32>,
    student_logits: &CudaSlice<f32>,
    with_grad: bool,
) -> Result<SinkhornCeGpu> {
    cfg.check(teacher_logits.len(), student_logits.len())?;
    let Scaled {
        e: mut probs,
        u,
        v,
        n,
        k,
    } = exp_and_scale(gpu, cfg, &teacher_logits.as_view())?;
    let stream = gpu.stream();
    let len = cfg.len();
    let mut ce = stream
        .alloc_zeros::<f32>(cfg.rows)
        .map_err(cuda_err("Sinkhorn alloc"))?;
    let inv_tau = (1.0 / cfg.student_temp) as f32;
    let n_f = cfg.rows as f32;
    let per_row = row_launch(n);

    let grad = if with_grad {
        let mut grad = stream
            .alloc_zeros::<f32>(len)
            .map_err(cuda_err("Sinkhorn alloc"))?;
        let grad_scale = inv_tau / n_f;
        let f = gpu.function(SINKHORN_CE, "sk_finish_ce_grad")?;
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
        let f = gpu.function(SINKHORN_CE, "sk_finish_ce")?;
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

/// Sinkhorn-Knopp teacher targets alone, `(rows, prototypes)` row-major in a
/// new buffer: the same values as [`sinkhorn_ce`]'s `teacher_probs` (and, up
/// to f32 rounding, as [`crate::loss::sinkhorn_knopp`] on the CPU), in
/// `2 + 2·iterations` launches. `cfg`'s student temperature is not used.
///
/// # Errors
/// As [`sinkhorn_ce`].
pub(crate) fn sinkhorn_targets(
    gpu: &GpuContext,
    cfg: &SinkhornCeConfig,
    teacher_logits: &CudaView<'_, f32>,
) -> Result<CudaSlice<f32>> {
    cfg.check(teacher_logits.len(), teacher_logits.len())?;
    let Scaled {
        e: mut probs,
        u,
        v,
        k,
        ..
    } = exp_and_scale(gpu, cfg, teacher_logits)?;
    let len = cfg.len();
    let n_f = cfg.rows as f32;
    let len_u64 = len as u64;
    let f = gpu.function(SINKHORN_CE, "sk_targets")?;
    let mut launch = gpu.stream().launch_builder(&f);
    launch
        .arg(&mut probs)
        .arg(&u)
        .arg(&v)
        .arg(&k)
        .arg(&n_f)
        .arg(&len_u64);
    // SAFETY: matches `sk_targets(float*, const float*, const float*, int,
    // float, unsigned long long)`; probs holds len = n·k f32, u k, v n;
    // grid-stride to `len`.
    unsafe { launch.launch(gpu.stride_config(len)) }.map_err(cuda_err("launch sk_targets"))?;
    Ok(probs)
}

/// [`crate::loss::sinkhorn_knopp`] of f32 logits `(n, K)` on a CUDA device,
/// as a tensor there: the kernels above, on candle's stream and buffers.
pub(crate) fn sinkhorn_knopp_tensor(
    logits: &Tensor,
    temp: f64,
    iterations: usize,
) -> Result<Tensor> {
    Ok(logits
        .contiguous()?
        .apply_op1_no_bwd(&SinkhornTargets { temp, iterations })?)
}

/// [`sinkhorn_targets`] as a candle op (teacher side: no gradient).
struct SinkhornTargets {
    temp: f64,
    iterations: usize,
}

impl CustomOp1 for SinkhornTargets {
    fn name(&self) -> &'static str {
        "sinkhorn-targets"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        // The CPU has its own pass (`loss::sinkhorn_knopp`); this op is only
        // made for CUDA tensors.
        candle_core::bail!("sinkhorn-targets: CUDA tensors only")
    }

    fn cuda_fwd(
        &self,
        storage: &CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let (rows, prototypes) = layout.shape().dims2()?;
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("sinkhorn-targets: contiguous logits only");
        };
        let cfg = SinkhornCeConfig {
            rows,
            prototypes,
            teacher_temp: self.temp,
            student_temp: 1.0,
            iterations: self.iterations,
        };
        let gpu = gpu_of(storage)?;
        let logits = storage.as_cuda_slice::<f32>()?.slice(start..end);
        let probs = sinkhorn_targets(&gpu, &cfg, &logits);
        Ok((wrap(probs, storage)?, layout.shape().clone()))
    }
}

/// `E = exp(teacher/T)` and the scaling vectors after `cfg.iterations`
/// Sinkhorn steps (see `sinkhorn_ce.cu`), with the sizes as the kernels'
/// `int`s.
struct Scaled {
    e: CudaSlice<f32>,
    u: CudaSlice<f32>,
    v: CudaSlice<f32>,
    n: i32,
    k: i32,
}

fn exp_and_scale(
    gpu: &GpuContext,
    cfg: &SinkhornCeConfig,
    teacher_logits: &CudaView<'_, f32>,
) -> Result<Scaled> {
    // With u = 0 before the first prototype step, no iteration would give
    // all-zero targets (the CPU's 0-iteration result is E/ΣE·n).
    if cfg.iterations == 0 {
        return Err(ModelError::Input(
            "Sinkhorn-Knopp on the GPU needs at least one iteration".into(),
        ));
    }
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
    let mut e = stream
        .alloc_zeros::<f32>(len)
        .map_err(cuda_err("Sinkhorn alloc"))?;
    let mut u = stream
        .alloc_zeros::<f32>(cfg.prototypes)
        .map_err(cuda_err("Sinkhorn alloc"))?;
    let mut v = gpu.upload(&vec![1.0f32; cfg.rows])?;
    let inv_teacher = (1.0 / cfg.teacher_temp) as f32;
    let n_f = cfg.rows as f32;
    let len_u64 = len as u64;

    let f = gpu.function(SINKHORN_CE, "sk_exp")?;
    let mut launch = stream.launch_builder(&f);
    launch
        .arg(teacher_logits)
        .arg(&mut e)
        .arg(&inv_teacher)
        .arg(&len_u64);
    // SAFETY: matches `sk_exp(const float*, float*, float, unsigned long
    // long)`; both buffers hold `len` f32 (checked), grid-stride to `len`.
    unsafe { launch.launch(gpu.stride_config(len)) }.map_err(cuda_err("launch sk_exp"))?;

    let proto = gpu.function(SINKHORN_CE, "sk_proto_scale")?;
    let sample = gpu.function(SINKHORN_CE, "sk_sample_scale")?;
    let per_proto = LaunchConfig {
        grid_dim: (cfg.prototypes.div_ceil(PROTO_BLOCK.0 as usize) as u32, 1, 1),
        block_dim: (PROTO_BLOCK.0, PROTO_BLOCK.1, 1),
        shared_mem_bytes: 0,
    };
    for _ in 0..cfg.iterations {
        let mut launch = stream.launch_builder(&proto);
        launch.arg(&e).arg(&v).arg(&mut u).arg(&n).arg(&k);
        // SAFETY: matches `sk_proto_scale(const float*, const float*,
        // float*, int, int)`; e holds n·k f32, v n, u k; the block is
        // the kernel's (32, 8) and threads past column k read nothing.
        unsafe { launch.launch(per_proto) }.map_err(cuda_err("launch sk_proto_scale"))?;
        let mut launch = stream.launch_builder(&sample);
        launch.arg(&e).arg(&u).arg(&mut v).arg(&k).arg(&n_f);
        // SAFETY: matches `sk_sample_scale(const float*, const float*,
        // float*, int, float)`; one block per row of e (n·k f32), u
        // holds k, v n.
        unsafe { launch.launch(row_launch(n)) }.map_err(cuda_err("launch sk_sample_scale"))?;
    }
    Ok(Scaled { e, u, v, n, k })
}

/// One `ROW_BLOCK`-thread block per row.
pub(super) fn row_launch(rows: i32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (ROW_BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}
