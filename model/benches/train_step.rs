//! One 3DINO training step on CPU (student forward and backward on 2 global
//! and 8 local crops per sample, teacher forward, Sinkhorn-Knopp, the DINO,
//! iBOT and KoLeo losses, per-module clipping, AdamW, EMA), timed over a few steps with
//! the peak resident memory; `benches/train_step_vs_torch.sh` runs it next to
//! the PyTorch baseline `benches/train_step_torch.py` with the same sizes.
//!
//! Settings from the environment: ARCH (small), BATCH (2), STEPS (3),
//! WARMUP (1), GLOBAL (96), LOCAL (48), LOCALS (8), PROTOTYPES (65536),
//! HIDDEN (2048), BOTTLENECK (256), DEVICE (cpu, or cuda:N with the
//! `cuda` feature), PRECISION (f32, tf32 or bf16: matmuls in bf16, the rest
//! f32, as `train.precision`), TF32 (1: the same as PRECISION=tf32),
//! CHECKPOINT (1: recompute each block in the backward, as
//! `train.activation_checkpointing`), ATTENTION (composed or fused, as
//! `train.attention`), PHASES (1: also the mean seconds of each phase of
//! the step: teacher, student, backward, clip, adamw, ema; the device is
//! waited for at each boundary, which costs a little), NCCL (1, with the
//! `cuda` feature on a CUDA device: the step through NCCL in a world of
//! one, its data-parallel paths run, so the gradient buckets are timed in
//! the real step; with PHASES=1 `all_reduce` is what the backward did not
//! hide).
//! On a GPU it also prints tokens/s and the model FLOP utilisation against
//! PEAK_TFLOPS (989, the H100 SXM dense bf16 peak). Large freed buffers are
//! kept for reuse, as `dino-run` keeps them (DINO3D_DEFAULT_ALLOCATOR=1: not).

mod common;

use std::time::Instant;

