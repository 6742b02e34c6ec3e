//! A timing note (ignored by default): UnetrHead forward + backward on CPU
//! for ViT-tiny features at 64³, batch 2, F = 16.
//! `cargo test -p dino3d-model --release unetr_timing -- --ignored --nocapture`
//!
//! Measured (release, 2 shared cores at load 3–5, 14 classes, frozen
//! backbone): forward 5–8 s, backward 12–18 s, 17–25 s a step. With candle's
//! conv2d backward instead of the im2col custom op it was 50–70 s, and
//! 200–330 s in a debug build.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};

use super::test_util::tensor;
use super::{UnetrConfig, UnetrHead, dice_ce, unetr_levels, vit_levels};
use crate::{ViT3d, ViT3dConfig};

#[test]
#[ignore = "timing; run by hand"]
fn unetr_timing() {
    let dev = Device::Cpu;
    let cfg = ViT3dConfig::tiny().with_img_size(64);
    let (vit, _) = ViT3d::with_varmap(cfg.clone(), &dev).unwrap();
    let vm = VarMap::new();
    let head = UnetrHead::new(
        UnetrConfig {
            in_channels: 1,
            embed_dim: cfg.embed_dim,
            feature_size: 16,
            classes: 14,
        },
        VarBuilder::from_varmap(&vm, DType::F32, &dev),
    )
    .unwrap();
    let x = tensor(&[2, 1, 64, 64, 64], 1, DType::F32);
    // Frozen backbone: its features carry no graph.
    let levels: Vec<Tensor> = vit_levels(&vit, &x, &unetr_levels(cfg.depth))
        .unwrap()
        .into_iter()
        .map(|t| t.detach())
        .collect();
    let labels = Tensor::from_vec(
        (0..2 * 64 * 64 * 64)
            .map(|i| ((i / 97) % 14) as u32)
            .collect::<Vec<_>>(),
        (2, 64, 64, 64),
        &dev,
    )
    .unwrap();
    for rep in 0..3 {
        let t0 = Instant::now();
        let logits = head.forward(&x, &levels).unwrap();
        let loss = dice_ce(&logits, &labels).unwrap();
        let t1 = Instant::now();
        let grads = loss.backward().unwrap();
        let t2 = Instant::now();
        println!(
            "rep {rep}: forward {:.2} s, backward {:.2} s, total {:.2} s ({} grads)",
            (t1 - t0).as_secs_f64(),
            (t2 - t1).as_secs_f64(),
            (t2 - t0).as_secs_f64(),
            vm.all_vars()
                .iter()
                .filter(|v| grads.get(v.as_tensor()).is_some())
                .count()
        );
    }
}

#[test]
#[ignore = "timing; run by hand"]
fn seg_op_timing() {
    use super::{Conv3dConfig, ConvTranspose3d, conv3d, instance_norm, leaky_relu};
    use candle_core::Module;
    let time = |what: &str, f: &dyn Fn() -> Tensor| {
        let t0 = Instant::now();
        let y = f();
        let t1 = Instant::now();
        let g = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        println!(
            "{what}: forward {:.3} s, backward {:.3} s ({} grads)",
            (t1 - t0).as_secs_f64(),
            t1.elapsed().as_secs_f64(),
            g.get_ids().count()
        );
    };
    let x = candle_core::Var::from_tensor(&tensor(&[2, 32, 64, 64, 64], 1, DType::F32)).unwrap();
    let w = candle_core::Var::from_tensor(&tensor(&[16, 32, 3, 3, 3], 2, DType::F32)).unwrap();
    time("conv3d 32->16 @64^3", &|| {
        conv3d(x.as_tensor(), w.as_tensor(), Conv3dConfig::same(3)).unwrap()
    });
    time("instance_norm 32ch", &|| {
        instance_norm(x.as_tensor()).unwrap()
    });
    time("leaky 32ch", &|| leaky_relu(x.as_tensor()).unwrap());
    let vm = VarMap::new();
    let up = ConvTranspose3d::x2(
        VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu),
        32,
        16,
    )
    .unwrap();
    let h = candle_core::Var::from_tensor(&tensor(&[2, 32, 32, 32, 32], 3, DType::F32)).unwrap();
    time("convT 32->16 @32->64", &|| {
        up.forward(h.as_tensor()).unwrap()
    });
    time("cat 2x32ch", &|| {
        Tensor::cat(&[x.as_tensor(), x.as_tensor()], 1).unwrap()
    });
}
