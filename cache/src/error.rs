//! The cache crate's one error type.

use std::path::{Path, PathBuf};

/// Errors raised by the cache.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// An I/O failure on a cache file (disk full, read-only folder, ...).
    #[error("cache i/o on {}: {source}", path.display())]
    Io {
        /// The cache file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A damaged entry (truncated, torn, checksum mismatch): never served.
    #[error("damaged cache entry {}: {reason}", path.display())]
    Corrupt {
        /// The entry file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Preparing the sample failed (unreadable source, failing transform).
    #[error(transparent)]
    Source(#[from] dino3d_pipeline::Error),
}

impl CacheError {
    pub(crate) fn io(path: impl AsRef<Path>, source: std::io::Error) -> CacheError {
        CacheError::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    pub(crate) fn corrupt(path: impl AsRef<Path>, reason: &str) -> CacheError {
        CacheError::Corrupt {
            path: path.as_ref().to_path_buf(),
            reason: reason.to_string(),
        }
    }
}

/// The crate's result type.
pub type Result<T, E = CacheError> = std::result::Result<T, E>;
