//! GPU kernels vs their CPU references at 3DINO sizes (feature `cuda`):
//! fused EMA over ~300M parameters (ViT-L + heads), Sinkhorn-Knopp + CE
//! over (2B = 128) × 65,536 logits, KoLeo over 64 × 1024, and the bucketed
//! gradient average of a data-parallel step over ViT-L-sized gradients
//! (NCCL, a world of one). Prints the mean
//! time per call, effective bandwidth and the GPU-vs-CPU error.
//!
//! `cargo bench -p dino3d-model --features cuda --bench cuda_kernels`, or
//! run the built executable directly (what `scripts/gpu-check.sh` does).
//! Env: `DINO3D_BENCH_EMA_PARAMS` (default 300000000), `DINO3D_BENCH_ITERS`
//! (GPU timing iterations, default 20). Exits 0 with "skipped: no CUDA
//! device" where there is no GPU.

use std::time::Instant;

use dino3d_model::ModelError;
use dino3d_model::cuda::{GpuContext, ema_update, koleo_loss, sinkhorn_ce};
use dino3d_model::kernels_ref::testing::{max_rel_err, normal, uniform};
use dino3d_model::kernels_ref::{self, SinkhornCeConfig};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Mean seconds per call of `f` over `iters` calls after one warm-up call.
fn time_it(iters: usize, mut f: impl FnMut()) -> f64 {
    f();
    let start = Instant::now();
    for _ in 0..iters {
        f();
    }
    start.elapsed().as_secs_f64() / iters as f64
}

/// Mean seconds per GPU call: `iters` launches queued, then one sync.
fn time_gpu(gpu: &GpuContext, iters: usize, mut f: impl FnMut()) -> f64 {
    f();
    gpu.synchronize().expect("warm-up");
    let start = Instant::now();
    for _ in 0..iters {
        f();
    }
    gpu.synchronize().expect("timed launches");
    start.elapsed().as_secs_f64() / iters as f64
}

fn report(name: &str, bytes: f64, cpu_s: f64, gpu_s: f64, err: f64) {
    println!(
        "{name:<34} cpu {:>10.3} ms {:>7.1} GB/s | gpu {:>9.4} ms {:>7.1} GB/s | x{:>7.1} | rel err {err:.2e}",
        cpu_s * 1e3,
        bytes / cpu_s / 1e9,
        gpu_s * 1e3,
        bytes / gpu_s / 1e9,
        cpu_s / gpu_s
    );
}

fn bench_ema(gpu: &GpuContext, iters: usize) {
    let len = env_usize("DINO3D_BENCH_EMA_PARAMS", 300_000_000);
    let teacher = uniform(len, 1, 1.0);
    let student = uniform(len, 2, 1.0);
    let mut t = gpu.upload(&teacher).expect("upload");
    let s = gpu.upload(&student).expect("upload");
    ema_update(gpu, &mut t, &s, 0.996).expect("ema");
    let got = gpu.download(&t).expect("download");
    let mut want = teacher;
    let start = Instant::now();
    kernels_ref::ema_update_flat(&mut want, &student, 0.996).expect("cpu ema");
    let cpu_s = start.elapsed().as_secs_f64();
    let err = max_rel_err(&got, &want);
    drop((got, want));
    let gpu_s = time_gpu(gpu, iters, || {
        ema_update(gpu, &mut t, &s, 0.996).expect("ema");
    });
    // Read teacher and student, write teacher.
    let name = format!("EMA {:.0}M params", len as f64 / 1e6);
    report(&name, 12.0 * len as f64, cpu_s, gpu_s, err);
}

fn bench_sinkhorn(gpu: &GpuContext, iters: usize, with_grad: bool) {
    let cfg = SinkhornCeConfig::threedino(128, 0.07);
    let teacher = uniform(cfg.len(), 3, 1.0);
    let student = uniform(cfg.len(), 4, 1.0);
    let mut want = None;
    let cpu_s = time_it(2, || {
        want = Some(kernels_ref::sinkhorn_ce(&cfg, &teacher, &student, with_grad).expect("cpu"));
    });
    let want = want.expect("ran");
    let t = gpu.upload(&teacher).expect("upload");
    let s = gpu.upload(&student).expect("upload");
    let out = sinkhorn_ce(gpu, &cfg, &t, &s, with_grad).expect("gpu");
    let err = max_rel_err(
        &gpu.download(&out.teacher_probs).expect("download"),
        &want.teacher_probs,
    )
    .max(max_rel_err(
        &gpu.download(&out.ce).expect("download"),
        &want.ce,
    ));
    let gpu_s = time_gpu(gpu, iters, || {
        sinkhorn_ce(gpu, &cfg, &t, &s, with_grad).expect("gpu");
    });
    // Effective: read both logits, write the targets (and the gradient).
    let planes = if with_grad { 4.0 } else { 3.0 };
    let name = format!(
        "Sinkhorn+CE {}x{}{}",
        cfg.rows,
        cfg.prototypes,
        if with_grad { " +grad" } else { "" }
    );
    report(&name, planes * 4.0 * cfg.len() as f64, cpu_s, gpu_s, err);
}

