//! A job's NCCL communicator: rank 0 creates the unique id, the bootstrap
//! hands it to the others, every rank joins on its GPU.

use std::time::Duration;

use dino3d_model::cuda::{GpuContext, NcclCollective, nccl_unique_id};
use dino3d_model::dist::Watchdog;

use super::progress::{OnFailure, start_board, watch};
use super::{LaunchEnv, bootstrap};
use crate::error::{Context, Result};

/// Joins this process's rank of the job `env` describes, on `gpu` (the
/// device `env.local_rank`). `bootstrap_timeout` bounds the wait for the
/// other ranks at the bootstrap (NCCL's own init then waits for all of them
/// too); every collective afterwards has `collective_timeout`, and a stuck
/// collective or (seen from rank 0) a vanished rank goes to `on_failure`
/// with the ranks named ([`watch`]). Call `finish` on the result when the
/// job succeeded.
pub fn join_nccl(
    env: &LaunchEnv,
    gpu: &GpuContext,
    bootstrap_timeout: Duration,
    collective_timeout: Duration,
    on_failure: OnFailure,
) -> Result<Watchdog<NcclCollective>> {
    let id = if env.rank == 0 {
        nccl_unique_id()?.to_vec()
    } else {
        Vec::new()
    };
    let (id, link) = bootstrap::join(env, &id, bootstrap_timeout)?;
    // Before NCCL's init, which waits for every rank: a rank lost there is
    // reported by rank 0 instead of holding it forever.
    let board = start_board(link, env.world_size, on_failure.clone());
    let comm = NcclCollective::new(gpu, env.rank, env.world_size, &id).with_context(|| {
        format!(
            "joining NCCL as rank {} of {} on GPU {}",
            env.rank,
            env.world_size,
            gpu.ordinal()
        )
    })?;
    Ok(watch(comm, board, collective_timeout, on_failure))
}
