use candle_core::{DType, Device, Tensor};

use super::*;
use crate::schedule::ScheduleValues;
use crate::{DinoHeadConfig, ViT3dConfig};

fn cfg() -> SslConfig {
    let backbone = ViT3dConfig {
        embed_dim: 24,
        depth: 2,
        num_heads: 2,
        pos_grid: 2,
        drop_path_rate: 0.1,
        ..ViT3dConfig::tiny()
    };
    let head = DinoHeadConfig {
        in_dim: 24,
        hidden_dim: 32,
        bottleneck_dim: 16,
        n_prototypes: 64,
        n_layers: 3,
    };
    SslConfig {
        dino_head: head.clone(),
        ibot_head: head,
        ..SslConfig::threedino(backbone)
    }
}

/// Seeded inputs in [-1, 1] (candle's CPU randn cannot be seeded).
fn noise(seed: u64, shape: &[usize]) -> Tensor {
    let n = shape.iter().product();
    let v = crate::kernels_ref::testing::uniform(n, seed, 1.0);
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

struct Data {
    globals: Tensor,
    locals: Tensor,
    masks: Vec<bool>,
}

fn data(seed: u64) -> Data {
    // B = 2 samples: 4 global crops of 2³ tokens, 8 locals.
    Data {
        globals: noise(seed, &[4, 1, 32, 32, 32]),
        locals: noise(seed + 1, &[8, 1, 16, 16, 16]),
        masks: (0..32).map(|i| i < 8 && i % 3 != 0).collect(),
    }
}

fn batch(d: &Data) -> SslBatch<'_> {
    SslBatch {
        globals: &d.globals,
        locals: Some(&d.locals),
        n_global_crops: 2,
        masks: &d.masks,
    }
}

fn values(momentum: f64, last_layer_lr: f64) -> ScheduleValues {
    ScheduleValues {
        lr: 1e-3,
        last_layer_lr,
        wd: 0.04,
        momentum,
        teacher_temp: 0.04,
    }
}

