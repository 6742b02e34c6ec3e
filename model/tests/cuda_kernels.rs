#![cfg(feature = "cuda")]
//! GPU kernels against their CPU references (`dino3d_model::kernels_ref`)
//! on seeded random inputs. Where no CUDA driver or device is present each
//! test prints "skipped: no CUDA device" and passes.
//!
//! Run with `cargo test -p dino3d-model --features cuda --release --test
//! cuda_kernels -- --nocapture` to see the measured errors.

use std::sync::OnceLock;

use dino3d_model::ModelError;
use dino3d_model::candle_core::{DType, Device, Tensor, Var};
use dino3d_model::cuda::{GpuContext, ema_update, koleo_loss, sinkhorn_ce};
use dino3d_model::kernels_ref::testing::{max_rel_err, normal, uniform};
use dino3d_model::kernels_ref::{self, SinkhornCeConfig};

/// One context for all tests, so each kernel module is compiled once.
fn gpu() -> Option<&'static GpuContext> {
    static GPU: OnceLock<Option<GpuContext>> = OnceLock::new();
    let gpu = GPU.get_or_init(|| match GpuContext::new(0) {
        Ok(g) => {
            let (major, minor) = g.compute_capability();
            println!("device 0: {} (sm_{major}{minor})", g.name());
            Some(g)
        }
        Err(ModelError::NoCudaDevice(why)) => {
            println!("no CUDA device: {why}");
            None
        }
        Err(e) => panic!("opening the GPU failed: {e}"),
    });
    if gpu.is_none() {
        println!("skipped: no CUDA device");
    }
    gpu.as_ref()
}

#[test]
fn ema_matches_reference() {
    let Some(gpu) = gpu() else { return };
    let len = 1_000_003; // not a multiple of the block size
    let teacher = uniform(len, 1, 1.0);
    let student = uniform(len, 2, 1.0);
    for momentum in [0.996, 0.9995, 1.0] {
        let mut want = teacher.clone();
        kernels_ref::ema_update_flat(&mut want, &student, momentum).unwrap();
        let mut t = gpu.upload(&teacher).unwrap();
        let s = gpu.upload(&student).unwrap();
        ema_update(gpu, &mut t, &s, momentum).unwrap();
        let got = gpu.download(&t).unwrap();
        let err = max_rel_err(&got, &want);
        let differing = got.iter().zip(&want).filter(|(a, b)| a != b).count();
        println!("ema m={momentum}: rel err {err:.3e}, {differing} of {len} values differ");
        assert!(
            err <= 1e-6,
            "EMA m={momentum}: rel err {err:.3e} > bound 1e-6 (same rounding: expected 0)"
        );
    }
}

#[test]
fn ema_refuses_mismatched_buffers() {
    let Some(gpu) = gpu() else { return };
    let mut t = gpu.upload(&[0.0; 4]).unwrap();
    let s = gpu.upload(&[0.0; 3]).unwrap();
    let err = ema_update(gpu, &mut t, &s, 0.9).unwrap_err();
    assert!(matches!(err, ModelError::Input(_)), "{err}");
}

/// GPU vs CPU Sinkhorn + CE on `cfg`, with the gradient; bound 1e-4
/// (norm-wise relative) on probabilities, per-row CE and gradient.
fn check_sinkhorn(gpu: &GpuContext, cfg: &SinkhornCeConfig, seed: u64) {
    const BOUND: f64 = 1e-4;
    let teacher = uniform(cfg.len(), seed, 1.0);
    let student = uniform(cfg.len(), seed + 1, 1.0);
    let want = kernels_ref::sinkhorn_ce(cfg, &teacher, &student, true).unwrap();
    let t = gpu.upload(&teacher).unwrap();
    let s = gpu.upload(&student).unwrap();
    let out = sinkhorn_ce(gpu, cfg, &t, &s, true).unwrap();
    let probs = gpu.download(&out.teacher_probs).unwrap();
    let ce = gpu.download(&out.ce).unwrap();
    let grad = gpu.download(out.grad.as_ref().unwrap()).unwrap();
    let tag = format!(
        "Sinkhorn+CE n={} K={} T={}",
        cfg.rows, cfg.prototypes, cfg.teacher_temp
    );
    let (ep, ec) = (
        max_rel_err(&probs, &want.teacher_probs),
        max_rel_err(&ce, &want.ce),
    );
    let eg = max_rel_err(&grad, want.grad.as_ref().unwrap());
    println!("{tag}: rel err probs {ep:.3e}, ce {ec:.3e}, grad {eg:.3e}");
    assert!(
        ep <= BOUND,
        "{tag}: probs rel err {ep:.3e} > bound {BOUND:e}"
    );
    assert!(ec <= BOUND, "{tag}: ce rel err {ec:.3e} > bound {BOUND:e}");
    assert!(
        eg <= BOUND,
        "{tag}: grad rel err {eg:.3e} > bound {BOUND:e}"
    );
    for (i, row) in probs.chunks(cfg.prototypes).enumerate() {
        let sum: f64 = row.iter().map(|&p| f64::from(p)).sum();
        assert!((sum - 1.0).abs() < 1e-4, "{tag}: row {i} sums to {sum}");
    }
    // Without the gradient: same targets and CE from the other finish kernel.
    let out = sinkhorn_ce(gpu, cfg, &t, &s, false).unwrap();
    assert!(out.grad.is_none());
    let ec = max_rel_err(&gpu.download(&out.ce).unwrap(), &want.ce);
    assert!(
        ec <= BOUND,
        "{tag} (no grad): ce rel err {ec:.3e} > bound {BOUND:e}"
    );
}

