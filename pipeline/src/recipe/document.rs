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

/// The sections of a recipe every task shares. A recipe's other top-level
/// keys are its task's sections (`model:`, `segment:`, ...): the tasks
/// crate (`dino3d-tasks`) reads them, and rejects unknown keys with the
/// full list of valid ones; compiled here alone, they are ignored.
#[derive(Debug, Deserialize)]
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
    /// Multi-crop views cut from each prepared sample.
    #[serde(default)]
    pub views: Vec<Spanned<ViewDoc>>,
    /// Batching.
    #[serde(default)]
    pub batch: Option<BatchDoc>,
}

/// One entry of `views:`: a family of crops with its own random tail.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewDoc {
    /// A name for messages and outputs.
    pub name: Spanned<String>,
    /// `global` or `local`: which collated tensor the crops join.
    pub role: Spanned<String>,
    /// How many crops of this family per sample (default 1).
    #[serde(default)]
    pub count: Option<Spanned<u64>>,
    /// The transforms, starting with the crop.
    pub pipeline: Vec<Spanned<SpannedMap>>,
}

/// `data:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataDoc {
    /// Manifest (JSON list, Parquet, or finetuning datalist). Optional where
    /// the task names its data elsewhere (`segment.datalist`).
    #[serde(default)]
    pub manifest: Option<Spanned<String>>,
    /// Keys each entry provides (default `[image]`).
    #[serde(default)]
    pub keys: Option<Spanned<Vec<String>>>,
    /// Drop volumes whose smallest spatial axis is <= this.
    #[serde(default)]
    pub min_axis: Option<Spanned<u64>>,
    /// Keys holding label maps: resampled with nearest interpolation
    /// (default: the key `label` if listed).
    #[serde(default)]
    pub label_keys: Option<Spanned<Vec<String>>>,
    /// Most voxels one volume may hold (all channels); larger volumes are
    /// refused before their voxels are allocated (default 2^31).
    #[serde(default)]
    pub max_voxels: Option<Spanned<u64>>,
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
    /// Codec of new entries: `lz4` (fast reads) or `zstd` (smaller files).
    #[serde(default)]
    pub codec: Option<Spanned<String>>,
    /// Chunk edges of new entries, in voxels: one for all axes or `[x, y, z]`.
    #[serde(default)]
    pub chunk: Option<Spanned<ParamValue>>,
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
    /// Fraction of each batch's global crops given iBOT masks (default 0.5).
    #[serde(default)]
    pub mask_sample_probability: Option<Spanned<f64>>,
    /// Range of the masked fraction of tokens (default 3DINO's [0.2, 0.75]).
    #[serde(default)]
    pub mask_ratio: Option<Spanned<Vec<f64>>>,
    /// Patch size of the model, which sets the mask's token grid (default 16).
    #[serde(default)]
    pub patch_size: Option<Spanned<u64>>,
}
