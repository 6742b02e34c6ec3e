//! YAML recipes: parsing with source positions, validation against the
//! transform registry (every error as `FILE:LINE:COLUMN` with the nearest valid
//! name), and the compiled plan with its cached prefix and canonical hash.
//!
//! So far this covers `task`, `seed`, `data`, `cache`, `pipeline` and `batch`;
//! multi-crop `views`, `--set` overrides and execution come with the rest of
//! the transform-graph issue.

pub mod compile;
pub mod document;
pub mod error;
pub mod registry;
pub mod value;

pub use compile::{Plan, Step, compile_file, compile_str};
pub use error::{RecipeError, RecipeErrors, nearest};
