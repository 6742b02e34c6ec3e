//! Sinkhorn-Knopp over the rows of all ranks on the GPU (3DINO's
//! distributed centring) with the fused kernels of `sinkhorn_ce.cu`: the
//! only sums over samples are the K prototype sums of each iteration, which
//! are all-reduced on the device between the launches; the sample step and
//! the targets are each rank's own rows. With the scaling vectors of the
//! kernels (`Q = E·diag(u)·diag(v)`) the grand total cancels, and one rank
//! holding every row gives the single-process kernels' values, bit for bit.

use candle_core::{
    CpuStorage, CudaStorage, CustomOp1, CustomOp2, DType, InplaceOp3, Layout, Shape, Tensor,
};
use cudarc::driver::{CudaSlice, CudaView, LaunchConfig, PushKernelArg};

use super::context::{GpuContext, cuda_err};
use super::sinkhorn_ce::{PROTO_BLOCK, row_launch};
use super::sources::SINKHORN_CE;
use super::storage::{gpu_of, to_candle, view, wrap};
use crate::dist::{Collective, ReduceOp};
use crate::{ModelError, Result};

/// [`crate::loss::sinkhorn_knopp`] of this rank's f32 teacher logits
/// `(n, K)` (on the CUDA device `compute`) as part of all ranks' rows: the
/// row count and each iteration's prototype sums are all-reduced (the sums
/// as device tensors on `compute`, through
/// [`Collective::all_reduce_tensor`]); every rank, one without rows too,
/// must call it with the same `K` and `iterations`. A rank without rows
/// may hold its empty logits on any device and gets them back.
///
/// # Errors
/// Zero iterations or prototypes; sizes past the kernels' `i32`; a failed
/// launch or collective.
pub(crate) fn sinkhorn_knopp_tensor_all(
    logits: &Tensor,
    compute: &candle_core::Device,
    temp: f64,
    iterations: usize,
    comm: &dyn Collective,
) -> Result<Tensor> {
    let (n, k) = logits.dims2()?;
    // Refused before the first collective: K and the iterations are the
    // same on every rank, so all ranks stop together.
    if iterations == 0 || k == 0 || i32::try_from(k).is_err() {
        return Err(ModelError::Input(format!(
            "Sinkhorn-Knopp on the GPU needs an iteration and 1 to 2^31 prototypes (given {iterations}, {k})"
        )));
    }
    let dev = compute;
    let mut count = [n as f64];
    comm.all_reduce_f64(&mut count, ReduceOp::Sum)?;
    let n_total = count[0] as f32;
    if n_total == 0.0 {
        return Ok(logits.clone());
    }
    // A rank without rows runs none of the kernels but takes part in every
    // sum.
    let e = if n > 0 {
        Some(logits.contiguous()?.apply_op1_no_bwd(&SkExp {
            inv_temp: (1.0 / temp) as f32,
        })?)
    } else {
        None
    };
    let mut v = match &e {
        Some(_) => Some(Tensor::ones(n, DType::F32, dev)?),
        None => None,
    };
    let mut u = None;
    for _ in 0..iterations {
        let sums = match (&e, &v) {
            (Some(e), Some(v)) => e.apply_op2_no_bwd(v, &SkProtoSums)?,
            _ => Tensor::zeros(k, DType::F32, dev)?,
        };
        let sums = comm.all_reduce_tensor(&sums, ReduceOp::Sum)?;
        // 1 / (K · total), as `sk_proto_scale` computes it.
        let scale = sums.affine(k as f64, 0.0)?.recip()?;
        if let Some(e) = &e {
            v = Some(e.apply_op2_no_bwd(&scale, &SkSampleScale { n_total })?);
        }
        u = Some(scale);
    }
    match (e, u, v) {
        (Some(e), Some(u), Some(v)) => {
            // `e` is this function's own: the targets overwrite it.
            e.inplace_op3(&u, &v, &SkTargets { n_total })?;
            Ok(e)
        }
        _ => Ok(logits.clone()),
    }
}

/// `(n, K)` sizes as the kernels' `int`s.
fn sizes(layout: &Layout) -> candle_core::Result<(i32, i32)> {
    let (n, k) = layout.shape().dims2()?;
    match (i32::try_from(n), i32::try_from(k)) {
        (Ok(n), Ok(k)) => Ok((n, k)),
        _ => candle_core::bail!("Sinkhorn-Knopp: {n}×{k} exceeds the kernels' i32 sizes"),
    }
}

fn cuda_only(name: &str) -> candle_core::Error {
    candle_core::Error::Msg(format!("{name}: CUDA tensors only"))
}

/// `E = exp(logits / T)`.
struct SkExp {
    inv_temp: f32,
}