fn bench_koleo(gpu: &GpuContext, iters: usize) {
    let (rows, dim) = (64, 1024);
    let x = normal(rows * dim, 5);
    let mut want = 0.0;
    let cpu_s = time_it(5, || want = kernels_ref::koleo(&x, rows, dim).expect("cpu"));
    let dev = gpu.upload(&x).expect("upload");
    let got = gpu
        .download(&koleo_loss(gpu, &dev, rows, dim).expect("gpu"))
        .expect("download");
    let err = max_rel_err(&got, &[want]);
    let gpu_s = time_gpu(gpu, iters, || {
        koleo_loss(gpu, &dev, rows, dim).expect("gpu");
    });
    report(
        &format!("KoLeo {rows}x{dim}"),
        4.0 * x.len() as f64,
        cpu_s,
        gpu_s,
        err,
    );
}

/// Attention at a ViT-L global-crop size (DINO3D_BENCH_ATTN_GROUPS groups of
/// batch x heads, default 32 x 16, 217 tokens, head 64), forward and
/// backward: `flash_attention` against candle's composed attention (scores,
/// softmax, values) on the same GPU, time and the memory the forward keeps.
fn bench_attention(gpu: &GpuContext, iters: usize) {
    use dino3d_model::candle_core::{D, Tensor, Var};
    use dino3d_model::cuda::{HEAD_DIM, flash_attention};
    let groups = env_usize("DINO3D_BENCH_ATTN_GROUPS", 32 * 16);
    let t = 217;
    let dev = gpu.device();
    let n = groups * t * HEAD_DIM;
    let var = |seed| {
        Var::from_tensor(&Tensor::from_vec(normal(n, seed), (groups, t, HEAD_DIM), &dev).unwrap())
            .unwrap()
    };
    let (q, k, v) = (var(61), var(62), var(63));
    let scale = (HEAD_DIM as f64).powf(-0.5);
    let step = |fused: bool| {
        let o = if fused {
            flash_attention(q.as_tensor(), k.as_tensor(), v.as_tensor(), scale).unwrap()
        } else {
            let s = (q.as_tensor().matmul(&k.as_tensor().t().unwrap()).unwrap() * scale).unwrap();
            dino3d_model::candle_nn::ops::softmax(&s, D::Minus1)
                .unwrap()
                .matmul(v.as_tensor())
                .unwrap()
        };
        let _ = o.sum_all().unwrap().backward().unwrap();
    };
    let fused_s = time_gpu(gpu, iters, || step(true));
    let composed_s = time_gpu(gpu, iters, || step(false));
    let scores_mib = (groups * t * t * 4) as f64 / (1 << 20) as f64;
    println!(
        "attention fwd+bwd {groups}x{t}x{HEAD_DIM}: flash {:.3} ms, composed {:.3} ms (x{:.2}); the composed forward keeps {:.0} MiB of scores and probabilities, flash {:.2} MiB of log-sum-exps",
        fused_s * 1e3,
        composed_s * 1e3,
        composed_s / fused_s,
        2.0 * scores_mib,
        (groups * t * 4) as f64 / (1 << 20) as f64
    );
}

