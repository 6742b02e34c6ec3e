//! The pipeline crate's one error type.
//!
//! Every variant that concerns a file names it, so a bad volume in a 100k-scan
//! manifest can be reported and skipped with a message a user can act on.

use std::path::PathBuf;

/// Errors raised by volume I/O, manifests and transforms.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The operating system refused a read or write.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not a valid volume of the format it claims to be.
    #[error("{}: {reason}", path.display())]
    Format {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A header was found but the file holding its voxels was not.
    #[error("{}: data file missing (looked for {})", header.display(), tried.join(", "))]
    DataFileMissing {
        /// The header file.
        header: PathBuf,
        /// The data file names that were tried.
        tried: Vec<String>,
    },
    /// A valid file whose content dino3d does not handle (complex, RGB, ...).
    #[error("{}: unsupported: {what}", path.display())]
    Unsupported {
        /// The offending file.
        path: PathBuf,
        /// What is not supported.
        what: String,
    },
    /// A volume larger than the voxel budget (`data.max_voxels`).
    #[error("{}: holds {voxels} voxels, more than the budget of {budget} (data.max_voxels)", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Voxels it holds (all channels).
        voxels: u64,
        /// The budget.
        budget: u64,
    },
    /// A transform failed on a sample.
    #[error("{}: {step}: {source}", path.display())]
    Transform {
        /// The sample's (image) file.
        path: PathBuf,
        /// The transform's name.
        step: String,
        /// What went wrong.
        source: crate::transforms::TransformError,
    },
    /// A sample whose preparation failed before, as remembered by an
    /// in-memory source (the first failure, shared).
    #[error("{}: prepare (remembered): {source}", path.display())]
    Remembered {
        /// The sample's (image) file.
        path: PathBuf,
        /// The first failure.
        source: std::sync::Arc<Error>,
    },
    /// The on-disk cache failed for a sample (an unwritable folder, a source
    /// file that cannot be fingerprinted, ...).
    #[error("{}: cache: {source}", path.display())]
    Cache {
        /// The sample's (image) file.
        path: PathBuf,
        /// What the cache reported (boxed: the variant stays small).
        source: Box<dino3d_cache::CacheError>,
    },
    /// The batch loader's worker pool or thread could not be started.
    #[error("starting the batch loader: {reason}")]
    LoaderStart {
        /// What the system said.
        reason: String,
    },
    /// The sampler gives this rank no item (an empty manifest, or fewer
    /// items than ranks).
    #[error("the manifest has no items for this rank")]
    NoItems,
    /// Every item failed earlier in this run (each was reported then).
    #[error(
        "every item of the manifest failed earlier in this run (each was reported when it first failed)"
    )]
    EveryItemFailedBefore,
    /// Every item of the manifest failed, so no batch can be made.
    #[error("every item failed; last error: {last}")]
    EveryItemFailed {
        /// The last failure.
        last: Box<Error>,
    },
    /// Samples could not be collated into a batch.
    #[error("collating a batch: {0}")]
    Collate(#[from] crate::exec::collate::CollateError),
    /// The recipe's cache folder cannot be written (read-only, full).
    #[error("the cache folder {} cannot be written ({source}); fix its permissions or free space, or pass --allow-uncached to serve samples without caching them", dir.display())]
    CacheUnwritable {
        /// The cache folder.
        dir: PathBuf,
        /// What the system said.
        source: Box<dino3d_cache::CacheError>,
    },
    /// A manifest or datalist could not be read or written.
    #[error("manifest {}: {reason}", path.display())]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// A format error on `path`.
    pub fn format(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Format {
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// A manifest error on `path`.
    pub fn manifest(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Manifest {
            path: path.into(),
            reason: reason.into(),
        }
    }
}
