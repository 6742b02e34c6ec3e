//! Random intensity augmentations (`transforms::rand_intensity`, all with
//! prob 1) on a 96×96×96 single-channel crop with values in [−1, 1], the size
//! of 3DINO's global views. MONAI 1.3 on a 96³ crop, same machine kind:
//! `RandHistogramShift` 78.1 ms (pipeline-reference.md).
//!
//! ```text
//! DIVAN_THREADS=1 taskset -c 0 cargo bench -p dino3d-pipeline --bench intensity
//! ```

use dino3d_pipeline::nifti::affine::IDENTITY;
use dino3d_pipeline::transforms::{
    DrawKey, Image, RandAdjustContrast, RandGaussianNoise, RandHistogramShift, RandScaleIntensity,
    RandShiftIntensity,
};
use divan::Bencher;
use divan::counter::ItemsCount;

const EDGE: usize = 96;

fn main() {
    divan::main();
}

/// The 96³ crop, filled from a fixed linear congruential sequence.
fn crop() -> Image {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let data = (0..EDGE * EDGE * EDGE)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            // The top 24 bits, to [−1, 1).
            (state >> 40) as f32 / (1 << 23) as f32 - 1.0
        })
        .collect();
    Image {
        data,
        shape: [1, EDGE, EDGE, EDGE],
        spacing: [1.0; 3],
        affine: IDENTITY,
    }
}

/// Times `apply` on a fresh copy of the crop (the copy is not timed).
fn run(bencher: Bencher, apply: impl Fn(&mut Image) -> bool) {
    let img = crop();
    bencher
        .counter(ItemsCount::new(img.data.len()))
        .with_inputs(|| img.clone())
        .bench_local_refs(|img| apply(img));
}

/// 10 control points, as 3DINO (MONAI: 78.1 ms).
#[divan::bench]
fn histogram_shift(bencher: Bencher) {
    let t = RandHistogramShift {
        prob: 1.0,
        num_control_points: (10, 10),
    };
    run(bencher, |img| t.apply(img, &mut DrawKey::default().rng()));
}

/// γ ∈ U(0.5, 2), as 3DINO.
#[divan::bench]
fn adjust_contrast(bencher: Bencher) {
    let t = RandAdjustContrast {
        prob: 1.0,
        gamma: (0.5, 2.0),
        invert_image: false,
        retain_stats: false,
    };
    run(bencher, |img| t.apply(img, &mut DrawKey::default().rng()));
}

/// With `retain_stats` (two more passes for the statistics).
#[divan::bench]
fn adjust_contrast_retain_stats(bencher: Bencher) {
    let t = RandAdjustContrast {
        prob: 1.0,
        gamma: (0.5, 2.0),
        invert_image: false,
        retain_stats: true,
    };
    run(bencher, |img| t.apply(img, &mut DrawKey::default().rng()));
}

/// σ ~ U(0, 0.002), as 3DINO.
#[divan::bench]
fn gaussian_noise(bencher: Bencher) {
    let t = RandGaussianNoise {
        prob: 1.0,
        mean: 0.0,
        std: 0.002,
        sample_std: true,
    };
    run(bencher, |img| t.apply(img, &mut DrawKey::default().rng()));
}

#[divan::bench]
fn scale_intensity(bencher: Bencher) {
    let t = RandScaleIntensity {
        prob: 1.0,
        factors: (-0.1, 0.1),
    };
    run(bencher, |img| t.apply(img, &mut DrawKey::default().rng()));
}

#[divan::bench]
fn shift_intensity(bencher: Bencher) {
    let t = RandShiftIntensity {
        prob: 1.0,
        offsets: (-0.1, 0.1),
    };
    run(bencher, |img| t.apply(img, &mut DrawKey::default().rng()));
}
