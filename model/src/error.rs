//! The crate's error type.

/// Errors raised by the model crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// A checkpoint could not be read or written.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The checkpoint file.
        path: std::path::PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The file system refused a checkpoint's read or write (kept as the
    /// `io::Error`, so a caller can tell a full disk from the rest).
    #[error("checkpoint {path}: {source}")]
    CheckpointIo {
        /// The checkpoint file.
        path: std::path::PathBuf,
        /// The file system's error.
        source: std::io::Error,
    },
    /// A configuration is inconsistent (e.g. embed dim not divisible by heads).
    #[error("invalid config: {0}")]
    Config(String),
    /// An input tensor has the wrong shape or type for the operation.
    #[error("bad input: {0}")]
    Input(String),
    /// A pickle (inside a `.pth`) uses something the restricted unpickler
    /// refuses: a global other than torch's tensor rebuilders, or an
    /// unsupported opcode; or it is malformed.
    #[error("unsafe or unsupported pickle: {0}")]
    Pickle(String),
    /// No usable CUDA device: the driver or NVRTC library cannot be loaded,
    /// or no device has the requested ordinal. Callers fall back to the CPU
    /// (and GPU tests skip) on this error.
    #[error("no CUDA device: {0}")]
    NoCudaDevice(String),
    /// A CUDA driver call, NVRTC compilation or kernel launch failed.
    #[error("cuda {op}: {reason}")]
    Cuda {
        /// What was being done (e.g. `compile sinkhorn_ce`, `launch ema_update`).
        op: String,
        /// The driver's or NVRTC's message.
        reason: String,
    },
    /// A tensor operation failed inside candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, ModelError>;
