//! The YAML recipe as written, with source positions (serde-saphyr `Spanned`).
//!
//! ```yaml
//! task: prepare            # what `dino-run RECIPE` runs
//! seed: 0
//! data:
//!   manifest: ../data/volumes.json
//!   keys: [image]           # the keys each manifest entry provides
//! cache:
//!   dir: cache/
//!   prefix: auto            # or the number of leading transforms to persist
//! pipeline:
//!   - name: LoadImage
//!   - name: ScaleIntensityRangePercentiles
//!     lower: 0.05
//!     upper: 99.95
//! ```

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::value::{ParamValue, SpannedMap};

/// A whole recipe.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipeDoc {
    /// The job.
    pub task: Spanned<String>,
    /// Seed of every random choice.
    #[serde(default)]
    pub seed: Option<Spanned<u64>>,
    /// Where the samples come from.
    #[serde(default)]
    pub data: Option<DataDoc>,
    /// The cache of the deterministic prefix.
    #[serde(default)]
    pub cache: Option<CacheDoc>,
    /// The ordered transforms, each `{name: ..., <param>: ...}`.
    pub pipeline: Vec<Spanned<SpannedMap>>,
    /// Batching.
    #[serde(default)]
    pub batch: Option<BatchDoc>,
}

/// `data:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataDoc {
    /// Manifest (JSON list, Parquet, or finetuning datalist).
    pub manifest: Spanned<String>,
    /// Keys each entry provides (default `[image]`).
    #[serde(default)]
    pub keys: Option<Spanned<Vec<String>>>,
    /// Drop volumes whose smallest spatial axis is <= this.
    #[serde(default)]
    pub min_axis: Option<Spanned<u64>>,
}

/// `cache:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheDoc {
    /// Cache folder.
    pub dir: Spanned<String>,
    /// `auto` (every leading deterministic transform) or a count.
    #[serde(default)]
    pub prefix: Option<Spanned<ParamValue>>,
}

/// `batch:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchDoc {
    /// Samples per batch.
    pub size: Spanned<u64>,
    /// Worker threads (default: all cores).
    #[serde(default)]
    pub threads: Option<Spanned<u64>>,
    /// Batches prepared ahead.
    #[serde(default)]
    pub prefetch: Option<Spanned<u64>>,
}