fn get(vm: &candle_nn::VarMap, name: &str) -> Vec<f32> {
    vm.data().lock().unwrap()[name]
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn step_updates_student_and_moves_teacher_by_ema() {
    let mut m = SslModel::new(cfg(), &Device::Cpu, 0).unwrap();
    let d = data(1);
    let name = "backbone.blocks.0.attn.qkv.weight";
    let t0 = get(m.teacher_vars(), name);
    assert_eq!(t0, get(m.student_vars(), name), "teacher starts as a copy");
    let proto = "dino_head.last_layer.weight_v";
    let p0 = get(m.student_vars(), proto);
    let r = m.step(&batch(&d), values(0.9, 0.0), Some(7)).unwrap();
    assert!(r.losses.total.is_finite() && r.losses.dino_local > 0.0);
    assert_eq!(r.n_masked, d.masks.iter().filter(|&&b| b).count());
    assert_eq!(r.grad_norms.len(), 3);
    assert!(r.grad_norms.iter().all(|&g| g > 0.0), "{:?}", r.grad_norms);
    let s1 = get(m.student_vars(), name);
    assert_ne!(s1, t0, "the student moved");
    // Teacher = 0.9·old + 0.1·new student.
    let t1 = get(m.teacher_vars(), name);
    for ((t1, t0), s1) in t1.iter().zip(&t0).zip(&s1) {
        assert!((t1 - (0.9 * t0 + 0.1 * s1)).abs() < 1e-6);
    }
    // last_layer_lr = 0 freezes the prototypes (weight decay included:
    // PyTorch multiplies wd by the group's lr).
    assert_eq!(get(m.student_vars(), proto), p0);
    assert_eq!(m.steps(), 1);
}

#[test]
fn totals_are_the_sum_of_the_terms() {
    let mut m = SslModel::new(cfg(), &Device::Cpu, 0).unwrap();
    let d = data(2);
    let l = m.losses(&batch(&d), 0.04, None).unwrap().values().unwrap();
    let sum = l.dino_local + l.dino_global + l.koleo + l.ibot;
    assert!((l.total - sum).abs() < 1e-5, "{l:?}");
    assert!(l.ibot > 0.0 && l.koleo.is_finite());
}

#[test]
fn state_round_trip_continues_bit_for_bit() {
    let d1 = data(3);
    let d2 = data(4);
    let mut a = SslModel::new(cfg(), &Device::Cpu, 0).unwrap();
    a.step(&batch(&d1), values(0.99, 1e-3), Some(1)).unwrap();
    let state = a.state().unwrap();
    let next_a = a.step(&batch(&d2), values(0.99, 1e-3), Some(2)).unwrap();

    let mut b = SslModel::new(cfg(), &Device::Cpu, 0).unwrap();
    b.load_state(state).unwrap();
    assert_eq!(b.steps(), 1);
    let next_b = b.step(&batch(&d2), values(0.99, 1e-3), Some(2)).unwrap();
    assert_eq!(next_a, next_b);
    let name = "ibot_head.mlp.0.weight";
    assert_eq!(get(a.teacher_vars(), name), get(b.teacher_vars(), name));
}

#[test]
fn softmax_centering_state_is_saved_and_restored() {
    let mut c = cfg();
    c.centering = Centering::Softmax { momentum: 0.9 };
    let d = data(5);
    let mut a = SslModel::new(c.clone(), &Device::Cpu, 0).unwrap();
    a.step(&batch(&d), values(0.99, 1e-3), None).unwrap();
    let state = a.state().unwrap();
    assert!(state.contains_key("center.dino_center"));
    let mut b = SslModel::new(c, &Device::Cpu, 0).unwrap();
    b.load_state(state).unwrap();
    let la = a.losses(&batch(&d), 0.04, None).unwrap().values().unwrap();
    let lb = b.losses(&batch(&d), 0.04, None).unwrap().values().unwrap();
    assert_eq!(la, lb);
}

#[test]
fn repeated_steps_on_one_batch_lower_the_loss() {
    let mut m = SslModel::new(cfg(), &Device::Cpu, 0).unwrap();
    let d = data(6);
    let v = ScheduleValues {
        lr: 5e-3,
        ..values(0.9, 5e-3)
    };
    let first = m.step(&batch(&d), v, None).unwrap().losses.total;
    let mut last = first;
    for _ in 0..15 {
        last = m.step(&batch(&d), v, None).unwrap().losses.total;
    }
    assert!(last < first, "loss {first} -> {last}");
}

#[test]
fn pretrained_weights_load_into_student_and_teacher() {
    let mut m = SslModel::new(cfg(), &Device::Cpu, 0).unwrap();
    let name = "backbone.norm.weight";
    let w = Tensor::full(0.5f32, 24, &Device::Cpu).unwrap();
    let loaded = m
        .load_pretrained(&[(name.to_string(), w)].into_iter().collect())
        .unwrap();
    assert_eq!(loaded, vec![name.to_string()]);
    assert_eq!(get(m.student_vars(), name), vec![0.5; 24]);
    assert_eq!(get(m.teacher_vars(), name), vec![0.5; 24]);
    let bad = Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap();
    assert!(
        m.load_pretrained(&[(name.to_string(), bad)].into_iter().collect())
            .is_err()
    );
}

/// The whole 3DINO step under bf16 autocast: the same losses as f32 up to
/// bf16 rounding, parameters and optimiser state still f32, every
/// parameter's gradient present (the grad norms), and the teacher's EMA
/// applied; with the same updates as f32 to bf16 accuracy.
#[test]
fn a_bf16_step_matches_the_f32_step_to_bf16_accuracy() {
    use crate::precision::{Precision, autocast};
    let d = data(5);
    let run = |p: Precision| {
        let _g = autocast(p);
        let mut m = SslModel::new(cfg(), &Device::Cpu, 0).unwrap();
        let r = m.step(&batch(&d), values(0.9, 1e-3), Some(3)).unwrap();
        let name = "backbone.blocks.1.mlp.fc1.weight";
        let dtypes: Vec<DType> = m
            .student_vars()
            .data()
            .lock()
            .unwrap()
            .values()
            .map(|v| v.dtype())
            .collect();
        (
            r,
            get(m.student_vars(), name),
            get(m.teacher_vars(), name),
            dtypes,
        )
    };
    let (r32, s32, t32, _) = run(Precision::F32);
    let (r16, s16, t16, dtypes) = run(Precision::Bf16);
    assert!(
        dtypes.iter().all(|&d| d == DType::F32),
        "parameters stay f32"
    );
    let rel = |a: f64, b: f64| (a - b).abs() / b.abs().max(1e-6);
    for (name, a, b) in [
        ("total", r16.losses.total, r32.losses.total),
        ("dino_local", r16.losses.dino_local, r32.losses.dino_local),
        (
            "dino_global",
            r16.losses.dino_global,
            r32.losses.dino_global,
        ),
        ("ibot", r16.losses.ibot, r32.losses.ibot),
    ] {
        assert!(rel(a, b) < 2e-2, "{name}: bf16 {a} vs f32 {b}");
    }
    assert_ne!(r16.losses.total, r32.losses.total, "bf16 was not used");
    assert_eq!(r16.grad_norms.len(), r32.grad_norms.len());
    for (a, b) in r16.grad_norms.iter().zip(&r32.grad_norms) {
        assert!(
            *a > 0.0 && rel(*a, *b) < 5e-2,
            "grad norm bf16 {a} vs f32 {b}"
        );
    }
    // One AdamW step moves each weight by about lr: the bf16 step's moves
    // agree with the f32 step's to a fraction of that.
    let moved = |s: &[f32], t: &[f32]| {
        s.iter()
            .zip(t)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max)
    };
    assert!(
        moved(&s16, &s32) < 5e-4,
        "student differs by {}",
        moved(&s16, &s32)
    );
    assert!(
        moved(&t16, &t32) < 5e-5,
        "teacher differs by {}",
        moved(&t16, &t32)
    );
}

