//! Transforms with MONAI's semantics (../shared/spec/pipeline-reference.md §2)
//! and 3DINO's own (3dino-reference.md §3), one per file.
//!
//! So far: the deterministic part of 3DINO's pretraining chain, which the cache
//! will persist: load (as [`Image`]), [`rand_time_frame`], [`nan_to_mean`],
//! [`scale_intensity_range_percentiles`], [`permute_in_plane_first`] and
//! [`crop_foreground`], chained by [`threedino_prefix`]; and the MONAI basics
//! [`normalize_intensity`], [`orientation`], [`spatial_pad`] and
//! [`center_spatial_crop`]; and the first random ones, [`rand_flip`] and
//! [`rand_rotate90`], drawing from [`DrawKey`] streams. The recipe compiler,
//! random augmentations and multi-crop views come next (issue 3).

pub mod crop_foreground;
pub mod image;
pub mod nan_to_mean;
pub mod normalize_intensity;
pub mod orientation;
pub mod pad_and_center_crop;
pub mod percentiles;
pub mod permute_in_plane_first;
pub mod rand_flip_rotate;
pub mod rand_time_frame;
pub mod rng;
pub mod scale_intensity_range;
mod threedino_prefix;

pub use crop_foreground::{CropForeground, crop_foreground};
pub use image::Image;
pub use nan_to_mean::nan_to_mean;
pub use normalize_intensity::{NormalizeIntensity, normalize_intensity};
pub use orientation::{flip_spatial, orientation, parse_axcodes};
pub use pad_and_center_crop::{PadMethod, center_spatial_crop, spatial_pad};
pub use percentiles::{ScaleIntensityRangePercentiles, scale_intensity_range_percentiles};
pub use permute_in_plane_first::permute_in_plane_first;
pub use rand_flip_rotate::{rand_flip, rand_rotate90, rot90};
pub use rand_time_frame::rand_time_frame;
pub use rng::DrawKey;
pub use scale_intensity_range::{ScaleIntensityRange, scale_intensity_range};
pub use threedino_prefix::threedino_prefix;
