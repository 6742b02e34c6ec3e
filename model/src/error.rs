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
    /// A tensor operation failed inside candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, ModelError>;
