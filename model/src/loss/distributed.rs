//! Teacher-target centring over all ranks of a data-parallel job (3DINO's
//! distributed Sinkhorn-Knopp and softmax centre): the sums over samples
//! are all-reduced, so N ranks with B rows each compute what one process
//! with all N·B rows would.

use candle_core::{DType, Tensor};

use super::centering::{SoftmaxCentering, sinkhorn_cpu_reduced, sinkhorn_knopp};
use crate::Result;
use crate::dist::{Collective, ReduceOp};

/// [`sinkhorn_knopp`] of this rank's rows as part of all ranks' rows: the
/// sample count, the grand total (on the CPU; on CUDA it cancels) and the
/// per-prototype sums are all-reduced; each rank gets its own rows'
/// probabilities. Every rank must call it, one with no rows (`(0, K)`) too,
/// with its logits on the same kind of device as every other rank's (the
/// CPU reduces in f64 on the host, CUDA in f32 on the device; see
/// [`sinkhorn_knopp_all_on`] for a rank whose empty logits lie elsewhere).
/// A world of one is [`sinkhorn_knopp`] exactly.
pub fn sinkhorn_knopp_all(
    teacher_logits: &Tensor,
    temp: f64,
    iterations: usize,
    comm: &dyn Collective,
) -> Result<Tensor> {
    sinkhorn_knopp_all_on(
        teacher_logits,
        teacher_logits.device(),
        temp,
        iterations,
        comm,
    )
}

/// [`sinkhorn_knopp_all`] where `compute` is the device the ranks' rows
/// live on. A rank without rows may hold its empty `(0, K)` logits on
/// another device (the CPU: no zero-size buffer on a GPU) and still takes
/// part in `compute`'s collectives; it gets its empty logits back.
pub fn sinkhorn_knopp_all_on(
    teacher_logits: &Tensor,
    compute: &candle_core::Device,
    temp: f64,
    iterations: usize,
    comm: &dyn Collective,
) -> Result<Tensor> {
    if comm.world_size() <= 1 {
        return sinkhorn_knopp(teacher_logits, temp, iterations);
    }
    let (n, k) = teacher_logits.dims2()?;
    let dtype = teacher_logits.dtype();
    let dev = teacher_logits.device();
    #[cfg(feature = "cuda")]
    if compute.is_cuda() && iterations > 0 {
        // The fused kernels, the prototype sums all-reduced on the device.
        let logits = if n == 0 {
            teacher_logits.clone()
        } else {
            teacher_logits.detach().to_dtype(DType::F32)?
        };
        let q = crate::cuda::sinkhorn_knopp_tensor_all(&logits, compute, temp, iterations, comm)?;
        return Ok(q.to_dtype(dtype)?);
    }
    #[cfg(not(feature = "cuda"))]
    let _ = compute;
    let logits = teacher_logits.detach().to_dtype(DType::F32)?;
    let mut reduce = |v: &mut [f64]| comm.all_reduce_f64(v, ReduceOp::Sum);
    if dev.is_cpu() || n == 0 {
        let l = logits.flatten_all()?.to_vec1::<f32>()?;
        let q = sinkhorn_cpu_reduced(&l, n, k, temp, iterations, &mut reduce)?;
        return Ok(Tensor::from_vec(q, (n, k), dev)?.to_dtype(dtype)?);
    }
    Ok(composed_reduced(&logits, temp, iterations, &mut reduce)?.to_dtype(dtype)?)
}

/// The composed (any-device) Sinkhorn-Knopp with the sums over samples
/// passed through `reduce` on the host (K values per iteration).
pub(super) fn composed_reduced(
    logits: &Tensor,
    temp: f64,
    iterations: usize,
    reduce: &mut dyn FnMut(&mut [f64]) -> Result<()>,
) -> Result<Tensor> {
    let (n, k) = logits.dims2()?;
    let mut count = [n as f64];
    reduce(&mut count)?;
    let n_total = count[0];
    let dev = logits.device();
    let q = (logits / temp)?.exp()?.t()?;
    let mut total = [q.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?];
    reduce(&mut total)?;
    let mut q = (q / total[0])?;
    for _ in 0..iterations {
        // Per prototype over all ranks' samples.
        let mut rows: Vec<f64> = q
            .sum_keepdim(1)?
            .to_dtype(DType::F64)?
            .flatten_all()?
            .to_vec1()?;
        reduce(&mut rows)?;
        let rows = Tensor::from_vec(rows, (k, 1), dev)?.to_dtype(q.dtype())?;
        q = (q.broadcast_div(&rows)? / k as f64)?;
        // Per sample: local.
        q = (q.broadcast_div(&q.sum_keepdim(0)?)? / n_total)?;
    }
    Ok((q * n_total)?.t()?.contiguous()?)
}

