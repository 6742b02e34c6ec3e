//! `NanToMean`: replace NaN voxels by the mean of the others (3DINO's transform 3).
//!
//! The mean is accumulated in f64 over all non-NaN voxels of all channels. A
//! volume that is entirely NaN becomes all zeros (3DINO would produce NaN again,
//! which poisons training; zero is the neutral value after scaling).

use super::image::Image;
use crate::exec::op::{Op, StepRng};
use crate::transforms::TransformError;
use crate::transforms::spec::same_size;
use crate::transforms::spec::{Args, KEYS, TransformSpec};

/// Replaces NaN voxels in place; returns how many were replaced.
pub fn nan_to_mean(img: &mut Image) -> usize {
    let (sum, count) = img
        .data
        .iter()
        .filter(|v| !v.is_nan())
        .fold((0.0f64, 0usize), |(s, n), &v| (s + f64::from(v), n + 1));
    let nans = img.data.len() - count;
    if nans == 0 {
        return 0;
    }
    let mean = if count > 0 {
        (sum / count as f64) as f32
    } else {
        0.0
    };
    for v in img.data.iter_mut().filter(|v| v.is_nan()) {
        *v = mean;
    }
    nans
}

/// `NanToMean`: NaN voxels to the mean of the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NanToMean;

impl Op for NanToMean {
    fn apply(&self, img: &mut Image, _: &mut StepRng, _: bool) -> Result<(), TransformError> {
        nan_to_mean(img);
        Ok(())
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The recipe's `NanToMean`.
pub const SPEC: TransformSpec = TransformSpec {
    name: "NanToMean",
    is_random: false,
    params: &[KEYS],
    summary: "replace NaN voxels by the mean of the others",
    check: None,
    nests: false,
    output_size: same_size,
    build: |_: &Args<'_>| Ok(Box::new(NanToMean)),
};

#[cfg(test)]
mod tests {
    use super::*;

    fn image(data: Vec<f32>) -> Image {
        Image::row(data, 1)
    }

    #[test]
    fn nans_become_the_mean_of_the_rest() {
        let mut img = image(vec![1.0, f32::NAN, 2.0, 6.0, f32::NAN]);
        assert_eq!(nan_to_mean(&mut img), 2);
        assert_eq!(img.data, vec![1.0, 3.0, 2.0, 6.0, 3.0]);
        let mut clean = image(vec![1.0, 2.0]);
        assert_eq!(nan_to_mean(&mut clean), 0);
        let mut all = image(vec![f32::NAN; 3]);
        nan_to_mean(&mut all);
        assert_eq!(all.data, vec![0.0; 3]);
    }
}
