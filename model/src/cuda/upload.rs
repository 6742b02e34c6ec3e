//! The CUDA side of [`crate::upload`]: page-locked host buffers and a copy
//! stream of its own, so that the next batch crosses PCIe while the compute
//! stream runs the current step.
//!
//! One upload, in order:
//! 1. (upload thread) the batch's values are copied into pinned host
//!    buffers, reused across batches;
//! 2. (copy stream) they are copied to a device staging buffer, after the
//!    compute stream's last read of that buffer (an event);
//! 3. (training thread, [`Pending::finish`]) the compute stream waits for
//!    that copy, then copies the staging buffer into tensors of its own and
//!    records that it is done reading: the staging buffer is then free for
//!    the next batch, which the copy stream writes while the step runs.
//!
//! There is one staging buffer, so the upload thread runs at most one batch
//! ahead of the step; it costs one batch of device memory and one of
//! page-locked host memory (10.6 MB per 3DINO sample each). The
//! device-to-device copy (an estimated 1 ms for the recipe's batch of 128 at
//! an H100's memory bandwidth) is what lets candle own its tensors: a buffer
//! allocated on the copy stream would be freed on it, possibly before the
//! compute stream had read it.
//!
//! [`Pending::finish`] runs on the thread that uses the tensors: candle's
//! CUDA device queues each host thread's work on that thread's own stream
//! (`CU_STREAM_PER_THREAD`), the "compute stream" here.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};

use candle_core::op::BackpropOp;
use candle_core::{CudaDevice, CudaStorage, DType, Device, Shape, Storage, Tensor};
use cudarc::driver::{CudaEvent, CudaSlice, CudaStream, PinnedHostSlice};

use super::context::cuda_err;
use crate::Result;

/// Starts uploads to one CUDA device (see the module's documentation).
pub(crate) struct Staged {
    device: CudaDevice,
    compute: Arc<CudaStream>,
    copy: Arc<CudaStream>,
    /// Pinned host buffers, one per part (none for an empty part), reused
    /// (reallocated only when a part's length changes).
    host: Vec<Option<PinnedHostSlice<f32>>>,
    /// The staging buffers, here when no upload holds them.
    free: Receiver<Staging>,
    give_back: Sender<Staging>,
}

/// The device staging buffers (one per part, none for an empty part) and
/// the compute stream's last read of them.
struct Staging {
    parts: Vec<Option<CudaSlice<f32>>>,
    /// Recorded on the compute stream after its last read of `parts`.
    read: Option<CudaEvent>,
    copy: Arc<CudaStream>,
}

impl Drop for Staging {
    fn drop(&mut self) {
        // The buffers are freed on the copy stream (they were allocated on
        // it): not before the compute stream's read of them is done.
        if let Some(read) = &self.read {
            let _ = self.copy.wait(read);
        }
    }
}

/// An upload whose copy is queued: [`Pending::finish`] makes its tensors.
pub(crate) struct Pending {
    staging: Option<Staging>,
    /// Recorded on the copy stream after the copy.
    copied: CudaEvent,
    shapes: Vec<Shape>,
    compute: Arc<CudaStream>,
    device: CudaDevice,
    give_back: Sender<Staging>,
}

impl Staged {
    /// Makes the copy stream on `device`'s context.
    ///
    /// # Errors
    /// [`crate::ModelError::Cuda`] when the stream cannot be made.
    pub(crate) fn new(device: &CudaDevice) -> Result<Staged> {
        let compute = device.cuda_stream();
        // SAFETY: with a second stream cudarc would record and wait on
        // events around every buffer use of every kernel (its multi-stream
        // mode); we order the streams ourselves instead (as the NCCL
        // collective does, `nccl.rs`). The only buffers both streams touch
        // are the staging buffers: the compute stream reads them only after
        // waiting for the copy's event (`Pending::finish`), and the copy
        // stream writes or frees them only after waiting for the compute
        // stream's read event (`Staged::start`, `Staging`'s drop). The pinned
        // host buffers keep their own event whatever the tracking: cudarc
        // waits for their last copy before handing them out again.
        unsafe { compute.context().disable_event_tracking() };
        let copy = compute
            .context()
            .new_stream()
            .map_err(cuda_err("create the upload stream"))?;
        let (give_back, free) = channel();
        give_back
            .send(Staging {
                parts: Vec::new(),
                read: None,
                copy: copy.clone(),
            })
            .expect("the receiver is here");
        Ok(Staged {
            device: device.clone(),
            compute,
            copy,
            host: Vec::new(),
            free,
            give_back,
        })
    }

