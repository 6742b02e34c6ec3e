//! NIfTI-1, NIfTI-2 and Analyze 7.5 volume I/O, written for dino3d rather than
//! wrapped: the `nifti` crate has no NIfTI-2, fails on multi-member gzip and can
//! panic on bad pixdim, and it inflates through growing buffers.
//!
//! * [`read_header`] reads the header only (a few hundred inflated bytes).
//! * [`read_volume`] reads voxels in their stored type (libdeflate inflate into
//!   an exactly sized buffer, no transposes).
//! * [`write_volume`] writes `.nii` / `.nii.gz` atomically.

pub mod affine;
pub mod dtype;
pub(crate) mod gzip;
pub mod header;
mod read;
mod write;

pub use affine::{Affine, FallbackAffine};
pub use dtype::DType;
pub use header::{Endian, HeaderError, NiftiHeader, NiftiVersion};
pub use read::{
    DEFAULT_MAX_VOXELS, ReadOptions, VolumeInfo, read_header, read_header_with, read_volume,
    read_volume_with,
};
pub use write::{WriteOptions, header_for, write_atomic, write_volume};
