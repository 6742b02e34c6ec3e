//! NCCL behind [`Collective`]: one process per GPU, ranks joined by the
//! 128-byte unique id rank 0 creates and hands the others (the tasks
//! crate's TCP bootstrap carries it).
//!
//! The communicator runs on a stream of its own beside candle's
//! ([`GpuContext::stream`]), so a gradient bucket's all-reduce
//! ([`Collective::start_all_reduce_tensor`]) overlaps the rest of the
//! backward: the communicator's stream waits for candle's work up to the
//! call (the bucket is written by then), and candle's stream waits for the
//! reduction only where the result is read ([`Collective::wait_all_reduce`]).
//! A CUDA tensor is reduced where it lies; the trait's host slices go
//! through a device buffer.

use std::sync::Arc;

use candle_core::{CpuStorage, CudaStorage, DType, InplaceOp1, Layout, Tensor};
use cudarc::driver::{CudaStream, DeviceRepr};
use cudarc::nccl::safe::{Comm, Id, NcclType, ReduceOp as NcclOp};

use super::GpuContext;
use super::context::cuda_err;
use crate::dist::{Collective, PendingReduce, ReduceOp, all_reduce_tensor_via_host, reduced_dtype};
use crate::{ModelError, Result};

/// Bytes of an NCCL unique id.
pub const NCCL_ID_BYTES: usize = 128;

fn nccl_err(op: &str) -> impl FnOnce(cudarc::nccl::result::NcclError) -> ModelError + '_ {
    move |e| ModelError::Cuda {
        op: op.to_string(),
        reason: format!("NCCL {:?}", e.0),
    }
}

/// cudarc panics when a library is missing; check first.
fn require_nccl() -> Result<()> {
    // SAFETY: `is_culib_present` only tries to dlopen the NCCL library under
    // its usual names and drops it again; no symbol is called (as
    // `GpuContext::new` does for the driver). Tested by
    // `tests/cuda_kernels.rs::nccl_absence_is_an_error_not_a_panic`, which
    // runs with or without NCCL and a GPU.
    if unsafe { cudarc::nccl::sys::is_culib_present() } {
        Ok(())
    } else {
        Err(ModelError::NoCudaDevice(
            "the NCCL library cannot be loaded (looked for as libnccl.so: a wheel's libnccl.so.2 needs a link of that name); add its folder to LD_LIBRARY_PATH"
                .into(),
        ))
    }
}

/// A new unique id (rank 0 calls this once per job).
///
/// # Errors
/// [`ModelError::NoCudaDevice`] without NCCL, [`ModelError::Cuda`] when
/// NCCL fails.
pub fn nccl_unique_id() -> Result<[u8; NCCL_ID_BYTES]> {
    require_nccl()?;
    let id = Id::new().map_err(nccl_err("ncclGetUniqueId"))?;
    // c_char is i8 or u8 by platform: the bytes are what matters.
    Ok(id.internal().map(|c| c as u8))
}

/// One rank's NCCL communicator on a stream of its own, next to a
/// [`GpuContext`]'s.
#[derive(Debug)]
pub struct NcclCollective {
    comm: Comm,
    /// The communicator's stream.
    stream: Arc<CudaStream>,
    /// candle's stream, where the tensors reduced here are made and read.
    compute: Arc<CudaStream>,
}

