use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};

use super::*;
use crate::{DinoHead, DinoHeadConfig, ViT3d, ViT3dConfig};

fn var(values: &[f64]) -> Var {
    Var::from_tensor(&Tensor::new(values, &Device::Cpu).unwrap()).unwrap()
}

fn grads_for(pairs: &[(&Var, &[f64])]) -> candle_core::backprop::GradStore {
    // A GradStore from a dummy backward, then overwritten with the values.
    let loss = pairs
        .iter()
        .map(|(v, _)| v.as_tensor().sum_all().unwrap())
        .reduce(|a, b| (a + b).unwrap())
        .unwrap();
    let mut g = loss.backward().unwrap();
    for (v, vals) in pairs {
        g.insert(v.as_tensor(), Tensor::new(*vals, &Device::Cpu).unwrap());
    }
    g
}

fn to_vec(v: &Var) -> Vec<f64> {
    v.as_tensor().to_vec1::<f64>().unwrap()
}

#[test]
fn adamw_first_step_is_sign_step_with_decoupled_decay() {
    // Step 1: m̂ = g, v̂ = g², so p ← p(1 − lr·wd) − lr·g/(|g| + ε).
    let p = var(&[1.0, -2.0, 0.5]);
    let mults = ParamMultipliers::default();
    let mut opt = AdamW::new(
        [("p".to_string(), p.clone(), mults)],
        AdamWConfig::default(),
    )
    .unwrap();
    let g = grads_for(&[(&p, &[0.5, -4.0, 0.0])]);
    let sv = StepValues {
        lr: 0.1,
        last_layer_lr: 0.0,
        wd: 0.2,
    };
    opt.step(&g, sv).unwrap();
    let d = 1.0 - 0.1 * 0.2;
    let want = [
        1.0 * d - 0.1 * 0.5 / (0.5 + 1e-8),
        -2.0 * d + 0.1 * 4.0 / (4.0 + 1e-8),
        0.5 * d,
    ];
    for (a, b) in to_vec(&p).iter().zip(want) {
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    }
    assert_eq!(opt.step_count(), 1);
}

/// Independent scalar float64 AdamW (PyTorch's formula).
#[allow(clippy::too_many_arguments)]
fn reference_adamw(
    p: &mut [f64],
    m: &mut [f64],
    v: &mut [f64],
    g: &[f64],
    t: i32,
    lr: f64,
    wd: f64,
    cfg: AdamWConfig,
) {
    for i in 0..p.len() {
        p[i] *= 1.0 - lr * wd;
        m[i] = cfg.beta1 * m[i] + (1.0 - cfg.beta1) * g[i];
        v[i] = cfg.beta2 * v[i] + (1.0 - cfg.beta2) * g[i] * g[i];
        let bc1 = 1.0 - cfg.beta1.powi(t);
        let bc2 = 1.0 - cfg.beta2.powi(t);
        p[i] -= lr / bc1 * m[i] / (v[i].sqrt() / bc2.sqrt() + cfg.eps);
    }
}

