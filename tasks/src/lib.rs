//! dino3d's tasks: what `dino-run RECIPE` (and `probe`, `embed`,
//! `visualize`, `atlas-crops`) runs, as a library.
//!
//! Each task owns a folder: its recipe section's schema, defaults and checks
//! (`config.rs`, errors as `FILE:LINE:COLUMN`) beside its algorithm. A recipe
//! compiles to the pipeline's [`Plan`](dino3d_pipeline::recipe::Plan) (the
//! sections every task shares) and a [`Task`]:
//!
//! ```no_run
//! use dino3d_tasks::{Task, compile_file_with};
//! let (plan, task) = compile_file_with("recipes/demo.yaml".as_ref(), &[])?;
//! if let Task::Pretrain(config) = &task {
//!     println!("{} iterations", config.total_iterations());
//! }
//! # let _ = plan;
//! # Ok::<(), dino3d_pipeline::recipe::RecipeErrors>(())
//! ```
//!
//! | task | folder | run |
//! |---|---|---|
//! | `prepare` | [`prepare`] | [`prepare::run`] |
//! | `pretrain` | [`pretrain`] | [`pretrain::run`] |
//! | `segment` | [`segment`] | [`segment::run`] |
//! | `linear_probe` | [`linear_probe`] | [`linear_probe::run`] |
//! | `embed` | [`embed`] | [`embed::open`], [`embed::embed_all`] |
//! | kNN probe | [`probe`] | [`probe::run`] |
//! | pictures | [`visualize`] | its modules |
//!
//! Tasks report through [`Progress`] and return what they found; the binary
//! prints it, draws the pictures and writes the result files.
//!
//! [`distributed`] says which rank of a launched job this process is
//! (torchrun's or SLURM's variables) and hands rank 0's NCCL id to the
//! others; [`pretrain::run_ranked`] is the training loop as one such rank.

pub mod backbone;
pub mod data;
pub mod distributed;
pub mod embed;
pub mod error;
pub mod linear_probe;
pub mod prepare;
pub mod pretrain;
pub mod probe;
pub mod progress;
pub mod recipe;
pub mod segment;
pub mod task;
pub mod visualize;

pub use error::{Result, TaskError};
pub use progress::{Bar, Progress, Silent};
pub use recipe::{compile_file, compile_file_with, compile_str, describe};
pub use task::Task;
