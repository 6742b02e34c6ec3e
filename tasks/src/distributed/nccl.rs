//! A job's NCCL communicator: rank 0 creates the unique id, the bootstrap
//! hands it to the others, every rank joins on its GPU.

use std::time::Duration;

use dino3d_model::cuda::{GpuContext, NcclCollective, nccl_unique_id};

use super::{LaunchEnv, bootstrap};
use crate::error::{Context, Result};

/// Joins this process's rank of the job `env` describes, on `gpu` (the
/// device `env.local_rank`); `timeout` bounds the wait for the other ranks
/// at the bootstrap (NCCL's own init then waits for all of them too).
pub fn join_nccl(env: &LaunchEnv, gpu: &GpuContext, timeout: Duration) -> Result<NcclCollective> {
    let id = if env.rank == 0 {
        nccl_unique_id()?.to_vec()
    } else {
        Vec::new()
    };
    let id = bootstrap::exchange(env, &id, timeout)?;
    NcclCollective::new(gpu, env.rank, env.world_size, &id).with_context(|| {
        format!(
            "joining NCCL as rank {} of {} on GPU {}",
            env.rank,
            env.world_size,
            gpu.ordinal()
        )
    })
}