#[test]
fn adamw_matches_float64_reference_with_groups_and_freeze() {
    let cfg = AdamWConfig::default();
    let a = var(&[0.3, -1.2, 2.0, 0.0]);
    let b = var(&[1.5, -0.5]);
    let proto = var(&[0.7, 0.1, -0.9]);
    let ma = ParamMultipliers {
        lr_mult: 0.5,
        wd_mult: 1.0,
        is_last_layer: false,
    };
    let mb = ParamMultipliers {
        lr_mult: 2.0,
        wd_mult: 0.0,
        is_last_layer: false,
    };
    let mp = ParamMultipliers {
        lr_mult: 1.0,
        wd_mult: 1.0,
        is_last_layer: true,
    };
    let mut opt = AdamW::new(
        [
            ("a".to_string(), a.clone(), ma),
            ("b".to_string(), b.clone(), mb),
            ("proto".to_string(), proto.clone(), mp),
        ],
        cfg,
    )
    .unwrap();
    let mut ra = (to_vec(&a), vec![0.0; 4], vec![0.0; 4]);
    let mut rb = (to_vec(&b), vec![0.0; 2], vec![0.0; 2]);
    let mut rp = (to_vec(&proto), vec![0.0; 3], vec![0.0; 3]);
    let ga = [
        [0.1, -0.3, 0.7, 1e-3],
        [-0.2, 0.4, 0.1, 0.0],
        [0.05, 0.05, -0.6, 2.0],
    ];
    let gb = [[1.0, -1.0], [0.5, 0.25], [-2.0, 3.0]];
    let gp = [[0.3, -0.1, 0.2], [0.1, 0.1, 0.1], [-0.4, 0.0, 0.9]];
    // (lr, last-layer lr, wd): the prototype is frozen for the first step.
    let sched = [(0.01, 0.0, 0.04), (0.02, 0.02, 0.1), (0.015, 0.015, 0.3)];
    for (t, &(lr, ll, wd)) in sched.iter().enumerate() {
        let g = grads_for(&[(&a, &ga[t]), (&b, &gb[t]), (&proto, &gp[t])]);
        opt.step(
            &g,
            StepValues {
                lr,
                last_layer_lr: ll,
                wd,
            },
        )
        .unwrap();
        let ti = t as i32 + 1;
        reference_adamw(
            &mut ra.0,
            &mut ra.1,
            &mut ra.2,
            &ga[t],
            ti,
            lr * 0.5,
            wd,
            cfg,
        );
        reference_adamw(
            &mut rb.0,
            &mut rb.1,
            &mut rb.2,
            &gb[t],
            ti,
            lr * 2.0,
            0.0,
            cfg,
        );
        reference_adamw(&mut rp.0, &mut rp.1, &mut rp.2, &gp[t], ti, ll, wd, cfg);
        if t == 0 {
            // Frozen: unchanged, although its moments advanced.
            assert_eq!(to_vec(&proto), vec![0.7, 0.1, -0.9]);
        }
    }
    for (v, r) in [(&a, &ra.0), (&b, &rb.0), (&proto, &rp.0)] {
        for (x, y) in to_vec(v).iter().zip(r) {
            assert!((x - y).abs() < 1e-14, "{x} vs {y}");
        }
    }
}

#[test]
fn adamw_state_round_trips_through_safetensors() {
    let cfg = AdamWConfig::default();
    let mk = |vals: &[f64]| {
        let p = var(vals);
        let opt = AdamW::new(
            [("w".to_string(), p.clone(), ParamMultipliers::default())],
            cfg,
        )
        .unwrap();
        (p, opt)
    };
    let (p1, mut o1) = mk(&[1.0, 2.0]);
    let sv = StepValues {
        lr: 0.1,
        last_layer_lr: 0.1,
        wd: 0.05,
    };
    o1.step(&grads_for(&[(&p1, &[0.3, -0.2])]), sv).unwrap();
    o1.step(&grads_for(&[(&p1, &[0.1, 0.4])]), sv).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("opt.safetensors");
    o1.save(&path).unwrap();
    // A fresh optimiser on a copy of the parameters, restored from disk,
    // takes the same next step.
    let (p2, mut o2) = mk(&[0.0, 0.0]);
    p2.set(p1.as_tensor()).unwrap();
    o2.load(&path).unwrap();
    assert_eq!(o2.step_count(), 2);
    o1.step(&grads_for(&[(&p1, &[-0.5, 0.5])]), sv).unwrap();
    o2.step(&grads_for(&[(&p2, &[-0.5, 0.5])]), sv).unwrap();
    assert_eq!(to_vec(&p1), to_vec(&p2));
    // Wrong layout is refused.
    let mut state = o1.state_tensors().unwrap();
    state.insert("stray".into(), Tensor::new(&[1f32], &Device::Cpu).unwrap());
    assert!(o2.load_state_tensors(state).is_err());
    let mut state = o1.state_tensors().unwrap();
    state.remove("w.exp_avg_sq");
    assert!(o2.load_state_tensors(state).is_err());
}

