//! dino3d's on-disk cache of preprocessed volumes.
//!
//! Planned (issue 4): one memory-mapped file per volume holding zstd-compressed,
//! byte-shuffled chunks with a checksummed index, written atomically. This crate is
//! a placeholder until then; it only fixes the error type the rest will use.

/// Errors raised by the cache.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// An I/O failure on a cache file.
    #[error("cache i/o on {path}: {source}")]
    Io {
        /// The cache file.
        path: std::path::PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}
