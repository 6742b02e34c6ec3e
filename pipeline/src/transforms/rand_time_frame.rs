//! `RandTimeFrame`: keep one uniformly chosen channel of a multi-channel (4-D)
//! volume (3DINO's transform 2).
//!
//! The choice is a pure function of a 64-bit key (derived by the caller from the
//! seed and the sample), so it is identical on every thread count and machine:
//! `xxh3(key) mod C`, whose bias is below 2^-50 for any realistic C.

use super::image::Image;
use rand::Rng;

use crate::exec::op::{Op, StepRng};
use crate::transforms::TransformError;
use crate::transforms::spec::same_size;
use crate::transforms::spec::{Args, KEYS, TransformSpec};

/// The channel `key` selects among `channels`.
pub fn pick_channel(channels: usize, key: u64) -> usize {
    if channels <= 1 {
        return 0;
    }
    (xxhash_rust::xxh3::xxh3_64(&key.to_le_bytes()) % channels as u64) as usize
}

/// Keeps channel `c` only.
pub fn keep_channel(img: &Image, c: usize) -> Image {
    let n = img.spatial_len();
    Image {
        data: img.data[c * n..(c + 1) * n].to_vec(),
        shape: [1, img.shape[1], img.shape[2], img.shape[3]],
        spacing: img.spacing,
        affine: img.affine,
    }
}

/// Keeps one channel chosen by `key` (a no-op copy for single-channel images).
pub fn rand_time_frame(img: &Image, key: u64) -> Image {
    keep_channel(img, pick_channel(img.shape[0], key))
}

/// `RandTimeFrame`: keep one uniformly chosen channel (time frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RandTimeFrame;

impl Op for RandTimeFrame {
    fn apply(&self, img: &mut Image, rng: &mut StepRng, _: bool) -> Result<(), TransformError> {
        let c = pick_channel(img.shape[0], rng.random());
        if img.shape[0] > 1 {
            *img = keep_channel(img, c);
        }
        Ok(())
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The recipe's `RandTimeFrame`.
pub const SPEC: TransformSpec = TransformSpec {
    name: "RandTimeFrame",
    is_random: true,
    params: &[KEYS],
    summary: "keep one uniformly chosen channel (time frame) of 4-D volumes",
    check: None,
    nests: false,
    output_size: same_size,
    build: |_: &Args<'_>| Ok(Box::new(RandTimeFrame)),
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nifti::affine::IDENTITY;

    #[test]
    fn picks_whole_channels_uniformly_and_deterministically() {
        let img = Image {
            data: (0..24).map(|v| v as f32).collect(),
            shape: [3, 2, 2, 2],
            spacing: [1.0; 3],
            affine: IDENTITY,
        };
        let one = rand_time_frame(&img, 42);
        let c = pick_channel(3, 42);
        assert_eq!(one.shape, [1, 2, 2, 2]);
        assert_eq!(
            one.data,
            (8 * c..8 * c + 8).map(|v| v as f32).collect::<Vec<_>>()
        );
        assert_eq!(rand_time_frame(&img, 42), one);
        // Roughly uniform over many keys (chi-square-free sanity bound).
        let mut counts = [0usize; 3];
        for key in 0..30_000u64 {
            counts[pick_channel(3, key)] += 1;
        }
        assert!(
            counts.iter().all(|&n| (9_500..10_500).contains(&n)),
            "{counts:?}"
        );
    }
}
