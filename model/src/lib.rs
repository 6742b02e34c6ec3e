//! dino3d's learning half: 3D ViT, DINO/iBOT heads and 3DINO's losses in candle.
//!
//! Planned (issue 5). This crate is a placeholder until then; it only fixes the
//! error type the rest will use.

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
}
