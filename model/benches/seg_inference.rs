//! Sliding-window segmentation of one whole volume on CPU: a ViT (random
//! weights) and a UNETR head over every window, blended, as `task: segment`
//! predicts a test volume. Prints seconds, windows and peak memory.
//!
//! Settings from the environment: ARCH (small), SIZE (181,217,181),
//! ROI (96), OVERLAP (0.5), FEATURES (16), CLASSES (14), BLEND (gaussian).
//!
//! ```text
//! cargo bench -p dino3d-model --bench seg_inference
//! ```

mod common;

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use dino3d_model::infer::{Blend, SlidingWindow, window_starts};
use dino3d_model::seg::{UnetrConfig, UnetrHead, unetr_levels, vit_levels};
use dino3d_model::{ViT3d, ViT3dConfig};

fn var(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.into())
}

fn main() {
    let dev = Device::Cpu;
    let arch = var("ARCH", "small");
    let size: Vec<usize> = var("SIZE", "181,217,181")
        .split(',')
        .map(|s| s.parse().expect("SIZE: three integers"))
        .collect();
    let roi: usize = var("ROI", "96").parse().expect("ROI");
    let overlap: f64 = var("OVERLAP", "0.5").parse().expect("OVERLAP");
    let features: usize = var("FEATURES", "16").parse().expect("FEATURES");
    let classes: usize = var("CLASSES", "14").parse().expect("CLASSES");
    let blend = if var("BLEND", "gaussian") == "gaussian" {
        Blend::GAUSSIAN
    } else {
        Blend::Constant
    };
    let cfg = ViT3dConfig::from_preset(&arch)
        .expect("ARCH")
        .with_img_size(roi);
    let embed = cfg.embed_dim;
    let (vit, _) = ViT3d::with_varmap(cfg, &dev).expect("backbone");
    let vm = VarMap::new();
    let head = UnetrHead::new(
        UnetrConfig {
            in_channels: 1,
            embed_dim: embed,
            feature_size: features,
            classes,
        },
        VarBuilder::from_varmap(&vm, DType::F32, &dev),
    )
    .expect("head");
    let n: usize = size.iter().product();
    let x = Tensor::from_vec(
        dino3d_model::kernels_ref::testing::uniform(n, 1, 1.0),
        (1, 1, size[0], size[1], size[2]),
        &dev,
    )
    .expect("input");
    let windows: usize = size
        .iter()
        .map(|&s| window_starts(s, roi, overlap).len())
        .product();
    let sw = SlidingWindow {
        roi: [roi; 3],
        batch: 1,
        overlap,
        blend,
        pad_value: -1.0,
    };
    let t = Instant::now();
    let y = sw
        .run(&x, |w| {
            let levels = vit_levels(&vit, w, &unetr_levels(vit.depth()))?;
            head.forward(w, &levels)
        })
        .expect("sliding window");
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(y.dims()[1], classes);
    println!(
        "seg_inference: {arch} + UNETR(F={features}), {size:?}, roi {roi}, overlap {overlap}: \
         {windows} windows in {secs:.1} s ({:.2} s/window), peak RSS {:.0} MiB, {} threads",
        secs / windows as f64,
        common::peak_rss_mib(),
        rayon::current_num_threads()
    );
}
