//! Running a compiled recipe: typed ops ([`op`]), the prefix/tail/views
//! runner ([`runner`]), epoch sampling ([`sampler`]), iBOT masks ([`masks`]),
//! crop-major collation ([`collate`]), the parallel, bounded batch loader
//! ([`loader`]) and prepared samples kept in the on-disk cache ([`cached`]).

pub mod cached;
pub mod collate;
pub mod dataset;
pub mod loader;
pub mod masks;
pub mod op;
pub mod passes;
pub mod runner;
pub mod sample;
pub mod sampler;

pub use cached::{CacheSource, CacheStats, Warmed};
pub use collate::{Batch, Order, Tensor5};
pub use dataset::{Dataset, Items, Keep, plan_cache_dir, plan_items};
pub use loader::{DirectSource, LoadedBatch, Loader, LoaderConfig, MemorySource, PreparedSource};
pub use masks::{Masks, ibot_masks};
pub use passes::{Applied, Passes};
pub use runner::{MultiCrop, Output, Pipeline, PlaneCutter, PlaneNeeds, Stored};
pub use sample::{Prepared, Sample};
pub use sampler::{InfiniteSampler, KeyedShuffle, Shuffle, epoch_order};
