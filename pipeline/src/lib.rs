//! dino3d's data pipeline: volume I/O, dataset manifests and (later) the
//! transform graph.
//!
//! ```no_run
//! // Any format (NIfTI, Analyze, MetaImage, NRRD), chosen by name or content.
//! let info = dino3d_pipeline::formats::read_header("scan.mha")?; // header only
//! let vol = dino3d_pipeline::formats::read_volume("scan.mha")?;  // (C, X, Y, Z)
//! assert_eq!(vol.shape, info.shape);
//! # Ok::<(), dino3d_pipeline::Error>(())
//! ```

#![cfg_attr(target_endian = "big", doc = "")]

pub mod error;
pub mod exec;
pub mod formats;
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