#[test]
fn threedino_groups_on_a_tiny_vit() {
    let dev = Device::Cpu;
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
    let cfg = ViT3dConfig {
        embed_dim: 8,
        depth: 3,
        num_heads: 2,
        patch_size: 4,
        pos_grid: 2,
        ..ViT3dConfig::tiny()
    };
    ViT3d::new(cfg, vb.pp("backbone")).unwrap();
    let hc = DinoHeadConfig {
        in_dim: 8,
        hidden_dim: 8,
        bottleneck_dim: 4,
        n_prototypes: 5,
        n_layers: 3,
    };
    DinoHead::new(hc.clone(), vb.pp("dino_head")).unwrap();
    DinoHead::new(hc, vb.pp("ibot_head")).unwrap();
    let opt = AdamW::from_varmap(&vm, &GroupRules::threedino(3), AdamWConfig::default()).unwrap();
    let d: f64 = 0.9;
    // L = 3: embeddings 0.9⁴, block i 0.9^(3 − i), final norm and heads 1.
    let want: HashMap<&str, (f64, f64, bool)> = [
        ("backbone.cls_token", (d.powi(4), 1.0, false)),
        ("backbone.pos_embed", (d.powi(4), 1.0, false)),
        ("backbone.mask_token", (d.powi(4), 1.0, false)),
        (
            "backbone.patch_embed.proj.weight",
            (0.2 * d.powi(4), 1.0, false),
        ),
        (
            "backbone.patch_embed.proj.bias",
            (0.2 * d.powi(4), 0.0, false),
        ),
        ("backbone.blocks.0.norm1.weight", (d.powi(3), 0.0, false)),
        ("backbone.blocks.0.norm1.bias", (d.powi(3), 0.0, false)),
        ("backbone.blocks.0.attn.qkv.weight", (d.powi(3), 1.0, false)),
        ("backbone.blocks.0.attn.qkv.bias", (d.powi(3), 0.0, false)),
        (
            "backbone.blocks.1.attn.proj.weight",
            (d.powi(2), 1.0, false),
        ),
        ("backbone.blocks.1.ls1.gamma", (d.powi(2), 0.0, false)),
        ("backbone.blocks.2.mlp.fc1.weight", (d, 1.0, false)),
        ("backbone.blocks.2.mlp.fc2.bias", (d, 0.0, false)),
        ("backbone.blocks.2.ls2.gamma", (d, 0.0, false)),
        ("backbone.blocks.2.norm2.weight", (d, 0.0, false)),
        ("backbone.norm.weight", (1.0, 0.0, false)),
        ("backbone.norm.bias", (1.0, 0.0, false)),
        ("dino_head.mlp.0.weight", (1.0, 1.0, false)),
        ("dino_head.mlp.4.bias", (1.0, 0.0, false)),
        ("dino_head.last_layer.weight_g", (1.0, 1.0, true)),
        ("dino_head.last_layer.weight_v", (1.0, 1.0, true)),
        ("ibot_head.mlp.2.weight", (1.0, 1.0, false)),
        ("ibot_head.last_layer.weight_v", (1.0, 1.0, true)),
    ]
    .into_iter()
    .collect();
    let names: Vec<&str> = opt.names().collect();
    // 5 embedding params + 3 blocks × 14 + final norm 2 + heads 2 × 8.
    assert_eq!(names.len(), 5 + 42 + 2 + 16);
    for (name, (lr, wd, last)) in &want {
        let m = opt.multipliers(name).unwrap_or_else(|| panic!("no {name}"));
        assert!(
            (m.lr_mult - lr).abs() < 1e-12,
            "{name}: lr {} vs {lr}",
            m.lr_mult
        );
        assert_eq!(m.wd_mult, *wd, "{name}");
        assert_eq!(m.is_last_layer, *last, "{name}");
    }
    // Every name is covered by one of the rules above (sanity on the set).
    for n in names {
        let m = opt.multipliers(n).unwrap();
        assert!(m.lr_mult > 0.0 && m.lr_mult <= 1.0, "{n}");
    }
    // ViT-L numbers from the spec, and chunked names.
    let l = GroupRules::threedino(24);
    assert!((l.multipliers("backbone.pos_embed").lr_mult - 0.071_789_798_769_185_24).abs() < 1e-12);
    assert!(
        (l.multipliers("backbone.patch_embed.proj.weight").lr_mult - 0.2 * 0.9f64.powi(25)).abs()
            < 1e-15
    );
    assert!(
        (l.multipliers("backbone.blocks.0.attn.qkv.weight").lr_mult - 0.9f64.powi(24)).abs()
            < 1e-15
    );
    assert!((l.multipliers("backbone.blocks.3.23.mlp.fc1.weight").lr_mult - 0.9).abs() < 1e-15);
    assert_eq!(l.multipliers("backbone.norm.weight").lr_mult, 1.0);
}

