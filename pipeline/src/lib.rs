//! dino3d's data pipeline: volume I/O, dataset manifests and (later) the
//! transform graph.
//!
//! ```no_run
//! let info = dino3d_pipeline::nifti::read_header("scan.nii.gz")?; // header only
//! let vol = dino3d_pipeline::nifti::read_volume("scan.nii.gz")?;  // (C, X, Y, Z)
//! assert_eq!(vol.shape, info.shape);
//! # Ok::<(), dino3d_pipeline::Error>(())
//! ```

#![cfg_attr(target_endian = "big", doc = "")]

pub mod error;
pub mod exec;
pub mod layout;
pub mod manifest;
pub mod nifti;
pub mod pos_neg;
pub mod recipe;
pub mod transforms;
pub mod volume;
pub mod voxels;

pub use error::{Error, Result};
pub use volume::{Volume, VolumeMeta, VoxelData};
pub use voxels::Voxels;