impl CustomOp1 for SkExp {
    fn name(&self) -> &'static str {
        "sinkhorn-exp"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        Err(cuda_only(self.name()))
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        sizes(l)?;
        let gpu = gpu_of(s)?;
        let logits = view(s, l)?;
        let len = l.shape().elem_count();
        let stream = gpu.stream();
        let out = (|| -> Result<cudarc::driver::CudaSlice<f32>> {
            let mut e = stream
                .alloc_zeros::<f32>(len)
                .map_err(cuda_err("Sinkhorn alloc"))?;
            let f = gpu.function(SINKHORN_CE, "sk_exp")?;
            let len_u64 = len as u64;
            let mut launch = stream.launch_builder(&f);
            launch
                .arg(&logits)
                .arg(&mut e)
                .arg(&self.inv_temp)
                .arg(&len_u64);
            // SAFETY: matches `sk_exp(const float*, float*, float, unsigned
            // long long)`; both buffers hold `len` f32, grid-stride to `len`.
            unsafe { launch.launch(gpu.stride_config(len)) }.map_err(cuda_err("launch sk_exp"))?;
            Ok(e)
        })();
        Ok((wrap(out, s)?, l.shape().clone()))
    }
}

/// The body both scale steps share: checks that the scale vector `x` has
/// `x_len` values, allocates the zeroed `out_len` result and has `launch`
/// fill it from `(E, x)` on the tensors' stream.
#[allow(clippy::too_many_arguments)]
fn scale_step(
    name: &str,
    e_s: &CudaStorage,
    e_l: &Layout,
    x_s: &CudaStorage,
    x_l: &Layout,
    x_len: usize,
    out_len: usize,
    launch: impl FnOnce(
        &GpuContext,
        &CudaView<'_, f32>,
        &CudaView<'_, f32>,
        &mut CudaSlice<f32>,
    ) -> Result<()>,
) -> candle_core::Result<(CudaStorage, Shape)> {
    if x_l.shape().elem_count() != x_len {
        candle_core::bail!(
            "{name}: {} scales where {x_len} were expected",
            x_l.shape().elem_count()
        );
    }
    let gpu = gpu_of(e_s)?;
    let (e, x) = (view(e_s, e_l)?, view(x_s, x_l)?);
    let out = (|| -> Result<CudaSlice<f32>> {
        let mut out = gpu
            .stream()
            .alloc_zeros::<f32>(out_len)
            .map_err(cuda_err("Sinkhorn alloc"))?;
        launch(&gpu, &e, &x, &mut out)?;
        Ok(out)
    })();
    Ok((wrap(out, e_s)?, Shape::from(out_len)))
}

/// This rank's prototype sums `Σ_i E[i][c] v[i]`, `(K)`.
struct SkProtoSums;

impl CustomOp2 for SkProtoSums {
    fn name(&self) -> &'static str {
        "sinkhorn-proto-sums"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        Err(cuda_only(self.name()))
    }

    fn cuda_fwd(
        &self,
        e_s: &CudaStorage,
        e_l: &Layout,
        v_s: &CudaStorage,
        v_l: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let (n, k) = sizes(e_l)?;
        let (rows, protos) = (n as usize, k as usize);
        scale_step(
            self.name(),
            e_s,
            e_l,
            v_s,
            v_l,
            rows,
            protos,
            |gpu, e, v, sums| {
                let f = gpu.function(SINKHORN_CE, "sk_proto_sums")?;
                let per_proto = LaunchConfig {
                    grid_dim: ((k as u32).div_ceil(PROTO_BLOCK.0), 1, 1),
                    block_dim: (PROTO_BLOCK.0, PROTO_BLOCK.1, 1),
                    shared_mem_bytes: 0,
                };
                let mut launch = gpu.stream().launch_builder(&f);
                launch.arg(e).arg(v).arg(sums).arg(&n).arg(&k);
                // SAFETY: matches `sk_proto_sums(const float*, const float*,
                // float*, int, int)`; e holds n·k f32, v n, sums k; the block is
                // the kernel's (32, 8) and threads past column k read nothing.
                unsafe { launch.launch(per_proto) }.map_err(cuda_err("launch sk_proto_sums"))?;
                Ok(())
            },
        )
    }
}

/// The sample step `v[i] = 1 / (N · Σ_c E[i][c] u[c])` with all ranks' row
/// count N, `(n)`.
struct SkSampleScale {
    n_total: f32,
}