#[test]
fn sinkhorn_ce_matches_reference_small() {
    let Some(gpu) = gpu() else { return };
    let mut cfg = SinkhornCeConfig::threedino(6, 0.07);
    cfg.prototypes = 1000; // not a multiple of the block size
    check_sinkhorn(gpu, &cfg, 10);
    cfg.rows = 1;
    check_sinkhorn(gpu, &cfg, 20);
}

#[test]
fn sinkhorn_ce_matches_reference_at_3dino_size() {
    let Some(gpu) = gpu() else { return };
    // n = 2B with B = 64 global-crop pairs, K = 65,536; both ends of the
    // teacher-temperature warm-up.
    check_sinkhorn(gpu, &SinkhornCeConfig::threedino(128, 0.04), 30);
    check_sinkhorn(gpu, &SinkhornCeConfig::threedino(128, 0.07), 40);
}

#[test]
fn sinkhorn_ce_refuses_mismatched_buffers() {
    let Some(gpu) = gpu() else { return };
    let cfg = SinkhornCeConfig {
        prototypes: 4,
        ..SinkhornCeConfig::threedino(2, 0.07)
    };
    let t = gpu.upload(&[0.0; 8]).unwrap();
    let s = gpu.upload(&[0.0; 7]).unwrap();
    let err = sinkhorn_ce(gpu, &cfg, &t, &s, false).unwrap_err();
    assert!(matches!(err, ModelError::Input(_)), "{err}");
}

/// GPU vs CPU KoLeo of `x`; bound 1e-4 relative.
fn check_koleo(gpu: &GpuContext, x: &[f32], rows: usize, dim: usize) {
    let want = kernels_ref::koleo(x, rows, dim).unwrap();
    let dev = gpu.upload(x).unwrap();
    let got = gpu
        .download(&koleo_loss(gpu, &dev, rows, dim).unwrap())
        .unwrap();
    let err = max_rel_err(&got, &[want]);
    println!(
        "KoLeo {rows}x{dim}: gpu {} cpu {want}, rel err {err:.3e}",
        got[0]
    );
    assert!(
        err <= 1e-4,
        "KoLeo {rows}x{dim}: gpu {} vs cpu {want}, rel err {err:.3e} > bound 1e-4",
        got[0]
    );
}

#[test]
fn koleo_matches_reference() {
    let Some(gpu) = gpu() else { return };
    // B = 64 [CLS] vectors of ViT-L width; then more rows than a block has
    // threads, a single row, and exact duplicates (distance = eps·√d).
    check_koleo(gpu, &normal(64 * 1024, 50), 64, 1024);
    check_koleo(gpu, &normal(300 * 40, 51), 300, 40);
    check_koleo(gpu, &normal(16, 52), 1, 16);
    let mut x = normal(8 * 33, 53);
    let first = x[..33].to_vec();
    x[5 * 33..6 * 33].copy_from_slice(&first);
    check_koleo(gpu, &x, 8, 33);
}

#[test]
fn koleo_refuses_mismatched_buffers() {
    let Some(gpu) = gpu() else { return };
    let x = gpu.upload(&[1.0; 7]).unwrap();
    let err = koleo_loss(gpu, &x, 2, 4).unwrap_err();
    assert!(matches!(err, ModelError::Input(_)), "{err}");
}

