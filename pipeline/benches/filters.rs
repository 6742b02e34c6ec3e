//! Gaussian smooth/sharpen and Gibbs noise on one-channel 96³ (and 48³) images
//! of pseudo-random values in [−1, 1], one call at a time (MONAI on 96³:
//! `GaussianSmooth(σ=1)` 73.6 ms, `RandGibbsNoise` 61.9 ms); and the
//! trilinear resize of `RandomResizedCrop3d`'s boxes: a global view's
//! (200x200x100 of a 256³ image to 96³) and a local view's (110x110x40 to
//! 48³).
//!
//! ```text
//! DIVAN_THREADS=1 taskset -c 0 cargo bench -p dino3d-pipeline --bench filters
//! ```

use dino3d_pipeline::nifti::affine::IDENTITY;
use dino3d_pipeline::transforms::Image;
use dino3d_pipeline::transforms::gaussian_filter::{gaussian_sharpen, gaussian_smooth};
use dino3d_pipeline::transforms::gibbs_noise::gibbs_noise;
use dino3d_pipeline::transforms::resize::{ResizeMode, resize_box};
use divan::Bencher;

fn main() {
    divan::main();
}

/// A one-channel n³ image of deterministic values in [−1, 1].
fn image(n: usize) -> Image {
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let data = (0..n * n * n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect();
    Image {
        data,
        shape: [1, n, n, n],
        spacing: [1.0; 3],
        affine: IDENTITY,
    }
}

/// Times `f` on fresh copies of an n³ image.
fn run(bencher: Bencher, n: usize, f: impl Fn(&mut Image) + Sync) {
    let img = image(n);
    bencher
        .with_inputs(|| img.clone())
        .bench_local_refs(|im| f(im));
}

#[divan::bench(sample_count = 50)]
fn smooth_96_sigma_1(bencher: Bencher) {
    run(bencher, 96, |im| gaussian_smooth(im, [1.0; 3]));
}

#[divan::bench(sample_count = 50)]
fn smooth_96_sigma_1_5(bencher: Bencher) {
    run(bencher, 96, |im| gaussian_smooth(im, [1.5; 3]));
}

#[divan::bench(sample_count = 50)]
fn sharpen_96(bencher: Bencher) {
    run(bencher, 96, |im| {
        gaussian_sharpen(im, [1.0; 3], [0.75; 3], 20.0)
    });
}

#[divan::bench(sample_count = 50)]
fn gibbs_96_alpha_0_5(bencher: Bencher) {
    run(bencher, 96, |im| gibbs_noise(im, 0.5));
}

#[divan::bench(sample_count = 50)]
fn smooth_48_sigma_1(bencher: Bencher) {
    run(bencher, 48, |im| gaussian_smooth(im, [1.0; 3]));
}

/// A global view's box resized (trilinear), as `RandomResizedCrop3d` does.
#[divan::bench(sample_count = 50)]
fn resize_global_box_to_96(bencher: Bencher) {
    let img = image(256);
    bencher.bench_local(|| {
        resize_box(
            &img,
            [30, 20, 60],
            [200, 200, 100],
            [96; 3],
            ResizeMode::Trilinear,
        )
    });
}

/// A local view's box resized (trilinear).
#[divan::bench(sample_count = 50)]
fn resize_local_box_to_48(bencher: Bencher) {
    let img = image(256);
    bencher.bench_local(|| {
        resize_box(
            &img,
            [70, 90, 100],
            [110, 110, 40],
            [48; 3],
            ResizeMode::Trilinear,
        )
    });
}
