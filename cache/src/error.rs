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
    /// A path given as a cache folder that is a file.
    #[error("{} is not a cache folder (it is a file)", path.display())]
    NotAFolder {
        /// The path.
        path: PathBuf,
    },
    /// A damaged entry (truncated, torn, checksum mismatch, foreign key):
    /// never served.
    #[error("damaged cache entry {}: {reason}", path.display())]
    Corrupt {
        /// The entry file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A read of a box that leaves the array (a caller's mistake).
    #[error("{}: box at {start:?} of {extent:?} voxels leaves the array of shape {shape:?}", path.display())]
    OutOfBounds {
        /// The entry file.
        path: PathBuf,
        /// The box's first voxel.
        start: [usize; 3],
        /// The box's size.
        extent: [usize; 3],
        /// The array's `(C, X, Y, Z)`.
        shape: [usize; 4],
    },
    /// An array handed to a write whose values do not fill its shape.
    #[error("{}: array `{key}` has {len} values for shape {shape:?}", path.display())]
    BadArray {
        /// The entry being written.
        path: PathBuf,
        /// The array's key.
        key: String,
        /// Values given.
        len: usize,
        /// Its `(C, X, Y, Z)`.
        shape: [usize; 4],
    },
    /// An array handed to a write whose spacing, affine or decode map is not
    /// finite (an entry that could never be read back).
    #[error("{}: array `{key}` has a non-finite spacing, affine or decode map", path.display())]
    BadGeometry {
        /// The entry being written.
        path: PathBuf,
        /// The array's key.
        key: String,
    },
}

impl CacheError {
    /// The file system is full (or the user's quota spent): a passing state,
    /// unlike a folder that cannot be written at all.
    pub fn is_out_of_space(&self) -> bool {
        use std::io::ErrorKind;
        matches!(self, CacheError::Io { source, .. }
            if matches!(source.kind(), ErrorKind::StorageFull | ErrorKind::QuotaExceeded))
    }

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