    /// Copies `parts` into the pinned buffers and queues their copy to the
    /// device. Waits (on this thread) until the previous upload is
    /// [`Pending::finish`]ed or dropped.
    ///
    /// # Errors
    /// [`crate::ModelError::Cuda`] when an allocation or copy fails (the
    /// staging buffers are kept for the next upload).
    pub(crate) fn start(&mut self, parts: &[(&[f32], &[usize])]) -> Result<Pending> {
        let mut staging = self
            .free
            .recv()
            .expect("a staging set is here or held by a Pending, which gives it back");
        if let Err(e) = self.stage(parts, &mut staging) {
            // Kept, with its read event if the wait for it failed.
            let _ = self.give_back.send(staging);
            return Err(e);
        }
        let copied = match self.copy.record_event(None) {
            Ok(event) => event,
            Err(e) => {
                let _ = self.give_back.send(staging);
                return Err(cuda_err("record the upload's event")(e));
            }
        };
        Ok(Pending {
            staging: Some(staging),
            copied,
            shapes: parts.iter().map(|(_, s)| Shape::from(s.to_vec())).collect(),
            compute: self.compute.clone(),
            device: self.device.clone(),
            give_back: self.give_back.clone(),
        })
    }

    /// Fills the pinned buffers and queues their copies into `staging`.
    fn stage(&mut self, parts: &[(&[f32], &[usize])], staging: &mut Staging) -> Result<()> {
        if let Some(read) = &staging.read {
            self.copy
                .wait(read)
                .map_err(cuda_err("wait for the compute stream's read"))?;
        }
        staging.read = None;
        let context = self.compute.context().clone();
        self.host.resize_with(parts.len(), || None);
        staging.parts.resize_with(parts.len(), || None);
        for (i, (values, _)) in parts.iter().enumerate() {
            let n = values.len();
            if n == 0 {
                // Page-locked memory cannot hold nothing: made in `finish`.
                (self.host[i], staging.parts[i]) = (None, None);
                continue;
            }
            if self.host[i].as_ref().is_none_or(|h| h.len() != n) {
                // SAFETY: the buffer is filled below before any copy reads it.
                let fresh = unsafe { context.alloc_pinned::<f32>(n) }
                    .map_err(cuda_err("allocate pinned host memory"))?;
                self.host[i] = Some(fresh);
            }
            if staging.parts[i].as_ref().is_none_or(|d| d.len() != n) {
                // SAFETY: written whole by the copy below before any read
                // (both on the copy stream, in order). A buffer replaced here
                // is freed on the copy stream after the wait above.
                let fresh = unsafe { self.copy.alloc::<f32>(n) }
                    .map_err(cuda_err("allocate the staging buffer"))?;
                staging.parts[i] = Some(fresh);
            }
            let (Some(host), Some(device)) = (&mut self.host[i], &mut staging.parts[i]) else {
                unreachable!("both made above");
            };
            // Waits for the last copy out of this buffer (long done: it
            // preceded the previous batch's `finish`).
            host.as_mut_slice()
                .map_err(cuda_err("wait for the pinned buffer"))?
                .copy_from_slice(values);
            self.copy
                .memcpy_htod(host, device)
                .map_err(cuda_err("copy a batch to the device"))?;
        }
        Ok(())
    }
}

impl Pending {
    /// The uploaded tensors (on the compute stream, after the copy).
    ///
    /// # Errors
    /// [`crate::ModelError::Cuda`] when a wait, allocation or copy fails.
    pub(crate) fn finish(mut self) -> Result<Vec<Tensor>> {
        let mut staging = self.staging.take().expect("finished once");
        let tensors = self.copies(&staging);
        // Recorded whatever happened above: the reads queued so far. Without
        // the event, the reads are waited for here instead.
        staging.read = match self.compute.record_event(None) {
            Ok(read) => Some(read),
            Err(e) => {
                let done = self.compute.synchronize();
                let _ = self.give_back.send(staging);
                done.map_err(cuda_err("wait for the staged batch's copy"))?;
                return Err(cuda_err("record the read of the staged batch")(e));
            }
        };
        let _ = self.give_back.send(staging);
        tensors
    }

    fn copies(&self, staging: &Staging) -> Result<Vec<Tensor>> {
        self.compute
            .wait(&self.copied)
            .map_err(cuda_err("wait for the upload"))?;
        let device = Device::Cuda(self.device.clone());
        staging
            .parts
            .iter()
            .zip(&self.shapes)
            .map(|(part, shape)| {
                let Some(part) = part else {
                    return Ok(Tensor::zeros(shape, DType::F32, &device)?);
                };
                // SAFETY: written whole by the copy just below, on the same
                // stream, before anything reads it.
                let mut own = unsafe { self.compute.alloc::<f32>(part.len()) }
                    .map_err(cuda_err("allocate a batch tensor"))?;
                self.compute
                    .memcpy_dtod(part, &mut own)
                    .map_err(cuda_err("copy the staged batch"))?;
                let storage = CudaStorage::wrap_cuda_slice(own, self.device.clone());
                Ok(Tensor::from_storage(
                    Storage::Cuda(storage),
                    shape.clone(),
                    BackpropOp::none(),
                    false,
                ))
            })
            .collect()
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        // Never finished: the compute stream never read the staging buffers.
        if let Some(staging) = self.staging.take() {
            let _ = self.give_back.send(staging);
        }
    }
}
