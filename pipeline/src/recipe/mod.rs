//! YAML recipes: parsing with source positions, validation against the
//! transform registry (every error as `FILE:LINE:COLUMN` with the nearest valid
//! name), and the compiled plan with its cached prefix and canonical hash.
//!
//! Covers `task`, `seed`, `data`, `cache`, `pipeline` (with nested `OneOf` /
//! `RandomApply` steps), multi-crop `views`, `batch`, the training sections
//! `model`, `optim`, `teacher`, `train` ([`training`]), the linear probe's
//! `probe` and the feature export's `embed` ([`probe`]), and `--set`
//! overrides ([`overrides`]). Execution is in `crate::exec`.

pub mod compile;
pub mod document;
pub mod error;
pub mod overrides;
pub mod probe;
pub mod segment;
pub mod training;
pub mod value;

pub use compile::{
    BatchPlan, Plan, Step, ViewPlan, ViewRole, compile_file, compile_file_with, compile_str,
};
pub use error::{RecipeError, RecipeErrors, nearest};
pub use probe::{EmbedPlan, ProbePlan};
pub use segment::{SegmentData, SegmentPlan};
pub use training::TrainingPlan;
