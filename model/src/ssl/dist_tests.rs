//! Data parallelism against one process: N in-process ranks with B rows each
//! must end where one process with all N·B rows ends (3DINO's semantics).

use std::sync::Arc;

use candle_core::{Device, Tensor};

use super::model::PhaseTimer;
use super::*;
use crate::Activations;
use crate::dist::{Collective, InProcess, SyncReport};
use crate::schedule::ScheduleValues;
use crate::{DinoHeadConfig, ViT3dConfig};

const WORLD: usize = 2;
const B: usize = 2;
const GLOBAL_B: usize = WORLD * B;
const N_GLOBAL: usize = 2;
const N_LOCAL: usize = 3;
const TOKENS: usize = 8;

fn cfg(centering: Centering, koleo_weight: f64) -> SslConfig {
    let backbone = ViT3dConfig {
        embed_dim: 24,
        depth: 2,
        num_heads: 2,
        pos_grid: 2,
        // Drop path draws per batch: N small batches cannot draw what one
        // large batch draws.
        drop_path_rate: 0.0,
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
        centering,
        koleo_weight,
        ..SslConfig::threedino(backbone)
    }
}

fn noise(seed: u64, shape: &[usize]) -> Tensor {
    let n = shape.iter().product();
    let v = crate::kernels_ref::testing::uniform(n, seed, 1.0);
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// One global batch of `GLOBAL_B` samples, crop-major.
struct Data {
    globals: Tensor,
    locals: Tensor,
    masks: Vec<bool>,
}

impl Data {
    /// Masks only on the first rank's samples: the other rank has no
    /// masked token and must still take part in the iBOT centring.
    fn new(seed: u64) -> Self {
        let masks = (0..N_GLOBAL * GLOBAL_B)
            .flat_map(|row| {
                let sample = row % GLOBAL_B;
                (0..TOKENS).map(move |t| sample < B && (t + row + seed as usize).is_multiple_of(3))
            })
            .collect();
        Self {
            globals: noise(seed, &[N_GLOBAL * GLOBAL_B, 1, 32, 32, 32]),
            locals: noise(seed + 100, &[N_LOCAL * GLOBAL_B, 1, 16, 16, 16]),
            masks,
        }
    }

    /// Rank `r`'s samples `r·B..(r+1)·B`, still crop-major.
    fn shard(&self, r: usize) -> Self {
        let rows = |crops: usize| -> Vec<usize> {
            (0..crops)
                .flat_map(|c| (0..B).map(move |i| c * GLOBAL_B + r * B + i))
                .collect()
        };
        let pick = |t: &Tensor, crops: usize| {
            let idx: Vec<u32> = rows(crops).iter().map(|&i| i as u32).collect();
            let idx = Tensor::new(idx.as_slice(), &Device::Cpu).unwrap();
            t.index_select(&idx, 0).unwrap()
        };
        Self {
            globals: pick(&self.globals, N_GLOBAL),
            locals: pick(&self.locals, N_LOCAL),
            masks: rows(N_GLOBAL)
                .iter()
                .flat_map(|&row| self.masks[row * TOKENS..(row + 1) * TOKENS].to_vec())
                .collect(),
        }
    }

    fn batch(&self) -> SslBatch<'_> {
        SslBatch {
            globals: &self.globals,
            locals: Some(&self.locals),
            n_global_crops: N_GLOBAL,
            masks: &self.masks,
        }
    }
}

fn values(step: usize) -> ScheduleValues {
    ScheduleValues {
        lr: 2e-3,
        last_layer_lr: if step == 0 { 0.0 } else { 2e-3 },
        wd: 0.04,
        momentum: 0.9,
        teacher_temp: 0.05,
    }
}

const STEPS: usize = 3;

/// Every parameter of both networks, by name, after `STEPS` steps, and each
/// step's report.
type Run = (Vec<(String, Vec<f32>)>, Vec<StepReport>);

