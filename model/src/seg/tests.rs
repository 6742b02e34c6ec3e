//! Segmentation blocks against float64 references written out as loops,
//! central-difference gradient checks, and the head end to end.

use candle_core::{DType, Device, Module, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};

use super::*;
use crate::kernels_ref::testing::uniform;
use crate::{ViT3d, ViT3dConfig};

fn f64s(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn tensor(shape: &[usize], seed: u64, dtype: DType) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(uniform(n, seed, 1.0), shape, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

/// Naive zero-padded stride-1 conv3d in f64: x (B,C,D,H,W), w (O,C,k,k,k).
fn conv3d_ref(x: &[f64], xs: [usize; 5], w: &[f64], o: usize, k: usize) -> Vec<f64> {
    let [b, c, d, h, wd] = xs;
    let p = k as isize / 2;
    let mut out = vec![0.0; b * o * d * h * wd];
    for bi in 0..b {
        for oi in 0..o {
            for z in 0..d {
                for y in 0..h {
                    for xx in 0..wd {
                        let mut s = 0.0;
                        for ci in 0..c {
                            for kz in 0..k {
                                for ky in 0..k {
                                    for kx in 0..k {
                                        let (iz, iy, ix) = (
                                            z as isize + kz as isize - p,
                                            y as isize + ky as isize - p,
                                            xx as isize + kx as isize - p,
                                        );
                                        if iz < 0
                                            || iy < 0
                                            || ix < 0
                                            || iz >= d as isize
                                            || iy >= h as isize
                                            || ix >= wd as isize
                                        {
                                            continue;
                                        }
                                        let xi = (((bi * c + ci) * d + iz as usize) * h
                                            + iy as usize)
                                            * wd
                                            + ix as usize;
                                        let wi = (((oi * c + ci) * k + kz) * k + ky) * k + kx;
                                        s += x[xi] * w[wi];
                                    }
                                }
                            }
                        }
                        out[(((bi * o + oi) * d + z) * h + y) * wd + xx] = s;
                    }
                }
            }
        }
    }
    out
}

fn assert_close(got: &[f64], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}[{i}]: {g} vs {w}"
        );
    }
}

#[test]
fn conv3d_matches_the_loop_reference() {
    for k in [1, 3, 5] {
        let xs = [2, 3, 5, 6, 7];
        let x = tensor(&xs, 1, DType::F32);
        let w = tensor(&[4, 3, k, k, k], 2, DType::F32);
        let got = f64s(&conv3d_same(&x, &w, k).unwrap());
        let want = conv3d_ref(&f64s(&x), xs, &f64s(&w), 4, k);
        assert_close(&got, &want, 1e-5, &format!("conv3d k={k}"));
    }
}

#[test]
fn conv3d_gradients_match_central_differences() {
    // Loss L = Σ conv(x, w) · r, checked in f64 against differences of the
    // loop reference (independent of candle's backward).
    let xs = [1, 2, 4, 3, 5];
    let (o, k) = (2, 3);
    let x = Var::from_tensor(&tensor(&xs, 3, DType::F64)).unwrap();
    let w = Var::from_tensor(&tensor(&[o, 2, k, k, k], 4, DType::F64)).unwrap();
    let r = tensor(&[1, o, 4, 3, 5], 5, DType::F64);
    let loss = (conv3d_same(x.as_tensor(), w.as_tensor(), k).unwrap() * &r)
        .unwrap()
        .sum_all()
        .unwrap();
    let grads = loss.backward().unwrap();
    let (xv, wv, rv) = (f64s(x.as_tensor()), f64s(w.as_tensor()), f64s(&r));
    let l = |xv: &[f64], wv: &[f64]| -> f64 {
        conv3d_ref(xv, xs, wv, o, k)
            .iter()
            .zip(&rv)
            .map(|(a, b)| a * b)
            .sum()
    };
    let h = 1e-6;
    let gx = f64s(grads.get(x.as_tensor()).unwrap());
    for i in (0..xv.len()).step_by(7) {
        let (mut p, mut m) = (xv.clone(), xv.clone());
        p[i] += h;
        m[i] -= h;
        let fd = (l(&p, &wv) - l(&m, &wv)) / (2.0 * h);
        assert!((gx[i] - fd).abs() < 1e-6, "dL/dx[{i}]: {} vs {fd}", gx[i]);
    }
    let gw = f64s(grads.get(w.as_tensor()).unwrap());
    for i in (0..wv.len()).step_by(5) {
        let (mut p, mut m) = (wv.clone(), wv.clone());
        p[i] += h;
        m[i] -= h;
        let fd = (l(&xv, &p) - l(&xv, &m)) / (2.0 * h);
        assert!((gw[i] - fd).abs() < 1e-6, "dL/dw[{i}]: {} vs {fd}", gw[i]);
    }
}

