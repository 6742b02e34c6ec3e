//! `dino-run RECIPE` as one rank of a job of several (torchrun, SLURM or
//! `dino-run launch` set the variables): pretraining across GPUs, one
//! process per GPU, joined through NCCL.

use std::path::Path;
use std::process::ExitCode;

use dino3d_model::candle_core::Device;
use dino3d_pipeline::recipe::Plan;
use dino3d_tasks::distributed::LaunchEnv;
use dino3d_tasks::pretrain::{Options, config::PretrainConfig};

/// How long rank 0 waits for the others at the bootstrap (seconds), unless
/// `DINO3D_BOOTSTRAP_TIMEOUT` says otherwise.
#[cfg(feature = "cuda")]
const BOOTSTRAP_TIMEOUT_S: u64 = 300;

/// How long one collective may wait for the other ranks (seconds), unless
/// `DINO3D_COLLECTIVE_TIMEOUT` says otherwise: PyTorch's NCCL default.
#[cfg(feature = "cuda")]
const COLLECTIVE_TIMEOUT_S: u64 = 600;

/// Seconds from the variable `name` (a positive whole number), else
/// `default`.
#[cfg(feature = "cuda")]
fn seconds(name: &str, default: u64) -> anyhow::Result<std::time::Duration> {
    let secs = match std::env::var(name) {
        Err(_) => default,
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(s) if s > 0 => s,
            _ => anyhow::bail!("{name}={v}: a positive number of seconds is expected"),
        },
    };
    Ok(std::time::Duration::from_secs(secs))
}

/// Pretrains as rank `env.rank` of `env.world_size` on GPU `env.local_rank`:
/// rank 0 makes the NCCL id, the bootstrap hands it to the others over TCP
/// (`MASTER_ADDR:MASTER_PORT`), every rank joins on its GPU, and the
/// library's data-parallel loop runs with NCCL as its collectives.
pub(crate) fn pretrain_across_gpus(
    env: &LaunchEnv,
    plan: &Plan,
    config: &PretrainConfig,
    recipe: &Path,
    device: &Device,
    options: &Options,
) -> anyhow::Result<ExitCode> {
    if device.is_cpu() {
        anyhow::bail!(
            "this process is rank {} of {} ({:?} launch variables): pretraining across \
             processes runs one GPU per rank through NCCL; pass --device cuda (each rank \
             takes GPU LOCAL_RANK = {})",
            env.rank,
            env.world_size,
            env.source,
            env.local_rank
        );
    }
    join_and_train(env, plan, config, recipe, device, options)
}

#[cfg(feature = "cuda")]
fn join_and_train(
    env: &LaunchEnv,
    plan: &Plan,
    config: &PretrainConfig,
    recipe: &Path,
    device: &Device,
    options: &Options,
) -> anyhow::Result<ExitCode> {
    use anyhow::Context;
    use dino3d_model::candle_core::DeviceLocation;
    use dino3d_model::cuda::GpuContext;
    // Each rank takes GPU LOCAL_RANK, whatever `cuda:N` said (as torchrun's
    // scripts do with `torch.cuda.set_device(LOCAL_RANK)`); the device already
    // open is reused when it is that GPU.
    let local = DeviceLocation::Cuda {
        gpu_id: env.local_rank,
    };
    let gpu = if device.location() == local {
        GpuContext::from_device(device)
    } else {
        GpuContext::new(env.local_rank)
    }
    .with_context(|| {
        format!(
            "rank {} of {}: GPU LOCAL_RANK = {}",
            env.rank, env.world_size, env.local_rank
        )
    })?;
    // A blocked NCCL call cannot be interrupted: a stuck or lost rank ends
    // this process, and the launcher (torchrun, srun --kill-on-bad-exit,
    // dino-run launch) stops the others.
    let on_failure: dino3d_tasks::distributed::progress::OnFailure = std::sync::Arc::new(|m| {
        eprintln!("error: {m}; stopping this rank");
        std::process::abort();
    });
    let comm = dino3d_tasks::distributed::join_nccl(
        env,
        &gpu,
        seconds("DINO3D_BOOTSTRAP_TIMEOUT", BOOTSTRAP_TIMEOUT_S)?,
        seconds("DINO3D_COLLECTIVE_TIMEOUT", COLLECTIVE_TIMEOUT_S)?,
        on_failure,
    )?;
    eprintln!(
        "rank {} of {}: joined NCCL on GPU {} ({})",
        env.rank,
        env.world_size,
        gpu.ordinal(),
        gpu.name()
    );
    let code = crate::pretrain_cmd::run(plan, config, recipe, &gpu.device(), options, &comm)?;
    // In order: rank 0 does not report this rank as lost.
    comm.finish();
    Ok(code)
}

#[cfg(not(feature = "cuda"))]
fn join_and_train(
    env: &LaunchEnv,
    _: &Plan,
    _: &PretrainConfig,
    _: &Path,
    _: &Device,
    _: &Options,
) -> anyhow::Result<ExitCode> {
    anyhow::bail!(
        "this process is rank {} of {}: pretraining across GPUs needs NCCL, which this \
         dino-run was built without; rebuild with `cargo build --release --features cuda`",
        env.rank,
        env.world_size
    )
}
