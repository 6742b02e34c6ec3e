//! Collectives for data-parallel training: the one trait the losses and the
//! optimiser step call, a world of one, N ranks as threads for tests, a
//! deadline on every collective ([`Watchdog`]), and the gradients' bucketed
//! all-reduce that starts while the backward still runs ([`GradientSync`]).
//!
//! The small sums (a centre, the loss values, and Sinkhorn-Knopp's K
//! prototype sums on the CPU) are reduced over host slices; the gradients,
//! and Sinkhorn-Knopp's sums on CUDA, as tensors, where they lie. The NCCL implementation is `crate::cuda::NcclCollective`
//! (feature `cuda`): it reduces CUDA tensors on the GPU, on a stream of its
//! own.

mod buckets;
mod grads;
mod in_process;
mod sync;
mod watchdog;

pub use buckets::{BucketPlan, DEFAULT_BUCKET_BYTES};
pub use grads::average_gradients;
pub(crate) use grads::check_wire;
#[cfg(test)]
pub(crate) use in_process::on_ranks;
pub use in_process::{InProcess, InProcessRank};
pub use sync::{GradientSync, SyncReport};
pub use watchdog::{Hang, OnHang, ProgressBoard, Watchdog};

use candle_core::{DType, Tensor};

use crate::Result;

/// How values from all ranks combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    /// Element-wise sum.
    Sum,
    /// Element-wise sum divided by the world size.
    Mean,
}

/// The collectives of one rank. Every rank must make the same calls in the
/// same order with the same lengths (as with NCCL); results are identical
/// on every rank. Not `Sync`: an NCCL communicator serves one thread.
pub trait Collective {
    /// This rank, `0..world_size`.
    fn rank(&self) -> usize;
    /// Ranks in the group.
    fn world_size(&self) -> usize;
    /// Combines `buf` over all ranks, in place on each.
    fn all_reduce_f32(&self, buf: &mut [f32], op: ReduceOp) -> Result<()>;
    /// [`Self::all_reduce_f32`] for f64 (sums that must not lose digits).
    fn all_reduce_f64(&self, buf: &mut [f64], op: ReduceOp) -> Result<()>;
    /// Copies `root`'s `buf` into every rank's `buf`.
    fn broadcast_f32(&self, buf: &mut [f32], root: usize) -> Result<()>;
    /// Returns once every rank has called it.
    fn barrier(&self) -> Result<()>;
    /// `op` of a tensor's values over all ranks, as a new tensor of the
    /// same shape on the same device: bf16 for a bf16 tensor (NCCL reduces
    /// it in bf16), f32 for any other (every rank passes the same shape and
    /// dtype). By default through the host and
    /// [`Collective::all_reduce_f32`]; NCCL reduces a CUDA tensor where it
    /// lies.
    fn all_reduce_tensor(&self, t: &Tensor, op: ReduceOp) -> Result<Tensor> {
        all_reduce_tensor_via_host(self, t, op)
    }
    /// Starts [`Collective::all_reduce_tensor`] and returns before it ends
    /// where the implementation can: NCCL queues the reduction on its own
    /// stream, so the caller's next kernels (the rest of a backward) run
    /// meanwhile. Hand the result to [`Collective::wait_all_reduce`] before
    /// reading it. Every rank starts the same reductions in the same order.
    /// By default the reduction is done by the time this returns.
    fn start_all_reduce_tensor(&self, t: &Tensor, op: ReduceOp) -> Result<PendingReduce> {
        Ok(PendingReduce::done(self.all_reduce_tensor(t, op)?))
    }
    /// [`Collective::start_all_reduce_tensor`] of a tensor the caller gives
    /// away (nothing else holds its storage): NCCL reduces a contiguous f32
    /// or bf16 one in place instead of copying it first.
    fn start_all_reduce_owned(&self, t: Tensor, op: ReduceOp) -> Result<PendingReduce> {
        self.start_all_reduce_tensor(&t, op)
    }
    /// The tensor of a reduction this rank started, ordered before
    /// whatever reads it next.
    fn wait_all_reduce(&self, pending: PendingReduce) -> Result<Tensor> {
        pending.wait()
    }
}

/// A reduction [`Collective::start_all_reduce_tensor`] started: its result
/// and what makes the result safe to read.
pub struct PendingReduce {
    out: Tensor,
    complete: Option<Box<dyn FnOnce() -> Result<()>>>,
}

impl std::fmt::Debug for PendingReduce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingReduce")
            .field("shape", self.out.shape())
            .field("in_flight", &self.complete.is_some())
            .finish()
    }
}

impl PendingReduce {
    /// A reduction that has finished.
    pub fn done(out: Tensor) -> Self {
        Self {
            out,
            complete: None,
        }
    }

    /// A reduction still in flight into `out`; `complete` orders it before
    /// the next reader (e.g. makes the compute stream wait for it).
    pub fn in_flight(out: Tensor, complete: impl FnOnce() -> Result<()> + 'static) -> Self {
        Self {
            out,
            complete: Some(Box::new(complete)),
        }
    }

    /// The reduced tensor, safe to read.
    ///
    /// # Errors
    /// What completing the reduction reports.
    pub fn wait(mut self) -> Result<Tensor> {
        if let Some(complete) = self.complete.take() {
            complete()?;
        }
        Ok(self.out.clone())
    }
}

impl Drop for PendingReduce {
    /// A reduction dropped unwaited (an error elsewhere) is still ordered
    /// before its buffer is freed: the buffer is not reused while the
    /// reduction may still write it.
    fn drop(&mut self) {
        if let Some(complete) = self.complete.take() {
            let _ = complete();
        }
    }
}

/// A world of one: every collective is the identity.
#[derive(Debug, Clone, Copy, Default)]
pub struct SingleProcess;

impl Collective for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn all_reduce_f32(&self, _: &mut [f32], _: ReduceOp) -> Result<()> {
        Ok(())
    }
    fn all_reduce_f64(&self, _: &mut [f64], _: ReduceOp) -> Result<()> {
        Ok(())
    }
    fn broadcast_f32(&self, _: &mut [f32], root: usize) -> Result<()> {
        check_root(root, 1)
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
}

/// [`Collective::all_reduce_tensor`] through a host copy.
pub(crate) fn all_reduce_tensor_via_host<C: Collective + ?Sized>(
    comm: &C,
    t: &Tensor,
    op: ReduceOp,
) -> Result<Tensor> {
    let mut host = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    comm.all_reduce_f32(&mut host, op)?;
    Ok(Tensor::from_vec(host, t.dims(), t.device())?.to_dtype(reduced_dtype(t))?)
}

/// The dtype [`Collective::all_reduce_tensor`] returns for `t`.
pub(crate) fn reduced_dtype(t: &Tensor) -> DType {
    match t.dtype() {
        DType::BF16 => DType::BF16,
        _ => DType::F32,
    }
}

fn check_root(root: usize, world: usize) -> Result<()> {
    if root >= world {
        return Err(crate::ModelError::Input(format!(
            "broadcast from rank {root} in a world of {world}"
        )));
    }
    Ok(())
}

/// `comm` when it spans more than one rank: the single-process code paths
/// stay exactly as they were (bit for bit) for a world of one.
pub(crate) fn distributed(comm: Option<&dyn Collective>) -> Option<&dyn Collective> {
    comm.filter(|c| c.world_size() > 1)
}
