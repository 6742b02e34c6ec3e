//! Running a compiled recipe: typed ops ([`op`]), the prefix/tail/views
//! runner ([`runner`]), epoch sampling ([`sampler`]), iBOT masks ([`masks`]),
//! crop-major collation ([`collate`]) and the parallel, bounded batch loader
//! ([`loader`]).

pub mod collate;
pub mod loader;
pub mod masks;
pub mod op;
pub mod runner;
pub mod sample;
pub mod sampler;

pub use collate::{Batch, Tensor5};
pub use loader::{DirectSource, LoadedBatch, Loader, LoaderConfig, MemorySource, PreparedSource};
pub use masks::{Masks, ibot_masks};
pub use runner::{MultiCrop, Output, Pipeline, PlaneCutter, PlaneRect, Stored};
pub use sample::{Prepared, Sample};
pub use sampler::{InfiniteSampler, epoch_order};