use candle_core::{Device, Tensor};
use dino3d_model::dist::Collective;
use dino3d_model::precision::{Precision, autocast};
use dino3d_model::schedule::ScheduleValues;
use dino3d_model::ssl::{SslBatch, SslConfig, SslModel};
use dino3d_model::{AttentionKernel, DinoHeadConfig, ViT3dConfig, use_attention_kernel};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Seeded inputs in [-1, 1] (candle's CPU randn cannot be seeded).
fn noise(seed: u64, shape: &[usize], device: &Device) -> Tensor {
    let n = shape.iter().product();
    let v = dino3d_model::kernels_ref::testing::uniform(n, seed, 1.0);
    Tensor::from_vec(v, shape, device).expect("noise tensor")
}

/// NCCL in a world of one on `dev` (NCCL=1).
#[cfg(feature = "cuda")]
fn nccl_world_of_one(dev: &Device) -> Box<dyn Collective> {
    use dino3d_model::cuda::{GpuContext, NcclCollective, nccl_unique_id};
    let gpu = GpuContext::from_device(dev).expect("NCCL=1 needs DEVICE=cuda");
    let id = nccl_unique_id().expect("NCCL=1 needs the NCCL library");
    Box::new(NcclCollective::new(&gpu, 0, 1, &id).expect("NCCL, a world of one"))
}

#[cfg(not(feature = "cuda"))]
fn nccl_world_of_one(_: &Device) -> Box<dyn Collective> {
    panic!("NCCL=1 needs the cuda feature")
}

fn device() -> Device {
    let name = std::env::var("DEVICE").unwrap_or_else(|_| "cpu".into());
    match name.strip_prefix("cuda") {
        None => Device::Cpu,
        Some(rest) => {
            let ordinal = rest.trim_start_matches(':').parse().unwrap_or(0);
            Device::new_cuda(ordinal).expect("DEVICE=cuda needs the cuda feature and a GPU")
        }
    }
}

/// Model FLOPs of one step, counted as `benches/train_step_torch.py` counts
/// them (matmuls only): student forward + backward (3×) on globals and
/// locals, teacher forward (1×) on globals, both heads.
fn step_flops(cfg: &ViT3dConfig, head: &DinoHeadConfig, run: [usize; 5]) -> f64 {
    let [b, gs, ls, nl, masked] = run.map(|v| v as f64);
    let (dim, depth, patch) = (cfg.embed_dim as f64, cfg.depth as f64, 16.0f64);
    let vit = |crops: f64, side: f64| {
        let n = 1.0 + (side / patch).floor().powi(3);
        let per_token =
            depth * (2.0 * 12.0 * dim * dim + 4.0 * n * dim) + 2.0 * patch.powi(3) * dim;
        crops * n * per_token
    };
    let (h, bn, k) = (
        head.hidden_dim as f64,
        head.bottleneck_dim as f64,
        head.n_prototypes as f64,
    );
    let heads = |rows: f64| rows * 2.0 * (dim * h + h * h + h * bn + bn * k);
    let g = vit(2.0 * b, gs);
    let loc = vit(nl * b, ls);
    let student_heads = heads(2.0 * b + nl * b) + heads(masked);
    let teacher = g + heads(2.0 * b) + heads(masked);
    3.0 * (g + loc + student_heads) + teacher
}

/// 3DINO's masks (spec §2.6) for 2B crops of n tokens: B masked with
/// ratios stratified over [0.2, 0.75], chosen deterministically here.
fn masks(b: usize, n: usize) -> Vec<bool> {
    let mut out = vec![false; 2 * b * n];
    for i in 0..b {
        let lo = 0.2 + 0.55 * i as f64 / b as f64;
        let count = (n as f64 * (lo + 0.275 / b as f64)) as usize;
        // Crop 2i gets the mask; 7919 is prime, so the tokens are distinct.
        for t in 0..count {
            out[2 * i * n + (t * 7919) % n] = true;
        }
    }
    out
}

fn main() {
    common::reuse_large_buffers();
    let arch = std::env::var("ARCH").unwrap_or_else(|_| "small".into());
    let (b, steps, warmup) = (env("BATCH", 2), env("STEPS", 3), env("WARMUP", 1));
    let (gs, ls, nl) = (env("GLOBAL", 96), env("LOCAL", 48), env("LOCALS", 8));
    let backbone = ViT3dConfig {
        pos_grid: gs / 16,
        ..ViT3dConfig::from_preset(&arch).expect("ARCH: tiny, small, base or large")
    };
    let head = DinoHeadConfig {
        hidden_dim: env("HIDDEN", 2048),
        bottleneck_dim: env("BOTTLENECK", 256),
        n_prototypes: env("PROTOTYPES", 65_536),
        ..DinoHeadConfig::new(backbone.embed_dim)
    };
    let checkpoint = env("CHECKPOINT", 0) == 1;
    let cfg = SslConfig {
        dino_head: head.clone(),
        ibot_head: head,
        ..SslConfig::threedino(backbone)
    };
    let dev = device();
    let precision = match std::env::var("PRECISION") {
        Ok(name) => Precision::from_name(&name)
            .unwrap_or_else(|| panic!("PRECISION={name}: one of {:?}", Precision::NAMES)),
        Err(_) if env("TF32", 0) == 1 => Precision::Tf32,
        Err(_) => Precision::F32,
    };
    let _precision = autocast(precision);
    let attention = std::env::var("ATTENTION").map_or(AttentionKernel::Composed, |name| {
        AttentionKernel::from_name(&name)
            .unwrap_or_else(|| panic!("ATTENTION={name}: one of {:?}", AttentionKernel::NAMES))
    });
    let _attention = use_attention_kernel(attention);
    let m = masks(b, (gs / 16).pow(3));
    let masked = m.iter().filter(|&&x| x).count();
    let flops = step_flops(&cfg.backbone, &cfg.ibot_head, [b, gs, ls, nl, masked]);
    let mut model = SslModel::new(cfg, &dev, 0).expect("model");
    model.set_activation_checkpointing(checkpoint);
    model.set_phase_timing(env("PHASES", 0) == 1);
    let comm = (env("NCCL", 0) == 1).then(|| nccl_world_of_one(&dev));
    model.set_collectives_in_a_world_of_one(comm.is_some());
    let globals = noise(1, &[2 * b, 1, gs, gs, gs], &dev);
    let locals = noise(2, &[nl * b, 1, ls, ls, ls], &dev);
    let batch = SslBatch {
        globals: &globals,
        locals: (nl > 0).then_some(&locals),
        n_global_crops: 2,
        masks: &m,
    };
    let values = ScheduleValues {
        lr: 1e-4,
        last_layer_lr: 1e-4,
        wd: 0.04,
        momentum: 0.992,
        teacher_temp: 0.07,
    };
    let mut times = Vec::new();
    let mut phases: Vec<(&'static str, f64)> = Vec::new();
    for i in 0..warmup + steps {
        let t = Instant::now();
        let r = model
            .step_with(&batch, values, Some(i as u64), comm.as_deref())
            .expect("step");
        dev.synchronize().expect("synchronize");
        let s = t.elapsed().as_secs_f64();
        if i >= warmup {
            println!("step {}: {s:.3} s, loss {:.4}", i - warmup, r.losses.total);
            times.push(s);
            if phases.is_empty() {
                phases = r.phases.iter().map(|&(n, _)| (n, 0.0)).collect();
            }
            for (sum, (_, t)) in phases.iter_mut().zip(&r.phases) {
                sum.1 += t / steps as f64;
            }
        }
    }
    let mean = times.iter().sum::<f64>() / times.len().max(1) as f64;
    let min = times.iter().copied().fold(f64::INFINITY, f64::min);
    println!(
        "rust step: arch={arch} batch={b} checkpoint={checkpoint} attention={} mean_s={mean:.4} min_s={min:.4} samples_per_s={:.4} peak_rss_mib={:.1} threads={}",
        attention.name(),
        b as f64 / mean,
        common::peak_rss_mib(),
        std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "all".into())
    );
    if !phases.is_empty() {
        let line: Vec<String> = phases.iter().map(|(n, t)| format!("{n}={t:.4}")).collect();
        println!("step phases (mean s): {}", line.join(" "));
    }
    if let Some(sync) = model.last_gradient_sync() {
        println!(
            "gradient buckets: {} per step, {} started during the backward (NCCL, a world of one)",
            sync.buckets, sync.started_in_backward
        );
    }
    if !dev.is_cpu() {
        let peak = env("PEAK_TFLOPS", 989) as f64 * 1e12;
        let tokens = (2 * b * ((gs / 16).pow(3) + 1) + nl * b * ((ls / 16).pow(3) + 1)) as f64;
        println!(
            "gpu step: device={:?} precision={} model_tflop_per_step={:.2} tflops={:.1} mfu_pct={:.1} student_tokens_per_s={:.0}",
            dev.location(),
            precision.name(),
            flops / 1e12,
            flops / min / 1e12,
            100.0 * flops / min / peak,
            tokens / min
        );
    }
}