#[test]
fn transposed_conv_scatters_each_voxel_into_its_block() {
    let (b, c, o) = (2, 3, 2);
    let (d, h, w) = (2, 3, 2);
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let up = ConvTranspose3dX2::new(vb, c, o).unwrap();
    let x = tensor(&[b, c, d, h, w], 6, DType::F32);
    let got = f64s(&up.forward(&x).unwrap());
    let wt = f64s(
        &vm.data()
            .lock()
            .unwrap()
            .values()
            .next()
            .unwrap()
            .as_tensor()
            .clone(),
    );
    let xv = f64s(&x);
    // PyTorch's ConvTranspose3d(k=2, s=2): out[b,o,2z+a,2y+e,2x+f] =
    // Σ_c x[b,c,z,y,x] · w[c,o,a,e,f].
    let (od, oh, ow) = (2 * d, 2 * h, 2 * w);
    for bi in 0..b {
        for oi in 0..o {
            for z in 0..od {
                for y in 0..oh {
                    for xx in 0..ow {
                        let mut s = 0.0;
                        for ci in 0..c {
                            let xi = (((bi * c + ci) * d + z / 2) * h + y / 2) * w + xx / 2;
                            let wi = (((ci * o + oi) * 2 + z % 2) * 2 + y % 2) * 2 + xx % 2;
                            s += xv[xi] * wt[wi];
                        }
                        let at = (((bi * o + oi) * od + z) * oh + y) * ow + xx;
                        assert!((got[at] - s).abs() < 1e-5, "{at}: {} vs {s}", got[at]);
                    }
                }
            }
        }
    }
}

