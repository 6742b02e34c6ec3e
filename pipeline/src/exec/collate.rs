//! Collation into contiguous batch buffers in PyTorch/MONAI layout
//! `(N, C, X, Y, Z)`, C-contiguous (z fastest): what a 3DINO model (and its
//! checkpoints' token order) expects. Multi-crop batches are crop-major as
//! 3DINO's collate stacks them: all samples' crop 0, then all samples' crop 1.
//!
//! A batch bound for a GPU may stay x fastest ([`Order::XFastest`]): each
//! crop is copied as it is and the device, at hundreds of GB/s, turns it z
//! fastest; on the CPU that turn was a tenth of the loader's time.

use rayon::prelude::*;

use crate::transforms::Image;

use super::masks::Masks;
use super::runner::MultiCrop;
use super::sample::Sample;

/// The memory order of each crop of a [`Tensor5`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    /// `(N, C, X, Y, Z)` C-contiguous: PyTorch's and the model's layout.
    #[default]
    ZFastest,
    /// `(N, C, Z, Y, X)` C-contiguous: the pipeline's own (NIfTI's) order,
    /// for a consumer that turns it itself (a GPU).
    XFastest,
}

/// A dense 5-D float tensor of shape `(N, C, X, Y, Z)`, in `order`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Tensor5 {
    /// Values.
    pub data: Vec<f32>,
    /// `(N, C, X, Y, Z)`.
    pub shape: [usize; 5],
    /// Memory order of the values.
    pub order: Order,
}

impl Tensor5 {
    /// The value at `(n, c, x, y, z)`.
    pub fn at(&self, n: usize, c: usize, x: usize, y: usize, z: usize) -> f32 {
        let [_, cs, xs, ys, zs] = self.shape;
        match self.order {
            Order::ZFastest => self.data[(((n * cs + c) * xs + x) * ys + y) * zs + z],
            Order::XFastest => self.data[(((n * cs + c) * zs + z) * ys + y) * xs + x],
        }
    }
}

/// One multi-crop batch.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Batch {
    /// Global crops, crop-major: `(n_global · B, C, S, S, S)`.
    pub global: Tensor5,
    /// Local crops, crop-major: `(n_local · B, C, s, s, s)`.
    pub local: Tensor5,
    /// iBOT masks over the global crops' tokens.
    pub masks: Masks,
    /// Manifest index of each sample.
    pub items: Vec<usize>,
    /// Epoch each sample was drawn in.
    pub epochs: Vec<u64>,
}

/// Why samples could not be put in one batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CollateError {
    /// Crops of one kind with different shapes.
    #[error("crop {index} has shape {shape:?}, crop 0 {first:?}: crops of one kind must match")]
    Shapes {
        /// The crop that differs.
        index: usize,
        /// Its shape.
        shape: [usize; 4],
        /// Crop 0's shape.
        first: [usize; 4],
    },
    /// Samples with different numbers of crops.
    #[error("samples have different numbers of crops")]
    CropCounts,
    /// A sample without a key the others have.
    #[error("a sample lacks `{key}`")]
    MissingKey {
        /// The key.
        key: String,
    },
}

/// Stacks `crops` (all of one shape) into a tensor. The crops are written
/// to their slots in parallel (on the current rayon pool), each in one pass:
/// a batch of 3DINO's 128 samples is 1.4 GB, too much for one thread to copy
/// (or to zero first) while the others wait.
///
/// # Errors
/// When shapes differ.
pub fn stack(crops: &[&Image]) -> Result<Tensor5, CollateError> {
    stack_into(Vec::new(), crops, Order::ZFastest)
}

/// [`stack`] into `data`'s memory (its values are dropped), in `order`: a
/// batch buffer handed back by the consumer is filled again without
/// faulting it in anew.
///
/// # Errors
/// When shapes differ.
pub fn stack_into(
    mut data: Vec<f32>,
    crops: &[&Image],
    order: Order,
) -> Result<Tensor5, CollateError> {
    let Some(first) = crops.first() else {
        return Ok(Tensor5::default());
    };
    let shape = first.shape;
    if let Some((n, img)) = crops.iter().enumerate().find(|(_, i)| i.shape != shape) {
        return Err(CollateError::Shapes {
            index: n,
            shape: img.shape,
            first: shape,
        });
    }
    let len: usize = shape.iter().product();
    let total = crops.len() * len;
    data.clear();
    data.reserve(total);
    data.spare_capacity_mut()[..total]
        .par_chunks_mut(len.max(1))
        .zip(crops.par_iter())
        .for_each(|(slot, img)| match order {
            Order::ZFastest => crate::layout::init_z_fastest(slot, &img.data, shape),
            Order::XFastest => {
                assert_eq!(
                    slot.len(),
                    img.data.len(),
                    "collate: data and shape disagree"
                );
                // SAFETY: `slot` and `img.data` are the same length
                // (asserted) and cannot overlap (a fresh `&mut` and a `&`).
                // One memcpy: the loop of element writes cost 1.4% more of
                // `pipeline run`. (`write_copy_of_slice` needs Rust 1.93.)
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        img.data.as_ptr(),
                        slot.as_mut_ptr().cast::<f32>(),
                        slot.len(),
                    );
                }
            }
        });
    // SAFETY: the chunks cover the first `total` elements (`crops.len()`
    // chunks of `len`), and both arms write every element of their chunk or
    // panic (an image's data is its shape's product long, asserted); the
    // tests below read every element back.
    unsafe { data.set_len(total) };
    Ok(Tensor5 {
        data,
        shape: [crops.len(), shape[0], shape[1], shape[2], shape[3]],
        order,
    })
}

