//! Host batches to the training device, started on one thread and finished
//! on another, so that copying batch `n + 1` overlaps step `n`.
//!
//! On the CPU an upload is a plain copy into a tensor. On a CUDA device the
//! values go through page-locked (pinned) host buffers, reused across
//! batches, and are copied to the device on a stream of their own
//! (`src/cuda/upload.rs`): the copy from pageable memory that
//! `Tensor::from_slice` makes blocks the calling thread and runs on the
//! compute stream, between two steps.

use candle_core::{Device, Tensor};

use crate::Result;

/// Starts uploads to one device ([`Uploader::start`]); the training thread
/// turns each into tensors with [`Upload::finish`].
///
/// On a CUDA device an uploader runs at most one upload ahead: `start`
/// waits until the previous upload is finished or dropped.
pub struct Uploader {
    device: Device,
    #[cfg(feature = "cuda")]
    staged: Option<crate::cuda::upload::Staged>,
}

/// An upload under way: its tensors once [`Upload::finish`]ed.
pub struct Upload(Inner);

enum Inner {
    Ready(Vec<Tensor>),
    #[cfg(feature = "cuda")]
    Staged(crate::cuda::upload::Pending),
}

impl Uploader {
    /// An uploader to `device`.
    ///
    /// # Errors
    /// On a CUDA device, when its copy stream cannot be made.
    pub fn new(device: &Device) -> Result<Uploader> {
        Ok(Uploader {
            device: device.clone(),
            #[cfg(feature = "cuda")]
            staged: match device {
                Device::Cuda(d) => Some(crate::cuda::upload::Staged::new(d)?),
                _ => None,
            },
        })
    }

    /// The device uploads go to.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Starts copying `parts` (values, and the shape they fill, each) to the
    /// device. The values are copied before this returns: their buffers can
    /// be reused at once.
    ///
    /// # Errors
    /// A part whose values do not fill its shape; a failed copy.
    pub fn start(&mut self, parts: &[(&[f32], &[usize])]) -> Result<Upload> {
        for (i, (values, shape)) in parts.iter().enumerate() {
            let n: usize = shape.iter().product();
            if values.len() != n {
                return Err(crate::ModelError::Input(format!(
                    "upload part {i}: {} values for shape {shape:?} ({n})",
                    values.len()
                )));
            }
        }
        #[cfg(feature = "cuda")]
        if let Some(staged) = &mut self.staged {
            return Ok(Upload(Inner::Staged(staged.start(parts)?)));
        }
        let tensors = parts
            .iter()
            .map(|(values, shape)| Tensor::from_slice(values, shape.to_vec(), &self.device))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Upload(Inner::Ready(tensors)))
    }
}

impl Upload {
    /// The uploaded tensors, in the order of their parts. On a CUDA device
    /// the compute stream first waits for the copy (on the device, not the
    /// calling thread). Call it on the thread that uses the tensors: candle
    /// queues a thread's CUDA work on that thread's own stream, and this
    /// orders the copy before the work of the calling thread's stream only.
    ///
    /// # Errors
    /// A failed copy.
    pub fn finish(self) -> Result<Vec<Tensor>> {
        match self.0 {
            Inner::Ready(tensors) => Ok(tensors),
            #[cfg(feature = "cuda")]
            Inner::Staged(pending) => pending.finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Started on another thread and finished on the one that uses it, an
    /// upload gives each part's values in its shape (an empty part too).
    #[test]
    fn uploads_cross_threads_value_for_value() {
        let mut up = Uploader::new(&Device::Cpu).unwrap();
        let a: Vec<f32> = (0..24).map(|v| v as f32 * 0.5).collect();
        let b = vec![7.0f32, -1.0];
        let upload = std::thread::scope(|s| {
            s.spawn(|| {
                up.start(&[(&a, &[2, 3, 4]), (&b, &[2]), (&[], &[0, 3])])
                    .unwrap()
            })
            .join()
            .unwrap()
        });
        let t = upload.finish().unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(t[0].dims(), &[2, 3, 4]);
        assert_eq!(t[0].flatten_all().unwrap().to_vec1::<f32>().unwrap(), a);
        assert_eq!(t[1].to_vec1::<f32>().unwrap(), b);
        assert_eq!(t[2].dims(), &[0, 3]);
    }

    #[test]
    fn parts_that_do_not_fill_their_shape_are_refused() {
        let mut up = Uploader::new(&Device::Cpu).unwrap();
        let err = up.start(&[(&[1.0, 2.0, 3.0], &[2, 2])]).err().unwrap();
        assert!(
            err.to_string().contains("3 values for shape [2, 2]"),
            "{err}"
        );
    }
}