#[test]
fn instance_norm_matches_the_reference_and_backpropagates() {
    let x = Var::from_tensor(&tensor(&[2, 3, 4, 3, 2], 7, DType::F64)).unwrap();
    let y = instance_norm(x.as_tensor()).unwrap();
    let xv = f64s(x.as_tensor());
    let yv = f64s(&y);
    for (i, chunk) in xv.chunks(24).enumerate() {
        let mean = chunk.iter().sum::<f64>() / 24.0;
        let var = chunk.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 24.0;
        for (j, v) in chunk.iter().enumerate() {
            let want = (v - mean) / (var + 1e-5).sqrt();
            assert!((yv[i * 24 + j] - want).abs() < 1e-12);
        }
    }
    // Gradient of Σ IN(x)·r against central differences of candle's forward.
    let r = tensor(&[2, 3, 4, 3, 2], 8, DType::F64);
    let loss = |t: &Tensor| {
        (instance_norm(t).unwrap() * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    let grads = (instance_norm(x.as_tensor()).unwrap() * &r)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let g = f64s(grads.get(x.as_tensor()).unwrap());
    check_fd(&xv, &[2, 3, 4, 3, 2], &g, loss, 1e-6);
}

/// Central differences of `loss` at every 3rd entry of `xv` against `g`.
fn check_fd(xv: &[f64], shape: &[usize], g: &[f64], loss: impl Fn(&Tensor) -> f64, tol: f64) {
    let h = 1e-6;
    for i in (0..xv.len()).step_by(3) {
        let (mut p, mut m) = (xv.to_vec(), xv.to_vec());
        p[i] += h;
        m[i] -= h;
        let tp = Tensor::from_vec(p, shape, &Device::Cpu).unwrap();
        let tm = Tensor::from_vec(m, shape, &Device::Cpu).unwrap();
        let fd = (loss(&tp) - loss(&tm)) / (2.0 * h);
        assert!(
            (g[i] - fd).abs() < tol * (1.0 + fd.abs()),
            "[{i}]: {} vs {fd}",
            g[i]
        );
    }
}

#[test]
fn leaky_relu_has_both_slopes() {
    let x =
        Var::from_tensor(&Tensor::new(&[-2.0f64, -0.5, 0.5, 3.0], &Device::Cpu).unwrap()).unwrap();
    let y = leaky_relu(x.as_tensor()).unwrap();
    assert_eq!(f64s(&y), vec![-0.02, -0.005, 0.5, 3.0]);
    let g = y.sum_all().unwrap().backward().unwrap();
    assert_eq!(
        f64s(g.get(x.as_tensor()).unwrap()),
        vec![0.01, 0.01, 1.0, 1.0]
    );
}

#[test]
fn dice_ce_matches_a_hand_computed_case() {
    // One sample, 2 classes, 2 voxels: logits (0, ln 3) and (0, 0); labels 1, 0.
    let l3 = 3f64.ln();
    let logits = Tensor::new(&[[[0.0f64, 0.0], [l3, 0.0]]], &Device::Cpu).unwrap();
    let labels = Tensor::new(&[[1u32, 0]], &Device::Cpu).unwrap();
    let got = dice_ce(&logits, &labels)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    // p(class 1) = (0.75, 0.5), p(class 0) = (0.25, 0.5).
    let s = 1e-5;
    let dice0 = (2.0 * 0.5 + s) / (0.75 + 1.0 + s);
    let dice1 = (2.0 * 0.75 + s) / (1.25 + 1.0 + s);
    let ce = -(0.75f64.ln() + 0.5f64.ln()) / 2.0;
    let want = 1.0 - (dice0 + dice1) / 2.0 + ce;
    assert!((got - want).abs() < 1e-12, "{got} vs {want}");
    // A confident, correct prediction costs almost nothing.
    let sure = Tensor::new(&[[[-30.0f64, 30.0], [30.0, -30.0]]], &Device::Cpu).unwrap();
    let low = dice_ce(&sure, &labels).unwrap().to_scalar::<f64>().unwrap();
    assert!(low < 1e-5, "{low}");
}

#[test]
fn loss_gradients_match_central_differences() {
    let shape = [2, 3, 2, 2, 2];
    let x = Var::from_tensor(&tensor(&shape, 9, DType::F64)).unwrap();
    let labels = Tensor::new(
        &[[0u32, 1, 2, 2, 1, 0, 0, 2], [1, 1, 0, 2, 2, 2, 0, 1]],
        &Device::Cpu,
    )
    .unwrap();
    let g = dice_ce(x.as_tensor(), &labels).unwrap().backward().unwrap();
    let loss = |t: &Tensor| dice_ce(t, &labels).unwrap().to_scalar::<f64>().unwrap();
    check_fd(
        &f64s(x.as_tensor()),
        &shape,
        &f64s(g.get(x.as_tensor()).unwrap()),
        loss,
        1e-6,
    );

    let target = Tensor::from_vec(
        (0..48)
            .map(|i| f64::from(u8::from(i % 3 == 0)))
            .collect::<Vec<_>>(),
        &shape,
        &Device::Cpu,
    )
    .unwrap();
    let g = sigmoid_dice(x.as_tensor(), &target)
        .unwrap()
        .backward()
        .unwrap();
    let loss = |t: &Tensor| {
        sigmoid_dice(t, &target)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    check_fd(
        &f64s(x.as_tensor()),
        &shape,
        &f64s(g.get(x.as_tensor()).unwrap()),
        loss,
        1e-6,
    );
}

#[test]
fn brats_regions_nest() {
    let [tc, wt, et] = brats_regions(&[0, 1, 2, 3]);
    assert_eq!(tc, vec![0.0, 1.0, 0.0, 1.0]);
    assert_eq!(wt, vec![0.0, 1.0, 1.0, 1.0]);
    assert_eq!(et, vec![0.0, 0.0, 0.0, 1.0]);
}

#[test]
fn unetr_levels_are_evenly_spaced() {
    assert_eq!(unetr_levels(24), [5, 11, 17, 23]);
    assert_eq!(unetr_levels(12), [2, 5, 8, 11]);
    assert_eq!(unetr_levels(4), [0, 1, 2, 3]);
}

#[test]
fn unetr_head_shapes_and_every_parameter_learns() {
    let dev = Device::Cpu;
    let cfg = ViT3dConfig {
        embed_dim: 24,
        depth: 4,
        num_heads: 2,
        pos_grid: 2,
        ..ViT3dConfig::tiny()
    };
    let (vit, _) = ViT3d::with_varmap(cfg, &dev).unwrap();
    let vm = VarMap::new();
    let head = UnetrHead::new(
        UnetrConfig {
            in_channels: 2,
            embed_dim: 24,
            feature_size: 4,
            classes: 3,
        },
        VarBuilder::from_varmap(&vm, DType::F32, &dev),
    )
    .unwrap();
    let x = tensor(&[1, 2, 32, 32, 32], 10, DType::F32);
    let levels = vit_levels(&vit, &x).unwrap();
    assert_eq!(levels.len(), 4);
    assert_eq!(levels[0].dims(), &[2, 8, 24]);
    let logits = head.forward(&x, &levels).unwrap();
    assert_eq!(logits.dims(), &[1, 3, 32, 32, 32]);
    let labels = Tensor::from_vec(
        (0..32 * 32 * 32)
            .map(|i| (i % 3) as u32)
            .collect::<Vec<_>>(),
        (1, 32 * 32 * 32),
        &dev,
    )
    .unwrap();
    let grads = dice_ce(&logits, &labels).unwrap().backward().unwrap();
    let data = vm.data().lock().unwrap();
    assert!(data.len() > 20, "{} parameters", data.len());
    for (name, var) in data.iter() {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name} has no gradient"));
        let norm = g
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(norm > 0.0 && norm.is_finite(), "{name}: |g|² = {norm}");
    }
    assert!(
        head.forward(&tensor(&[1, 2, 24, 32, 32], 11, DType::F32), &levels)
            .is_err(),
        "sizes must be 16 × the grid"
    );
}