fn params(m: &SslModel) -> Vec<(String, Vec<f32>)> {
    let mut out = Vec::new();
    for (prefix, vm) in [
        ("student.", m.student_vars()),
        ("teacher.", m.teacher_vars()),
    ] {
        for (name, var) in vm.data().lock().unwrap().iter() {
            let v = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            out.push((format!("{prefix}{name}"), v));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn run_one(cfg: &SslConfig, data: &[Data]) -> Run {
    let mut m = SslModel::new(cfg.clone(), &Device::Cpu, 3).unwrap();
    let reports = data
        .iter()
        .enumerate()
        .map(|(i, d)| m.step(&d.batch(), values(i), None).unwrap())
        .collect();
    (params(&m), reports)
}

fn run_ranks(cfg: &SslConfig, data: &Arc<Vec<Data>>) -> Vec<Run> {
    run_ranks_reducing_in(cfg, data, candle_core::DType::F32)
}

fn run_ranks_reducing_in(
    cfg: &SslConfig,
    data: &Arc<Vec<Data>>,
    wire: candle_core::DType,
) -> Vec<Run> {
    run_ranks_set_up(cfg, data, move |m| {
        m.set_gradient_reduce_dtype(wire).unwrap()
    })
    .into_iter()
    .map(|(run, _)| run)
    .collect()
}

/// Every rank's run, and its last step's gradient synchronisation, with
/// each rank's model set up by `set_up` first.
fn run_ranks_set_up(
    cfg: &SslConfig,
    data: &Arc<Vec<Data>>,
    set_up: impl Fn(&mut SslModel) + Send + Sync + 'static,
) -> Vec<(Run, SyncReport)> {
    let (cfg, data) = (cfg.clone(), data.clone());
    crate::dist::on_ranks(WORLD, move |comm| {
        let mut m = SslModel::new(cfg.clone(), &Device::Cpu, 3).unwrap();
        set_up(&mut m);
        let reports = data
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let shard = d.shard(comm.rank());
                m.step_with(&shard.batch(), values(i), None, Some(&comm))
                    .unwrap()
            })
            .collect();
        let sync = m.last_gradient_sync().expect("a distributed step").clone();
        ((params(&m), reports), sync)
    })
}

fn assert_close(a: &Run, b: &Run, tol: f32) {
    let mut worst = (0f32, String::new());
    for ((na, va), (nb, vb)) in a.0.iter().zip(&b.0) {
        assert_eq!(na, nb);
        for (x, y) in va.iter().zip(vb) {
            let d = (x - y).abs() / (1.0 + y.abs());
            if d > worst.0 {
                worst = (d, na.clone());
            }
        }
    }
    assert!(
        worst.0 <= tol,
        "largest difference {} in {}",
        worst.0,
        worst.1
    );
    // The first step starts from equal weights: its losses and gradient
    // norms differ by f32 summation order only. The norms would show a
    // gradient summed instead of averaged (Adam itself would hide it).
    let (fa, fb) = (&a.1[0], &b.1[0]);
    assert!((fa.losses.total - fb.losses.total).abs() < 1e-6 * fb.losses.total);
    for (ga, gb) in fa.grad_norms.iter().zip(&fb.grad_norms) {
        assert!((ga - gb).abs() < 1e-6 * gb, "{ga} vs {gb}");
    }
    for (ra, rb) in a.1.iter().zip(&b.1) {
        let (la, lb) = (ra.losses, rb.losses);
        assert!(
            (la.total - lb.total).abs() < 1e-4 * lb.total.abs().max(1.0),
            "{la:?} vs {lb:?}"
        );
        assert!((la.ibot - lb.ibot).abs() < 1e-4, "{la:?} vs {lb:?}");
        assert_eq!(ra.n_masked, rb.n_masked);
        for (ga, gb) in ra.grad_norms.iter().zip(&rb.grad_norms) {
            assert!((ga - gb).abs() < 1e-4 * gb.max(1e-3), "{ga} vs {gb}");
        }
    }
}

fn equivalence(centering: Centering) {
    let cfg = cfg(centering, 0.0);
    let data: Arc<Vec<Data>> = Arc::new((0..STEPS as u64).map(|s| Data::new(10 + s)).collect());
    let one = run_one(&cfg, &data);
    let ranks = run_ranks(&cfg, &data);
    // The replicas are bit-identical: every rank applies the same update.
    assert_eq!(ranks[0].0, ranks[1].0);
    assert_eq!(ranks[0].1, ranks[1].1);
    assert!(one.1.iter().all(|r| r.n_masked > 0));
    // f32 sums in another order differ by ulps; Adam's m/√v turns that into
    // up to ~1e-4 on parameters whose gradient is near zero after 3 steps
    // (measured 7.4e-5; lr is 2e-3, so a real error would show far above).
    assert_close(&ranks[0], &one, 3e-4);
}

#[test]
fn ranks_with_sinkhorn_match_one_process_with_the_whole_batch() {
    equivalence(Centering::SinkhornKnopp);
}

#[test]
fn ranks_with_the_softmax_centre_match_one_process_with_the_whole_batch() {
    equivalence(Centering::Softmax { momentum: 0.9 });
}

/// KoLeo stays per rank (3DINO): the step's KoLeo is the mean of each
/// rank's KoLeo over its own B vectors, not the KoLeo of all N·B.
#[test]
fn koleo_is_per_rank() {
    let cfg = cfg(Centering::SinkhornKnopp, 0.1);
    let data = Arc::new(vec![Data::new(30)]);
    let ranks = run_ranks(&cfg, &data);
    assert_eq!(ranks[0].0, ranks[1].0);
    let per_rank: Vec<f64> = (0..WORLD)
        .map(|r| {
            let mut m = SslModel::new(cfg.clone(), &Device::Cpu, 3).unwrap();
            let shard = data[0].shard(r);
            m.losses(&shard.batch(), 0.05, None)
                .unwrap()
                .values()
                .unwrap()
                .koleo
        })
        .collect();
    let mean = per_rank.iter().sum::<f64>() / WORLD as f64;
    let got = ranks[0].1[0].losses.koleo;
    assert!((got - mean).abs() < 1e-6, "{got} vs {mean}");
    let whole = SslModel::new(cfg, &Device::Cpu, 3)
        .unwrap()
        .losses(&data[0].batch(), 0.05, None)
        .unwrap()
        .values()
        .unwrap()
        .koleo;
    assert!((whole - mean).abs() > 1e-3, "the test must tell them apart");
}

/// A world of one through `step_with` is `step`, bit for bit.
#[test]
fn a_world_of_one_is_the_single_process_step() {
    let cfg = cfg(Centering::SinkhornKnopp, 0.1);
    let data = vec![Data::new(40), Data::new(41)];
    let one = run_one(&cfg, &data);
    let mut m = SslModel::new(cfg, &Device::Cpu, 3).unwrap();
    assert_eq!(one, run_single_process(&mut m, &data));
}

/// `data`'s steps through `step_with` over [`crate::dist::SingleProcess`].
fn run_single_process(m: &mut SslModel, data: &[Data]) -> Run {
    let single = crate::dist::SingleProcess;
    let reports = data
        .iter()
        .enumerate()
        .map(|(i, d)| {
            m.step_with(&d.batch(), values(i), None, Some(&single))
                .unwrap()
        })
        .collect();
    (params(m), reports)
}

/// A world of one made to run the data-parallel paths (the losses' mean,
/// the gradient buckets) still gives `step`'s parameters, bit for bit, in
/// f32; and the buckets did run.
#[test]
fn a_world_of_one_can_run_the_data_parallel_paths() {
    let cfg = cfg(Centering::SinkhornKnopp, 0.1);
    let data = vec![Data::new(90), Data::new(91)];
    let one = run_one(&cfg, &data);
    let mut m = SslModel::new(cfg, &Device::Cpu, 3).unwrap();
    m.set_collectives_in_a_world_of_one(true);
    m.set_gradient_bucket_bytes(2 << 10).unwrap();
    assert_eq!(one, run_single_process(&mut m, &data));
    let sync = m.last_gradient_sync().expect("the buckets ran");
    assert!(sync.buckets > 4, "{sync:?}");
    assert_eq!(sync.started_in_backward, sync.buckets);
}

/// A rank that fails mid-job makes the others fail naming it, not hang.
#[test]
fn a_failing_rank_stops_the_others() {
    let cfg = cfg(Centering::SinkhornKnopp, 0.0);
    let data = Data::new(50);
    let results: Vec<String> = std::thread::scope(|s| {
        let threads: Vec<_> = InProcess::group(WORLD)
            .into_iter()
            .map(|comm| {
                let (cfg, data) = (&cfg, &data);
                s.spawn(move || {
                    if comm.rank() == 1 {
                        return "gone".to_string();
                    }
                    let mut m = SslModel::new(cfg.clone(), &Device::Cpu, 3).unwrap();
                    let shard = data.shard(0);
                    m.step_with(&shard.batch(), values(0), None, Some(&comm))
                        .unwrap_err()
                        .to_string()
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    assert!(
        results[0].contains("rank 1 left the group"),
        "{}",
        results[0]
    );
}

/// Gradients reduced in bf16: the replicas stay bit-identical, and the step
/// is the f32-reduced step up to bf16 rounding of the gradients (which
/// Adam's normalisation passes on at most to bf16's relative precision).
#[test]
fn gradients_reduced_in_bf16_keep_the_replicas_equal() {
    let cfg = cfg(Centering::SinkhornKnopp, 0.0);
    let data: Arc<Vec<Data>> = Arc::new((0..STEPS as u64).map(|s| Data::new(60 + s)).collect());
    let f32_wire = run_ranks(&cfg, &data);
    let bf16_wire = run_ranks_reducing_in(&cfg, &data, candle_core::DType::BF16);
    assert_eq!(bf16_wire[0].0, bf16_wire[1].0);
    assert_eq!(bf16_wire[0].1, bf16_wire[1].1);
    // The first step's norms are of the reduced gradients: within bf16's
    // rounding (2^-8 relative), and not equal (the wire really was bf16).
    let (a, b) = (&f32_wire[0].1[0], &bf16_wire[0].1[0]);
    assert_eq!(a.losses, b.losses, "the same forward");
    assert_ne!(a.grad_norms, b.grad_norms);
    for (x, y) in a.grad_norms.iter().zip(&b.grad_norms) {
        assert!((x - y).abs() <= 4e-3 * x, "{x} vs {y}");
    }
    let mut worst = 0f32;
    for ((na, va), (nb, vb)) in f32_wire[0].0.iter().zip(&bf16_wire[0].0) {
        assert_eq!(na, nb);
        for (x, y) in va.iter().zip(vb) {
            worst = worst.max((x - y).abs() / (1.0 + x.abs()));
        }
    }
    // lr 2e-3 over 3 steps: a parameter moves at most ~6e-3; bf16 changes
    // the direction of a step by well under its size.
    assert!(worst > 0.0 && worst < 2e-3, "largest difference {worst}");
    let mut m = SslModel::new(cfg, &Device::Cpu, 3).unwrap();
    assert!(
        m.set_gradient_reduce_dtype(candle_core::DType::F16)
            .is_err()
    );
}

/// Gradient buckets started during the backward (small buckets, so there
/// are many) end where one bucket after the backward ends, bit for bit,
/// with the blocks' activations kept and recomputed; and the checkpointed
/// ranks match one process too. From the second step on the buckets follow
/// the order the backward finished the gradients in, and start before it
/// ends.
#[test]
fn buckets_started_during_the_backward_change_nothing() {
    let cfg = cfg(Centering::SinkhornKnopp, 0.0);
    let data: Arc<Vec<Data>> = Arc::new((0..STEPS as u64).map(|s| Data::new(70 + s)).collect());
    let one = run_one(&cfg, &data);
    for checkpointing in [false, true] {
        let set_up = move |bytes: usize| {
            move |m: &mut SslModel| {
                m.set_activation_checkpointing(checkpointing);
                m.set_gradient_bucket_bytes(bytes).unwrap();
            }
        };
        let many = run_ranks_set_up(&cfg, &data, set_up(2 << 10));
        let single = run_ranks_set_up(&cfg, &data, set_up(usize::MAX / 2));
        let (many_run, many_sync) = &many[0];
        assert_eq!(many_run, &many[1].0, "replicas equal");
        assert_eq!(many_run, &single[0].0, "checkpointing {checkpointing}");
        assert_eq!(single[0].1.buckets, 1);
        assert!(many_sync.buckets > 4, "{many_sync:?}");
        // Rank 1 has no masked token, so its iBOT head has no gradient: it
        // is settled before the backward, not awaited. Kept activations:
        // every bucket starts during the backward (the last when it
        // reaches the patch embedding). Recomputed: all but the token
        // parameters' buckets, which the last recomputation reaches.
        for (rank, (_, sync)) in many.iter().enumerate() {
            let expect = if checkpointing {
                sync.buckets * 3 / 4..sync.buckets
            } else {
                sync.buckets..sync.buckets + 1
            };
            assert!(
                expect.contains(&sync.started_in_backward),
                "checkpointing {checkpointing}, rank {rank}: {sync:?}"
            );
        }
        assert_close(many_run, &one, 3e-4);
    }
}

/// The step's gradients, averaged bucket by bucket while the backward runs
/// (many small buckets; the first step's assumed order, then the recorded
/// one), are those of the whole backward followed by one all-reduce, bit
/// for bit, with kept and with recomputed activations. A gradient captured
/// before it was final would differ here.
#[test]
fn gradients_averaged_during_the_backward_are_those_averaged_after_it() {
    let cfg = cfg(Centering::SinkhornKnopp, 0.1);
    let data = Arc::new(Data::new(80));
    for checkpointing in [false, true] {
        let (cfg, data) = (cfg.clone(), data.clone());
        let out = crate::dist::on_ranks(WORLD, move |comm| {
            let mut m = SslModel::new(cfg.clone(), &Device::Cpu, 3).unwrap();
            m.set_activation_checkpointing(checkpointing);
            m.set_gradient_bucket_bytes(2 << 10).unwrap();
            let shard = data.shard(comm.rank());
            let batch = shard.batch();
            let mut timer = PhaseTimer::new(None).unwrap();
            let activations = if checkpointing {
                Activations::Recompute
            } else {
                Activations::Keep
            };
            let mut losses = |m: &mut SslModel| {
                m.losses_timed(&batch, 0.05, None, Some(&comm), activations, &mut timer)
                    .unwrap()
            };
            let read = |m: &SslModel, grads: &candle_core::backprop::GradStore| {
                m.trained_params()
                    .iter()
                    .map(|v| {
                        let g = grads.get(v.as_tensor()).expect("a gradient");
                        g.flatten_all().unwrap().to_vec1::<f32>().unwrap()
                    })
                    .collect::<Vec<_>>()
            };
            let l = losses(&mut m);
            let mut after = l.backward(&m.student().backbone).unwrap();
            let vars = m.trained_params();
            crate::dist::average_gradients(&mut after, &vars, &comm, candle_core::DType::F32)
                .unwrap();
            let after = read(&m, &after);
            let mut during = Vec::new();
            for _ in 0..2 {
                let l = losses(&mut m);
                let mut t = PhaseTimer::new(None).unwrap();
                let grads = m.averaged_backward(l, &comm, &mut t).unwrap();
                during.push((read(&m, &grads), m.last_gradient_sync().unwrap().clone()));
            }
            (after, during)
        });
        for (rank, (after, during)) in out.iter().enumerate() {
            for (step, (grads, sync)) in during.iter().enumerate() {
                assert!(
                    grads == after,
                    "checkpointing {checkpointing}, rank {rank}, step {step}"
                );
                assert!(sync.buckets > 4, "{sync:?}");
            }
            assert!(during[1].1.started_in_backward > during[1].1.buckets / 2);
        }
    }
}