impl NcclCollective {
    /// Joins rank `rank` of `world_size` with the id from rank 0's
    /// [`nccl_unique_id`]; returns once every rank has joined (NCCL's
    /// `ncclCommInitRank` blocks until then).
    ///
    /// # Errors
    /// A bad rank, world size or id length; no NCCL; NCCL failures.
    pub fn new(gpu: &GpuContext, rank: usize, world_size: usize, id: &[u8]) -> Result<Self> {
        if world_size == 0 || rank >= world_size || i32::try_from(world_size).is_err() {
            return Err(ModelError::Input(format!(
                "NCCL rank {rank} of a world of {world_size}"
            )));
        }
        let id: [u8; NCCL_ID_BYTES] = id.try_into().map_err(|_| {
            ModelError::Input(format!(
                "an NCCL id has {NCCL_ID_BYTES} bytes, not {}",
                id.len()
            ))
        })?;
        require_nccl()?;
        let id = Id::uninit(id.map(|b| b as std::ffi::c_char));
        let compute = gpu.stream().clone();
        // ncclCommInitRank takes the thread's current device: make it this one.
        compute
            .context()
            .bind_to_thread()
            .map_err(cuda_err("bind the device to this thread"))?;
        // SAFETY: with a second stream cudarc would record and wait on
        // events around every buffer use of every kernel (its multi-stream
        // mode); we order the two streams ourselves instead. The only
        // buffers both streams touch are the tensors of
        // `start_all_reduce_tensor`: the communicator's stream waits for
        // candle's before it reads one (`join`), and candle's waits for the
        // reduction's event before anything reads or frees the result
        // (`PendingReduce`, also when dropped unwaited). Host-slice
        // collectives allocate, use and free their buffers on the
        // communicator's stream alone. `tests/cuda_kernels.rs::
        // nccl_world_of_one` runs these paths on a GPU (a reduction started
        // right after a large product and read after more work); in a world
        // of one an all-reduce leaves the values as they are, so a missing
        // order would not show there: it needs two GPUs.
        unsafe { compute.context().disable_event_tracking() };
        let stream = compute.fork().map_err(cuda_err("create the NCCL stream"))?;
        let comm = Comm::from_rank(stream.clone(), rank, world_size, id)
            .map_err(nccl_err("ncclCommInitRank"))?;
        Ok(Self {
            comm,
            stream,
            compute,
        })
    }

    /// Sums `buf` over all ranks through a device buffer.
    fn sum<T: NcclType + DeviceRepr>(&self, buf: &mut [T]) -> Result<()> {
        // Every rank has the same length, so every rank skips together.
        if buf.is_empty() {
            return Ok(());
        }
        let mut dev = self.stream.clone_htod(buf).map_err(cuda_err("upload"))?;
        self.comm
            .all_reduce_in_place(&mut dev, &NcclOp::Sum)
            .map_err(nccl_err("ncclAllReduce"))?;
        self.stream
            .memcpy_dtoh(&dev, buf)
            .map_err(cuda_err("download"))?;
        self.stream.synchronize().map_err(cuda_err("synchronize"))
    }
}

impl Collective for NcclCollective {
    fn rank(&self) -> usize {
        self.comm.rank()
    }

    fn world_size(&self) -> usize {
        self.comm.world_size()
    }

    fn all_reduce_f32(&self, buf: &mut [f32], op: ReduceOp) -> Result<()> {
        self.sum(buf)?;
        if op == ReduceOp::Mean {
            let n = self.world_size() as f32;
            buf.iter_mut().for_each(|v| *v /= n);
        }
        Ok(())
    }

    fn all_reduce_f64(&self, buf: &mut [f64], op: ReduceOp) -> Result<()> {
        self.sum(buf)?;
        if op == ReduceOp::Mean {
            let n = self.world_size() as f64;
            buf.iter_mut().for_each(|v| *v /= n);
        }
        Ok(())
    }

    fn broadcast_f32(&self, buf: &mut [f32], root: usize) -> Result<()> {
        let world = self.world_size();
        let root = i32::try_from(root)
            .ok()
            .filter(|&r| (r as usize) < world)
            .ok_or_else(|| {
                ModelError::Input(format!("broadcast from rank {root} in a world of {world}"))
            })?;
        if buf.is_empty() {
            return Ok(());
        }
        let mut dev = self.stream.clone_htod(buf).map_err(cuda_err("upload"))?;
        self.comm
            .broadcast_in_place(&mut dev, root)
            .map_err(nccl_err("ncclBroadcast"))?;
        self.stream
            .memcpy_dtoh(&dev, buf)
            .map_err(cuda_err("download"))?;
        self.stream.synchronize().map_err(cuda_err("synchronize"))
    }

    fn barrier(&self) -> Result<()> {
        // NCCL has no barrier: a one-value all-reduce, waited for.
        self.sum(&mut [0f32])
    }

    fn all_reduce_tensor(&self, t: &Tensor, op: ReduceOp) -> Result<Tensor> {
        let pending = self.start_all_reduce_tensor(t, op)?;
        self.wait_all_reduce(pending)
    }

