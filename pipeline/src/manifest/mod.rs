//! Dataset manifests: 3DINO pretraining lists (JSON), Parquet manifests with
//! filterable columns, the parallel header scanner that builds them, and
//! finetuning datalists.

pub mod parquet;
pub mod record;
pub mod scan;
pub mod split;

pub use record::{ManifestEntry, ScanRecord, is_parquet, read_manifest, write_manifest_json};
pub use scan::{PathStyle, Reject, ScanOptions, ScanResult, discover, scan};
pub use split::{Datalist, DatalistItem, Pairing, pair_by_name, read_csv, split};