impl SoftmaxCentering {
    /// [`Self::update`] with the batch mean taken over all ranks' rows
    /// (DINOv2 all-reduces the centre's batch sum). Every rank must call it,
    /// one with no rows too. A world of one is [`Self::update`] exactly.
    pub fn update_all(&mut self, teacher_logits: &Tensor, comm: &dyn Collective) -> Result<()> {
        if comm.world_size() <= 1 {
            return self.update(teacher_logits);
        }
        let (n, k) = teacher_logits.dims2()?;
        let mut sums: Vec<f64> = if n == 0 {
            vec![0.0; k]
        } else {
            teacher_logits
                .detach()
                .to_dtype(DType::F64)?
                .sum(0)?
                .to_vec1()?
        };
        sums.push(n as f64);
        comm.all_reduce_f64(&mut sums, ReduceOp::Sum)?;
        let count = sums.pop().unwrap_or_default();
        if count == 0.0 {
            // No rows anywhere: nothing to average, the centre stays.
            return Ok(());
        }
        let dev = self.center().device().clone();
        let mean = (Tensor::from_vec(sums, (1, k), &dev)? / count)?.to_dtype(DType::F32)?;
        self.blend(&mean)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use candle_core::Device;

    use super::*;
    use crate::dist::{Collective, InProcessRank};

    /// Cosine-like logits, `rows` × `k`.
    fn logits(rows: usize, k: usize, seed: u64) -> Vec<f32> {
        crate::kernels_ref::testing::uniform(rows * k, seed, 1.0)
    }

    /// Runs `f(rank, comm)` on every rank, one thread each.
    fn on_ranks<T: Send + 'static>(
        world: usize,
        f: impl Fn(usize, &InProcessRank) -> T + Send + Sync + 'static,
    ) -> Vec<T> {
        crate::dist::on_ranks(world, move |c| f(c.rank(), &c))
    }

    /// Rows 0..3 on rank 0, none on rank 1, 3..7 on rank 2: the ranks'
    /// outputs stacked are the single-process result on all 7 rows, for the
    /// CPU path and for the composed (GPU) path run on the CPU.
    #[test]
    fn sinkhorn_over_ranks_is_sinkhorn_over_all_rows() {
        let (k, split) = (300, [0usize, 3, 3, 7]);
        let all = logits(7, k, 5);
        let t = Tensor::from_vec(all.clone(), (7, k), &Device::Cpu).unwrap();
        let want: Vec<f32> = sinkhorn_knopp(&t, 0.04, 3)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let all = Arc::new(all);
        let parts = on_ranks(3, move |r, comm| {
            let rows = split[r + 1] - split[r];
            let mine = all[split[r] * k..split[r + 1] * k].to_vec();
            let t = Tensor::from_vec(mine, (rows, k), &Device::Cpu).unwrap();
            let cpu: Vec<f32> = sinkhorn_knopp_all(&t, 0.04, 3, comm)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let mut reduce = |v: &mut [f64]| comm.all_reduce_f64(v, ReduceOp::Sum);
            let composed: Vec<f32> = if rows > 0 {
                composed_reduced(&t, 0.04, 3, &mut reduce)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap()
            } else {
                // Takes part in the collectives with no rows, as the real
                // caller does on the CPU path.
                let mut none = |v: &mut [f64]| comm.all_reduce_f64(v, ReduceOp::Sum);
                sinkhorn_cpu_reduced(&[], 0, k, 0.04, 3, &mut none).unwrap()
            };
            (cpu, composed)
        });
        let cpu: Vec<f32> = parts.iter().flat_map(|p| p.0.clone()).collect();
        let composed: Vec<f32> = parts.iter().flat_map(|p| p.1.clone()).collect();
        assert_eq!(cpu.len(), want.len());
        for ((c, m), w) in cpu.iter().zip(&composed).zip(&want) {
            assert!((c - w).abs() <= 1e-6 * w.abs().max(1e-3), "{c} vs {w}");
            assert!((m - w).abs() <= 1e-5 * w.abs().max(1e-3), "{m} vs {w}");
        }
    }

    #[test]
    fn softmax_centre_over_ranks_is_the_centre_of_all_rows() {
        let k = 5;
        let all = logits(6, k, 9);
        let t = Tensor::from_vec(all.clone(), (6, k), &Device::Cpu).unwrap();
        let mut one = SoftmaxCentering::new(k, 0.9, &Device::Cpu).unwrap();
        one.update(&t).unwrap();
        let want: Vec<f32> = one.center().flatten_all().unwrap().to_vec1().unwrap();
        let all = Arc::new(all);
        let got = on_ranks(2, move |r, comm| {
            // Rank 0 has all six rows, rank 1 none.
            let rows = if r == 0 { 6 } else { 0 };
            let mine = all[..rows * k].to_vec();
            let t = Tensor::from_vec(mine, (rows, k), &Device::Cpu).unwrap();
            let mut c = SoftmaxCentering::new(k, 0.9, &Device::Cpu).unwrap();
            c.update_all(&t, comm).unwrap();
            c.center().flatten_all().unwrap().to_vec1::<f32>().unwrap()
        });
        for c in got {
            for (g, w) in c.iter().zip(&want) {
                assert!((g - w).abs() < 1e-6, "{g} vs {w}");
            }
        }
    }
}