impl CustomOp2 for SkSampleScale {
    fn name(&self) -> &'static str {
        "sinkhorn-sample-scale"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        Err(cuda_only(self.name()))
    }

    fn cuda_fwd(
        &self,
        e_s: &CudaStorage,
        e_l: &Layout,
        u_s: &CudaStorage,
        u_l: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let (n, k) = sizes(e_l)?;
        let (rows, protos) = (n as usize, k as usize);
        scale_step(
            self.name(),
            e_s,
            e_l,
            u_s,
            u_l,
            protos,
            rows,
            |gpu, e, u, v| {
                let f = gpu.function(SINKHORN_CE, "sk_sample_scale")?;
                let mut launch = gpu.stream().launch_builder(&f);
                launch.arg(e).arg(u).arg(v).arg(&k).arg(&self.n_total);
                // SAFETY: matches `sk_sample_scale(const float*, const float*,
                // float*, int, float)`; one block per row of e (n·k f32), u
                // holds k, v n.
                unsafe { launch.launch(row_launch(n)) }
                    .map_err(cuda_err("launch sk_sample_scale"))?;
                Ok(())
            },
        )
    }
}

/// The targets `t[i][c] = E[i][c] u[c] (v[i] N)`, in place over E.
struct SkTargets {
    n_total: f32,
}

impl InplaceOp3 for SkTargets {
    fn name(&self) -> &'static str {
        "sinkhorn-targets-in-place"
    }

    fn cpu_fwd(
        &self,
        _: &mut CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<()> {
        Err(cuda_only(self.name()))
    }

    fn cuda_fwd(
        &self,
        e_s: &mut CudaStorage,
        e_l: &Layout,
        u_s: &CudaStorage,
        u_l: &Layout,
        v_s: &CudaStorage,
        v_l: &Layout,
    ) -> candle_core::Result<()> {
        let (n, k) = sizes(e_l)?;
        if u_l.shape().elem_count() != k as usize || v_l.shape().elem_count() != n as usize {
            candle_core::bail!("sinkhorn-targets: scales of the wrong sizes for {n}×{k}");
        }
        let Some((start, end)) = e_l.contiguous_offsets() else {
            candle_core::bail!("sinkhorn-targets: a non-contiguous operand");
        };
        let gpu = gpu_of(e_s)?;
        let (u, v) = (view(u_s, u_l)?, view(v_s, v_l)?);
        let len = end - start;
        let len_u64 = len as u64;
        let f = gpu.function(SINKHORN_CE, "sk_targets").map_err(to_candle)?;
        let stream = gpu.stream().clone();
        let e = e_s.as_cuda_slice_mut::<f32>()?;
        let mut e = e.slice_mut(start..end);
        let mut launch = stream.launch_builder(&f);
        launch
            .arg(&mut e)
            .arg(&u)
            .arg(&v)
            .arg(&k)
            .arg(&self.n_total)
            .arg(&len_u64);
        // SAFETY: matches `sk_targets(float*, const float*, const float*,
        // int, float, unsigned long long)`; e holds len = n·k f32, u k, v n;
        // grid-stride to `len`.
        unsafe { launch.launch(gpu.stride_config(len)) }
            .map_err(cuda_err("launch sk_targets"))
            .map_err(to_candle)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::{GpuContext, NcclCollective, nccl_unique_id, sinkhorn_knopp_tensor};

    /// Through NCCL in a world of one (the prototype sums all-reduced on the
    /// device) the pass is the single-process kernels' pass, bit for bit.
    /// Skipped without a GPU or NCCL.
    #[test]
    fn one_rank_over_nccl_is_the_single_process_pass() {
        let skip = |e: ModelError| match e {
            ModelError::NoCudaDevice(why) => println!("skipped: {why}"),
            e => panic!("{e}"),
        };
        let gpu = match GpuContext::new(0) {
            Ok(g) => g,
            Err(e) => return skip(e),
        };
        let id = match nccl_unique_id() {
            Ok(id) => id,
            Err(e) => return skip(e),
        };
        let comm = NcclCollective::new(&gpu, 0, 1, &id).unwrap();
        let (n, k) = (96, 4096);
        let logits = crate::kernels_ref::testing::uniform(n * k, 3, 1.0);
        let t = Tensor::from_vec(logits, (n, k), &gpu.device()).unwrap();
        let read = |q: Tensor| q.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let want = read(sinkhorn_knopp_tensor(&t, 0.04, 3).unwrap());
        let got = read(sinkhorn_knopp_tensor_all(&t, &gpu.device(), 0.04, 3, &comm).unwrap());
        assert!(got == want, "differs from the single-process pass");
        let none = Tensor::from_vec(Vec::<f32>::new(), (0, k), &candle_core::Device::Cpu).unwrap();
        let e = sinkhorn_knopp_tensor_all(&none, &gpu.device(), 0.04, 0, &comm).unwrap_err();
        assert!(e.to_string().contains("needs an iteration"), "{e}");
    }
}