/// NCCL through the `Collective` trait with one rank (one GPU cannot hold
/// two: NCCL refuses a duplicate device): the identity, and bad arguments
/// as errors. Skipped without NCCL.
#[test]
fn nccl_world_of_one() {
    use dino3d_model::cuda::{NcclCollective, nccl_unique_id};
    use dino3d_model::dist::{Collective, ReduceOp};
    let Some(gpu) = gpu() else { return };
    let id = match nccl_unique_id() {
        Ok(id) => id,
        Err(ModelError::NoCudaDevice(why)) => {
            println!("skipped: {why}");
            return;
        }
        Err(e) => panic!("NCCL id: {e}"),
    };
    assert!(NcclCollective::new(gpu, 0, 1, &id[..5]).is_err());
    assert!(NcclCollective::new(gpu, 1, 1, &id).is_err());
    let comm = NcclCollective::new(gpu, 0, 1, &id).unwrap();
    assert_eq!((comm.rank(), comm.world_size()), (0, 1));
    let mut v = vec![1.5f32, -2.0, 3.25];
    comm.all_reduce_f32(&mut v, ReduceOp::Mean).unwrap();
    assert_eq!(v, [1.5, -2.0, 3.25]);
    let mut w = vec![0.1f64; 1000];
    comm.all_reduce_f64(&mut w, ReduceOp::Sum).unwrap();
    assert!(w.iter().all(|&x| x == 0.1));
    comm.broadcast_f32(&mut v, 0).unwrap();
    assert!(comm.broadcast_f32(&mut v, 1).is_err());
    comm.barrier().unwrap();
    comm.all_reduce_f32(&mut [], ReduceOp::Sum).unwrap();

    // A CUDA tensor reduced where it lies (candle's stream), and a CPU one
    // through the host: both the identity in a world of one.
    let values: Vec<f32> = (0..10_000).map(|i| i as f32 * 0.5 - 7.0).collect();
    for dev in [gpu.device(), Device::Cpu] {
        let t = Tensor::from_slice(&values, (100, 100), &dev).unwrap();
        for op in [ReduceOp::Sum, ReduceOp::Mean] {
            let r = comm.all_reduce_tensor(&t, op).unwrap();
            assert_eq!(r.dims(), [100, 100]);
            assert!(r.device().same_device(&dev));
            assert_eq!(r.flatten_all().unwrap().to_vec1::<f32>().unwrap(), values);
        }
        // bf16 (train.gradient_reduce: bf16) stays bf16, unchanged.
        let b = t.to_dtype(DType::BF16).unwrap();
        let r = comm.all_reduce_tensor(&b, ReduceOp::Mean).unwrap();
        assert_eq!(r.dtype(), DType::BF16);
        let f32s = |t: &Tensor| {
            t.to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        assert_eq!(f32s(&r), f32s(&b));
    }

    // Started right after a large product on candle's stream (the
    // communicator's stream must wait for it), read after more work there
    // (candle's stream must wait for the reduction): still the identity.
    let a =
        Tensor::from_slice(&uniform(2048 * 2048, 21, 1.0), (2048, 2048), &gpu.device()).unwrap();
    let product = a.matmul(&a).unwrap();
    let want = product.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let product = a.matmul(&a).unwrap();
    let pending = comm
        .start_all_reduce_tensor(&product, ReduceOp::Sum)
        .unwrap();
    let busy = a.matmul(&a).unwrap().sum_all().unwrap();
    let got = comm.wait_all_reduce(pending).unwrap();
    assert_eq!(got.flatten_all().unwrap().to_vec1::<f32>().unwrap(), want);
    drop(busy);
    // Dropped unwaited: no error, and the next reduction still works.
    drop(
        comm.start_all_reduce_tensor(&product, ReduceOp::Sum)
            .unwrap(),
    );

    // The training step's bucketed gradient average on CUDA tensors, with
    // many buckets: in a world of one, each gradient unchanged.
    use dino3d_model::dist::{BucketPlan, GradientSync};
    let sizes = [3000usize, 70_000, 5, 300_000, 1];
    let vars: Vec<Var> = sizes
        .iter()
        .map(|&n| Var::zeros(n, DType::F32, &gpu.device()).unwrap())
        .collect();
    let refs: Vec<&Var> = vars.iter().collect();
    let mut loss = Tensor::zeros((), DType::F32, &gpu.device()).unwrap();
    for (i, v) in vars.iter().enumerate() {
        let w = Tensor::from_slice(
            &uniform(sizes[i], 30 + i as u64, 1.0),
            sizes[i],
            &gpu.device(),
        )
        .unwrap();
        loss = (loss + (v.as_tensor() * w).unwrap().sum_all().unwrap()).unwrap();
    }
    let mut grads = loss.backward().unwrap();
    let before: Vec<Vec<f32>> = refs
        .iter()
        .map(|v| grads.get(v.as_tensor()).unwrap().to_vec1::<f32>().unwrap())
        .collect();
    for wire in [DType::F32, DType::BF16] {
        let order: Vec<usize> = (0..sizes.len()).rev().collect();
        let plan = BucketPlan::new(&order, &sizes, 4, 64 << 10, true).unwrap();
        let mut sync = GradientSync::new(&refs, &plan, &comm, wire).unwrap();
        sync.settle_stored(&grads).unwrap();
        let report = sync.finish(&mut grads).unwrap();
        assert!(report.buckets > 3, "{report:?}");
        for (v, b) in refs.iter().zip(&before) {
            let g = grads.get(v.as_tensor()).unwrap();
            assert!(g.device().same_device(&gpu.device()));
            let g = g.to_vec1::<f32>().unwrap();
            if wire == DType::F32 {
                assert_eq!(&g, b);
            } else {
                let rounded: Vec<f32> = b
                    .iter()
                    .map(|x| half::bf16::from_f32(*x).to_f32())
                    .collect();
                assert_eq!(g, rounded);
            }
        }
        grads = loss.backward().unwrap();
    }
}

/// The teacher EMA of the model (`optim::ema_update_var`) on CUDA tensors
/// runs our kernel on candle's buffers, in place: bit-identical to the CPU
/// pass, and the variable stays the same buffer.
#[test]
fn model_ema_on_cuda_tensors_matches_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let (t0, s0) = (uniform(70_001, 5, 1.0), uniform(70_001, 6, 1.0));
    let run = |dev: &Device| {
        let t = Var::from_tensor(&Tensor::from_slice(&t0, (7, 10_001), dev).unwrap()).unwrap();
        let s = Var::from_tensor(&Tensor::from_slice(&s0, (7, 10_001), dev).unwrap()).unwrap();
        for m in [0.996, 0.9995] {
            dino3d_model::optim::ema_update_var(&t, &s, m).unwrap();
        }
        t.as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    let (cpu, cuda) = (run(&Device::Cpu), run(&gpu.device()));
    let differing = cpu.iter().zip(&cuda).filter(|(a, b)| a != b).count();
    println!(
        "model EMA on CUDA: {differing} of {} values differ from the CPU",
        cpu.len()
    );
    assert_eq!(differing, 0);
}

/// `loss::sinkhorn_knopp` on a CUDA tensor (our kernels as a candle op)
/// against the CPU path, at 3DINO's head size.
#[test]
fn model_sinkhorn_on_cuda_tensors_matches_the_cpu() {
    let Some(gpu) = gpu() else { return };
    for (rows, k) in [(16, 4096), (128, 65_536)] {
        let logits: Vec<f32> = normal(rows * k, 7).iter().map(|v| 3.0 * v).collect();
        let on = |dev: &Device| {
            let t = Tensor::from_slice(&logits, (rows, k), dev).unwrap();
            let q = dino3d_model::loss::sinkhorn_knopp(&t, 0.07, 3).unwrap();
            assert!(q.device().same_device(dev));
            q.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        };
        let err = max_rel_err(&on(&gpu.device()), &on(&Device::Cpu));
        println!("model Sinkhorn-Knopp {rows}x{k} on CUDA: rel err {err:.3e}");
        assert!(
            err <= 1e-4,
            "Sinkhorn-Knopp {rows}x{k}: rel err {err:.3e} > 1e-4"
        );
    }
}

/// `loss::sinkhorn_knopp_all` on CUDA tensors of three in-process ranks on
/// one GPU (the fused kernels, the prototype sums all-reduced between the
/// launches; the middle rank has no rows) against the single-process
/// kernels on all rows, at 3DINO's head size.
#[test]
fn model_sinkhorn_over_ranks_on_cuda_matches_one_process() {
    use dino3d_model::dist::{Collective, InProcess};
    let Some(gpu) = gpu() else { return };
    let k = 65_536usize;
    let logits = uniform(128 * k, 17, 1.0);
    let dev = gpu.device();
    let all = Tensor::from_slice(&logits, (128, k), &dev).unwrap();
    let want = dino3d_model::loss::sinkhorn_knopp(&all, 0.04, 3)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let logits = std::sync::Arc::new(logits);
    // Rows split 64 / 36 / 28; then 48 / 0 / 80, a rank without rows (its
    // empty logits on the CPU, as the model keeps them: no zero-size GPU
    // buffer); then all on the middle rank, which is the single-process
    // pass exactly (adding the others' zero sums).
    for (split, tol) in [
        ([0usize, 64, 100, 128], 1e-5),
        ([0, 48, 48, 128], 1e-5),
        ([0, 0, 128, 128], 0.0),
    ] {
        let threads: Vec<_> = InProcess::group(3)
            .into_iter()
            .map(|comm| {
                let (logits, dev) = (logits.clone(), dev.clone());
                std::thread::spawn(move || {
                    let r = comm.rank();
                    let rows = split[r + 1] - split[r];
                    let mine = &logits[split[r] * k..split[r + 1] * k];
                    let on = if rows == 0 { Device::Cpu } else { dev.clone() };
                    let t = Tensor::from_slice(mine, (rows, k), &on).unwrap();
                    let q = dino3d_model::loss::sinkhorn_knopp_all_on(&t, &dev, 0.04, 3, &comm)
                        .unwrap();
                    assert_eq!(q.dims(), [rows, k]);
                    assert!(q.device().same_device(&on));
                    q.flatten_all().unwrap().to_vec1::<f32>().unwrap()
                })
            })
            .collect();
        let got: Vec<f32> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        let err = max_rel_err(&got, &want);
        println!("Sinkhorn-Knopp over 3 ranks {split:?} on CUDA vs one process: rel err {err:.3e}");
        assert!(err <= tol, "rel err {err:.3e} > {tol:e}");
    }
}

/// Asking for an NCCL id never panics: without the library it is
/// `NoCudaDevice` (the dlopen check runs first), with it an id or an error.
#[test]
fn nccl_absence_is_an_error_not_a_panic() {
    match dino3d_model::cuda::nccl_unique_id() {
        Ok(id) => assert_eq!(id.len(), dino3d_model::cuda::NCCL_ID_BYTES),
        Err(ModelError::NoCudaDevice(why)) => {
            assert!(why.contains("NCCL"), "{why}");
            println!("no NCCL: {why}");
        }
        Err(e) => println!("NCCL present, no id here: {e}"),
    }
}

/// AdamW on CUDA parameters runs `adamw.cu` in place: after three steps the
/// parameter and both moments are bit-identical to the CPU pass's.
#[test]
fn adamw_on_cuda_tensors_matches_the_cpu_bit_for_bit() {
    use dino3d_model::optim::{AdamW, AdamWConfig, ParamMultipliers, StepValues};
    let Some(gpu) = gpu() else { return };
    let n = 100_003;
    let init = uniform(n, 11, 1.0);
    let run = |dev: &Device| {
        let p = Var::from_tensor(&Tensor::from_slice(&init, n, dev).unwrap()).unwrap();
        let mults = ParamMultipliers {
            lr_mult: 0.5,
            wd_mult: 1.0,
            is_last_layer: false,
        };
        let mut opt = AdamW::new(
            [("p".to_string(), p.clone(), mults)],
            AdamWConfig::default(),
        )
        .unwrap();
        for t in 0..3u64 {
            let mut grads = p.as_tensor().sum_all().unwrap().backward().unwrap();
            let g = Tensor::from_vec(uniform(n, 20 + t, 2.0), n, dev).unwrap();
            grads.insert(p.as_tensor(), g);
            let lr = 0.01 * (t + 1) as f64;
            let sv = StepValues {
                lr,
                last_layer_lr: lr,
                wd: 0.04,
            };
            opt.step(&grads, sv).unwrap();
        }
        let state = opt.state_tensors().unwrap();
        let v = |t: &Tensor| t.to_device(&Device::Cpu).unwrap().to_vec1::<f32>().unwrap();
        [
            v(p.as_tensor()),
            v(&state["p.exp_avg"]),
            v(&state["p.exp_avg_sq"]),
        ]
    };
    let (cpu, cuda) = (run(&Device::Cpu), run(&gpu.device()));
    for (name, a, b) in [
        ("param", &cpu[0], &cuda[0]),
        ("m", &cpu[1], &cuda[1]),
        ("v", &cpu[2], &cuda[2]),
    ] {
        let differing = a.iter().zip(b).filter(|(x, y)| x != y).count();
        println!("AdamW on CUDA, {name}: {differing} of {n} values differ from the CPU");
        assert_eq!(differing, 0, "AdamW {name}");
    }
}

/// The backbone on the GPU (what `embed`, `visualize` and pretraining run
/// there: candle's CUDA ops plus our LayerNorm, GELU and softmax twins)
/// against the CPU with the same weights: the normed [CLS] and patch
/// tokens, the last block's attention, and every parameter's gradient of a
/// weighted sum of the outputs; on the GPU also with activation
/// checkpointing (the blocks recomputed in the backward).
/// Outputs, last attention map and named parameter gradients of a ViT's
/// forward and backward (weighted sums of its normalised tokens as the loss).
type VitRun = (Vec<f32>, Vec<f32>, Vec<f32>, Vec<(String, Vec<f32>)>);

/// A tiny ViT on the CPU and a copy of it on the GPU, with the same weights.
fn tiny_vit_pair(
    gpu: &GpuContext,
) -> (
    (dino3d_model::ViT3d, dino3d_model::candle_nn::VarMap),
    (dino3d_model::ViT3d, dino3d_model::candle_nn::VarMap),
) {
    use dino3d_model::{ViT3d, ViT3dConfig};
    let cfg = ViT3dConfig {
        pos_grid: 2,
        ..ViT3dConfig::tiny()
    };
    let (cpu_vit, cpu_vm) = ViT3d::with_varmap(cfg.clone(), &Device::Cpu).unwrap();
    let (gpu_vit, gpu_vm) = ViT3d::with_varmap(cfg, &gpu.device()).unwrap();
    {
        let cpu_vars = cpu_vm.data().lock().unwrap();
        for (name, var) in gpu_vm.data().lock().unwrap().iter() {
            let src = cpu_vars[name].as_tensor().to_device(&gpu.device()).unwrap();
            var.set(&src).unwrap();
        }
    }
    ((cpu_vit, cpu_vm), (gpu_vit, gpu_vm))
}

/// One forward and backward of `vit` on `x` (2 volumes of 32³).
fn vit_run(
    vit: &dino3d_model::ViT3d,
    vm: &dino3d_model::candle_nn::VarMap,
    dev: &Device,
    x: &[f32],
    activations: dino3d_model::Activations,
    kernel: dino3d_model::AttentionKernel,
) -> VitRun {
    use dino3d_model::{AttentionCapture, AttentionKernel, ForwardOptions, use_attention_kernel};
    let _kernel = use_attention_kernel(kernel);
    let input = Tensor::from_slice(x, (2, 1, 32, 32, 32), dev).unwrap();
    // The fused kernel runs only where no map is asked for.
    let attention = match kernel {
        AttentionKernel::Composed => AttentionCapture::Full,
        AttentionKernel::Fused => AttentionCapture::None,
    };
    let opts = ForwardOptions {
        attention,
        activations,
        ..Default::default()
    };
    let mut out = vit.forward_with(&input, &opts).unwrap();
    let tape = out.tape.take();
    let w =
        |t: &Tensor, seed| Tensor::from_vec(normal(t.elem_count(), seed), t.shape(), dev).unwrap();
    let loss = ((&out.cls_norm * w(&out.cls_norm, 1))
        .unwrap()
        .sum_all()
        .unwrap()
        + (&out.patch_norm * w(&out.patch_norm, 2))
            .unwrap()
            .sum_all()
            .unwrap())
    .unwrap();
    let mut grads = loss.backward().unwrap();
    if let Some(tape) = tape {
        vit.backward_tape(tape, &mut grads).unwrap();
    }
    let v = |t: &Tensor| {
        t.flatten_all()
            .unwrap()
            .to_dtype(dino3d_model::candle_core::DType::F32)
            .unwrap()
            .to_device(&Device::Cpu)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    let mut named: Vec<(String, Vec<f32>)> = vm
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(n, var)| (n.clone(), v(grads.get(var.as_tensor()).expect(n))))
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let attn = out.attentions.last().map(v).unwrap_or_default();
    (v(&out.cls_norm), v(&out.patch_norm), attn, named)
}

/// Compares a GPU run with the CPU's: outputs (and the attention map if
/// `with_map`) within `out_tol`, every gradient within `grad_tol`; returns
/// the worst relative error seen.
fn compare_vit_runs(
    label: &str,
    cuda: &VitRun,
    cpu: &VitRun,
    with_map: bool,
    out_tol: f64,
    grad_tol: f64,
) -> f64 {
    let mut compared = vec![("cls", &cuda.0, &cpu.0), ("patch", &cuda.1, &cpu.1)];
    if with_map {
        compared.push(("attention", &cuda.2, &cpu.2));
    }
    let mut worst_all = 0.0f64;
    for (name, a, b) in compared {
        let err = max_rel_err(a, b);
        println!("ViT on CUDA ({label}), {name}: rel err {err:.3e}");
        assert!(err <= out_tol, "{label} {name}: {err:.3e}");
        worst_all = worst_all.max(err);
    }
    assert_eq!(cuda.3.len(), cpu.3.len());
    let mut worst = (0.0f64, String::new());
    for ((name, a), (_, b)) in cuda.3.iter().zip(&cpu.3) {
        let err = max_rel_err(a, b);
        if err > worst.0 {
            worst = (err, name.clone());
        }
    }
    println!(
        "ViT on CUDA ({label}), gradients: worst rel err {:.3e} ({})",
        worst.0, worst.1
    );
    assert!(
        worst.0 <= grad_tol,
        "{label} gradient of {}: {:.3e}",
        worst.1,
        worst.0
    );
    worst_all.max(worst.0)
}

#[test]
fn vit_forward_and_backward_on_cuda_match_the_cpu() {
    use dino3d_model::{Activations, AttentionKernel};
    let Some(gpu) = gpu() else { return };
    let ((cpu_vit, cpu_vm), (gpu_vit, gpu_vm)) = tiny_vit_pair(gpu);
    let x = normal(2 * 32 * 32 * 32, 31);
    let cpu = vit_run(
        &cpu_vit,
        &cpu_vm,
        &Device::Cpu,
        &x,
        Activations::Keep,
        AttentionKernel::Composed,
    );
    for (activations, kernel) in [
        (Activations::Keep, AttentionKernel::Composed),
        (Activations::Recompute, AttentionKernel::Composed),
        (Activations::Keep, AttentionKernel::Fused),
        (Activations::Recompute, AttentionKernel::Fused),
    ] {
        let cuda = vit_run(&gpu_vit, &gpu_vm, &gpu.device(), &x, activations, kernel);
        let label = format!("{activations:?}, {kernel:?} attention");
        compare_vit_runs(
            &label,
            &cuda,
            &cpu,
            kernel == AttentionKernel::Composed,
            1e-4,
            1e-3,
        );
    }
}

/// Under bf16 autocast on CUDA (bf16 matmuls, the MLP's hidden layer and the
/// attention's q, k, v kept in bf16, the fused bf16 GELU kernel), kept and
/// recomputed: the CPU's f32 outputs and gradients to bf16 accuracy, and
/// bf16 really used.
#[test]
fn vit_in_bf16_on_cuda_matches_the_cpu_f32_to_bf16_accuracy() {
    use dino3d_model::precision::{Precision, autocast};
    use dino3d_model::{Activations, AttentionKernel};
    let Some(gpu) = gpu() else { return };
    let ((cpu_vit, cpu_vm), (gpu_vit, gpu_vm)) = tiny_vit_pair(gpu);
    let x = normal(2 * 32 * 32 * 32, 32);
    let cpu = vit_run(
        &cpu_vit,
        &cpu_vm,
        &Device::Cpu,
        &x,
        Activations::Keep,
        AttentionKernel::Composed,
    );
    for activations in [Activations::Keep, Activations::Recompute] {
        let _bf16 = autocast(Precision::Bf16);
        let cuda = vit_run(
            &gpu_vit,
            &gpu_vm,
            &gpu.device(),
            &x,
            activations,
            AttentionKernel::Composed,
        );
        let label = format!("bf16, {activations:?}");
        let worst = compare_vit_runs(&label, &cuda, &cpu, true, 5e-2, 1e-1);
        assert!(
            worst > 1e-5,
            "{label}: rel err {worst:.3e}, so bf16 was not used"
        );
    }
}

/// The ViT-Adapter's deformable sampling (`seg::adapter::deform_sample`) on
/// CUDA tensors against the CPU op: the samples and both gradients, on two
/// levels with locations partly outside (zero padding).
/// A tensor's values, flat, on the host.
fn host(t: &Tensor) -> Vec<f32> {
    t.flatten_all()
        .unwrap()
        .to_device(&Device::Cpu)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

#[test]
fn deform_sample_on_cuda_matches_the_cpu() {
    use dino3d_model::seg::adapter::deform_sample;
    let Some(gpu) = gpu() else { return };
    let shapes = [[6, 5, 4], [3, 3, 2]];
    let voxels: usize = shapes.iter().map(|s| s.iter().product::<usize>()).sum();
    let (groups, queries, levels, points, dim) = (4, 37, 2, 4, 48);
    let values = normal(groups * voxels * dim, 41);
    // In [-0.1, 1.1]: some samples fall partly or wholly outside.
    let locations: Vec<f32> = uniform(groups * queries * levels * points * 3, 42, 0.6)
        .iter()
        .map(|v| v + 0.5)
        .collect();
    let run = |dev: &Device| {
        let v = Var::from_tensor(&Tensor::from_slice(&values, (groups, voxels, dim), dev).unwrap())
            .unwrap();
        let l = Var::from_tensor(
            &Tensor::from_slice(&locations, (groups, queries, levels, points, 3), dev).unwrap(),
        )
        .unwrap();
        let out = deform_sample(v.as_tensor(), l.as_tensor(), &shapes).unwrap();
        let w = Tensor::from_vec(normal(out.elem_count(), 43), out.shape(), dev).unwrap();
        let grads = (&out * &w).unwrap().sum_all().unwrap().backward().unwrap();
        [
            host(&out),
            host(grads.get(v.as_tensor()).unwrap()),
            host(grads.get(l.as_tensor()).unwrap()),
        ]
    };
    let (cpu, cuda) = (run(&Device::Cpu), run(&gpu.device()));
    for (name, a, b) in [
        ("samples", &cuda[0], &cpu[0]),
        ("d values", &cuda[1], &cpu[1]),
        ("d locations", &cuda[2], &cpu[2]),
    ] {
        let err = max_rel_err(a, b);
        println!("deform_sample on CUDA, {name}: rel err {err:.3e}");
        assert!(err <= 1e-4, "{name}: rel err {err:.3e} > 1e-4");
    }
}

/// The segmentation's instance norm on CUDA f32 tensors (its twin kernels
/// in `cuda/fused.cu`) against the CPU op (f64 accumulators): the output and
/// the input gradient, for rows shorter than a block, rows of many blocks'
/// strides (48³ voxels, a UNETR stage at 96³ input) and a constant row.
#[test]
fn instance_norm_on_cuda_matches_the_cpu() {
    use dino3d_model::seg::instance_norm::instance_norm;
    let Some(gpu) = gpu() else { return };
    for (shape, seed) in [
        ([2usize, 3, 5, 6, 7], 61u64),
        ([1, 2, 48, 48, 48], 62),
        ([1, 1, 1, 1, 9], 63),
    ] {
        let n: usize = shape.iter().product();
        let mut values: Vec<f32> = normal(n, seed).iter().map(|v| 3.0 * v + 1.5).collect();
        if shape[4] == 9 {
            // A constant row, alone (its gradient, ~1/sqrt(eps) times the
            // others', would swamp their errors): x̂ = 0 and the gradient is
            // g − mean(g), scaled.
            values.fill(0.25);
        }
        let upstream = normal(n, seed + 100);
        let run = |dev: &Device| {
            let x =
                Var::from_tensor(&Tensor::from_slice(&values, &shape[..], dev).unwrap()).unwrap();
            let y = instance_norm(x.as_tensor()).unwrap();
            let w = Tensor::from_slice(&upstream, &shape[..], dev).unwrap();
            let grads = (&y * &w).unwrap().sum_all().unwrap().backward().unwrap();
            [host(&y), host(grads.get(x.as_tensor()).unwrap())]
        };
        let (cpu, cuda) = (run(&Device::Cpu), run(&gpu.device()));
        for (name, a, b) in [
            ("output", &cuda[0], &cpu[0]),
            ("d input", &cuda[1], &cpu[1]),
        ] {
            let err = max_rel_err(a, b);
            println!("instance norm on CUDA {shape:?}, {name}: rel err {err:.3e}");
            assert!(err <= 1e-4, "{shape:?} {name}: rel err {err:.3e} > 1e-4");
        }
    }
}

/// Attention without a score matrix (`cuda::flash_attention`) against the
/// CPU reference of its algorithm and against candle's composed attention on
/// the same GPU: the output and the gradients of q, k and v, for token
/// counts below, at and above one tile (32) and a 3DINO global crop (217).
#[test]
fn flash_attention_matches_its_reference_and_the_composed_attention() {
    use dino3d_model::cuda::{HEAD_DIM, flash_attention};
    use dino3d_model::kernels_ref::{AttentionShape, attention_bwd, attention_fwd};
    let Some(gpu) = gpu() else { return };
    let dev = gpu.device();
    for (b, h, t) in [(1, 1, 1), (2, 3, 32), (2, 2, 37), (2, 16, 217)] {
        let shape = AttentionShape {
            groups: b * h,
            tokens: t,
            dim: HEAD_DIM,
        };
        let n = shape.len();
        let q: Vec<f32> = normal(n, 51).iter().map(|v| 2.0 * v).collect();
        let (k, v, w) = (normal(n, 52), normal(n, 53), normal(n, 54));
        let scale = (HEAD_DIM as f32).powf(-0.5);
        let (want_o, lse) = attention_fwd(shape, &q, &k, &v, scale).unwrap();
        let (want_dq, want_dk, want_dv) =
            attention_bwd(shape, &q, &k, &v, &want_o, &lse, &w, scale).unwrap();
        let var = |x: &[f32]| {
            Var::from_tensor(&Tensor::from_slice(x, (b, h, t, HEAD_DIM), &dev).unwrap()).unwrap()
        };
        let (qv, kv, vv) = (var(&q), var(&k), var(&v));
        let wt = Tensor::from_slice(&w, (b, h, t, HEAD_DIM), &dev).unwrap();
        let host = |x: &Tensor| {
            x.flatten_all()
                .unwrap()
                .to_device(&Device::Cpu)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        let run = |o: Tensor| {
            let grads = (&o * &wt).unwrap().sum_all().unwrap().backward().unwrap();
            [
                host(&o),
                host(grads.get(qv.as_tensor()).unwrap()),
                host(grads.get(kv.as_tensor()).unwrap()),
                host(grads.get(vv.as_tensor()).unwrap()),
            ]
        };
        let fused = run(flash_attention(
            qv.as_tensor(),
            kv.as_tensor(),
            vv.as_tensor(),
            f64::from(scale),
        )
        .unwrap());
        let scores = (qv.as_tensor().matmul(&kv.as_tensor().t().unwrap()).unwrap()
            * f64::from(scale))
        .unwrap();
        let composed = run(dino3d_model::candle_nn::ops::softmax(
            &scores,
            dino3d_model::candle_core::D::Minus1,
        )
        .unwrap()
        .matmul(vv.as_tensor())
        .unwrap());
        let reference = [want_o, want_dq, want_dk, want_dv];
        for (i, name) in ["out", "dq", "dk", "dv"].iter().enumerate() {
            let err_ref = max_rel_err(&fused[i], &reference[i]);
            let err_comp = max_rel_err(&fused[i], &composed[i]);
            println!(
                "flash attention {b}x{h}x{t}, {name}: rel err {err_ref:.3e} (reference), {err_comp:.3e} (composed)"
            );
            assert!(
                err_ref <= 1e-4 && err_comp <= 1e-4,
                "{b}x{h}x{t} {name}: {err_ref:.3e} / {err_comp:.3e}"
            );
        }
    }
}

/// Batches uploaded through pinned buffers on the copy stream
/// (`upload::Uploader` on a CUDA device), started on another thread and
/// finished on the one that reads them, as the training loop does, arrive
/// value for value: at one size twice (the staging buffers reused), then at
/// another (reallocated), and after an upload dropped unfinished (its
/// staging buffers given back). Each batch is read only after the next one's
/// copy was queued, behind a busy compute stream: a copy stream that did not
/// wait for the compute stream's read of the staging buffers would overwrite
/// them first. An upload that blocks (staging buffers never given back)
/// fails after a minute instead of hanging.
#[test]
fn staged_uploads_arrive_value_for_value() {
    use std::sync::{Arc, Mutex, mpsc};
    use std::time::Duration;

    use dino3d_model::upload::{Upload, Uploader};
    let Some(gpu) = gpu() else { return };
    let dev = gpu.device();
    let up = Arc::new(Mutex::new(Uploader::new(&dev).unwrap()));
    let batch = |round: u64, n: usize| {
        (
            uniform(n, 2 * round, 1.0),
            uniform(3 * n, 2 * round + 1, 1.0),
        )
    };
    let start = |round: u64, n: usize| -> Upload {
        let (up, (a, b)) = (up.clone(), batch(round, n));
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let upload = up.lock().unwrap().start(&[(&a, &[n]), (&b, &[3, n])]);
            let _ = tx.send(upload.unwrap());
        });
        rx.recv_timeout(Duration::from_secs(60))
            .expect("an upload blocked: the staging buffers were not given back")
    };
    let heavy = Tensor::ones((4096, 4096), DType::F32, &dev).unwrap();
    let rounds = [
        (0u64, 4_096usize),
        (1, 4_096),
        (2, 1_000_003),
        (3, 1_000_003),
    ];
    let mut pending = Some(start(rounds[0].0, rounds[0].1));
    for (k, &(round, n)) in rounds.iter().enumerate() {
        // About 20 ms of work queued ahead of this batch's read.
        let busy: Vec<Tensor> = (0..8).map(|_| heavy.matmul(&heavy).unwrap()).collect();
        let t = pending.take().unwrap().finish().unwrap();
        if let Some(&(next_round, next_n)) = rounds.get(k + 1) {
            pending = Some(start(next_round, next_n));
        }
        let (a, b) = batch(round, n);
        assert_eq!(t[0].dims(), [n]);
        assert_eq!(t[1].dims(), [3, n]);
        assert_eq!(t[0].to_vec1::<f32>().unwrap(), a, "round {round}");
        assert_eq!(
            t[1].flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b,
            "round {round}"
        );
        drop(busy);
    }
    drop(start(4, 1_000_003));
    let t = start(5, 1_000_003).finish().unwrap();
    assert_eq!(t[0].to_vec1::<f32>().unwrap(), batch(5, 1_000_003).0);
    println!("staged uploads: 5 batches value for value, one dropped unfinished");
}