/// Collates multi-crop samples crop-major.
///
/// # Errors
/// When samples have different numbers or shapes of crops.
pub fn collate_crops(samples: &[MultiCrop], masks: Masks) -> Result<Batch, CollateError> {
    collate_crops_into(samples, masks, [Vec::new(), Vec::new()], Order::ZFastest)
}

/// [`collate_crops`] into the memory of `[global, local]` buffers (their
/// values are dropped), in `order`, as [`stack_into`].
///
/// # Errors
/// When samples have different numbers or shapes of crops.
pub fn collate_crops_into(
    samples: &[MultiCrop],
    masks: Masks,
    [global, local]: [Vec<f32>; 2],
    order: Order,
) -> Result<Batch, CollateError> {
    let crop_major = |pick: fn(&MultiCrop) -> &Vec<Image>| -> Result<Vec<&Image>, CollateError> {
        let n = samples.first().map_or(0, |s| pick(s).len());
        if samples.iter().any(|s| pick(s).len() != n) {
            return Err(CollateError::CropCounts);
        }
        Ok((0..n)
            .flat_map(|j| samples.iter().map(move |s| &pick(s)[j]))
            .collect())
    };
    Ok(Batch {
        global: stack_into(global, &crop_major(|s| &s.global)?, order)?,
        local: stack_into(local, &crop_major(|s| &s.local)?, order)?,
        masks,
        items: Vec::new(),
        epochs: Vec::new(),
    })
}

/// Collates plain samples per key: one tensor per key, in sample order.
///
/// # Errors
/// When a key is missing or shapes differ.
pub fn collate_samples(
    samples: &[Sample],
    keys: &[String],
) -> Result<Vec<(String, Tensor5)>, CollateError> {
    keys.iter()
        .map(|k| {
            let imgs = samples
                .iter()
                .map(|s| {
                    s.get(k)
                        .ok_or_else(|| CollateError::MissingKey { key: k.clone() })
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok((k.clone(), stack(&imgs)?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensors_are_z_fastest_and_crop_major() {
        let a = Image::ramp([2, 2, 3, 4]);
        let mut b = a.clone();
        b.data.iter_mut().for_each(|v| *v += 1000.0);
        let t = stack(&[&a, &b]).unwrap();
        assert_eq!(t.shape, [2, 2, 2, 3, 4]);
        for (n, img) in [&a, &b].iter().enumerate() {
            for c in 0..2 {
                for x in 0..2 {
                    for y in 0..3 {
                        for z in 0..4 {
                            assert_eq!(t.at(n, c, x, y, z), img.at(c, x, y, z));
                        }
                    }
                }
            }
        }
        // z fastest: consecutive values step along z.
        assert_eq!(t.data[1], a.at(0, 0, 0, 1));
        let s = |k: f32| MultiCrop {
            global: vec![
                Image::row(vec![k, k], 1),
                Image::row(vec![k + 10.0, k + 10.0], 1),
            ],
            local: vec![Image::row(vec![k + 20.0], 1)],
        };
        let batch = collate_crops(&[s(1.0), s(2.0), s(3.0)], Masks::default()).unwrap();
        assert_eq!(batch.global.shape, [6, 1, 2, 1, 1]);
        let firsts: Vec<f32> = batch.global.data.chunks(2).map(|c| c[0]).collect();
        assert_eq!(firsts, vec![1.0, 2.0, 3.0, 11.0, 12.0, 13.0]);
        assert_eq!(batch.local.data, vec![21.0, 22.0, 23.0]);
        let mut bad = s(4.0);
        bad.global[1] = Image::row(vec![0.0; 3], 1);
        assert!(collate_crops(&[s(1.0), bad], Masks::default()).is_err());
    }

    /// Crops written in parallel, each into its slot, give the tensor that
    /// converting them one after another gives, on pools of 1 to 3 threads.
    #[test]
    fn parallel_stacking_equals_one_crop_after_another() {
        let crops: Vec<Image> = (0..7)
            .map(|n| {
                let mut img = Image::ramp([2, 19, 5, 33]);
                img.data.iter_mut().for_each(|v| *v = v.sin() + n as f32);
                img
            })
            .collect();
        let refs: Vec<&Image> = crops.iter().collect();
        let mut expected = Vec::new();
        for img in &crops {
            crate::layout::extend_z_fastest(&mut expected, &img.data, img.shape);
        }
        for threads in 1..=3 {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let t = pool.install(|| stack(&refs)).unwrap();
            assert_eq!(t.shape, [7, 2, 19, 5, 33]);
            assert_eq!(t.data, expected);
        }
        // Into a used buffer, longer or shorter than the batch.
        for old in [vec![9.0f32; 3], vec![9.0f32; expected.len() + 100]] {
            assert_eq!(
                stack_into(old, &refs, Order::ZFastest).unwrap().data,
                expected
            );
        }
        // x fastest: the crops as they are, one after another, and `at`
        // reads the same values as from the z-fastest tensor.
        let plain: Vec<f32> = crops.iter().flat_map(|c| c.data.clone()).collect();
        for threads in 1..=3 {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let t = pool
                .install(|| stack_into(vec![7.0; 5], &refs, Order::XFastest))
                .unwrap();
            assert_eq!((t.shape, t.order), ([7, 2, 19, 5, 33], Order::XFastest));
            assert_eq!(t.data, plain);
            let z = stack(&refs).unwrap();
            for (n, c, x, y, zz) in [(0, 0, 0, 0, 0), (3, 1, 18, 4, 32), (6, 0, 7, 2, 11)] {
                assert_eq!(t.at(n, c, x, y, zz), z.at(n, c, x, y, zz));
            }
        }
        let empty = Image::ramp([1, 0, 3, 4]);
        assert_eq!(stack(&[&empty, &empty]).unwrap().data, Vec::<f32>::new());
    }
}
