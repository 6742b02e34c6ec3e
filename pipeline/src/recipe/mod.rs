//! YAML recipes: parsing with source positions, validation against the
//! transform registry (every error as `FILE:LINE:COLUMN` with the nearest valid
//! name), and the compiled plan with its cached prefix and canonical hash.
//!
//! Covers the sections every task shares: `task` (its name), `seed`, `data`,
//! `cache`, `pipeline` (with nested `OneOf` / `RandomApply` steps), multi-crop
//! `views`, `batch`, and `--set` overrides ([`overrides`]). A task's own
//! sections (`model:`, `segment:`, `probe:`, ...) belong to the tasks crate
//! (`dino3d-tasks`), which compiles them through [`compile_doc_with`] with
//! the pieces here ([`Check`], [`RecipeError::at`], [`hint`], [`Spanned`]).
//! Execution is in `crate::exec`.

pub mod check;
pub mod compile;
pub mod document;
pub mod error;
pub mod overrides;
pub mod value;
pub mod view_sizes;

pub use check::Check;
pub use compile::{
    BatchPlan, Plan, Step, TaskContext, ViewPlan, ViewRole, compile_doc, compile_doc_with,
    compile_file, compile_file_with, compile_str, parse_str, read_and_compile,
};
pub use document::RecipeDoc;
pub use error::{RecipeError, RecipeErrors, hint, nearest};
pub use serde_saphyr::{Location, Spanned};
