//! What `dino-run visualize` computes: 3DINO's unsupervised pictures of what a
//! backbone sees in one volume (3dino-reference.md §5). [`prepare`] is
//! 3DINO's preprocessing, [`features`] runs the backbone under an
//! [`features::InputType`], [`pca`] (with its eigen-solver, [`eigen`]) fits
//! the tokens, and [`grid`] maps token values back onto the source's voxels.
//! The binary draws the NIfTI maps, PNG montages and GIF.

pub mod eigen;
pub mod features;
pub mod grid;
pub mod pca;
pub mod prepare;

/// The defaults of the command's settings (3DINO's values).
pub mod defaults {
    use super::features::InputType;

    /// The whole image in one pass.
    pub const INPUT_TYPE: InputType = InputType::FullImage;
    /// Window overlap of `sliding_window` (3DINO: 0).
    pub const OVERLAP: f64 = 0.0;
    /// PCA components fitted and saved (3DINO: 10).
    pub const COMPONENTS: usize = 10;
    /// Foreground threshold on the jointly normalised component 0.
    pub const THRESHOLD: f32 = 0.5;
    /// Frame (4th-axis index) of a 4-D volume.
    pub const FRAME: usize = 0;
}