#[test]
fn activation_checkpointing_takes_the_same_step() {
    let d = data(9);
    let mut kept = SslModel::new(cfg(), &Device::Cpu, 0).unwrap();
    let mut recomputed = SslModel::new(cfg(), &Device::Cpu, 0).unwrap();
    recomputed.set_activation_checkpointing(true);
    for it in 0..2 {
        let a = kept.step(&batch(&d), values(0.9, 1e-3), Some(it)).unwrap();
        let b = recomputed
            .step(&batch(&d), values(0.9, 1e-3), Some(it))
            .unwrap();
        assert_eq!(a.losses, b.losses, "the forward is the same pass");
        for (x, y) in a.grad_norms.iter().zip(&b.grad_norms) {
            assert!(
                (x - y).abs() <= 1e-5 * x,
                "{:?} vs {:?}",
                a.grad_norms,
                b.grad_norms
            );
        }
    }
    let names: Vec<String> = kept
        .student_vars()
        .data()
        .lock()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    for name in names {
        for (x, y) in get(kept.student_vars(), &name)
            .iter()
            .zip(get(recomputed.student_vars(), &name))
        {
            assert!(
                (x - y).abs() <= 1e-5 * (1.0 + x.abs()),
                "{name}: {x} vs {y}"
            );
        }
    }
}

#[test]
fn phase_timing_reports_every_phase_in_order_only_when_on() {
    let d = data(11);
    let mut m = SslModel::new(cfg(), &Device::Cpu, 0).unwrap();
    let plain = m.step(&batch(&d), values(0.9, 1e-3), Some(1)).unwrap();
    assert!(plain.phases.is_empty());
    m.set_phase_timing(true);
    let start = std::time::Instant::now();
    let timed = m.step(&batch(&d), values(0.9, 1e-3), Some(2)).unwrap();
    let wall = start.elapsed().as_secs_f64();
    let names: Vec<&str> = timed.phases.iter().map(|p| p.0).collect();
    assert_eq!(
        names,
        ["teacher", "student", "backward", "clip", "adamw", "ema"]
    );
    let sum: f64 = timed.phases.iter().map(|p| p.1).sum();
    assert!(timed.phases.iter().all(|p| p.1 >= 0.0));
    assert!(sum > 0.0 && sum <= wall, "{sum} of {wall}");
}