#[test]
fn clipping_matches_hand_values() {
    let a = var(&[0.0, 0.0]);
    let b = var(&[0.0]);
    let c = var(&[0.0, 0.0]);
    // ‖(3, 4, 12)‖ = 13 > 6.5: scaled by 6.5 / (13 + 1e-6).
    let mut g = grads_for(&[(&a, &[3.0, 4.0]), (&b, &[12.0]), (&c, &[0.3, 0.4])]);
    let n = clip_grad_norm(&mut g, &[&a, &b], 6.5).unwrap();
    assert!((n - 13.0).abs() < 1e-5);
    let k = 6.5 / (13.0 + 1e-6);
    let ga = g.get(a.as_tensor()).unwrap().to_vec1::<f64>().unwrap();
    let gb = g.get(b.as_tensor()).unwrap().to_vec1::<f64>().unwrap();
    assert!((ga[0] - 3.0 * k).abs() < 1e-6 && (ga[1] - 4.0 * k).abs() < 1e-6);
    assert!((gb[0] - 12.0 * k).abs() < 1e-6);
    // Norm 0.5 < 3: untouched (coefficient clamped at 1).
    let n = clip_grad_norm(&mut g, &[&c], 3.0).unwrap();
    assert!((n - 0.5).abs() < 1e-6);
    assert_eq!(
        g.get(c.as_tensor()).unwrap().to_vec1::<f64>().unwrap(),
        vec![0.3, 0.4]
    );
}

#[test]
fn clipping_is_separate_per_module() {
    let bb = var(&[0.0, 0.0]);
    let dh = var(&[0.0]);
    let opt_params = vec![
        (
            "backbone.w".to_string(),
            bb.clone(),
            ParamMultipliers::default(),
        ),
        (
            "dino_head.w".to_string(),
            dh.clone(),
            ParamMultipliers::default(),
        ),
    ];
    let opt = AdamW::new(opt_params, AdamWConfig::default()).unwrap();
    let mut g = grads_for(&[(&bb, &[6.0, 8.0]), (&dh, &[2.0])]);
    let norms =
        clip_per_module(&opt, &mut g, &THREEDINO_CLIP_MODULES, THREEDINO_CLIP_GRAD).unwrap();
    assert!((norms[0] - 10.0).abs() < 1e-5 && (norms[1] - 2.0).abs() < 1e-6);
    assert_eq!(norms[2], 0.0);
    let gb = g.get(bb.as_tensor()).unwrap().to_vec1::<f64>().unwrap();
    assert!((gb[0] - 1.8).abs() < 1e-6 && (gb[1] - 2.4).abs() < 1e-6);
    // The head's norm 2 < 3 is not scaled by the backbone's coefficient.
    assert_eq!(
        g.get(dh.as_tensor()).unwrap().to_vec1::<f64>().unwrap(),
        vec![2.0]
    );
}

#[test]
fn ema_moves_teacher_towards_student() {
    let dev = Device::Cpu;
    let (t, s) = (VarMap::new(), VarMap::new());
    let vt = VarBuilder::from_varmap(&t, DType::F64, &dev);
    let vs = VarBuilder::from_varmap(&s, DType::F64, &dev);
    let init_t = candle_nn::Init::Const(1.0);
    let init_s = candle_nn::Init::Const(3.0);
    vt.get_with_hints((2, 2), "x.weight", init_t).unwrap();
    vt.get_with_hints(3, "y", init_t).unwrap();
    vs.get_with_hints((2, 2), "x.weight", init_s).unwrap();
    vs.get_with_hints(3, "y", init_s).unwrap();
    ema_update(&t, &s, 0.9).unwrap();
    // 0.9·1 + 0.1·3 = 1.2, then 0.9·1.2 + 0.1·3 = 1.38.
    ema_update(&t, &s, 0.9).unwrap();
    for v in t.all_vars() {
        let vals = v
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        assert!(vals.iter().all(|x| (x - 1.38).abs() < 1e-12), "{vals:?}");
    }
    // Student untouched; momentum 1 freezes the teacher.
    ema_update(&t, &s, 1.0).unwrap();
    let y = t.data().lock().unwrap()["y"]
        .as_tensor()
        .to_vec1::<f64>()
        .unwrap();
    assert!((y[0] - 1.38).abs() < 1e-12);
    assert_eq!(
        s.data().lock().unwrap()["y"]
            .as_tensor()
            .to_vec1::<f64>()
            .unwrap(),
        vec![3.0; 3]
    );
    // Mismatched names are an error.
    let other = VarMap::new();
    VarBuilder::from_varmap(&other, DType::F64, &dev)
        .get_with_hints(3, "z", init_s)
        .unwrap();
    assert!(ema_update(&t, &other, 0.9).is_err());
}

