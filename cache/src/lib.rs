//! dino3d's on-disk cache of prepared samples: the output of a recipe's
//! deterministic prefix for each manifest item (MONAI's `CacheNTransDataset`,
//! without its faults).
//!
//! * **Key** ([`entry_key`]): source fingerprints (size, mtime, header bytes),
//!   the canonical prefix hash (every cached step and parameter, and the seed
//!   when a random step is cached) and the format version. Change any of them
//!   and the entry misses; nothing else does.
//! * **Format** ([`format`]): per item one memory-mapped file of chunked
//!   (32³ by default), byte-shuffled, compressed arrays (LZ4 per byte plane, or
//!   zstd) with a checksum per
//!   chunk and over the header and index. 8/16-bit volumes under 3DINO's
//!   prefix stay integers plus their intensity window, applied on reading with
//!   the float path's own function (bit-identical). Reading a box decodes only
//!   the chunks it touches.
//! * **Durability** ([`store`]): atomic writes (temporary file, fsync, rename);
//!   damaged entries are detected, reported, removed and rebuilt, never served;
//!   lock files keep concurrent warmers from building the same entry twice, and
//!   a lock left by a killed process is taken over.
//! * **Use** ([`source`]): [`CacheSource`] plugs into the batch loader and warms
//!   lazily on first use.

mod alloc;
pub mod error;
pub mod format;
pub mod shuffle;
pub mod source;
pub mod store;
mod window;

pub use alloc::reuse_large_buffers;
pub use error::{CacheError, Result};
pub use format::{Codec, Entry, Layout, StoredType};
pub use source::{CacheSource, CacheStats, Warmed};
pub use store::{CacheDir, DEFAULT_CHUNK, DEFAULT_CODEC, FORMAT_VERSION, Lookup, entry_key};
