//! Several processes, one job: who this process is ([`LaunchEnv`], from
//! torchrun's or SLURM's variables) and how rank 0 hands the others a blob
//! before the collectives exist ([`bootstrap`], e.g. the NCCL unique id),
//! and how a stuck or lost rank stops the job ([`progress`]).
//!
//! The collectives themselves (the [`Collective`](dino3d_model::dist::Collective)
//! trait and its in-process implementation) live in the model crate, whose
//! losses and optimiser step call them.

pub mod bootstrap;
mod env;
#[cfg(feature = "cuda")]
mod nccl;
pub mod nodelist;
pub mod progress;

#[cfg(feature = "cuda")]
pub use nccl::join_nccl;

pub use env::{LaunchEnv, LaunchSource, SLURM_PORT_BASE, SLURM_PORT_SPAN, TORCHRUN_VARS};

/// Why a job could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DistError {
    /// The launcher's variables are incomplete or contradictory.
    #[error("launch environment: {0}")]
    Env(String),
    /// A SLURM host list that does not parse.
    #[error("SLURM host list '{list}': {why}")]
    NodeList {
        /// The list as given.
        list: String,
        /// What is wrong with it.
        why: String,
    },
    /// The rendezvous at rank 0 failed.
    #[error("bootstrap: {0}")]
    Bootstrap(String),
}