/// The in-place f32 EMA (several parallel chunks and a short tail) gives
/// the tensor formula's values bit for bit; the student is left as it was.
#[test]
fn in_place_ema_matches_the_tensor_formula() {
    let dev = Device::Cpu;
    let n = 3 * (1 << 14) + 5;
    let t0 = Tensor::from_vec(crate::kernels_ref::testing::uniform(n, 21, 2.0), n, &dev)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    let s0 = Tensor::from_vec(crate::kernels_ref::testing::uniform(n, 22, 2.0), n, &dev)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    let m = 0.996;
    let want = ((&t0 * m).unwrap() + (&s0 * (1.0 - m)).unwrap()).unwrap();
    let (t, s) = (
        Var::from_tensor(&t0).unwrap(),
        Var::from_tensor(&s0).unwrap(),
    );
    ema_update_var(&t, &s, m).unwrap();
    let bits = |x: &Tensor| -> Vec<u32> {
        x.to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|v| (v + 0.0).to_bits())
            .collect()
    };
    assert_eq!(bits(t.as_tensor()), bits(&want));
    assert_eq!(bits(s.as_tensor()), bits(&s0));
    assert_ne!(bits(&t0), bits(&want), "the update changed the teacher");
}

/// The fused CPU f32 pass (large tensors, several parallel chunks, a
/// non-multiple tail) against the float64 reference.
#[test]
fn fused_f32_adamw_matches_float64_reference() {
    let cfg = AdamWConfig::default();
    let n = 40_000;
    let init: Vec<f64> = (0..n)
        .map(|i| ((i * 37 % 101) as f64 - 50.0) / 40.0)
        .collect();
    let p = Var::from_tensor(
        &Tensor::new(
            init.iter().map(|&x| x as f32).collect::<Vec<_>>(),
            &Device::Cpu,
        )
        .unwrap(),
    )
    .unwrap();
    let mults = ParamMultipliers {
        lr_mult: 0.5,
        wd_mult: 1.0,
        is_last_layer: false,
    };
    let mut opt = AdamW::new([("p".to_string(), p.clone(), mults)], cfg).unwrap();
    let mut r = (init.clone(), vec![0.0; n], vec![0.0; n]);
    for t in 0..3 {
        let g64: Vec<f64> = (0..n)
            .map(|i| (((i * 13 + t * 7) % 29) as f64 - 14.0) / 10.0)
            .collect();
        let g32: Vec<f32> = g64.iter().map(|&x| x as f32).collect();
        let loss = p.as_tensor().sum_all().unwrap();
        let mut grads = loss.backward().unwrap();
        grads.insert(p.as_tensor(), Tensor::new(g32, &Device::Cpu).unwrap());
        let (lr, wd) = (0.01 * (t + 1) as f64, 0.04);
        opt.step(
            &grads,
            StepValues {
                lr,
                last_layer_lr: lr,
                wd,
            },
        )
        .unwrap();
        reference_adamw(
            &mut r.0,
            &mut r.1,
            &mut r.2,
            &g64,
            t as i32 + 1,
            lr * 0.5,
            wd,
            cfg,
        );
    }
    let got: Vec<f32> = p.as_tensor().to_vec1().unwrap();
    for (i, (x, y)) in got.iter().zip(&r.0).enumerate() {
        assert!(
            (f64::from(*x) - y).abs() < 1e-5 * y.abs().max(1.0),
            "{i}: {x} vs {y}"
        );
    }
    // The moments follow too (they are saved in checkpoints).
    let state = opt.state_tensors().unwrap();
    let m: Vec<f32> = state["p.exp_avg"].to_vec1().unwrap();
    for (x, y) in m.iter().zip(&r.1) {
        assert!((f64::from(*x) - y).abs() < 1e-6 * y.abs().max(1.0));
    }
}