/// The data-parallel step's gradient average over ViT-L-sized gradients
/// (24 blocks of 12.6 M parameters) through NCCL in a world of one: what
/// the bucketing itself costs on the GPU (the buckets' assembly, the
/// presence flags, the averages written back), since NCCL has nothing to
/// send with one rank. Several ranks' link time is on paper in
/// BENCHMARKS.md.
fn bench_gradient_sync(gpu: &GpuContext, iters: usize) {
    use dino3d_model::candle_core::{DType, Tensor, Var};
    use dino3d_model::cuda::{NcclCollective, nccl_unique_id};
    use dino3d_model::dist::{BucketPlan, DEFAULT_BUCKET_BYTES, GradientSync};
    let id = match nccl_unique_id() {
        Ok(id) => id,
        Err(e) => {
            println!("gradient all-reduce: skipped ({e})");
            return;
        }
    };
    let comm = NcclCollective::new(gpu, 0, 1, &id).expect("NCCL, a world of one");
    let (e, h) = (1024usize, 4096usize);
    let block = [
        3 * e * e,
        3 * e,
        e * e,
        e,
        e * h,
        h,
        h * e,
        e,
        e,
        e,
        e,
        e,
        e,
        e,
    ];
    let sizes: Vec<usize> = (0..24).flat_map(|_| block).collect();
    let device = gpu.device();
    let vars: Vec<Var> = sizes
        .iter()
        .map(|&n| Var::zeros(n, DType::F32, &device).expect("a parameter"))
        .collect();
    let refs: Vec<&Var> = vars.iter().collect();
    let mut loss = Tensor::zeros((), DType::F32, &device).expect("zero");
    for v in &vars {
        loss = (loss + v.as_tensor().sum_all().expect("sum")).expect("add");
    }
    let mut grads = loss.backward().expect("gradients");
    let total: usize = sizes.iter().sum();
    let order: Vec<usize> = (0..sizes.len()).rev().collect();
    for (wire, bucketed) in [(DType::F32, true), (DType::BF16, true), (DType::F32, false)] {
        let plan = if bucketed {
            BucketPlan::new(
                &order,
                &sizes,
                wire.size_in_bytes(),
                DEFAULT_BUCKET_BYTES,
                true,
            )
        } else {
            Ok(BucketPlan::single(sizes.len()))
        }
        .expect("a plan");
        let s = time_gpu(gpu, iters, || {
            let mut sync = GradientSync::new(&refs, &plan, &comm, wire).expect("sync");
            sync.settle_stored(&grads).expect("settle");
            sync.finish(&mut grads).expect("finish");
        });
        let bytes = (total * wire.size_in_bytes()) as f64;
        println!(
            "gradient average, {:.0} M params, {wire:?}, {:>3} buckets: {:>8.2} ms ({:.0} GB/s of wire bytes; NCCL world of one)",
            total as f64 / 1e6,
            plan.buckets().len(),
            s * 1e3,
            bytes / s / 1e9
        );
    }
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is expected.
    let gpu = match GpuContext::new(0) {
        Ok(g) => g,
        Err(ModelError::NoCudaDevice(why)) => {
            println!("skipped: no CUDA device ({why})");
            return;
        }
        Err(e) => panic!("opening the GPU failed: {e}"),
    };
    let (major, minor) = gpu.compute_capability();
    println!(
        "device 0: {} (sm_{major}{minor}, {} SMs); CPU references on {} threads",
        gpu.name(),
        gpu.sm_count(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let iters = env_usize("DINO3D_BENCH_ITERS", 20).max(1);
    // First calls compile the kernels (NVRTC); keep that out of the timings.
    let start = Instant::now();
    let tiny = gpu.upload(&[0.5; 4]).expect("upload");
    let mut tiny_t = gpu.upload(&[0.25; 4]).expect("upload");
    ema_update(&gpu, &mut tiny_t, &tiny, 0.5).expect("compile ema");
    let cfg = SinkhornCeConfig {
        prototypes: 2,
        ..SinkhornCeConfig::threedino(2, 0.07)
    };
    sinkhorn_ce(&gpu, &cfg, &tiny, &tiny, true).expect("compile sinkhorn_ce");
    sinkhorn_ce(&gpu, &cfg, &tiny, &tiny, false).expect("compile sinkhorn_ce");
    koleo_loss(&gpu, &tiny, 2, 2).expect("compile koleo");
    gpu.synchronize().expect("sync");
    println!(
        "NVRTC compile + load of 3 modules: {:.0} ms; GPU timings: mean of {iters} queued calls (incl. launch and allocation)",
        start.elapsed().as_secs_f64() * 1e3
    );
    println!("GB/s = effective bytes (inputs read once + outputs written once) / time");
    bench_attention(&gpu, iters);
    bench_koleo(&gpu, iters);
    bench_sinkhorn(&gpu, iters, false);
    bench_sinkhorn(&gpu, iters, true);
    bench_ema(&gpu, iters);
    bench_gradient_sync(&gpu, iters);
}