    fn start_all_reduce_tensor(&self, t: &Tensor, op: ReduceOp) -> Result<PendingReduce> {
        if !t.device().is_cuda() {
            return Ok(PendingReduce::done(all_reduce_tensor_via_host(
                self, t, op,
            )?));
        }
        // A fresh contiguous copy that this call owns, reduced in place.
        let out = t.to_dtype(reduced_dtype(t))?.flatten_all()?.copy()?;
        self.start_in_place(out, t.dims(), op)
    }

    fn start_all_reduce_owned(&self, t: Tensor, op: ReduceOp) -> Result<PendingReduce> {
        let whole = t.is_contiguous() && t.layout().start_offset() == 0;
        if !t.device().is_cuda() || !whole || t.dtype() != reduced_dtype(&t) {
            return self.start_all_reduce_tensor(&t, op);
        }
        let dims = t.dims().to_vec();
        self.start_in_place(t.flatten_all()?, &dims, op)
    }
}

impl NcclCollective {
    /// Queues the all-reduce of `flat`, a contiguous CUDA tensor nothing
    /// else holds, in place on the communicator's stream after candle's
    /// work so far; the result has shape `dims`.
    fn start_in_place(&self, flat: Tensor, dims: &[usize], op: ReduceOp) -> Result<PendingReduce> {
        if flat.elem_count() == 0 {
            return Ok(PendingReduce::done(flat.reshape(dims)?));
        }
        self.stream
            .join(&self.compute)
            .map_err(cuda_err("order the all-reduce after its input"))?;
        flat.inplace_op1(&DeviceAllReduce {
            comm: &self.comm,
            op,
        })?;
        let comm_stream = self.stream.clone();
        let reduced = match self.stream.record_event(None) {
            Ok(e) => e,
            Err(e) => {
                // The reduction may be queued: `flat` must outlive it.
                let _ = comm_stream.synchronize();
                return Err(cuda_err("record the all-reduce's end")(e));
            }
        };
        let compute = self.compute.clone();
        Ok(PendingReduce::in_flight(flat.reshape(dims)?, move || {
            compute.wait(&reduced).map_err(|e| {
                // Freed on candle's stream next: wait for the reduction
                // on the host instead.
                let _ = comm_stream.synchronize();
                cuda_err("order the all-reduce before its readers")(e)
            })
        }))
    }
}

/// NCCL's all-reduce of a CUDA tensor's elements, in place on the device
/// (Mean as NCCL's `Avg`).
struct DeviceAllReduce<'a> {
    comm: &'a Comm,
    op: ReduceOp,
}

impl InplaceOp1 for DeviceAllReduce<'_> {
    fn name(&self) -> &'static str {
        "nccl-all-reduce"
    }

    fn cpu_fwd(&self, _: &mut CpuStorage, _: &Layout) -> candle_core::Result<()> {
        candle_core::bail!("nccl-all-reduce: CUDA tensors only")
    }

    fn cuda_fwd(&self, storage: &mut CudaStorage, layout: &Layout) -> candle_core::Result<()> {
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("nccl-all-reduce: contiguous tensors only");
        };
        let op = match self.op {
            ReduceOp::Sum => NcclOp::Sum,
            ReduceOp::Mean => NcclOp::Avg,
        };
        let failed = |e: cudarc::nccl::result::NcclError| {
            candle_core::Error::Msg(format!("ncclAllReduce: {:?}", e.0))
        };
        use candle_core::backend::BackendStorage;
        match storage.dtype() {
            DType::BF16 => {
                let slice = storage.as_cuda_slice_mut::<half::bf16>()?;
                let mut view = slice.slice_mut(start..end);
                self.comm
                    .all_reduce_in_place(&mut view, &op)
                    .map_err(failed)?;
            }
            _ => {
                let slice = storage.as_cuda_slice_mut::<f32>()?;
                let mut view = slice.slice_mut(start..end);
                self.comm
                    .all_reduce_in_place(&mut view, &op)
                    .map_err(failed)?;
            }
        }
        Ok(())
    }
}
